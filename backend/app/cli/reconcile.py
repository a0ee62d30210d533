"""Compare the user pool (Cognito) with the users table and report, or repair, the drift.

    python -m app.cli.reconcile [--apply] [--orphans report|remove]
                                [--adopt EMAIL --role ROLE [--province P] [--full-name NAME]]
                                [--outbox-threshold-minutes 5] [--json]
    python -m app.cli.reconcile --check-pool [--json]

Reads the same settings as the API. Drift: Cognito users without a row, rows without a Cognito
user, Cognito enabled while the row is deactivated, Cognito disabled while the row is active,
role groups ≠ role, outbox entries pending longer than the threshold (`app.services.reconcile`).
`--apply` repairs what cannot widen access: Cognito made to match the row where that narrows
it or changes only groups; a user disabled in Cognito has its row deactivated (disabled wins)
unless a reactivation is pending; a Cognito user without a row that never signed in is
adopted only as `--adopt` names it, with `--role` (never a role from its Cognito groups), or
removed with `--orphans remove`, and otherwise reported; rows without a Cognito user are
reported only. `--check-pool` checks the pool's configuration instead
(`app.services.pool_check`).

Exit status: 0 in step (the pool as needed, for `--check-pool`); 1 drift found, or left after
`--apply` (problems found, for `--check-pool`); 2 could not check (Cognito or the database
unreachable, throttled, or misconfigured; bad settings). Runs hourly from
`deploy/systemd/one-system-reconcile.timer`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from app.core.config import ConfigError, Settings, load_settings
from app.core.db import open_database
from app.core.errors import DATABASE_UNAVAILABLE_ERRORS, DomainError
from app.core.logging import configure_logging
from app.core.roles import Role
from app.schemas.user import UserCreate
from app.services.cognito import MAX_PAGE_SIZE, CognitoUserPool, DirectoryMisconfiguredError
from app.services.outbox import OutboxWorker
from app.services.outbox_handlers import outbox_handlers
from app.services.pool_check import PoolCheckUnavailable, check_configured_pool
from app.services.reconcile import OrphanAction, Report, find_drift, repair

logger = logging.getLogger(__name__)

EXIT_IN_STEP = 0
EXIT_DRIFT = 1
EXIT_CANNOT_CHECK = 2


def _emit(as_json: bool, document: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print("\n".join(lines))


def _cannot_check(as_json: bool, reason: str) -> int:
    if as_json:
        _emit(True, {"status": "cannot_check", "reason": reason}, [])
    print(f"could not check: {reason}", file=sys.stderr)
    return EXIT_CANNOT_CHECK


async def run_check_pool(settings: Settings, cognito: CognitoUserPool, *, as_json: bool) -> int:
    """The pool's configuration: 0 as needed, 1 problems found, 2 Cognito could not say."""
    try:
        check = await check_configured_pool(cognito, settings)
    except PoolCheckUnavailable as error:
        return _cannot_check(as_json, f"Cognito did not answer ({error})")
    lines = [check.summary()] if check.ok else ["problems:", *(f"  - {p}" for p in check.problems)]
    if not check.ok and check.notes:
        lines += ["notes:", *(f"  - {note}" for note in check.notes)]
    _emit(as_json, {"status": "ok" if check.ok else "problems", **check.as_dict()}, lines)
    return EXIT_IN_STEP if check.ok else EXIT_DRIFT


async def run_reconcile(
    settings: Settings,
    cognito: CognitoUserPool,
    *,
    apply: bool,
    orphans: OrphanAction,
    threshold: timedelta,
    as_json: bool,
    page_size: int = MAX_PAGE_SIZE,
    adoption: UserCreate | None = None,
) -> int:
    """Report (and with `apply`, repair) the drift; returns the exit status.

    `adoption`: with `apply`, the Cognito user without a row to adopt, and its role.
    """
    try:
        # One connection is enough: this walks pages one after the other.
        database = await open_database(settings, pool_size=1, max_overflow=0, name="reconcile")
    except ConfigError as error:
        return _cannot_check(as_json, f"configuration: {error}")
    sessions, read_sessions = database.sessions, database.read_sessions
    # Never started: its one-key repair is the worker's own step, read-backs included.
    worker = OutboxWorker(sessions, outbox_handlers(settings, read_sessions, cognito))
    try:
        found = await find_drift(cognito, read_sessions, threshold=threshold, page_size=page_size)
        document: dict[str, Any] = {"found": found.as_dict()}
        lines = _found_lines(cognito.user_pool_id, found)
        remaining = found
        if apply and (found.drift or adoption is not None):
            repaired = await repair(
                found,
                cognito,
                worker,
                sessions,
                read_sessions,
                orphans=orphans,
                adoption=adoption,
            )
            remaining = await find_drift(
                cognito, read_sessions, threshold=threshold, page_size=page_size
            )
            document |= {"repairs": repaired.as_dict(), "remaining": remaining.as_dict()}
            lines += [f"repaired: {line}" for line in repaired.done]
            lines += [f"not repaired: {line}" for line in repaired.skipped]
            lines += [f"remaining: {item.line()}" for item in remaining.drift]
    except DirectoryMisconfiguredError as error:
        return _cannot_check(as_json, f"Cognito is misconfigured: {error.hint}")
    except DomainError as error:
        return _cannot_check(as_json, f"Cognito: {error.detail}")
    except DATABASE_UNAVAILABLE_ERRORS as error:
        return _cannot_check(as_json, f"the database is unreachable ({type(error).__name__})")
    finally:
        await database.dispose()
    in_step = not remaining.drift
    document["status"] = "in_step" if in_step else "drift"
    lines.append("in step" if in_step else f"{len(remaining.drift)} drift item(s)")
    _emit(as_json, document, lines)
    return EXIT_IN_STEP if in_step else EXIT_DRIFT


def _found_lines(user_pool_id: str, found: Report) -> list[str]:
    return [
        f"pool {user_pool_id}: {found.cognito_users} Cognito user(s), "
        f"{found.rows} row(s), {found.in_flight} with directory work in flight",
        *(f"drift: {item.line()}" for item in found.drift),
    ]


def _adoption(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> UserCreate | None:
    """The user --adopt names, checked as a create through the API would check it."""
    if arguments.adopt is None:
        if arguments.role or arguments.province or arguments.full_name:
            parser.error("--role, --province and --full-name go with --adopt")
        return None
    if not arguments.apply:
        parser.error("--adopt needs --apply")
    if arguments.role is None:
        parser.error("--adopt needs --role: a role is never read from Cognito's groups")
    try:
        return UserCreate(
            email=arguments.adopt,
            role=Role(arguments.role),
            responsible_province=arguments.province,
            full_name=arguments.full_name or arguments.adopt,
        )
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, problem['loc'])) or 'adopt'}: {problem['msg']}"
            for problem in error.errors()
        )
        parser.error(f"--adopt: {problems}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.cli.reconcile",
        description="Report (--apply: repair) drift between the Cognito user pool and the "
        "users table; or check the pool's configuration (--check-pool).",
    )
    parser.add_argument(
        "--check-pool", action="store_true", help="check the pool's configuration only"
    )
    parser.add_argument(
        "--apply", action="store_true", help="repair what cannot widen anyone's access"
    )
    parser.add_argument(
        "--orphans",
        choices=[action.value for action in OrphanAction],
        default=OrphanAction.REPORT.value,
        help="with --apply, what to do with Cognito users without a row that never signed in "
        "(other than the one --adopt names)",
    )
    parser.add_argument(
        "--adopt",
        metavar="EMAIL",
        help="with --apply and --role, give the Cognito user without a row that has this email "
        "a row with that role",
    )
    parser.add_argument(
        "--role",
        choices=[role.value for role in Role],
        help="the role of the user --adopt names (never read from Cognito's groups)",
    )
    parser.add_argument(
        "--province", help="the responsible province of the user --adopt names (OFFICER only)"
    )
    parser.add_argument(
        "--full-name", help="the full name of the user --adopt names (default: the email)"
    )
    parser.add_argument(
        "--outbox-threshold-minutes",
        type=float,
        default=5.0,
        help="outbox rows pending longer than this are drift (default 5)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--page-size", type=int, default=MAX_PAGE_SIZE, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.page_size <= MAX_PAGE_SIZE:
        parser.error(f"--page-size must be between 1 and {MAX_PAGE_SIZE}")
    adoption = _adoption(parser, arguments)
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    configure_logging(settings.log_level)
    cognito = CognitoUserPool.from_settings(settings)
    try:
        if arguments.check_pool:
            return asyncio.run(run_check_pool(settings, cognito, as_json=arguments.json))
        return asyncio.run(
            run_reconcile(
                settings,
                cognito,
                apply=arguments.apply,
                orphans=OrphanAction(arguments.orphans),
                threshold=timedelta(minutes=arguments.outbox_threshold_minutes),
                as_json=arguments.json,
                page_size=arguments.page_size,
                adoption=adoption,
            )
        )
    except Exception:
        # Logged with its traceback; the status must not read as "drift found" (1, Python's
        # own status for an uncaught exception) to whatever watches the timer.
        logger.exception("reconcile failed")
        return EXIT_CANNOT_CHECK


if __name__ == "__main__":
    sys.exit(main())
