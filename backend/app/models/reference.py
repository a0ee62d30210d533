"""Reference data that admins curate and every case points at."""

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base

CODE_LENGTH = 50
NAME_LENGTH = 200


class ReferenceMixin:
    """Columns shared by all reference tables.

    `code` is the stable key clients and seeds use; `name` is for display and may change.
    Rows are deactivated rather than deleted because cases keep pointing at them.
    """

    code: Mapped[str] = mapped_column(sa.String(CODE_LENGTH), unique=True)
    name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH))
    sort_order: Mapped[int] = mapped_column(server_default=sa.text("0"), default=0)
    is_active: Mapped[bool] = mapped_column(server_default=sa.true(), default=True)


class RefServiceType(ReferenceMixin, Base):
    __tablename__ = "ref_service_types"

    id: Mapped[int] = mapped_column(sa.SmallInteger, sa.Identity(), primary_key=True)

    complaint_types: Mapped[list["RefComplaintType"]] = relationship(
        back_populates="service_type", lazy="raise"
    )


class RefComplaintType(ReferenceMixin, Base):
    __tablename__ = "ref_complaint_types"

    id: Mapped[int] = mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    service_type_id: Mapped[int] = mapped_column(
        sa.SmallInteger, sa.ForeignKey("ref_service_types.id"), index=True
    )

    service_type: Mapped[RefServiceType] = relationship(
        back_populates="complaint_types", lazy="raise"
    )


class RefHandler(ReferenceMixin, Base):
    """An agency a case can be handed to."""

    __tablename__ = "ref_handlers"

    id: Mapped[int] = mapped_column(sa.SmallInteger, sa.Identity(), primary_key=True)


class RefClosureReason(ReferenceMixin, Base):
    __tablename__ = "ref_closure_reasons"

    id: Mapped[int] = mapped_column(sa.SmallInteger, sa.Identity(), primary_key=True)
