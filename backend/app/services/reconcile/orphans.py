"""Repairing a Cognito user without a row: adopted with the role an operator names, or removed.

An adopted user gets a new temporary password first (AdminCreateUser RESEND): whoever made it
in the console may know the one it had. Neither is done to a user someone else may claim
(`app.services.adoption`: it signed in, a create may still be in flight, or a row refers to
it now). The rule is asked after the last
read of the Cognito user and right before the write or the delete, so a row a concurrent
create commits before that moment stops the repair.

No role is ever read from a Cognito group: anyone with console access can put a user in the
ADMIN group, and adopting that user as an ADMIN would make them one in the app. Adoption takes
the role (and an OFFICER's province) the operator gives; without one, an orphan is reported.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy.exc import IntegrityError

from app.core.db import ReadSessions, Sessionmaker
from app.core.errors import ConflictError
from app.models.user import User
from app.schemas.user import UserCreate
from app.services.adoption import adoption_refusal, fresh_invitation
from app.services.audit import audited
from app.services.cognito import CognitoUserPool
from app.services.directory_sync import record_directory_pass
from app.services.reconcile.drift import Drift
from app.services.reconcile.snapshot import fresh_cognito_user
from app.services.users import find_user_by_email


class OrphanAction(StrEnum):
    """What `repair` does with the Cognito users without a row that it is not told to adopt."""

    REPORT = "report"
    REMOVE = "remove"


def names(adoption: UserCreate | None, item: Drift) -> bool:
    """Whether the operator's adoption is of this orphan (by its email, in any case)."""
    return adoption is not None and (item.email or "").lower() == adoption.email


async def adopt(
    item: Drift,
    adoption: UserCreate,
    cognito: CognitoUserPool,
    sessions: Sessionmaker,
    read_sessions: ReadSessions,
) -> tuple[bool, str]:
    """A row for the orphan, with the operator's role; Cognito's groups follow the row."""
    assert item.sub is not None
    assert item.username is not None
    found = await fresh_cognito_user(cognito, item.username, item.sub)
    if found is None:
        return False, "gone from Cognito meanwhile"
    if (found.email or "").lower() != adoption.email:
        return False, f"not adopted: its email is now {found.email or 'none'}"
    refusal = await adoption_refusal(read_sessions, found)
    if refusal is not None:
        return False, f"not adopted: {refusal}"
    # Never signed in (the rule above): whoever made it may know its temporary password, so it
    # gets a new one before it gets a row and a role.
    with cognito.deadline():
        await fresh_invitation(cognito, found)
    user = User(
        cognito_user_id=found.sub,
        email=adoption.email,
        full_name=adoption.full_name,
        role=adoption.role,
        responsible_province=adoption.responsible_province,
        # A user disabled in Cognito stays disabled: adoption never widens access.
        is_active=found.enabled,
    )
    try:
        with audited("user.reconcile_adopt", None) as audit:
            audit.details["role"] = adoption.role.value
            async with sessions() as session, session.begin():
                if await find_user_by_email(session, adoption.email) is not None:
                    raise ConflictError("a row with another sub already has this email")
                session.add(user)
                await session.flush()
                audit.target_id = user.id
                # The worker puts the Cognito user in the role's group, and in no other.
                record_directory_pass(session, user.id, sign_out=False)
    except ConflictError as error:
        return False, f"not adopted: {error.detail}"
    except IntegrityError:
        return False, "not adopted: a row with this email or sub was written meanwhile"
    state = "active" if user.is_active else "deactivated (disabled in Cognito)"
    return True, (
        f"adopted as {adoption.role.value} (row {user.id}, {state}); "
        "Cognito's groups follow through the outbox"
    )


async def remove(
    item: Drift, cognito: CognitoUserPool, read_sessions: ReadSessions
) -> tuple[bool, str]:
    """Delete the orphan from Cognito, unless someone may claim it (checked last)."""
    assert item.sub is not None
    assert item.username is not None
    with cognito.deadline():
        found = await fresh_cognito_user(cognito, item.username, item.sub)
        if found is None:
            return False, "gone from Cognito meanwhile"
        # After the last read of the user and right before the delete: a create that adopts
        # it commits its row first, and that row stops the delete here.
        refusal = await adoption_refusal(read_sessions, found)
        if refusal is not None:
            return False, f"left alone: {refusal}"
        await cognito.delete_user(found.username)
    return True, "removed from Cognito (it never signed in)"


async def repair_orphan(
    item: Drift,
    cognito: CognitoUserPool,
    sessions: Sessionmaker,
    read_sessions: ReadSessions,
    *,
    orphans: OrphanAction,
    adoption: UserCreate | None,
) -> tuple[bool, str]:
    """Adopt the orphan the operator named, remove others if asked, report the rest."""
    if adoption is not None and names(adoption, item):
        return await adopt(item, adoption, cognito, sessions, read_sessions)
    if orphans is OrphanAction.REMOVE:
        return await remove(item, cognito, read_sessions)
    return False, (
        "reported only: adopt it with --adopt EMAIL --role ROLE (never with a role from its "
        "Cognito groups), or remove it with --orphans remove"
    )
