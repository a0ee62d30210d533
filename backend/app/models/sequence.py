"""Per-year counter behind human-readable case numbers."""

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class CaseSequence(Base):
    """One row per year; the next number is taken with `UPDATE ... RETURNING last_value`.

    A counter row rather than a PostgreSQL sequence so numbers restart every year and a rolled
    back case does not burn a number (the row lock is held until the case commits).
    """

    __tablename__ = "case_sequences"
    __table_args__ = (sa.CheckConstraint("last_value >= 0", name="last_value_not_negative"),)

    year: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, autoincrement=False)
    last_value: Mapped[int] = mapped_column(server_default=sa.text("0"), default=0)
