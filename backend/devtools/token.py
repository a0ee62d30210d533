"""`make token [EMAIL=...]`: an access token for any user of the running `make run`.

Local emulator only. Users the API creates during a run get a random temporary password that is
never shown; this gives the user the local password (permanent, as an admin would with
AdminSetUserPassword) and signs in. The token goes to stdout alone, so
`TOKEN=$(make -s token EMAIL=...)` works; the user can then also sign in anywhere (the SPA,
`python -m app.cli.token`) with the local password.
"""

from __future__ import annotations

import argparse
import sys

from devtools.local_cognito import LOCAL_ADMIN_EMAIL, LOCAL_PASSWORD, EmulatorError, token_for
from devtools.processes import local_dir, read_record, shown, supervisor_is


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.token", description=__doc__)
    parser.add_argument("--email", default=LOCAL_ADMIN_EMAIL, help="default: the local admin")
    arguments = parser.parse_args(argv)
    record = read_record(local_dir())
    if record is None or not supervisor_is(record.supervisor_pid):
        print(f"make token: no make run of {shown(local_dir())} is running", file=sys.stderr)
        return 1
    if record.pool is None:
        print(
            "make token: this make run uses a configured Cognito pool, not the local emulator; "
            "sign in with python -m app.cli.token",
            file=sys.stderr,
        )
        return 1
    email = arguments.email.strip().lower()  # as the API stores it
    try:
        token = token_for(record.pool, email)
    except EmulatorError as error:
        print(f"make token: {error}", file=sys.stderr)
        return 1
    print(f"{email} signed in with the local password {LOCAL_PASSWORD}", file=sys.stderr)
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
