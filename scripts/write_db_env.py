#!/usr/bin/env python3
"""Write the backend's env file on the EC2 host, with DB credentials from Secrets Manager.

Run by the one-system-backend systemd unit before the compose stack starts (and by
scripts/deploy_backend.sh before migrating), so the containers get DB_HOST, DB_PORT, DB_NAME,
DB_USER and DB_PASSWORD through compose's ``env_file`` and never call Secrets Manager for them.

    write_db_env.py [--secret-id ID] [--output FILE] [--base-env FILE] [--region REGION]

The secret is an RDS-style JSON object: ``username``, ``password``, and usually ``host``,
``port`` (string or number) and ``dbname``. When the secret lacks host, port or dbname (RDS-
managed master secrets hold only username and password) they are taken from DB_HOST, DB_PORT
and DB_NAME in the base env file. Every other line of the base env file (the host's
non-secret settings: AWS_REGION, COGNITO_*, S3_*, ...) is copied through unchanged.

The output is written root-only (0600) through a temp file and an atomic rename, so the stack
never reads a half-written file. Errors name the secret id, never a secret value.
Needs only Python 3 and boto3 on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_SECRET_ID = "/one-system/db/credentials"  # noqa: S105 (a name, not a secret)
DEFAULT_OUTPUT = Path("/etc/one-system/backend.env")
DEFAULT_PORT = 5432
OWNED_KEYS = ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD")
_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")


class SecretError(Exception):
    """A problem to report in one line; its text never contains a secret value."""


def read_base_env(path: Path | None) -> tuple[list[str], dict[str, str]]:
    """The base file's lines and its plain values (surrounding quotes removed) by key."""
    if path is None:
        return [], {}
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise SecretError(f"cannot read base env file {path}: {error.strerror}") from None
    values: dict[str, str] = {}
    for line in lines:
        match = _ASSIGNMENT.match(line)
        if match:
            value = match.group(2).strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[match.group(1)] = value
    return lines, values


def _text_field(secret_id: str, data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\x00" in value:
        raise SecretError(f"secret {secret_id!r}: {key!r} must be a non-empty string")
    return value


def _port(secret_id: str, value: object, origin: str) -> str:
    # JSON numbers and digit strings are both common in RDS secrets; bool is an int in Python.
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    else:
        raise SecretError(f"secret {secret_id!r}: {origin} is not a port number")
    if not 1 <= number <= 65535:
        raise SecretError(f"secret {secret_id!r}: {origin} is outside 1-65535")
    return str(number)


def parse_db_secret(
    secret_id: str, secret_string: str | None, fallback: Mapping[str, str]
) -> dict[str, str]:
    """DB_* settings from the secret JSON, completed from ``fallback`` (the base env file)."""
    if secret_string is None:
        raise SecretError(f"secret {secret_id!r} has no SecretString (binary secrets unsupported)")
    try:
        data = json.loads(secret_string)
    except ValueError:
        raise SecretError(f"secret {secret_id!r} is not valid JSON") from None
    if not isinstance(data, dict):
        raise SecretError(f"secret {secret_id!r} must be a JSON object")

    missing: list[str] = []
    settings: dict[str, str] = {}
    for key, setting in [("username", "DB_USER"), ("password", "DB_PASSWORD")]:
        value = _text_field(secret_id, data, key)
        if value is None:
            missing.append(key)
        else:
            settings[setting] = value
    for key, setting in [("host", "DB_HOST"), ("dbname", "DB_NAME")]:
        value = _text_field(secret_id, data, key) or fallback.get(setting) or None
        if value is None:
            missing.append(f"{key} (or {setting} in the base env file)")
        else:
            settings[setting] = value
    if missing:
        raise SecretError(f"secret {secret_id!r} lacks: {', '.join(missing)}")

    if data.get("port") is not None:
        settings["DB_PORT"] = _port(secret_id, data["port"], "'port'")
    elif fallback.get("DB_PORT"):
        settings["DB_PORT"] = _port(secret_id, fallback["DB_PORT"], "DB_PORT of the base env")
    else:
        settings["DB_PORT"] = str(DEFAULT_PORT)
    return {key: settings[key] for key in OWNED_KEYS}


def quote_env_value(value: str) -> str:
    """A double-quoted value that Docker Compose's env_file parser reads back verbatim.

    Compose expands ``$`` and backslash escapes inside double quotes, so ``\\``, ``"``, ``$``
    and line breaks are escaped; anything else (``#``, ``'``, spaces) is literal there.
    """
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("$", "\\$")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )
    return f'"{escaped}"'


def render_env_file(base_lines: Sequence[str], db_settings: Mapping[str, str]) -> str:
    kept = [
        line
        for line in base_lines
        if not ((match := _ASSIGNMENT.match(line)) and match.group(1) in OWNED_KEYS)
    ]
    header = ["# Written by write_db_env.py; DB_* come from Secrets Manager. Do not edit."]
    db_lines = [f"{key}={quote_env_value(value)}" for key, value in db_settings.items()]
    return "\n".join([*header, *kept, *db_lines]) + "\n"


def write_private_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a 0600 file holding ``text``."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    previous_umask = os.umask(0o077)
    try:
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    finally:
        os.umask(previous_umask)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def fetch_secret_string(secret_id: str, region: str | None) -> str | None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    config = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3})
    try:
        client = boto3.client("secretsmanager", region_name=region, config=config)
        response = client.get_secret_value(SecretId=secret_id)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "unknown error")
        raise SecretError(f"cannot read secret {secret_id!r}: {code}") from None
    except BotoCoreError as error:
        raise SecretError(f"cannot read secret {secret_id!r}: {error}") from None
    secret_string = response.get("SecretString")
    return secret_string if isinstance(secret_string, str) else None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write the backend env file with DB credentials from Secrets Manager."
    )
    parser.add_argument("--secret-id", default=DEFAULT_SECRET_ID)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--base-env",
        type=Path,
        help="env file of non-secret settings to copy through (and DB_HOST/DB_PORT/DB_NAME "
        "to use when the secret lacks them)",
    )
    parser.add_argument(
        "--region", help="AWS region (default: AWS_REGION, then AWS_REGION in --base-env)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.base_env is not None and args.base_env.resolve() == args.output.resolve():
            raise SecretError("--base-env and --output must be different files")
        base_lines, base_values = read_base_env(args.base_env)
        region = (
            args.region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or base_values.get("AWS_REGION")
        )
        secret_string = fetch_secret_string(args.secret_id, region)
        db_settings = parse_db_secret(args.secret_id, secret_string, base_values)
        write_private_file(args.output, render_env_file(base_lines, db_settings))
    except SecretError as error:
        print(f"write_db_env: error: {error}", file=sys.stderr)
        return 1
    print(f"write_db_env: wrote {args.output} from secret {args.secret_id!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
