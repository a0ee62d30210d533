"""`make openapi`: write the API's OpenAPI document, the reviewed copy at `openapi.json`.

The document is built from the routes and schemas alone, so the settings below are
placeholders that never reach a database or AWS (the app's lifespan does not run). One setting
changes the document: `COGNITO_DOMAIN` adds the Hosted UI sign-in for Swagger UI; it is left
out, so the committed document is the same on every machine and in every deployment's base.
Keys are sorted and indented, so a change to the API is a readable diff of this file.

    python -m devtools.openapi               # to stdout
    python -m devtools.openapi openapi.json  # to a file (what `make openapi` does)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final

from app.core.config import Settings
from app.main import create_app

# The copy under review, at the repository root.
COMMITTED_PATH: Final = Path(__file__).resolve().parents[2] / "openapi.json"
REGENERATE: Final = "make openapi"

_PLACEHOLDERS: Final[dict[str, Any]] = {
    "db_host": "localhost",
    "db_name": "unused",
    "db_user": "unused",
    "db_password": "unused",
    "db_secret_id": None,
    "aws_region": "us-east-1",
    "cognito_user_pool_id": "us-east-1_unused",
    "cognito_app_client_id": "unused",
    "cognito_domain": None,
    "s3_attachments_bucket": "unused",
    "s3_exports_bucket": "unused",
    "s3_audit_bucket": "unused",
    "s3_landing_bucket": "unused",
    "sqs_notification_queue_url": "http://localhost/unused",
    "sqs_export_queue_url": "http://localhost/unused",
}


def render(schema: dict[str, Any]) -> str:
    """The document as committed: sorted keys, two-space indent, non-ASCII kept, final newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def document() -> str:
    # Explicit values win over the environment and `.env`, so neither can change the document.
    settings = Settings(_env_file=None, **_PLACEHOLDERS)  # type: ignore[call-arg]
    return render(create_app(settings).openapi())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    text = document()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
