"""`make run`: the API on an embedded default, with nothing to install by hand.

Unless the environment (or `.env`) names a database (DB_HOST... or DB_SECRET_ID), an embedded
PostgreSQL is started with its data under `.local/postgres`, kept across restarts. Unless
COGNITO_USER_POOL_ID names a real pool, a local Cognito emulator is started and bootstrapped
(see `devtools.local_cognito`). Migrations are applied, then uvicorn serves on 127.0.0.1:8000.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.core.config import ConfigError, load_database_settings
from devtools.postgres import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]
LOCAL_DIR = ROOT / ".local"
LOCAL_DATABASE = "onesystem"

# Settings phase 2 does not use yet (S3, SQS) still have to be named; these are placeholders.
LOCAL_DEFAULTS = {
    "ENVIRONMENT": "local",
    "AWS_REGION": "ap-southeast-1",
    "S3_ATTACHMENTS_BUCKET": "one-system-local-attachments",
    "S3_EXPORTS_BUCKET": "one-system-local-exports",
    "S3_AUDIT_BUCKET": "one-system-local-audit",
    "S3_LANDING_BUCKET": "one-system-local-landing",
    "SQS_NOTIFICATION_QUEUE_URL": "http://localhost/queue/one-system-local-notifications",
    "SQS_EXPORT_QUEUE_URL": "http://localhost/queue/one-system-local-exports",
    "CORS_ORIGINS": "http://localhost:5173,http://127.0.0.1:5173",
}


def database_is_configured() -> bool:
    try:
        load_database_settings()
    except ConfigError:
        return False
    return True


def start_embedded_database() -> None:
    port = int(os.environ.get("LOCAL_DB_PORT", "54329"))
    server = EmbeddedPostgres(LOCAL_DIR / "postgres", port=port)
    server.start()
    server.ensure_database(LOCAL_DATABASE)
    os.environ.update(
        DB_HOST="127.0.0.1",
        DB_PORT=str(server.port),
        DB_NAME=LOCAL_DATABASE,
        DB_USER="postgres",
        DB_PASSWORD="postgres",  # trust auth locally; the setting is still required
    )
    print(f"embedded PostgreSQL on 127.0.0.1:{server.port} (data in .local/postgres)")


def migrate() -> None:
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")


def main() -> None:
    for name, value in LOCAL_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if not database_is_configured():
        start_embedded_database()
    migrate()
    if not os.environ.get("COGNITO_USER_POOL_ID"):
        # Seeds an admin in the emulator and the database, so it runs after the migrations.
        from devtools.local_cognito import start_local_cognito

        start_local_cognito(LOCAL_DIR)
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "8000")
    print(f"API on http://{host}:{port}  (Swagger UI: http://{host}:{port}/docs)", flush=True)
    os.execv(  # noqa: S606 - replace this process so signals reach uvicorn directly
        sys.executable,
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            host,
            "--port",
            port,
            "--no-access-log",
        ],
    )


if __name__ == "__main__":
    main()
