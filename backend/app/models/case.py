"""Complaint cases, their audit trail and their files."""

import uuid
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, CreatedAtMixin, TimestampMixin, str_enum, uuid_pk
from app.models.reference import RefClosureReason, RefComplaintType, RefHandler, RefServiceType
from app.models.user import PROVINCE_LENGTH, User


class CaseStatus(StrEnum):
    NEW = "NEW"
    ASSIGNED = "ASSIGNED"
    IN_PROGRESS = "IN_PROGRESS"
    RESOLVED = "RESOLVED"
    CLOSED = "CLOSED"
    CANCELLED = "CANCELLED"


class CasePriority(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    URGENT = "URGENT"


class Case(TimestampMixin, Base):
    __tablename__ = "cases"
    __table_args__ = (
        # Serves the officer's province scope and, as a loose index scan, the list of provinces.
        sa.Index("ix_cases_province", "province"),
        sa.Index("ix_cases_status", "status"),
        sa.Index("ix_cases_assigned_officer_id", "assigned_officer_id"),
        sa.Index("ix_cases_created_at", "created_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    case_number: Mapped[str] = mapped_column(sa.String(20), unique=True)
    status: Mapped[CaseStatus] = mapped_column(
        str_enum(CaseStatus, "status"), server_default=CaseStatus.NEW.value, default=CaseStatus.NEW
    )
    priority: Mapped[CasePriority] = mapped_column(str_enum(CasePriority, "priority"))
    service_type_id: Mapped[int] = mapped_column(
        sa.SmallInteger, sa.ForeignKey("ref_service_types.id")
    )
    complaint_type_id: Mapped[int] = mapped_column(sa.ForeignKey("ref_complaint_types.id"))
    province: Mapped[str] = mapped_column(sa.String(PROVINCE_LENGTH))
    district: Mapped[str | None] = mapped_column(sa.String(100))
    complainant_name: Mapped[str] = mapped_column(sa.String(200))
    complainant_phone: Mapped[str | None] = mapped_column(sa.String(32))
    complainant_email: Mapped[str | None] = mapped_column(sa.String(320))
    description: Mapped[str] = mapped_column(sa.Text)
    # Nullable: a case may arrive through an integration rather than a dispatcher.
    dispatcher_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id"))
    assigned_officer_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id"))
    handler_id: Mapped[int | None] = mapped_column(
        sa.SmallInteger, sa.ForeignKey("ref_handlers.id")
    )
    closure_reason_id: Mapped[int | None] = mapped_column(
        sa.SmallInteger, sa.ForeignKey("ref_closure_reasons.id")
    )
    response_due_at: Mapped[datetime | None]
    resolution_due_at: Mapped[datetime | None]
    assigned_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]

    service_type: Mapped[RefServiceType] = relationship(lazy="raise")
    complaint_type: Mapped[RefComplaintType] = relationship(lazy="raise")
    handler: Mapped[RefHandler | None] = relationship(lazy="raise")
    closure_reason: Mapped[RefClosureReason | None] = relationship(lazy="raise")
    dispatcher: Mapped[User | None] = relationship(foreign_keys=[dispatcher_id], lazy="raise")
    assigned_officer: Mapped[User | None] = relationship(
        foreign_keys=[assigned_officer_id], lazy="raise"
    )
    history: Mapped[list["CaseHistory"]] = relationship(
        back_populates="case",
        lazy="raise",
        order_by="CaseHistory.id",
        passive_deletes=True,
    )
    attachments: Mapped[list["CaseAttachment"]] = relationship(
        back_populates="case", lazy="raise", passive_deletes=True
    )


class CaseHistory(CreatedAtMixin, Base):
    """Append-only audit trail of a case."""

    __tablename__ = "case_history"
    __table_args__ = (sa.Index("ix_case_history_case_id_created_at", "case_id", "created_at"),)

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    case_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("cases.id", ondelete="CASCADE"))
    # Nullable: system actions (SLA escalation, imports) have no human actor.
    actor_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(sa.String(50))
    from_status: Mapped[CaseStatus | None] = mapped_column(str_enum(CaseStatus, "from_status"))
    to_status: Mapped[CaseStatus | None] = mapped_column(str_enum(CaseStatus, "to_status"))
    note: Mapped[str | None] = mapped_column(sa.Text)

    case: Mapped[Case] = relationship(back_populates="history", lazy="raise")
    actor: Mapped[User | None] = relationship(lazy="raise")


class CaseAttachment(CreatedAtMixin, Base):
    """Metadata of a file whose bytes live in S3 under `s3_key`."""

    __tablename__ = "case_attachments"
    __table_args__ = (sa.CheckConstraint("size_bytes >= 0", name="size_bytes_not_negative"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    case_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("cases.id", ondelete="CASCADE"), index=True
    )
    s3_key: Mapped[str] = mapped_column(sa.String(1024), unique=True)
    file_name: Mapped[str] = mapped_column(sa.String(255))
    content_type: Mapped[str] = mapped_column(sa.String(255))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    uploaded_by: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id"))

    case: Mapped[Case] = relationship(back_populates="attachments", lazy="raise")
