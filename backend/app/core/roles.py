"""The four roles of one-system; every role check in the code base refers to this enum."""

from enum import StrEnum


class Role(StrEnum):
    """A user's role, stored in `users.role` and mirrored as a Cognito group of the same name."""

    ADMIN = "ADMIN"
    DISPATCHER = "DISPATCHER"
    OFFICER = "OFFICER"
    EXECUTIVE = "EXECUTIVE"
