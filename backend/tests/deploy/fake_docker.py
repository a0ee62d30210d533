"""A stand-in for `docker` and `docker compose` on a host without a container engine.

Run as ``python fake_docker.py ARGS`` by a ``docker`` wrapper on PATH. It refuses what the real
CLI refuses for the commands the deploy script and the units use: Compose loads and interpolates
the WHOLE file for every subcommand (``${VAR:?msg}`` with VAR unset or empty fails the command
with Compose's message, whatever the subcommand), validates it against the Compose
Specification schema, and refuses an unknown service, ``exec`` in a service that is not running,
an image that was never pulled and an ``env_file`` that does not exist. What it runs is real:
``up -d`` starts a process per service (the app as uvicorn serving ``release_app``, which says
which release answered; the worker as a heartbeat loop), ``exec`` runs the command (``python -m
app.worker --check`` is the real check, the probe the real urllib; ``nginx -s reload`` the real
nginx), ``down`` sends SIGTERM and waits, as Docker does within the stop timeout.

Settings (environment): FAKE_DOCKER_STATE (a directory), FAKE_PORTS (JSON: project -> port the
slot's app listens on, its "127.0.0.1:8000"), FAKE_IMAGE_HEADS (JSON: tag -> the image's alembic
head), FAKE_NGINX_CMD (JSON: the nginx command line of the running edge), FAKE_MIGRATE_EXIT,
FAKE_UNHEALTHY_TAGS (space-separated tags whose app answers /health 503).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
BACKEND = HERE.parents[1]
COMPOSE_SCHEMA = "vendor.compose-spec"
WORKER_COMMAND = ["python", "-m", "app.worker"]
VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


class ComposeError(Exception):
    """What the real CLI prints before exiting 1."""


def state_dir() -> Path:
    path = Path(os.environ["FAKE_DOCKER_STATE"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def record(args: list[str]) -> None:
    with (state_dir() / "calls.log").open("a") as calls:
        calls.write(" ".join(args) + "\n")


# --- interpolation, as the Compose Specification defines it ---------------------------------


def _substitute(expression: str, env: dict[str, str], where: str) -> str:
    match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", expression, re.DOTALL)
    if match is None:
        raise ComposeError(f'invalid interpolation format for {where}: "${{{expression}}}"')
    name, operator, argument = match.group(1), match.group(2), match.group(3) or ""
    value = env.get(name)
    unset_or_empty = not value
    missing = unset_or_empty if operator and operator.startswith(":") else value is None
    if operator in (":?", "?") and missing:
        raise ComposeError(
            f"error while interpolating {where}: required variable {name} is missing a value: "
            f"{argument}"
        )
    if operator in (":-", "-") and missing:
        return interpolate_text(argument, env, where)
    if operator in (":+", "+"):
        return "" if missing else interpolate_text(argument, env, where)
    return value or ""


def interpolate_text(text: str, env: dict[str, str], where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return _substitute(match.group("braced") or match.group("plain"), env, where)

    return VARIABLE.sub(replace, text)


def interpolate(node: Any, env: dict[str, str], where: str = "") -> Any:
    if isinstance(node, dict):
        return {k: interpolate(v, env, f"{where}.{k}".lstrip(".")) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, where) for v in node]
    if isinstance(node, str):
        return interpolate_text(node, env, where)
    return node


def load_project(files: list[str], project: str | None) -> dict[str, Any]:
    """The model Compose builds: every file loaded, interpolated, validated; one project name."""
    import jsonschema
    from check_jsonschema.builtin_schemas import get_builtin_schema

    model: dict[str, Any] = {}
    for file in files or ["compose.yaml"]:
        path = Path(file)
        if not path.is_file():
            raise ComposeError(f"open {path}: no such file or directory")
        data = interpolate(yaml.safe_load(path.read_text()), dict(os.environ))
        schema = get_builtin_schema(COMPOSE_SCHEMA)
        errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(data))
        if errors:
            raise ComposeError(f"validating {path}: {errors[0].message}")
        for key, value in data.items():
            if isinstance(value, dict):
                model.setdefault(key, {}).update(value)
            else:
                model[key] = value
        model.setdefault("_dir", str(path.resolve().parent))
    model["name"] = project or model.get("name") or Path(model["_dir"]).name
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", model["name"]):
        raise ComposeError(f"invalid project name {model['name']!r}")
    for name, service in model.get("services", {}).items():
        for env_file in service.get("env_file", []):
            if not Path(env_file).is_file():
                raise ComposeError(f"env file {env_file} not found: stat {env_file}: no such file")
        _ = name
    return model


# --- images ----------------------------------------------------------------------------------


def images() -> dict[str, str]:
    """Pulled images: "repo@sha256:digest" -> the tag it was pulled as."""
    path = state_dir() / "images.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def digest_ref(tag_ref: str) -> str:
    repo, _, _ = tag_ref.rpartition(":")
    return f"{repo}@sha256:{hashlib.sha256(tag_ref.encode()).hexdigest()}"


def image_command(args: list[str]) -> int:
    known = images()
    if args[:2] == ["image", "inspect"]:
        ref = args[-1]
        matches = [d for d, tag_ref in known.items() if ref in (d, tag_ref)]
        if not matches:
            raise ComposeError(f"Error: No such image: {ref}")
        print(matches[0])
    elif args[:2] == ["image", "ls"]:
        for digest in known:
            if digest.startswith(args[-1] + "@"):
                print(digest)
    elif args[:2] == ["image", "rm"]:
        if args[2] not in known:
            raise ComposeError(f"Error: No such image: {args[2]}")
        del known[args[2]]
        (state_dir() / "images.json").write_text(json.dumps(known))
    else:
        raise ComposeError(f"stand-in does not know docker {' '.join(args)}")
    return 0


def release_of(image: str) -> str:
    """The tag of a pulled image, referred to by digest or by the tag it was pulled as."""
    for pinned, tag_ref in images().items():
        if image in (pinned, tag_ref):
            return tag_ref.rpartition(":")[2]
    raise ComposeError(f"Error response from daemon: pull access denied for {image}")


# --- processes of a project ------------------------------------------------------------------


def pid_file(project: str, service: str) -> Path:
    return state_dir() / project / f"{service}.pid"


def running_pid(project: str, service: str) -> int | None:
    path = pid_file(project, service)
    if not path.exists():
        return None
    pid = int(path.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def app_port(project: str) -> int:
    port: int = json.loads(os.environ["FAKE_PORTS"])[project]
    return port


def heartbeat(project: str) -> Path:
    return state_dir() / project / "worker.heartbeat"


def start_service(model: dict[str, Any], name: str) -> None:
    project, service = model["name"], model["services"][name]
    if running_pid(project, name) is not None:
        return
    release = release_of(service["image"])
    env = {**os.environ, "RELEASE": release, "PYTHONPATH": str(HERE)}
    if service.get("command") == WORKER_COMMAND:
        code = "import pathlib,sys,time\np=pathlib.Path(sys.argv[1])\n"
        code += "while True:\n p.touch()\n time.sleep(0.3)"
        command = [sys.executable, "-c", code, str(heartbeat(project))]
    elif "command" not in service:
        port = str(app_port(project))
        command = [sys.executable, "-m", "uvicorn", "fake_docker:release_app", "--port", port]
        # The Dockerfile's keep-alive and graceful shutdown, which nginx's upstream timing
        # relies on.
        command += ["--host", "127.0.0.1", "--timeout-keep-alive", "15"]
        command += ["--timeout-graceful-shutdown", "20", "--no-access-log"]
    else:
        raise ComposeError(f"stand-in does not know how to run service {name}")
    folder = state_dir() / project
    folder.mkdir(exist_ok=True)
    with (folder / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    pid_file(project, name).write_text(str(process.pid))


def stop_project(project: str, timeout: float) -> None:
    pids = [
        p
        for p in (running_pid(project, f.stem) for f in (state_dir() / project).glob("*.pid"))
        if p
    ]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    for path in (state_dir() / project).glob("*.pid"):
        path.unlink()


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        waited = 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # Not our child: a zombie still answers kill(0); /proc says whether it is one.
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"
    return waited == 0


# --- compose subcommands ---------------------------------------------------------------------


def _options(args: list[str], with_value: set[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Leading options (those in ``with_value`` take one) and the rest."""
    options: dict[str, list[str]] = {}
    rest = list(args)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        options.setdefault(option, []).append(rest.pop(0) if option in with_value else "")
    return options, rest


def _service(model: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in model.get("services", {}):
        raise ComposeError(f"no such service: {name}")
    service: dict[str, Any] = model["services"][name]
    return service


def compose_exec(model: dict[str, Any], args: list[str]) -> int:
    options, rest = _options(args, {"-e", "--env", "-u", "--user", "-w", "--workdir"})
    name, command = rest[0], rest[1:]
    _service(model, name)
    project = model["name"]
    env = {**os.environ, "PYTHONPATH": str(BACKEND)}
    if name == "nginx":
        command = [*json.loads(os.environ["FAKE_NGINX_CMD"]), *command[1:]]
    else:
        if running_pid(project, name) is None:
            raise ComposeError(f'service "{name}" is not running')
        env["WORKER_HEARTBEAT_FILE"] = str(heartbeat(project))
        port = str(app_port(project))
        command = [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in command]
        command = [sys.executable if a == "python" else a for a in command]
    _ = options
    return subprocess.run(command, env=env, check=False).returncode


def compose_run(model: dict[str, Any], args: list[str]) -> int:
    _, rest = _options(args, {"-e", "--env", "--name", "-u", "--user", "-w", "--workdir"})
    name, command = rest[0], rest[1:]
    service = _service(model, name)
    release = release_of(service["image"])
    revision_file = state_dir() / "db_revision"
    heads: dict[str, str] = json.loads(os.environ.get("FAKE_IMAGE_HEADS", "{}"))
    if command == ["alembic", "heads"]:
        print(f"{heads[release]} (head)")
    elif command == ["alembic", "current"]:
        print(revision_file.read_text() if revision_file.exists() else "")
    elif command == ["alembic", "upgrade", "head"]:
        status = int(os.environ.get("FAKE_MIGRATE_EXIT", "0"))
        if status == 0:
            revision_file.write_text(heads[release])
        return status
    else:
        raise ComposeError(f"stand-in does not run {command}")
    return 0


def compose(args: list[str]) -> int:
    options, rest = _options(args, {"-f", "--file", "-p", "--project-name"})
    files = options.get("-f", []) + options.get("--file", [])
    project = (options.get("-p") or options.get("--project-name") or [None])[0]
    model = load_project(files, project)
    subcommand, sub_args = rest[0], rest[1:]
    if subcommand == "up":
        up_options, services = _options(sub_args, {"--wait-timeout", "--timeout", "-t"})
        if "-d" not in up_options and "--detach" not in up_options:
            raise ComposeError("stand-in runs `up` detached only")
        for name in services or list(model["services"]):
            _service(model, name)
            start_service(model, name)
        return 0
    if subcommand == "create":
        return 0  # the edge's network and containers, not started: nothing to run here
    if subcommand == "down":
        down_options, _ = _options(sub_args, {"--timeout", "-t"})
        stop_project(model["name"], float((down_options.get("--timeout") or ["10"])[0]))
        return 0
    if subcommand == "exec":
        return compose_exec(model, sub_args)
    if subcommand == "run":
        return compose_run(model, sub_args)
    raise ComposeError(f"stand-in does not know docker compose {subcommand}")


def main(args: list[str]) -> int:
    record(args)
    try:
        if args[0] == "compose":
            return compose(args[1:])
        if args[0] == "login":
            sys.stdin.read()
            return 0
        if args[0] == "pull":
            known = images()
            known[digest_ref(args[1])] = args[1]
            (state_dir() / "images.json").write_text(json.dumps(known))
            return 0
        if args[0] == "rm":
            return 0
        return image_command(args)
    except ComposeError as error:
        print(error, file=sys.stderr)
        return 1


# --- the app of a release --------------------------------------------------------------------

Message = MutableMapping[str, Any]


async def release_app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """Answers every request with the release that served it (body and X-Release), after a
    short wait so that requests are in flight when a deploy moves the traffic."""
    if scope["type"] != "http":
        return
    import asyncio

    release = os.environ["RELEASE"]
    await asyncio.sleep(0.02)
    unhealthy = release in os.environ.get("FAKE_UNHEALTHY_TAGS", "").split()
    status = 503 if unhealthy and scope["path"] == "/health" else 200
    body = json.dumps({"release": release}).encode()
    headers = [(b"content-type", b"application/json"), (b"x-release", release.encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
