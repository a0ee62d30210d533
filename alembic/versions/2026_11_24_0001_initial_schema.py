"""Initial schema, with seeded reference data.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Static on purpose: it states the tables as they were on this date and imports nothing from
`app`, so later model changes cannot rewrite history.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = ("ADMIN", "DISPATCHER", "OFFICER", "EXECUTIVE")
CASE_STATUSES = ("NEW", "ASSIGNED", "IN_PROGRESS", "RESOLVED", "CLOSED", "CANCELLED")
PRIORITIES = ("LOW", "MEDIUM", "HIGH", "URGENT")

# (code, name, SLA tier)
SERVICE_TYPES = (
    ("ROADS", "Roads and bridges", "standard"),
    ("WATER", "Water supply", "critical"),
    ("ELECTRICITY", "Electricity", "critical"),
    ("WASTE", "Waste collection", "standard"),
    ("PUBLIC_TRANSPORT", "Public transport", "standard"),
    ("HEALTH", "Public health", "critical"),
    ("EDUCATION", "Education", "administrative"),
    ("POLICE", "Public safety and police", "critical"),
    ("LAND", "Land and buildings", "administrative"),
    ("TAX", "Taxes and fees", "administrative"),
    ("CONSUMER", "Consumer protection", "administrative"),
    ("ENVIRONMENT", "Environment and pollution", "standard"),
)

# service type code -> (code suffix, name)
COMPLAINT_TYPES: dict[str, tuple[tuple[str, str], ...]] = {
    "ROADS": (
        ("POTHOLE", "Pothole or damaged road surface"),
        ("STREETLIGHT", "Street light out"),
        ("FLOODING", "Flooded road or blocked drain"),
        ("SIGNAGE", "Missing or damaged traffic sign"),
    ),
    "WATER": (
        ("OUTAGE", "No water supply"),
        ("QUALITY", "Poor water quality"),
        ("LEAK", "Burst or leaking pipe"),
        ("BILLING", "Water bill dispute"),
    ),
    "ELECTRICITY": (
        ("OUTAGE", "Power outage"),
        ("HAZARD", "Fallen or exposed power line"),
        ("BILLING", "Electricity bill dispute"),
    ),
    "WASTE": (
        ("MISSED_COLLECTION", "Missed collection"),
        ("ILLEGAL_DUMPING", "Illegal dumping"),
        ("OVERFLOWING_BIN", "Overflowing public bin"),
    ),
    "PUBLIC_TRANSPORT": (
        ("DELAY", "Delayed or cancelled service"),
        ("STAFF_CONDUCT", "Driver or staff conduct"),
        ("FARE", "Overcharged fare"),
    ),
    "HEALTH": (
        ("SERVICE_QUALITY", "Quality of care at a public facility"),
        ("HYGIENE", "Food or premises hygiene"),
        ("DISEASE_VECTOR", "Mosquito breeding or pest infestation"),
    ),
    "EDUCATION": (
        ("FACILITIES", "School facilities in disrepair"),
        ("FEES", "Unauthorised school fees"),
        ("STAFF_CONDUCT", "Teacher or staff conduct"),
    ),
    "POLICE": (
        ("NOISE", "Noise disturbance"),
        ("TRAFFIC", "Dangerous traffic or illegal parking"),
        ("MISCONDUCT", "Officer misconduct"),
    ),
    "LAND": (
        ("ENCROACHMENT", "Encroachment on public land"),
        ("BUILDING_PERMIT", "Building permit delay"),
        ("UNSAFE_BUILDING", "Unsafe building or construction site"),
    ),
    "TAX": (
        ("BILLING_ERROR", "Incorrect tax or fee assessment"),
        ("REFUND", "Refund not received"),
    ),
    "CONSUMER": (
        ("PRICING", "Overpricing or hidden charges"),
        ("PRODUCT_SAFETY", "Unsafe product"),
        ("FRAUD", "Fraud or scam"),
    ),
    "ENVIRONMENT": (
        ("AIR", "Smoke, dust or air pollution"),
        ("WATER_POLLUTION", "Polluted river or canal"),
        ("NOISE", "Industrial or construction noise"),
        ("TREES", "Illegal tree felling"),
    ),
}

HANDLERS = (
    ("MUNICIPALITY", "Local municipality"),
    ("PROVINCIAL_OFFICE", "Provincial governor's office"),
    ("UTILITY_PROVIDER", "Utility provider"),
    ("POLICE_STATION", "Local police station"),
    ("HEALTH_OFFICE", "Provincial health office"),
    ("CENTRAL_MINISTRY", "Responsible central ministry"),
)

CLOSURE_REASONS = (
    ("RESOLVED", "Resolved"),
    ("DUPLICATE", "Duplicate of another case"),
    ("NOT_ACTIONABLE", "Not actionable"),
    ("OUT_OF_JURISDICTION", "Outside our jurisdiction"),
    ("WITHDRAWN", "Withdrawn by the complainant"),
    ("NO_CONTACT", "Complainant could not be reached"),
)

# tier -> priority -> (response hours, resolution hours). Critical services (water, power,
# health, safety) answer fastest; administrative ones (tax, land) need paperwork to resolve.
SLA_HOURS: dict[str, dict[str, tuple[int, int]]] = {
    "critical": {"URGENT": (1, 12), "HIGH": (4, 48), "MEDIUM": (12, 120), "LOW": (24, 240)},
    "standard": {"URGENT": (2, 24), "HIGH": (8, 72), "MEDIUM": (24, 168), "LOW": (48, 336)},
    "administrative": {
        "URGENT": (4, 72),
        "HIGH": (24, 168),
        "MEDIUM": (48, 360),
        "LOW": (72, 720),
    },
}


def in_check(column: str, values: Sequence[str]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


def enum_column(name: str, values: Sequence[str], table: str, **kwargs: object) -> sa.Column[Any]:
    # The models' enums are VARCHAR + CHECK (not native enums); the CHECK is named like the
    # models' naming convention names it.
    return sa.Column(
        name,
        sa.String(length=20),
        sa.CheckConstraint(in_check(name, values), name=op.f(f"ck_{table}_{name}")),
        **kwargs,  # type: ignore[arg-type]
    )


def created_at() -> sa.Column[Any]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def updated_at() -> sa.Column[Any]:
    return sa.Column(
        "updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def reference_table(
    name: str, id_type: sa.types.TypeEngine[int], *extra: sa.schema.SchemaItem
) -> sa.Table:
    return op.create_table(
        name,
        sa.Column("id", id_type, sa.Identity(always=False), nullable=False),
        *extra,
        sa.Column("code", sa.String(length=50), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("sort_order", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{name}")),
        sa.UniqueConstraint("code", name=op.f(f"uq_{name}_code")),
    )


def uuid_pk() -> sa.Column[Any]:
    return sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "case_sequences",
        sa.Column("year", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("last_value", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint(
            "last_value >= 0", name=op.f("ck_case_sequences_last_value_not_negative")
        ),
        sa.PrimaryKeyConstraint("year", name=op.f("pk_case_sequences")),
    )
    service_types = reference_table("ref_service_types", sa.SmallInteger())
    complaint_types = reference_table(
        "ref_complaint_types",
        sa.Integer(),
        sa.Column("service_type_id", sa.SmallInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["service_type_id"],
            ["ref_service_types.id"],
            name=op.f("fk_ref_complaint_types_service_type_id_ref_service_types"),
        ),
    )
    op.create_index(
        op.f("ix_ref_complaint_types_service_type_id"), "ref_complaint_types", ["service_type_id"]
    )
    handlers = reference_table("ref_handlers", sa.SmallInteger())
    closure_reasons = reference_table("ref_closure_reasons", sa.SmallInteger())

    op.create_table(
        "users",
        uuid_pk(),
        sa.Column("cognito_user_id", sa.String(length=128), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("full_name", sa.String(length=200), nullable=False),
        enum_column("role", ROLES, "users", nullable=False),
        sa.Column("responsible_province", sa.String(length=100), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        created_at(),
        updated_at(),
        sa.CheckConstraint(
            "(role = 'OFFICER') = (responsible_province IS NOT NULL)",
            name=op.f("ck_users_officer_has_province"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("cognito_user_id", name=op.f("uq_users_cognito_user_id")),
    )
    op.create_index("uq_users_lower_email", "users", [sa.text("lower(email)")], unique=True)
    op.create_index("ix_users_created_at_id", "users", [sa.text("created_at DESC, id DESC")])
    op.create_index("ix_users_responsible_province", "users", ["responsible_province"])
    op.create_index("ix_users_role", "users", ["role"])

    sla_config = op.create_table(
        "sla_config",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("service_type_id", sa.SmallInteger(), nullable=False),
        enum_column("priority", PRIORITIES, "sla_config", nullable=False),
        sa.Column("response_hours", sa.Integer(), nullable=False),
        sa.Column("resolution_hours", sa.Integer(), nullable=False),
        created_at(),
        updated_at(),
        sa.CheckConstraint(
            "response_hours > 0", name=op.f("ck_sla_config_response_hours_positive")
        ),
        sa.CheckConstraint(
            "resolution_hours >= response_hours",
            name=op.f("ck_sla_config_resolution_after_response"),
        ),
        sa.ForeignKeyConstraint(
            ["service_type_id"],
            ["ref_service_types.id"],
            name=op.f("fk_sla_config_service_type_id_ref_service_types"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sla_config")),
        sa.UniqueConstraint(
            "service_type_id", "priority", name=op.f("uq_sla_config_service_type_id_priority")
        ),
    )

    op.create_table(
        "cases",
        uuid_pk(),
        sa.Column("case_number", sa.String(length=20), nullable=False),
        enum_column(
            "status", CASE_STATUSES, "cases", server_default=sa.text("'NEW'"), nullable=False
        ),
        enum_column("priority", PRIORITIES, "cases", nullable=False),
        sa.Column("service_type_id", sa.SmallInteger(), nullable=False),
        sa.Column("complaint_type_id", sa.Integer(), nullable=False),
        sa.Column("province", sa.String(length=100), nullable=False),
        sa.Column("district", sa.String(length=100), nullable=True),
        sa.Column("complainant_name", sa.String(length=200), nullable=False),
        sa.Column("complainant_phone", sa.String(length=32), nullable=True),
        sa.Column("complainant_email", sa.String(length=320), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("dispatcher_id", sa.Uuid(), nullable=True),
        sa.Column("assigned_officer_id", sa.Uuid(), nullable=True),
        sa.Column("handler_id", sa.SmallInteger(), nullable=True),
        sa.Column("closure_reason_id", sa.SmallInteger(), nullable=True),
        sa.Column("response_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        created_at(),
        updated_at(),
        sa.ForeignKeyConstraint(
            ["service_type_id"],
            ["ref_service_types.id"],
            name=op.f("fk_cases_service_type_id_ref_service_types"),
        ),
        sa.ForeignKeyConstraint(
            ["complaint_type_id"],
            ["ref_complaint_types.id"],
            name=op.f("fk_cases_complaint_type_id_ref_complaint_types"),
        ),
        sa.ForeignKeyConstraint(
            ["dispatcher_id"], ["users.id"], name=op.f("fk_cases_dispatcher_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["assigned_officer_id"], ["users.id"], name=op.f("fk_cases_assigned_officer_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["handler_id"], ["ref_handlers.id"], name=op.f("fk_cases_handler_id_ref_handlers")
        ),
        sa.ForeignKeyConstraint(
            ["closure_reason_id"],
            ["ref_closure_reasons.id"],
            name=op.f("fk_cases_closure_reason_id_ref_closure_reasons"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cases")),
        sa.UniqueConstraint("case_number", name=op.f("uq_cases_case_number")),
    )
    op.create_index("ix_cases_province", "cases", ["province"])
    op.create_index("ix_cases_status", "cases", ["status"])
    op.create_index("ix_cases_assigned_officer_id", "cases", ["assigned_officer_id"])
    op.create_index("ix_cases_created_at", "cases", ["created_at"])

    op.create_table(
        "case_history",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("action", sa.String(length=50), nullable=False),
        enum_column("from_status", CASE_STATUSES, "case_history", nullable=True),
        enum_column("to_status", CASE_STATUSES, "case_history", nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        created_at(),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.id"],
            name=op.f("fk_case_history_case_id_cases"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["users.id"], name=op.f("fk_case_history_actor_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_history")),
    )
    op.create_index("ix_case_history_case_id_created_at", "case_history", ["case_id", "created_at"])

    op.create_table(
        "case_attachments",
        uuid_pk(),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("s3_key", sa.String(length=1024), nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("uploaded_by", sa.Uuid(), nullable=True),
        created_at(),
        sa.CheckConstraint(
            "size_bytes >= 0", name=op.f("ck_case_attachments_size_bytes_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.id"],
            name=op.f("fk_case_attachments_case_id_cases"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["uploaded_by"], ["users.id"], name=op.f("fk_case_attachments_uploaded_by_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_attachments")),
        sa.UniqueConstraint("s3_key", name=op.f("uq_case_attachments_s3_key")),
    )
    op.create_index(op.f("ix_case_attachments_case_id"), "case_attachments", ["case_id"])

    op.create_table(
        "notifications",
        uuid_pk(),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        created_at(),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_notifications_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.id"],
            name=op.f("fk_notifications_case_id_cases"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    op.create_index("ix_notifications_user_id_read_at", "notifications", ["user_id", "read_at"])
    op.create_index(op.f("ix_notifications_case_id"), "notifications", ["case_id"])

    op.create_table(
        "summary_cases_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("province", sa.String(length=100), nullable=False),
        sa.Column("service_type_id", sa.SmallInteger(), nullable=False),
        enum_column("status", CASE_STATUSES, "summary_cases_daily", nullable=False),
        sa.Column("case_count", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "case_count >= 0", name=op.f("ck_summary_cases_daily_case_count_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["service_type_id"],
            ["ref_service_types.id"],
            name=op.f("fk_summary_cases_daily_service_type_id_ref_service_types"),
        ),
        sa.PrimaryKeyConstraint(
            "day", "province", "service_type_id", "status", name=op.f("pk_summary_cases_daily")
        ),
    )

    seed_reference_data(service_types, complaint_types, handlers, closure_reasons, sla_config)


def seed_reference_data(
    service_types: sa.Table,
    complaint_types: sa.Table,
    handlers: sa.Table,
    closure_reasons: sa.Table,
    sla_config: sa.Table,
) -> None:
    # Explicit ids keep the seed reproducible across environments; sort_order leaves gaps so
    # admins can slot new entries in between.
    op.bulk_insert(
        service_types,
        [
            {"id": number, "code": code, "name": name, "sort_order": number * 10}
            for number, (code, name, _) in enumerate(SERVICE_TYPES, start=1)
        ],
    )
    service_type_ids = {code: number for number, (code, _, _) in enumerate(SERVICE_TYPES, start=1)}
    complaint_rows = [
        {
            "service_type_id": service_type_ids[service_code],
            "code": f"{service_code}_{suffix}",
            "name": name,
            "sort_order": position * 10,
        }
        for service_code, entries in COMPLAINT_TYPES.items()
        for position, (suffix, name) in enumerate(entries, start=1)
    ]
    op.bulk_insert(
        complaint_types,
        [{"id": number, **row} for number, row in enumerate(complaint_rows, start=1)],
    )
    for table, entries in ((handlers, HANDLERS), (closure_reasons, CLOSURE_REASONS)):
        op.bulk_insert(
            table,
            [
                {"id": number, "code": code, "name": name, "sort_order": number * 10}
                for number, (code, name) in enumerate(entries, start=1)
            ],
        )
    op.bulk_insert(
        sla_config,
        [
            {
                "service_type_id": service_type_ids[code],
                "priority": priority,
                "response_hours": response,
                "resolution_hours": resolution,
            }
            for code, _, tier in SERVICE_TYPES
            for priority, (response, resolution) in SLA_HOURS[tier].items()
        ],
    )
    # Identity columns do not see explicit ids; move them past the seed so the next insert
    # by an admin does not collide with it.
    for name in ("ref_service_types", "ref_complaint_types", "ref_handlers", "ref_closure_reasons"):
        op.execute(
            f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), (SELECT max(id) FROM {name}))"
        )


def downgrade() -> None:
    for table in (
        "summary_cases_daily",
        "notifications",
        "case_attachments",
        "case_history",
        "cases",
        "sla_config",
        "users",
        "ref_closure_reasons",
        "ref_handlers",
        "ref_complaint_types",
        "ref_service_types",
        "case_sequences",
    ):
        # Dropping a table drops its indexes and constraints with it.
        op.drop_table(table)
