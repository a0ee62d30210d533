"""The database itself refuses rows that break the data model's rules."""

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.roles import Role
from app.models import (
    Case,
    CaseAttachment,
    CaseHistory,
    CasePriority,
    CaseStatus,
    RefComplaintType,
    SlaConfig,
    User,
)


def make_user(**overrides: Any) -> User:
    unique = uuid.uuid4().hex[:10]
    fields: dict[str, Any] = {
        "cognito_user_id": f"sub-{unique}",
        "email": f"user-{unique}@example.org",
        "full_name": "Somchai Jaidee",
        "role": Role.DISPATCHER,
        "responsible_province": None,
    }
    fields.update(overrides)
    return User(**fields)


async def make_case(session: AsyncSession, **overrides: Any) -> Case:
    complaint_type = await session.scalar(sa.select(RefComplaintType).limit(1))
    assert complaint_type is not None
    fields: dict[str, Any] = {
        "case_number": f"C-{uuid.uuid4().hex[:12]}",
        "priority": CasePriority.MEDIUM,
        "service_type_id": complaint_type.service_type_id,
        "complaint_type_id": complaint_type.id,
        "province": "Chiang Mai",
        "complainant_name": "Malee Suksai",
        "description": "Street light out for a week",
    }
    fields.update(overrides)
    case = Case(**fields)
    session.add(case)
    await session.flush()
    return case


async def test_a_valid_user_is_stored_with_defaults(db_session: AsyncSession) -> None:
    user = make_user(role=Role.OFFICER, responsible_province="Chiang Mai")
    db_session.add(user)
    await db_session.flush()
    await db_session.refresh(user)
    assert user.is_active is True
    assert user.created_at.tzinfo is not None
    assert user.role is Role.OFFICER


async def test_email_is_unique_regardless_of_case(db_session: AsyncSession) -> None:
    db_session.add(make_user(email="Anan.K@Example.org"))
    await db_session.flush()
    db_session.add(make_user(email="anan.k@example.ORG"))
    with pytest.raises(IntegrityError, match="uq_users_lower_email"):
        await db_session.flush()


async def test_cognito_user_id_is_unique(db_session: AsyncSession) -> None:
    db_session.add(make_user(cognito_user_id="same-sub"))
    await db_session.flush()
    db_session.add(make_user(cognito_user_id="same-sub"))
    with pytest.raises(IntegrityError, match="uq_users_cognito_user_id"):
        await db_session.flush()


async def test_officer_needs_a_province(db_session: AsyncSession) -> None:
    db_session.add(make_user(role=Role.OFFICER, responsible_province=None))
    with pytest.raises(IntegrityError, match="ck_users_officer_has_province"):
        await db_session.flush()


@pytest.mark.parametrize("role", [Role.ADMIN, Role.DISPATCHER, Role.EXECUTIVE])
async def test_only_officers_have_a_province(db_session: AsyncSession, role: Role) -> None:
    db_session.add(make_user(role=role, responsible_province="Chiang Mai"))
    with pytest.raises(IntegrityError, match="ck_users_officer_has_province"):
        await db_session.flush()


async def test_unknown_role_is_refused_by_the_database(db_session: AsyncSession) -> None:
    # Raw SQL, as the ORM would already refuse the value before sending it.
    with pytest.raises(IntegrityError, match="ck_users_role"):
        await db_session.execute(
            sa.text(
                "INSERT INTO users (cognito_user_id, email, full_name, role) "
                "VALUES ('sub-x', 'x@example.org', 'X', 'SUPERUSER')"
            )
        )


async def test_attachment_size_cannot_be_negative(db_session: AsyncSession) -> None:
    case = await make_case(db_session)
    db_session.add(
        CaseAttachment(
            case_id=case.id,
            s3_key=f"cases/{case.id}/photo.jpg",
            file_name="photo.jpg",
            content_type="image/jpeg",
            size_bytes=-1,
        )
    )
    with pytest.raises(IntegrityError, match="ck_case_attachments_size_bytes_not_negative"):
        await db_session.flush()


async def test_case_numbers_are_unique(db_session: AsyncSession) -> None:
    await make_case(db_session, case_number="OS-2026-000001")
    with pytest.raises(IntegrityError, match="uq_cases_case_number"):
        await make_case(db_session, case_number="OS-2026-000001")


async def test_case_defaults_to_new_and_history_goes_with_the_case(
    db_session: AsyncSession,
) -> None:
    case = await make_case(db_session)
    db_session.add(CaseHistory(case_id=case.id, action="CREATED", to_status=CaseStatus.NEW))
    await db_session.flush()
    assert case.status is CaseStatus.NEW

    await db_session.delete(case)
    await db_session.flush()
    remaining = await db_session.scalar(
        sa.select(sa.func.count()).select_from(CaseHistory).where(CaseHistory.case_id == case.id)
    )
    assert remaining == 0


async def any_sla(session: AsyncSession) -> SlaConfig:
    sla = await session.scalar(sa.select(SlaConfig).order_by(SlaConfig.id).limit(1))
    assert sla is not None
    return sla


async def test_sla_response_hours_must_be_positive(db_session: AsyncSession) -> None:
    sla = await any_sla(db_session)
    sla.response_hours = 0
    with pytest.raises(IntegrityError, match="ck_sla_config_response_hours_positive"):
        await db_session.flush()


async def test_sla_resolution_cannot_come_before_response(db_session: AsyncSession) -> None:
    sla = await any_sla(db_session)
    sla.resolution_hours = sla.response_hours - 1
    with pytest.raises(IntegrityError, match="ck_sla_config_resolution_after_response"):
        await db_session.flush()


async def test_one_sla_row_per_service_type_and_priority(db_session: AsyncSession) -> None:
    existing = await any_sla(db_session)
    db_session.add(
        SlaConfig(
            service_type_id=existing.service_type_id,
            priority=existing.priority,
            response_hours=1,
            resolution_hours=2,
        )
    )
    with pytest.raises(IntegrityError, match="uq_sla_config_service_type_id_priority"):
        await db_session.flush()
