"""`make stop`: stop everything `make run` started (API, Cognito emulator, embedded PostgreSQL).

A live `make run` is asked to stop (SIGTERM) and does so itself, in order. What a killed run left
behind is then stopped from its record. Safe to repeat: with nothing left it says so and exits 0.
"""

from __future__ import annotations

import sys

from devtools.postgres import EmbeddedPostgres, PostgresError
from devtools.processes import (
    RunLock,
    api_arguments,
    emulator_arguments,
    is_ours,
    local_dir,
    read_record,
    remove_record,
    shown,
    stop_pid,
    supervisor_is,
    worker_arguments,
)

# make run's own clean-up is bounded by about this (API 10 s, emulator 5 s, pg_ctl stop).
SUPERVISOR_STOP_SECONDS = 60


def stop_all() -> list[str]:
    """Stop what there is; return one phrase per thing stopped."""
    directory = local_dir()
    lock = RunLock(directory)
    stopped: list[str] = []
    try:
        if not lock.acquire():
            pid = lock.holder()
            if pid is not None and supervisor_is(pid):
                stop_pid(pid, SUPERVISOR_STOP_SECONDS)
                stopped.append(f"make run (pid {pid}) and all it started")
            # Killed or not, its lock is released once it is gone.
            if not lock.acquire(wait_seconds=10):
                raise SystemExit("make stop: make run still holds its lock; try again")
        # Holding the lock: no new `make run` starts while leftovers are cleared.
        record = read_record(directory)
        if record is not None and record.api is not None:
            api = record.api
            if is_ours(api.pid, directory, *api_arguments(api.port)):
                stop_pid(api.pid, 10)
                stopped.append(f"the API (pid {api.pid})")
        if record is not None and record.worker is not None:
            worker = record.worker
            if is_ours(worker.pid, directory, *worker_arguments()):
                stop_pid(worker.pid, 10)
                stopped.append(f"the worker (pid {worker.pid})")
        if record is not None and record.emulator is not None:
            emulator = record.emulator
            if is_ours(emulator.pid, directory, *emulator_arguments(emulator.port)):
                stop_pid(emulator.pid, 5)
                stopped.append(f"the Cognito emulator (pid {emulator.pid})")
        server = EmbeddedPostgres(directory / "postgres")
        if server.is_running():
            port = server.port
            server.stop()
            stopped.append(f"the embedded PostgreSQL (port {port}, data kept)")
        remove_record(directory)
    finally:
        lock.close()
    return stopped


def main() -> int:
    try:
        stopped = stop_all()
    except PostgresError as error:
        print(f"make stop: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    if stopped:
        print(f"stopped {', '.join(stopped)}")
    else:
        print(f"nothing to stop: no make run of {shown(local_dir())} is running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
