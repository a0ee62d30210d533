"""scripts/write_db_env.py against Secrets Manager emulated by moto."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import boto3
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

from .nginx_harness import REPO_ROOT, free_port

SCRIPT = REPO_ROOT / "scripts" / "write_db_env.py"
SECRET_ID = "/one-system/db/credentials"
REGION = "ap-southeast-1"
PASSWORD = "p@ss w0rd$HOME#1\"'\\x\\"  # every character Compose treats specially


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("write_db_env", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_db_env = load_script()


def compose_env_file(text: str) -> dict[str, str]:
    """Read an env file the way Docker Compose (compose-go's dotenv parser) does.

    Covers what the script writes: comments, unquoted values, and double-quoted values, where
    a backslash escapes the next character, known escapes (``\\n``, ``\\\\``, ``\\"``) are
    expanded, ``\\$`` becomes a literal ``$`` and a bare ``$NAME`` would be interpolated.
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, raw = line.partition("=")
        if not raw.startswith('"'):
            values[key] = raw.split(" #")[0].rstrip()
            continue
        chars: list[str] = []
        escaped = False
        for char in raw[1:]:
            if char != '"':
                if not escaped and char == "\\":
                    escaped = True
                    continue
                if escaped:
                    escaped = False
                    chars.append("\\")
                chars.append(char)
                continue
            if escaped:
                escaped = False
                chars.append(char)
                continue
            break
        else:
            raise AssertionError(f"unterminated quoted value for {key}")
        value = re.sub(
            r"\\([nrt$\"\\])",
            lambda m: {"n": "\n", "r": "\r", "t": "\t", "$": "$$"}.get(m[1], m[1]),
            "".join(chars),
        )
        assert re.search(r"(?<!\$)\$(?!\$)", value) is None, f"{key} would be interpolated"
        values[key] = value.replace("$$", "$")
    return values


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ["AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SECRETS_MANAGER"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    with mock_aws():
        yield


def put_secret(value: str | dict[str, object], secret_id: str = SECRET_ID) -> None:
    client = boto3.client("secretsmanager", region_name=REGION)
    text = value if isinstance(value, str) else json.dumps(value)
    client.create_secret(Name=secret_id, SecretString=text)


def rds_secret(**overrides: object) -> dict[str, object]:
    secret: dict[str, object] = {
        "engine": "postgres",
        "host": "db.cluster-abc.ap-southeast-1.rds.amazonaws.com",
        "port": 5432,
        "username": "one_system",
        "password": PASSWORD,
        "dbname": "one_system",
    }
    secret.update(overrides)
    return {key: value for key, value in secret.items() if value is not None}


@pytest.mark.usefixtures("aws")
def test_writes_db_settings_root_only(tmp_path: Path) -> None:
    put_secret(rds_secret())
    output = tmp_path / "one-system" / "backend.env"

    assert write_db_env.main(["--output", str(output)]) == 0

    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert stat.S_IMODE(output.parent.stat().st_mode) == 0o700
    assert compose_env_file(output.read_text()) == {
        "DB_HOST": "db.cluster-abc.ap-southeast-1.rds.amazonaws.com",
        "DB_PORT": "5432",
        "DB_NAME": "one_system",
        "DB_USER": "one_system",
        "DB_PASSWORD": PASSWORD,
    }
    assert [p.name for p in output.parent.iterdir()] == ["backend.env"], "temp file left over"


@pytest.mark.usefixtures("aws")
def test_port_may_be_a_string_and_secret_id_is_configurable(tmp_path: Path) -> None:
    put_secret(rds_secret(port="6432"), secret_id="/other/db")
    output = tmp_path / "backend.env"
    assert write_db_env.main(["--secret-id", "/other/db", "--output", str(output)]) == 0
    assert compose_env_file(output.read_text())["DB_PORT"] == "6432"


@pytest.mark.usefixtures("aws")
def test_base_env_is_passed_through_and_fills_what_the_secret_lacks(tmp_path: Path) -> None:
    # An RDS-managed master secret holds only username and password.
    put_secret({"username": "admin", "password": PASSWORD})
    base = tmp_path / "base.env"
    base.write_text(
        "# host settings\n"
        "AWS_REGION=ap-southeast-1\n"
        "COGNITO_USER_POOL_ID='ap-southeast-1_abc'\n"
        "DB_HOST=aurora.internal\n"
        "DB_NAME=one_system\n"
        "DB_PASSWORD=stale-and-ignored\n"
    )
    output = tmp_path / "backend.env"

    assert write_db_env.main(["--base-env", str(base), "--output", str(output)]) == 0

    text = output.read_text()
    assert "COGNITO_USER_POOL_ID='ap-southeast-1_abc'" in text.splitlines()
    assert "stale-and-ignored" not in text
    assert compose_env_file(text) == {
        "AWS_REGION": "ap-southeast-1",
        "COGNITO_USER_POOL_ID": "'ap-southeast-1_abc'",  # single quotes are outside our parser
        "DB_HOST": "aurora.internal",
        "DB_PORT": "5432",
        "DB_NAME": "one_system",
        "DB_USER": "admin",
        "DB_PASSWORD": PASSWORD,
    }


@pytest.mark.usefixtures("aws")
def test_missing_keys_are_named_with_the_secret_id_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put_secret({"password": PASSWORD, "host": "db"})
    output = tmp_path / "backend.env"
    output.write_text("KEEP=1\n")

    assert write_db_env.main(["--output", str(output)]) == 1

    error = capsys.readouterr().err
    assert SECRET_ID in error
    assert "username" in error
    assert "dbname" in error
    assert PASSWORD not in error
    assert output.read_text() == "KEEP=1\n"


@pytest.mark.usefixtures("aws")
@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("host=db password=" + PASSWORD, "is not valid JSON"),
        (json.dumps(["not", "an", "object"]), "must be a JSON object"),
        (json.dumps(rds_secret(port="five")), "not a port number"),
        (json.dumps(rds_secret(port=70000)), "outside 1-65535"),
        (json.dumps(rds_secret(password="")), "'password' must be a non-empty string"),
    ],
    ids=["not-json", "not-object", "port-text", "port-range", "empty-password"],
)
def test_bad_secrets_fail_clearly_without_leaking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], secret: str, message: str
) -> None:
    put_secret(secret)
    assert write_db_env.main(["--output", str(tmp_path / "backend.env")]) == 1
    error = capsys.readouterr().err
    assert message in error
    assert SECRET_ID in error
    assert PASSWORD not in error
    assert not (tmp_path / "backend.env").exists()


@pytest.mark.usefixtures("aws")
def test_unknown_secret_names_the_id_and_aws_error_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert write_db_env.main(["--secret-id", "/nope", "--output", str(tmp_path / "x.env")]) == 1
    error = capsys.readouterr().err
    assert "'/nope'" in error
    assert "ResourceNotFoundException" in error


@pytest.mark.usefixtures("aws")
def test_replaces_an_existing_file_atomically_with_tight_mode(tmp_path: Path) -> None:
    put_secret(rds_secret())
    output = tmp_path / "backend.env"
    output.write_text("OLD=1\n")
    output.chmod(0o644)
    inode = output.stat().st_ino

    assert write_db_env.main(["--output", str(output)]) == 0

    assert output.stat().st_ino != inode, "must be a rename of a new file, not a rewrite"
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert "OLD=1" not in output.read_text()


def test_quoted_values_survive_compose_parsing() -> None:
    for value in [PASSWORD, "plain", "a\nb", "$$", "\\", '"', "${DB_USER}", "#x", "trail\\"]:
        line = f"K={write_db_env.quote_env_value(value)}"
        assert compose_env_file(line) == {"K": value}, value


def test_command_line_against_a_moto_server(tmp_path: Path) -> None:
    """The script as systemd runs it: its own process, boto3 reaching an endpoint over HTTP."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": endpoint,
        }
        boto3.client(
            "secretsmanager",
            region_name=REGION,
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_secret(Name=SECRET_ID, SecretString=json.dumps(rds_secret()))
        base = tmp_path / "base.env"
        base.write_text(f"AWS_REGION={REGION}\n")
        output = tmp_path / "backend.env"

        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--base-env", str(base), "--output", str(output)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=60,
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert compose_env_file(output.read_text())["DB_PASSWORD"] == PASSWORD
