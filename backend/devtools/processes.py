"""What `make run` started, recorded so that a later `make run` or `make stop` can find it.

`make run` (devtools.run) supervises the API and the Cognito emulator as child processes and the
embedded PostgreSQL through pg_ctl, and records all three in `<LOCAL_DIR>/run.json`. Killed
before it could stop them (kill -9, a crash, a closed laptop lid), it leaves them running; the
next `make run` or `make stop` reads the record and deals with what is still there.

A recorded process counts as ours only if it is alive, runs the recorded command, and (where
/proc exists) carries this LOCAL_DIR in the environment it was started with. A pid reused by an
unrelated program, or the emulator of another checkout's `make run`, is never touched.

`<LOCAL_DIR>/run.lock` is held (flock) by the live `make run` for its whole life; the kernel
releases it when that process dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
# Where `app` and `devtools` are imported from.
BACKEND = ROOT / "backend"
# Set in the environment of every child, so that /proc tells our processes from others.
OWNER_VARIABLE = "ONE_SYSTEM_LOCAL_DIR"
STATE_FILE = "run.json"
LOCK_FILE = "run.lock"


def local_dir() -> Path:
    """Where `make run` keeps its data and records: LOCAL_DIR, by default `.local`."""
    configured = os.environ.get("LOCAL_DIR")
    return Path(configured).resolve() if configured else ROOT / ".local"


def shown(path: Path) -> str:
    """`path` as a user would type it from the current directory."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@dataclass
class ChildRecord:
    pid: int
    port: int


@dataclass
class LocalPool:
    """The emulator's user pool of the current run; what `make token` needs to sign in."""

    endpoint: str
    region: str
    pool_id: str
    client_id: str


@dataclass
class RunRecord:
    supervisor_pid: int
    api: ChildRecord | None = None
    worker: ChildRecord | None = None  # port 0: it listens on none
    emulator: ChildRecord | None = None
    pool: LocalPool | None = None
    # Set while `make run` owns an embedded PostgreSQL (it stops it on the way out).
    postgres_data_dir: str | None = None

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> RunRecord:
        def child(name: str) -> ChildRecord | None:
            value = document.get(name)
            return ChildRecord(int(value["pid"]), int(value["port"])) if value else None

        pool = document.get("pool")
        return cls(
            supervisor_pid=int(document["supervisor_pid"]),
            api=child("api"),
            worker=child("worker"),
            emulator=child("emulator"),
            pool=LocalPool(**pool) if pool else None,
            postgres_data_dir=document.get("postgres_data_dir"),
        )


def read_record(directory: Path) -> RunRecord | None:
    """The record of the last `make run` in `directory`; None if there is none or it is garbled."""
    try:
        return RunRecord.from_json(json.loads((directory / STATE_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_record(directory: Path, record: RunRecord) -> None:
    # Written whole and renamed into place: a reader never sees half a record.
    scratch = directory / f"{STATE_FILE}.tmp"
    scratch.write_text(json.dumps(asdict(record), indent=2) + "\n")
    scratch.replace(directory / STATE_FILE)


def remove_record(directory: Path) -> None:
    (directory / STATE_FILE).unlink(missing_ok=True)


class RunLock:
    """The lock a live `make run` holds; `make stop` takes it to know the run has ended."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._path = directory / LOCK_FILE
        self._file: IO[str] = self._path.open("a")

    def acquire(self, wait_seconds: float = 0.0) -> bool:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.1)
            else:
                # The holder's pid, readable before it has written any record.
                self._file.truncate(0)
                self._file.write(f"{os.getpid()}\n")
                self._file.flush()
                return True

    def holder(self) -> int | None:
        """Pid of the process that holds (or last held) the lock."""
        with contextlib.suppress(OSError, ValueError):
            return int(self._path.read_text())
        return None

    def close(self) -> None:
        self._file.close()  # releases the lock


# -- processes ---------------------------------------------------------------------------------


def is_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for every purpose here; only its parent can reap it.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _command_line(pid: int) -> list[str] | None:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [os.fsdecode(part) for part in raw.split(b"\0") if part]
    if Path("/proc/self").exists():
        return None  # procfs exists, so the process is gone
    result = subprocess.run(
        ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return result.stdout.split() if result.returncode == 0 else None


def _started_by(pid: int, directory: Path) -> bool:
    """Whether the process was started with `directory` as its owner; True without procfs."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return False
    return f"{OWNER_VARIABLE}={directory}".encode() in raw.split(b"\0")


def is_ours(pid: int, directory: Path, *arguments: str) -> bool:
    """Whether `pid` is alive, runs with all of `arguments`, and was started for `directory`."""
    if not is_alive(pid):
        return False
    command = _command_line(pid)
    if command is None or not all(argument in command for argument in arguments):
        return False
    return _started_by(pid, directory)


def supervisor_is(pid: int) -> bool:
    command = _command_line(pid)
    return is_alive(pid) and command is not None and "devtools.run" in command


def emulator_arguments(port: int) -> tuple[str, ...]:
    return ("devtools.cognito_emulator", "-H", "127.0.0.1", "-p", str(port))


def worker_arguments() -> tuple[str, ...]:
    return ("app.worker",)


def api_arguments(port: int) -> tuple[str, ...]:
    return ("uvicorn", "app.main:app", "--port", str(port))


def stop_pid(pid: int, timeout_seconds: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout_seconds`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_seconds
    while is_alive(pid):
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while is_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            return
        time.sleep(0.05)


def stop_child(process: subprocess.Popen[bytes], timeout_seconds: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- ports -------------------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers do: connections of a just-stopped server linger in TIME_WAIT and would
        # otherwise make its port look taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, deadline_seconds: float, process: subprocess.Popen[bytes]) -> bool:
    """Wait until something accepts on `port`; False if `process` exits or time runs out."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False
