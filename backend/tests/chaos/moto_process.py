"""The Cognito emulator of a chaos run, in a process of its own (its CPU is not the harness's).

    python -m tests.chaos.moto_process

Starts moto's server with the fidelity patches the tests use, prints its URL on one line, and
serves until its standard input closes (the harness ended, or died).
"""

from __future__ import annotations

import sys

from tests.support.moto_cognito import moto_cognito_server


def main() -> None:
    with moto_cognito_server() as endpoint_url:
        print(endpoint_url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
