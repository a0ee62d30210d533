"""`make migrations-check`: `alembic check` against a throwaway embedded database.

Upgrades an empty database to head, then asks Alembic whether the models still differ from
what the migrations built. Exits non-zero on drift.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config

from devtools.postgres import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="onesys-check-") as data_dir:
        server = EmbeddedPostgres(Path(data_dir), port=None)
        server.start()
        try:
            server.create_database("migrations_check")
            config = Config(str(ROOT / "alembic.ini"))
            url = server.url("migrations_check").replace("%", "%%")
            config.set_main_option("sqlalchemy.url", url)
            command.upgrade(config, "head")
            command.check(config)
        finally:
            server.stop()
    print("alembic check: no drift between models and migrations")


if __name__ == "__main__":
    main()
