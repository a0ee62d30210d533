"""ORM models; importing this package registers every table on `Base.metadata`."""

from app.models.base import Base
from app.models.case import Case, CaseAttachment, CaseHistory, CasePriority, CaseStatus
from app.models.notification import Notification
from app.models.outbox import OutboxEntry, OutboxLease
from app.models.reference import RefClosureReason, RefComplaintType, RefHandler, RefServiceType
from app.models.sequence import CaseSequence
from app.models.sla import SlaConfig
from app.models.summary import SummaryCasesDaily
from app.models.user import User
from app.models.worker import WorkerHeartbeat

__all__ = [
    "Base",
    "Case",
    "CaseAttachment",
    "CaseHistory",
    "CasePriority",
    "CaseSequence",
    "CaseStatus",
    "Notification",
    "OutboxEntry",
    "OutboxLease",
    "RefClosureReason",
    "RefComplaintType",
    "RefHandler",
    "RefServiceType",
    "SlaConfig",
    "SummaryCasesDaily",
    "User",
    "WorkerHeartbeat",
]
