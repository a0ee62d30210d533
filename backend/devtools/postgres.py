"""A throw-away or long-lived PostgreSQL server for development and tests.

Runs the server binaries bundled in the `pgserver` wheel, so neither a system PostgreSQL nor
Docker is needed. pgserver's own start-up logic is not used: it listens on a Unix socket only,
and the app and the tests talk to PostgreSQL over TCP like they do in production.

Layout of `data_dir`: `pgdata/` (the cluster), `postgres.log`, `port` (last port used, so a
restarted development server keeps its URL).

Command line (used by `make run`)::

    python -m devtools.postgres start  --data-dir DIR [--port N] [--database NAME]
    python -m devtools.postgres stop   --data-dir DIR
    python -m devtools.postgres status --data-dir DIR
    python -m devtools.postgres url    --data-dir DIR [--database NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sqlalchemy.engine import URL, make_url

from devtools.processes import port_is_free

SUPERUSER = "postgres"
# PostgreSQL refuses to run as root; when we are root, the server runs as this system user.
SYSTEM_USER = "embedded-pg"
START_TIMEOUT_SECONDS = 60
# Backstop so that nothing here can hang a CI job; pg_ctl and psql time out well before.
COMMAND_TIMEOUT_SECONDS = 180


class PostgresError(RuntimeError):
    """A server command failed; the message carries its output."""


def bundled_bin_dir() -> Path:
    # find_spec instead of `import pgserver`: importing the package has side effects (it warns
    # about XDG_RUNTIME_DIR), and only its files are needed.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise PostgresError("the `pgserver` package is not installed (it is in the dev extra)")
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise PostgresError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _output_of(stdout: IO[str], stderr: IO[str]) -> str:
    stdout.seek(0)
    stderr.seek(0)
    return (stdout.read() + stderr.read()).strip()


@dataclass(frozen=True)
class RunAs:
    """Unix identity a server command runs under (None: the current one)."""

    uid: int | None = None
    gid: int | None = None


def run(args: list[str], *, run_as: RunAs = RunAs(), cwd: Path | None = None) -> str:
    """Run a command, returning its output; raise PostgresError with that output on failure."""
    # PG* variables of the caller (PGHOST, PGDATA, ...) must not redirect our commands.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(LC_ALL="C", PGCONNECT_TIMEOUT="10")
    # Temporary files rather than pipes: `pg_ctl start` leaves the postmaster running, and a
    # pipe it inherited would keep `subprocess.run` waiting for EOF.
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        try:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=env,
                cwd=cwd,
                text=True,
                check=False,
                timeout=COMMAND_TIMEOUT_SECONDS,
                user=run_as.uid,
                group=run_as.gid,
                extra_groups=None if run_as.uid is None else [],
            )
        except subprocess.TimeoutExpired:
            raise PostgresError(f"{Path(args[0]).name} timed out") from None
        output = _output_of(stdout, stderr)
    if result.returncode != 0:
        raise PostgresError(f"{Path(args[0]).name} failed ({result.returncode}): {output}")
    return output


class PsqlAdmin:
    """Database administration over TCP with the bundled `psql`, for any reachable server."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        self._bin_dir = bin_dir

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = bundled_bin_dir()
        return self._bin_dir

    def server_url(self) -> URL:
        """A URL of the server, its database part irrelevant."""
        raise NotImplementedError

    def url(self, database: str) -> str:
        """SQLAlchemy URL (asyncpg driver) of `database` on this server."""
        url = self.server_url().set(drivername="postgresql+asyncpg", database=database)
        return url.render_as_string(hide_password=False)

    def execute(self, sql: str, database: str = "postgres") -> str:
        url = self.server_url().set(drivername="postgresql", database=database)
        conninfo = url.render_as_string(hide_password=False)
        psql = [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        return run([*psql, "-d", conninfo, "-c", sql])

    def database_exists(self, name: str) -> bool:
        sql = f"SELECT 1 FROM pg_database WHERE datname = {quote_literal(name)}"  # noqa: S608 - quoted
        found = self.execute(sql)
        return found.strip() == "1"

    def create_database(self, name: str, template: str | None = None) -> None:
        sql = f"CREATE DATABASE {quote_identifier(name)}"
        if template is not None:
            sql += f" TEMPLATE {quote_identifier(template)}"
        self.execute(sql)

    def drop_database(self, name: str) -> None:
        # FORCE: a test that leaked a connection must not make the clean-up fail.
        self.execute(f"DROP DATABASE IF EXISTS {quote_identifier(name)} WITH (FORCE)")


class ExistingPostgres(PsqlAdmin):
    """A server someone else runs, e.g. from `TEST_DATABASE_URL`; needs CREATEDB rights."""

    def __init__(self, url: str, bin_dir: Path | None = None) -> None:
        super().__init__(bin_dir)
        self._url = make_url(url)

    def server_url(self) -> URL:
        return self._url


class EmbeddedPostgres(PsqlAdmin):
    """A PostgreSQL server owned by this process tree, with its cluster in `data_dir`.

    `durable=False` turns off fsync and friends: much faster, and fine for test data only.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        durable: bool = True,
        bin_dir: Path | None = None,
    ) -> None:
        super().__init__(bin_dir)
        self.data_dir = data_dir.absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.log_file = self.data_dir / "postgres.log"
        self._port_file = self.data_dir / "port"
        self._requested_port = port
        self._durable = durable

    # -- state ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Port of the running server."""
        info = self._postmaster()
        if info is None:
            raise PostgresError(f"no server is running in {self.pgdata}")
        return info[1]

    def server_url(self) -> URL:
        return URL.create(
            "postgresql+asyncpg", username=SUPERUSER, host="127.0.0.1", port=self.port
        )

    def is_running(self) -> bool:
        return self._postmaster() is not None

    def _postmaster(self) -> tuple[int, int] | None:
        """(pid, port) of the live postmaster of this cluster, from its `postmaster.pid`."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, IndexError, ValueError):
            return None
        return (pid, port) if _is_postmaster(pid, self.pgdata) else None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server (creating the cluster on first use); no-op if it is running."""
        if self.is_running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Two concurrent starts (say, `make run` twice) must not both decide the server is down
        # and both clear its lock file.
        with _exclusive_lock(self.data_dir / "start.lock"):
            if not self.is_running():
                self._start()

    def _start(self) -> None:
        run_as = self._prepare_filesystem()
        if not (self.pgdata / "PG_VERSION").is_file():
            self._initdb(run_as)
        # The server died without cleaning up (killed, machine reset). Its pid may now belong
        # to an unrelated process, which would make the new postmaster refuse to start.
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            port = self._choose_port(reuse_recorded=attempt == 0)
            try:
                self._pg_ctl_start(port, run_as)
            except PostgresError:
                # Another process may have taken a port we chose between probe and bind.
                if attempt + 1 == attempts or port_is_free(port):
                    raise
                continue
            self._port_file.write_text(f"{port}\n")
            return

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are disconnected); no-op if stopped."""
        if not self.is_running():
            return
        pg_ctl = [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.pgdata), "-m", "fast"]
        run(
            [*pg_ctl, "-w", "-t", str(START_TIMEOUT_SECONDS)],
            run_as=self._run_as(),
            cwd=self.data_dir,
        )

    def ensure_database(self, name: str) -> None:
        if not self.database_exists(name):
            self.create_database(name)

    # -- internals ------------------------------------------------------------------------

    def _choose_port(self, *, reuse_recorded: bool) -> int:
        if self._requested_port is not None:
            return self._requested_port
        if reuse_recorded:
            with contextlib.suppress(OSError, ValueError):
                recorded = int(self._port_file.read_text())
                if port_is_free(recorded):
                    return recorded
        return _free_port()

    def _pg_ctl_start(self, port: int, run_as: RunAs) -> None:
        options = [
            f"-p {port}",
            "-c listen_addresses=127.0.0.1",
            # TCP only: no socket path-length limit, no lock files in a shared /tmp.
            "-c unix_socket_directories=",
        ]
        if not self._durable:
            options += [
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        try:
            pg_ctl = [str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.pgdata), "-w"]
            run(
                [
                    *pg_ctl,
                    "-t",
                    str(START_TIMEOUT_SECONDS),
                    "-l",
                    str(self.log_file),
                    "-o",
                    " ".join(options),
                ],
                run_as=run_as,
                cwd=self.data_dir,
            )
        except PostgresError as error:
            raise PostgresError(f"{error}\n--- {self.log_file} ---\n{self._log_tail()}") from None

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _initdb(self, run_as: RunAs) -> None:
        # Into a scratch directory first, so an interrupted initdb never leaves a half-made
        # cluster that the next start would trip over.
        scratch = self.data_dir / "pgdata.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        args = [str(self.bin_dir / "initdb"), "-D", str(scratch), "-U", SUPERUSER]
        args += ["--auth=trust", "--encoding=UTF8", "--no-locale", "--no-instructions"]
        if not self._durable:
            args.append("--no-sync")
        run(args, run_as=run_as, cwd=self.data_dir)
        shutil.rmtree(self.pgdata, ignore_errors=True)
        scratch.rename(self.pgdata)

    def _run_as(self) -> RunAs:
        if os.geteuid() != 0:
            return RunAs()
        import pwd

        entry = pwd.getpwnam(_ensure_system_user(SYSTEM_USER))
        return RunAs(entry.pw_uid, entry.pw_gid)

    def _prepare_filesystem(self) -> RunAs:
        run_as = self._run_as()
        if run_as.uid is not None and run_as.gid is not None:
            _make_reachable(self.bin_dir.parent)
            _make_traversable(self.data_dir)
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                if not path.is_symlink() and path.stat().st_uid != run_as.uid:
                    os.chown(path, run_as.uid, run_as.gid)
        self.data_dir.chmod(0o700)
        return run_as


def _is_postmaster(pid: int, pgdata: Path) -> bool:
    """Whether `pid` is a live postmaster serving `pgdata`; when unsure, assume it is.

    Erring towards "running" matters: a wrong "stale" verdict would remove the lock file of
    a live server and let a second one start on the same files.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, but another user's
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no procfs (macOS): a live pid is the best evidence available
    try:
        program = os.fsdecode((proc / "cmdline").read_bytes().split(b"\0")[0])
    except OSError:
        return False  # exited meanwhile
    if Path(program).name != "postgres":
        return False
    try:
        # The postmaster runs with the data directory as its working directory.
        return Path(os.readlink(proc / "cwd")) == pgdata.resolve()
    except PermissionError:
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _ensure_system_user(name: str) -> str:
    import pwd

    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name).pw_name
    if shutil.which("useradd"):
        command = ["useradd", "--system", "--user-group", "--no-create-home"]
        command += ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name]
    elif shutil.which("adduser"):  # busybox (Alpine)
        command = ["adduser", "-S", "-D", "-H", "-h", "/nonexistent", "-s", "/sbin/nologin", name]
    else:
        raise PostgresError(f"cannot create the system user {name!r}: no useradd or adduser")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        # A concurrent run may have created it first; then useradd failed but the user exists.
        return pwd.getpwnam(name).pw_name
    except KeyError:
        raise PostgresError(f"{command[0]} failed: {result.stderr.strip()}") from None


def _make_traversable(path: Path) -> None:
    """Let other users pass through (not list) every directory above `path`."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _make_reachable(install_dir: Path) -> None:
    """Let the server user read the bundled installation and run its programs."""
    _make_traversable(install_dir)
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    for directory, _, files in os.walk(install_dir):
        dir_path = Path(directory)
        mode = dir_path.stat().st_mode
        if mode & (read | execute) != read | execute:
            dir_path.chmod(mode | read | execute)
        for file_name in files:
            file_path = dir_path / file_name
            mode = file_path.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            wanted = read | (execute if mode & stat.S_IXUSR else 0)
            if mode & wanted != wanted:
                file_path.chmod(mode | wanted)


# -- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.postgres", description="Embedded PostgreSQL for development."
    )
    parser.add_argument("command", choices=["start", "stop", "status", "url"])
    parser.add_argument("--data-dir", type=Path, required=True, help="kept across restarts")
    parser.add_argument("--port", type=int, help="default: the last one used, else a free one")
    parser.add_argument(
        "--database", default=SUPERUSER, help="database of the printed URL; start creates it"
    )
    args = parser.parse_args(argv)
    server = EmbeddedPostgres(args.data_dir, port=args.port)
    try:
        if args.command == "start":
            server.start()
            server.ensure_database(args.database)
            print(server.url(args.database))
        elif args.command == "stop":
            server.stop()
        elif args.command == "status":
            if not server.is_running():
                print("stopped")
                return 3  # what `pg_ctl status` returns for a stopped server
            print(f"running on 127.0.0.1:{server.port}")
        else:
            if not server.is_running():
                print("stopped", file=sys.stderr)
                return 3
            print(server.url(args.database))
    except PostgresError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
