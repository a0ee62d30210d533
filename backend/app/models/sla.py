"""Service-level targets that set a case's due times."""

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, TimestampMixin, str_enum
from app.models.case import CasePriority
from app.models.reference import RefServiceType


class SlaConfig(TimestampMixin, Base):
    __tablename__ = "sla_config"
    __table_args__ = (
        sa.UniqueConstraint("service_type_id", "priority"),
        sa.CheckConstraint("response_hours > 0", name="response_hours_positive"),
        # A case cannot be resolved before anybody has responded to it.
        sa.CheckConstraint("resolution_hours >= response_hours", name="resolution_after_response"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    service_type_id: Mapped[int] = mapped_column(
        sa.SmallInteger, sa.ForeignKey("ref_service_types.id")
    )
    priority: Mapped[CasePriority] = mapped_column(str_enum(CasePriority, "priority"))
    response_hours: Mapped[int]
    resolution_hours: Mapped[int]

    service_type: Mapped[RefServiceType] = relationship(lazy="raise")
