"""What the pool says about a user, and what a user's email is to the pool.

Users are addressed by their lower-case email, which is immutable in this system. How the pool
is configured decides what that email is to Cognito (`UsernameMode`, read once from
DescribeUserPool):
- **email as username** (`UsernameAttributes: [email]`): AdminCreateUser takes the email and
  makes the real username a UUID equal to `sub`; every admin call accepts the email.
- **email as an alias** (`AliasAttributes: [email]`): AdminCreateUser refuses an email-shaped
  username, so the user is created with a generated username (a UUID) and a verified email;
  every admin call accepts the verified email alias. A duplicate email is AliasExists.
- **neither**: the email is the username.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from app.core.errors import ServiceUnavailableError
from app.core.roles import Role

ROLE_GROUPS: Final = tuple(role.value for role in Role)

# The UserStatus of someone invited who has not signed in yet.
NEVER_SIGNED_IN_STATUS: Final = "FORCE_CHANGE_PASSWORD"


class UsernameMode(StrEnum):
    """What a user's email is to the pool (see the module docstring)."""

    EMAIL_IS_USERNAME_ATTRIBUTE = "email as username"
    EMAIL_IS_ALIAS = "email as alias"
    EMAIL_IS_USERNAME = "email is the username"
    # Sign-in by phone number only: a user cannot be created from an email at all.
    PHONE_ONLY = "phone number as username"

    @classmethod
    def of(cls, pool: Any) -> UsernameMode:
        """The mode of a DescribeUserPool `UserPool`."""
        username_attributes = pool.get("UsernameAttributes") or []
        if "email" in username_attributes:
            return cls.EMAIL_IS_USERNAME_ATTRIBUTE
        if username_attributes:
            return cls.PHONE_ONLY
        if "email" in (pool.get("AliasAttributes") or []):
            return cls.EMAIL_IS_ALIAS
        return cls.EMAIL_IS_USERNAME


@dataclass(frozen=True, slots=True)
class CognitoUser:
    username: str
    sub: str
    status: str
    enabled: bool
    email: str | None
    created_at: datetime | None

    @classmethod
    def of(cls, description: Any, attributes_key: str) -> CognitoUser:
        """The user an admin call described, its attributes under `attributes_key`."""
        attributes = description.get(attributes_key, [])
        sub = _attribute(attributes, "sub")
        if not sub:
            raise ServiceUnavailableError("The user directory returned a user without an id")
        return cls(
            username=str(description.get("Username", "")),
            sub=sub,
            status=str(description.get("UserStatus", "")),
            enabled=bool(description.get("Enabled", True)),
            email=_attribute(attributes, "email"),
            created_at=_aware(description.get("UserCreateDate")),
        )


def _attribute(attributes: list[Any], name: str) -> str | None:
    for attribute in attributes:
        if attribute.get("Name") == name:
            value = attribute.get("Value")
            return str(value) if value is not None else None
    return None


def _aware(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
