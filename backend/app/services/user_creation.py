"""Creating a user, whose outcome is never lost: an intent recorded before Cognito is called.

A create is synchronous (the row stores the sub Cognito returns), and AdminCreateUser is sent
once (a retry after a lost answer would meet the user the first attempt made). Its outcome can
still be unknown: the answer is lost, or the call lands after the request gave up at its
deadline. So, before calling Cognito, the create commits an **intent** (an outbox entry of kind
`user_creation`, keyed by the email, with what was asked) and holds the email's lease:

1. the email is checked against the table (a clear 409 when a row holds it);
2. the intent is committed and the lease taken; while another create holds it, `409
   create_in_progress` with `Retry-After` (a conflict, never a 5xx, and never `email_taken`
   while no row holds the email); the row is checked again once the lease is taken;
3. AdminCreateUser, AdminAddUserToGroup, then the row is inserted, and the intent deleted and
   the lease given back in the request's transaction, fenced by the lease's holder.

A create that fails with its outcome unknown leaves the intent behind, and so does a retry that
fails after it, whatever its own failure (the first try's call may still land); once its lease
is given back or runs out, the outbox worker finishes it (`UserCreations`): the Cognito user that
appeared is adopted with the role asked for (a row inserted, the group ensured), and an intent
under which nothing appeared is dropped after `GIVE_UP_AFTER`. A retry of the create after the
lease ran out takes the intent over and adopts the user itself (201).

The adoption rule is `app.services.adoption`'s, shared with the reconcile command: a user
someone else created and signed in with is reported by reconcile, never taken over, and a
Cognito user under a pending intent is never removed as an orphan.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.compensation import UndoLog
from app.core.db import ReadSessions
from app.core.errors import ConflictError, DomainError, ServiceUnavailableError
from app.models.outbox import OutboxEntry
from app.models.user import User
from app.schemas.user import UserCreate
from app.services import outbox
from app.services.adoption import (
    CREATION_KIND,
    LANDS_WITHIN,
    REFERENCED,
    TRACE_FIELDS,
    IntentTrace,
    adoption_refusal,
    fresh_invitation,
    merged_usernames,
    sub_is_referenced,
)
from app.services.audit import AuditRecord, audit_at_commit, audited
from app.services.cognito import (
    AnswerLostError,
    CognitoUser,
    CognitoUserExistsError,
    CognitoUserPool,
    EmailTakenError,
)
from app.services.directory_sync import match_user, record_directory_pass
from app.services.outbox import Claim, Finish, Handler, give_back_lease, take_lease
from app.services.users import find_user_by_email

logger = logging.getLogger(__name__)

KIND: Final = CREATION_KIND
EMAIL_INDEX: Final = "uq_users_lower_email"
SUB_INDEX: Final = "uq_users_cognito_user_id"
# An intent under which no Cognito user appeared this long after its last try is dropped: a call
# held up on its way lands well within it.
GIVE_UP_AFTER: Final = LANDS_WITHIN
# When to try a create again that met another create of its email in progress: most end in
# well under a second.
IN_PROGRESS_RETRY_AFTER_SECONDS: Final = 2
# How often the worker looks for the Cognito user of an unsettled intent meanwhile.
LOOK_AGAIN_SECONDS: Final = 5.0


class CreateUnderWayError(ServiceUnavailableError):
    """This create ran past its hold of the email: it is being finished by someone else."""


class CreateInProgressError(ConflictError):
    """Another create of the email holds it (or its outcome is being settled): a conflict, not
    a failure of the server; once it ends the email is taken, or free again."""

    code = "create_in_progress"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(IN_PROGRESS_RETRY_AFTER_SECONDS)})


class _OutcomeUnknownError(ServiceUnavailableError):
    """Cognito may have created the user, and no user is there to adopt yet."""

    code = "create_unsettled"


class _ConflictWhileCallMayLandError(Exception):
    """A conflict met by a try whose own AdminCreateUser may still land (its answer was lost):
    the create answers the conflict, and its intent stays for the worker to settle."""

    def __init__(self, conflict: ConflictError) -> None:
        super().__init__(conflict.detail)
        self.conflict = conflict


class _NotYetError(DomainError):
    """The intent's Cognito user has not appeared yet (it may still land): look again soon."""

    code = "create_unsettled"
    retry_after_seconds = LOOK_AGAIN_SECONDS


def _key(email: str) -> str:
    return email.lower()


def _hold_seconds(cognito: CognitoUserPool) -> float:
    """How long a create holds its email: its Cognito work, its undo and its commit."""
    return 2 * cognito.deadline_seconds + 10


# ---------------------------------------------------------------------------------------------
# The request


async def _record_intent(
    session: AsyncSession,
    data: UserCreate,
    holder: uuid.UUID,
    hold_seconds: float,
    username: str | None,
) -> tuple[IntentTrace, bool]:
    """Take the email's lease and commit the intent, with the username this try sends.

    Returns the intent's trace (its first and latest tries, every username they sent), and
    whether an earlier try's outcome is still unknown (its intent was left unsettled; its call
    may yet land).
    """
    key = _key(data.email)
    async with AsyncSession(session.bind) as own, own.begin():
        if not await take_lease(own, KIND, key, holder, hold_seconds):
            raise CreateInProgressError("A create of this email is in progress; try again shortly")
        # The create that held the email before gave it back in the transaction that
        # committed its row: seen here, it is a clear conflict, and nothing is recorded.
        if await find_user_by_email(own, data.email) is not None:
            raise EmailTakenError("A user with this email already exists")
        earlier = (
            await own.scalars(
                select(OutboxEntry.payload).where(OutboxEntry.kind == KIND, OutboxEntry.key == key)
            )
        ).all()
        earlier = [payload for payload in earlier if "began" in payload]
        now: datetime = await own.scalar(select(func.now()))  # type: ignore[assignment]
        began = min((IntentTrace.of(payload).began for payload in earlier), default=now)
        # `began`: the earliest try, which a user created under the intent postdates;
        # `tried`: the latest, which a call still on its way may land after.
        trace = IntentTrace(began, now, merged_usernames(earlier, username))
        await own.execute(
            delete(OutboxEntry).where(OutboxEntry.kind == KIND, OutboxEntry.key == key)
        )
        outbox.record(own, KIND, key, {**data.model_dump(mode="json"), **trace.to_payload()})
    return trace, bool(earlier)


async def _drop_intent(
    session: AsyncSession, email: str, holder: uuid.UUID, *, earlier_try: bool
) -> None:
    """Nothing this try made is left in Cognito: the intent goes, if this create still holds it.

    Unless an earlier try's outcome is unknown (`earlier_try`): its AdminCreateUser may still
    land, so the intent stays for the worker or a retry to settle, and only the lease goes back.
    """
    key = _key(email)
    async with AsyncSession(session.bind) as own, own.begin():
        if await give_back_lease(own, KIND, key, holder) and not earlier_try:
            await own.execute(
                delete(OutboxEntry).where(OutboxEntry.kind == KIND, OutboxEntry.key == key)
            )


async def _give_back(session: AsyncSession, email: str, holder: uuid.UUID) -> None:
    async with AsyncSession(session.bind) as own, own.begin():
        await give_back_lease(own, KIND, _key(email), holder)


async def _delete_unless_referenced(
    read_sessions: ReadSessions,
    cognito: CognitoUserPool,
    email: str,
    sub: str,
    drop_intent: Callable[[], Awaitable[None]],
) -> None:
    """The undo of a create this request made: never when a committed row refers to the user,
    nor when that cannot be known (the database is down). Once the user is gone, so is the
    intent; otherwise the intent stays and settles it."""
    if await sub_is_referenced(read_sessions, sub):
        logger.warning("not deleting the new Cognito user: a row refers to it")
        return
    await cognito.delete_user_if_sub(email, sub)
    await drop_intent()


async def _adopt_existing(
    read_sessions: ReadSessions, cognito: CognitoUserPool, email: str, intent: IntentTrace
) -> CognitoUser | None:
    """The user of `email` that this create's intent made, ready to adopt (a fresh temporary
    password if it never signed in); None when the pool has no user of `email`.

    Any other user of the email is a conflict: someone else's (`CognitoUserExistsError`), or,
    once a row refers to it, an email taken."""
    existing = await cognito.find_user(email)
    if existing is None:
        return None
    refusal = await adoption_refusal(read_sessions, existing, intent=intent)
    if refusal == REFERENCED:
        raise EmailTakenError("A user with this email already exists")
    if refusal is not None:
        raise CognitoUserExistsError(
            "The user directory (Cognito) has a user with this email that this system did not "
            "create; an operator can take it over with the reconcile command's --adopt"
        )
    await fresh_invitation(cognito, existing)
    return existing


async def _existing_or_unknown(
    read_sessions: ReadSessions, cognito: CognitoUserPool, email: str, intent: IntentTrace
) -> CognitoUser | None:
    """The adoptable user of `email`; a failed look-up leaves the outcome unknown (the user may
    be this intent's), so the intent stays."""
    try:
        return await _adopt_existing(read_sessions, cognito, email, intent)
    except ConflictError:
        raise
    except Exception as error:  # Cognito or the database: whether it is ours is unknown
        raise _OutcomeUnknownError(
            "The user directory (Cognito) could not be asked whether the user exists; the "
            "create is being settled, try again shortly"
        ) from error


async def _cognito_user_for(
    read_sessions: ReadSessions,
    cognito: CognitoUserPool,
    email: str,
    intent: IntentTrace,
    username: str | None,
    undo: UndoLog,
    drop_intent: Callable[[], Awaitable[None]],
) -> tuple[CognitoUser, bool]:
    """Create the Cognito user, or adopt the one this intent made; whether it was adopted."""
    try:
        created = await cognito.create_user(email, username)
    except AnswerLostError:
        try:
            adopted = await _existing_or_unknown(read_sessions, cognito, email, intent)
        except ConflictError as conflict:
            raise _ConflictWhileCallMayLandError(conflict) from conflict
        if adopted is None:
            raise _OutcomeUnknownError(
                "The user directory (Cognito) did not confirm the creation; it is being "
                "settled, try again shortly"
            ) from None
        logger.info("adopted the Cognito user whose creation answer was lost")
        return adopted, True
    except EmailTakenError:
        adopted = await _existing_or_unknown(read_sessions, cognito, email, intent)
        if adopted is None:
            raise CognitoUserExistsError(
                "The user directory (Cognito) had a user with this email a moment ago and "
                "has none now; try again"
            ) from None
        logger.info("adopted the Cognito user an earlier try of this create made")
        return adopted, True
    undo.add(
        "delete the new Cognito user",
        functools.partial(
            _delete_unless_referenced, read_sessions, cognito, email, created.sub, drop_intent
        ),
    )
    return created, False


def _violated_constraint(error: IntegrityError) -> str | None:
    # asyncpg's exception (the DB-API error's cause) names the constraint or index.
    cause = getattr(error.orig, "__cause__", None)
    name = getattr(cause, "constraint_name", None) or getattr(error.orig, "constraint_name", None)
    return str(name) if name else None


def _new_user(sub: str, data: UserCreate) -> User:
    return User(
        cognito_user_id=sub,
        email=data.email,
        full_name=data.full_name,
        role=data.role,
        responsible_province=data.responsible_province,
        is_active=True,
    )


async def _cognito_side(
    session: AsyncSession,
    read_sessions: ReadSessions,
    cognito: CognitoUserPool,
    data: UserCreate,
    holder: uuid.UUID,
    undo: UndoLog,
) -> tuple[CognitoUser, bool]:
    """The create's Cognito user, made or adopted, in exactly its role's group; whether it was
    adopted. Records the intent first and settles it on every way out but success."""
    with cognito.deadline():
        username = await cognito.username_for_create(data.email)
    intent, earlier_try = await _record_intent(
        session, data, holder, _hold_seconds(cognito), username
    )
    drop_intent = functools.partial(
        _drop_intent, session, data.email, holder, earlier_try=earlier_try
    )
    with cognito.deadline():
        try:
            cognito_user, adopted = await _cognito_user_for(
                read_sessions, cognito, data.email, intent, username, undo, drop_intent
            )
        except _OutcomeUnknownError:
            # The intent stays, for whoever settles it first: the worker, or a retry, which
            # may take the email at once.
            await _give_back(session, data.email, holder)
            raise
        except _ConflictWhileCallMayLandError as pending:
            # The conflict is the answer, and the intent stays: this try's own call may still
            # land, and the worker adopts what it made (or drops the intent once it cannot).
            await _give_back(session, data.email, holder)
            raise pending.conflict from None
        except BaseException:
            await drop_intent()  # nothing of this try was created
            raise
        # From here on a Cognito user exists: a failure undoes what this request created and
        # leaves the intent to settle what the undo could not.
        if adopted:
            # Whatever groups it had before are not the row's: exactly the role's group.
            await match_user(cognito, data.email, data.role, is_active=True)
        else:
            await cognito.add_to_group(data.email, data.role)
    return cognito_user, adopted


async def create_user(
    session: AsyncSession,
    read_sessions: ReadSessions,
    cognito: CognitoUserPool,
    data: UserCreate,
    *,
    actor_id: uuid.UUID | None,
) -> User:
    """Create the user in Cognito (which emails the invitation) and in the users table."""
    with audited("user.create", actor_id) as audit:
        async with read_sessions() as read:
            if await find_user_by_email(read, data.email) is not None:
                raise EmailTakenError("A user with this email already exists")
        holder = uuid.uuid4()
        key = _key(data.email)
        undo = UndoLog()
        try:
            cognito_user, adopted = await _cognito_side(
                session, read_sessions, cognito, data, holder, undo
            )
            user = _new_user(cognito_user.sub, data)
            session.add(user)
            try:
                await session.flush()
            except IntegrityError as error:
                if _violated_constraint(error) in (EMAIL_INDEX, SUB_INDEX):
                    raise EmailTakenError("A user with this email already exists") from error
                raise
            if not await give_back_lease(session, KIND, key, holder):
                # Past its lease: the worker or a retry settles the intent now, and may adopt
                # the user this request made, so nothing here is undone.
                undo = UndoLog()
                raise CreateUnderWayError(
                    "The create took too long and is being finished; try again shortly"
                )
            await session.execute(
                delete(OutboxEntry).where(OutboxEntry.kind == KIND, OutboxEntry.key == key)
            )
            if adopted:
                # A pass of the directory's own work confirms the groups (and enabled state).
                record_directory_pass(session, user.id, sign_out=False)
        except BaseException:
            await undo.undo()
            raise
        audit.target_id = user.id
        if adopted:
            audit.details["settled"] = "adopted the user an earlier try made"
        audit_at_commit(session, audit, undo)
        return user


# ---------------------------------------------------------------------------------------------
# The worker


@dataclass(frozen=True, slots=True)
class _Intent:
    data: UserCreate
    trace: IntentTrace

    @classmethod
    def of(cls, payload: dict[str, Any]) -> _Intent:
        trace = IntentTrace.of(payload)
        fields = {name: value for name, value in payload.items() if name not in TRACE_FIELDS}
        return cls(UserCreate.model_validate(fields), trace)


class UserCreations(Handler):
    """The outbox handler that settles the intents creates left behind (one intent per email:
    a retry of the create replaces it, so only the latest is read)."""

    def __init__(self, read_sessions: ReadSessions, cognito: CognitoUserPool) -> None:
        self._read_sessions = read_sessions
        self._cognito = cognito

    async def handle(self, claim: Claim) -> Finish | None:
        """Adopt the Cognito user the intent made, or drop the intent (see the docstring)."""
        # Only intents (an earlier release also recorded read-backs and empty steps here).
        intents = [entry for entry in claim.entries if "began" in entry.payload]
        if not intents:
            return None
        try:
            intent = _Intent.of(intents[-1].payload)
        except (ValueError, KeyError, TypeError):  # pydantic's ValidationError is a ValueError
            # Retrying cannot make it readable, and it would keep its email from reconcile.
            logger.error("create intent dropped: it cannot be read", extra={"key": claim.key})
            return _unreadable
        async with self._read_sessions() as read:
            if await find_user_by_email(read, intent.data.email) is not None:
                return None  # the create (or a retry) finished it
            # The database's clock, the one that stamped `tried`.
            now: datetime = await read.scalar(select(func.now()))  # type: ignore[assignment]
        # Until then a call of the intent may still land (and make its user).
        may_land = now - intent.trace.tried < GIVE_UP_AFTER
        cognito = self._cognito.without_sdk_retries()  # the outbox is the retrier
        with cognito.deadline():
            found = await cognito.find_user(intent.data.email)
        if found is None:
            if may_land:
                raise _NotYetError("no Cognito user yet under the intent")
            logger.info("create intent dropped: no Cognito user appeared")
            return functools.partial(_audit_dropped, intent.data, "no_cognito_user")
        refusal = await adoption_refusal(self._read_sessions, found, intent=intent.trace)
        if refusal is not None:
            if may_land and refusal != REFERENCED:
                # Someone else's user now; if it goes, the intent's own call may still make one.
                raise _NotYetError("the Cognito user is not the intent's; its call may land")
            logger.warning("create intent dropped: the Cognito user is not its own (%s)", refusal)
            code = "email_taken" if refusal == REFERENCED else CognitoUserExistsError.code
            return functools.partial(_audit_dropped, intent.data, code)
        with cognito.deadline():
            await fresh_invitation(cognito, found)
        return functools.partial(self._adopt, found.sub, intent.data)

    async def _adopt(self, sub: str, data: UserCreate, session: AsyncSession) -> None:
        with audited("user.create", None) as audit:
            audit.details["settled"] = "adopted after the request ended"
            user = _new_user(sub, data)
            session.add(user)
            await session.flush()
            # The group (and enabled state) follow through the directory's own work.
            record_directory_pass(session, user.id, sign_out=False)
            audit.target_id = user.id
            audit_at_commit(session, audit)
        logger.info(
            "create intent settled: adopted the Cognito user", extra={"user_id": str(user.id)}
        )


async def _unreadable(session: AsyncSession) -> None:
    audit = AuditRecord("user.create", None, details={"settled": "intent dropped"})
    audit_at_commit(session, audit, outcome="dropped:unreadable_intent")


async def _audit_dropped(data: UserCreate, reason: str, session: AsyncSession) -> None:
    """The audit line of a create the worker finished with nothing made: written once the
    intent's deletion commits."""
    audit = AuditRecord("user.create", None, details={"settled": "intent dropped"})
    audit_at_commit(session, audit, outcome=f"dropped:{reason}")
