"""Declarative base shared by every ORM model."""

import enum
import uuid
from datetime import datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import MetaData, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable, predictable constraint names: migrations can refer to them and autogenerate does not
# see renames where PostgreSQL would otherwise invent its own names.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: sa.DateTime(timezone=True)}


def str_enum(enum_class: type[enum.StrEnum], name: str, length: int = 20) -> sa.Enum:
    """A VARCHAR + CHECK column type for a StrEnum.

    Not a native PostgreSQL enum, so adding a value later is a CHECK change rather than an
    `ALTER TYPE` that cannot run inside a transaction. The stored text is the member's value.
    """
    return sa.Enum(
        enum_class,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=length,
        validate_strings=True,
        values_callable=lambda members: [member.value for member in members],
    )


def uuid_pk() -> Mapped[uuid.UUID]:
    # Client default so the id is known before flush; server default for rows written by SQL.
    return mapped_column(
        sa.Uuid,
        primary_key=True,
        default=uuid.uuid4,
        server_default=func.gen_random_uuid(),
    )


class CreatedAtMixin:
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class TimestampMixin:
    """`created_at` and `updated_at`, both set by the database and readable after a flush.

    The database computes them (`now()`), so without eager defaults the ORM only expires them
    at a flush, and reading one afterwards is a lazy load, which async sessions refuse
    (MissingGreenlet). With them, the INSERT or UPDATE returns the new values (RETURNING on
    PostgreSQL): no extra query. A model that sets `__mapper_args__` of its own must keep
    `"eager_defaults": True` in it.
    """

    __mapper_args__: ClassVar[dict[str, Any]] = {"eager_defaults": True}

    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # onupdate covers ORM updates; bulk SQL updates must set updated_at themselves.
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())
