"""Reference data seeded by the initial migration."""

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import CasePriority, RefComplaintType, RefServiceType, SlaConfig


async def test_twelve_service_types_with_stable_codes(db_session: AsyncSession) -> None:
    codes = (await db_session.scalars(sa.select(RefServiceType.code))).all()
    assert len(codes) == 12
    assert {"ROADS", "WATER", "ELECTRICITY", "HEALTH", "POLICE"} <= set(codes)
    assert all(
        service_type.is_active
        for service_type in await db_session.scalars(sa.select(RefServiceType))
    )


async def test_every_service_type_has_two_to_four_complaint_types(
    db_session: AsyncSession,
) -> None:
    result = await db_session.execute(
        sa.select(RefServiceType.code, sa.func.count(RefComplaintType.id))
        .outerjoin(RefComplaintType)
        .group_by(RefServiceType.code)
    )
    counts = {code: count for code, count in result}
    assert len(counts) == 12
    assert all(2 <= count <= 4 for count in counts.values()), counts


async def test_every_complaint_type_belongs_to_an_existing_service_type(
    db_session: AsyncSession,
) -> None:
    orphans = await db_session.scalar(
        sa.select(sa.func.count())
        .select_from(RefComplaintType)
        .outerjoin(RefServiceType)
        .where(RefServiceType.id.is_(None))
    )
    assert orphans == 0
    total = await db_session.scalar(sa.select(sa.func.count()).select_from(RefComplaintType))
    assert total is not None
    assert total > 0


async def test_sla_for_every_service_type_and_priority(db_session: AsyncSession) -> None:
    rows = (
        await db_session.execute(
            sa.select(
                RefServiceType.code,
                SlaConfig.priority,
                SlaConfig.response_hours,
                SlaConfig.resolution_hours,
            ).join(SlaConfig.service_type)
        )
    ).all()
    service_codes = set((await db_session.scalars(sa.select(RefServiceType.code))).all())
    assert sorted((code, priority) for code, priority, _, _ in rows) == sorted(
        (code, priority) for code in service_codes for priority in CasePriority
    )
    hours = {
        (code, priority): (response, resolution) for code, priority, response, resolution in rows
    }
    for code in service_codes:
        by_urgency = [hours[code, priority] for priority in reversed(CasePriority)]
        assert by_urgency == sorted(by_urgency), f"{code}: more urgent must not be slower"


async def test_handlers_and_closure_reasons_are_seeded(db_session: AsyncSession) -> None:
    for table in ("ref_handlers", "ref_closure_reasons"):
        count = await db_session.scalar(sa.text(f"SELECT count(*) FROM {table}"))
        assert count is not None
        assert 4 <= count <= 8


async def test_new_reference_rows_do_not_collide_with_seeded_ids(db_session: AsyncSession) -> None:
    service_type = RefServiceType(code="ANIMALS", name="Animal welfare", sort_order=130)
    db_session.add(service_type)
    await db_session.flush()
    # Sequences are not transactional, so another test's insert may have taken 13 already:
    # what matters is that the id lands after the seeded ones instead of colliding with them.
    assert service_type.id > 12
