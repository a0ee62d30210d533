"""Every outbox kind and its handler, in one place: what the worker process carries out.

A new kind of background work (an SQS notification, say) is a handler (`outbox.Handler`) added
here, and steps recorded with `outbox.record(session, KIND, key, payload)` in the service whose
change needs them (README: "Adding background work").
"""

from __future__ import annotations

from app.core.config import Settings
from app.core.db import ReadSessions
from app.services import directory_sync, user_creation
from app.services.cognito import CognitoUserPool
from app.services.outbox import Handler


def outbox_handlers(
    settings: Settings, read_sessions: ReadSessions, cognito: CognitoUserPool
) -> dict[str, Handler]:
    """{kind: handler} for every kind this release carries out; a kind not here waits."""
    return {
        directory_sync.KIND: directory_sync.DirectorySync(
            read_sessions, cognito, settle_seconds=directory_sync.settle_seconds_for(settings)
        ),
        user_creation.KIND: user_creation.UserCreations(read_sessions, cognito),
    }
