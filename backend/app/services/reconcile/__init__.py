"""Drift between the user pool (Cognito) and the users table: found, reported, repaired.

The table is what the API enforces and Cognito follows it through the outbox
(`app.services.directory_sync`), so drift means something went wrong outside that path: an
outbox entry dropped because Cognito did not know the user, a change made by hand in the AWS
console, a create whose undo failed. One module per job:

- `snapshot`: reading both sides, whole (page by page) or one user afresh;
- `drift`: comparing them, the kinds of drift, and confirming each one (`find_drift`);
- `repair`: repairing what can be repaired without widening anyone's access (`repair`), with
  `orphans` for the Cognito users without a row.
"""

from app.services.reconcile.drift import (
    DEFAULT_OUTBOX_THRESHOLD,
    Drift,
    DriftKind,
    Report,
    find_drift,
)
from app.services.reconcile.orphans import OrphanAction
from app.services.reconcile.repair import RepairResult, repair

__all__ = [
    "DEFAULT_OUTBOX_THRESHOLD",
    "Drift",
    "DriftKind",
    "OrphanAction",
    "RepairResult",
    "Report",
    "find_drift",
    "repair",
]
