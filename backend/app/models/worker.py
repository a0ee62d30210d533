"""The last turn of each worker process, on the database's clock (`app.services.worker_status`)."""

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base

WORKER_ID_LENGTH = 200


class WorkerHeartbeat(Base):
    """One row per worker process (host and pid): when its last turn reached the outbox.

    Written by the worker every few seconds while it turns; read by `/metrics` of any web
    process, so a stalled worker on any host shows in the instance's metrics.
    """

    __tablename__ = "worker_heartbeats"

    worker: Mapped[str] = mapped_column(sa.String(WORKER_ID_LENGTH), primary_key=True)
    last_turn_at: Mapped[datetime] = mapped_column(server_default=func.now())
