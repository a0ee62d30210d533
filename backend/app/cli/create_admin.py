"""Create the first ADMIN of a new environment, in Cognito and in the database.

    python -m app.cli.create_admin --email admin@example.gov --name "First Admin"

Reads the same settings as the API and goes through the same service function, so the admin
exists on both sides or on neither. Safe to run again: an email already in the database is
reported and left alone (exit 0). An email that Cognito knows but the database does not means the
two sides disagree; that needs a person, so the command says so and exits 1, however old the
Cognito user is (only a user an earlier run of this command made is adopted, with a new
temporary password).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from app.core.compensation import undo_unless_committed
from app.core.config import ConfigError, Settings, load_settings
from app.core.db import open_database
from app.core.errors import DATABASE_UNAVAILABLE_ERRORS, DomainError
from app.core.logging import configure_logging
from app.core.roles import Role
from app.schemas.user import UserCreate
from app.services.cognito import CognitoUserExistsError, CognitoUserPool, EmailTakenError
from app.services.user_creation import create_user
from app.services.users import find_user_by_email

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


async def create_admin(
    settings: Settings, email: str, full_name: str, cognito: CognitoUserPool | None = None
) -> int:
    """Create the admin; returns the process exit status, having printed what happened."""
    try:
        data = UserCreate(email=email, full_name=full_name, role=Role.ADMIN)
    except ValidationError as error:
        for problem in error.errors():
            where = ".".join(str(part) for part in problem["loc"])
            print(f"invalid {where}: {problem['msg']}", file=sys.stderr)
        return EXIT_USAGE
    cognito = cognito or CognitoUserPool.from_settings(settings)
    try:
        database = await open_database(settings)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    sessionmaker = database.sessions
    try:
        # The same transaction shape as a request: the Cognito user is deleted again if the
        # commit fails.
        async with sessionmaker() as session, undo_unless_committed(session), session.begin():
            existing = await find_user_by_email(session, data.email)
            if existing is not None:
                print(
                    f"{data.email} already exists (role {existing.role}, "
                    f"{'active' if existing.is_active else 'deactivated'}); nothing to do"
                )
                return EXIT_OK
            user = await create_user(session, database.read_sessions, cognito, data, actor_id=None)
    except (EmailTakenError, CognitoUserExistsError):
        print(
            f"{data.email} exists in Cognito but not in the database: the two sides disagree. "
            "Delete the Cognito user or add its row by hand, then run this again.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except DomainError as error:
        print(f"could not create the admin: {error.detail}", file=sys.stderr)
        return EXIT_FAILED
    except DATABASE_UNAVAILABLE_ERRORS as error:
        print(f"the database is unreachable: {type(error).__name__}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await database.dispose()
    print(f"created ADMIN {user.email} (id {user.id}); Cognito has emailed the invitation")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.cli.create_admin",
        description="Create an ADMIN user in Cognito and in the database (idempotent).",
    )
    parser.add_argument("--email", required=True, help="sign-in email; the invitation goes here")
    parser.add_argument("--name", required=True, help="full name")
    arguments = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level)
    return asyncio.run(create_admin(settings, arguments.email, arguments.name))


if __name__ == "__main__":
    sys.exit(main())
