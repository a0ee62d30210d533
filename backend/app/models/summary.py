"""Pre-aggregated case counts for the executive dashboards."""

from datetime import date

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, str_enum
from app.models.case import CaseStatus
from app.models.user import PROVINCE_LENGTH


class SummaryCasesDaily(Base):
    """Cases per day, province, service type and status.

    Rebuilt day by day with bulk SQL by a batch job, so it has no ORM relationships.
    """

    __tablename__ = "summary_cases_daily"
    __table_args__ = (sa.CheckConstraint("case_count >= 0", name="case_count_not_negative"),)

    day: Mapped[date] = mapped_column(primary_key=True)
    province: Mapped[str] = mapped_column(sa.String(PROVINCE_LENGTH), primary_key=True)
    service_type_id: Mapped[int] = mapped_column(
        sa.SmallInteger, sa.ForeignKey("ref_service_types.id"), primary_key=True
    )
    status: Mapped[CaseStatus] = mapped_column(str_enum(CaseStatus, "status"), primary_key=True)
    case_count: Mapped[int]
