"""The reconcile command against moto's Cognito and a database of the test's own.

Each test gets a fresh pool, plants drift of each kind, and reads the command's JSON report and
exit status; pages of two users make every listing take several pages.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.cli.reconcile import run_check_pool, run_reconcile
from app.core.config import Settings
from app.core.roles import Role
from app.services.cognito import CognitoUserPool
from app.services.reconcile import DEFAULT_OUTBOX_THRESHOLD, OrphanAction
from app.services.user_creation import ADOPTABLE_AFTER
from tests.api.conftest import make_settings
from tests.hardening.harness import add_user, execute_sql
from tests.support.app_env import cli_environment, run_cli
from tests.support.moto_cognito import (
    MotoCognito,
    PoolKind,
    cognito_client,
    create_pool,
    moto_cognito_server,
    unreachable_endpoint,
)

PAGE_SIZE = 2
# The code under test, whatever the interpreter's installed copy of the package is.
BACKEND_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_cognito_server() as url:
        yield url


def fresh_pool(endpoint: str, kind: PoolKind = "email_username") -> MotoCognito:
    client = cognito_client(endpoint)
    return MotoCognito(endpoint, create_pool(client, kind), client, kind)


def new_email(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}@example.gov"


@dataclass
class Rig:
    pool: MotoCognito
    database_url: str

    @property
    def settings(self) -> Settings:
        return make_settings(self.database_url, cognito_user_pool_id=self.pool.user_pool_id)

    async def user(
        self, role: Role = Role.DISPATCHER, *, label: str = "in-step", active: bool = True
    ) -> tuple[str, str]:
        """A user in step on both sides (signed in); (row id, email)."""
        email = new_email(label)
        sub = self.pool.create_user(email, role=role, confirmed=True)
        row = await add_user(self.database_url, role, email=email, sub=sub)
        if not active:
            await execute_sql(
                self.database_url, f"UPDATE users SET is_active = false WHERE id = '{row.id}'"
            )
            self.pool.client.admin_disable_user(UserPoolId=self.pool.user_pool_id, Username=email)
        return str(row.id), email

    async def outbox_row(self, user_id: str, minutes_ago: float) -> None:
        await execute_sql(
            self.database_url,
            "INSERT INTO outbox (kind, key, created_at) VALUES "
            f"('directory', '{user_id}', now() - interval '{minutes_ago} minutes')",
        )

    async def reconcile(
        self,
        capsys: pytest.CaptureFixture[str],
        *,
        apply: bool = False,
        orphans: OrphanAction = OrphanAction.REPORT,
        cognito: CognitoUserPool | None = None,
        settings: Settings | None = None,
    ) -> tuple[int, dict[str, Any]]:
        capsys.readouterr()
        status = await run_reconcile(
            settings or self.settings,
            cognito or self.pool.adapter(),
            apply=apply,
            orphans=orphans,
            threshold=DEFAULT_OUTBOX_THRESHOLD,
            as_json=True,
            page_size=PAGE_SIZE,
        )
        document: dict[str, Any] = json.loads(capsys.readouterr().out)
        return status, document


def kinds(report: dict[str, Any]) -> dict[str, set[str]]:
    """Each kind of drift in a report, with the emails it names."""
    found: dict[str, set[str]] = {}
    for item in report["drift"]:
        found.setdefault(item["kind"], set()).add(item["email"])
    return found


@pytest.fixture
def rig(endpoint: str, fresh_database_url: str) -> Rig:
    return Rig(fresh_pool(endpoint), fresh_database_url)


async def plant_every_kind(rig: Rig) -> dict[str, str]:
    """Five users in step, and one of each kind of drift; the emails by kind."""
    for role in Role:
        await rig.user(role)
    await rig.user(Role.EXECUTIVE, active=False)
    orphan = new_email("orphan")
    rig.pool.create_user(orphan, role=Role.EXECUTIVE)
    no_cognito = new_email("no-cognito")
    await add_user(rig.database_url, Role.ADMIN, email=no_cognito, sub=str(uuid.uuid4()))
    _, disabled = await rig.user(label="disabled")
    rig.pool.client.admin_disable_user(UserPoolId=rig.pool.user_pool_id, Username=disabled)
    _, regrouped = await rig.user(Role.DISPATCHER, label="regrouped")
    pool_id = rig.pool.user_pool_id
    rig.pool.client.admin_remove_user_from_group(
        UserPoolId=pool_id, Username=regrouped, GroupName="DISPATCHER"
    )
    rig.pool.client.admin_add_user_to_group(
        UserPoolId=pool_id, Username=regrouped, GroupName="OFFICER"
    )
    stale_id, stale = await rig.user(Role.OFFICER, label="stale")
    await rig.outbox_row(stale_id, minutes_ago=10)
    # Out of step, but the worker is on it: not drift.
    busy_id, busy = await rig.user(label="in-flight")
    rig.pool.client.admin_disable_user(UserPoolId=pool_id, Username=busy)
    await rig.outbox_row(busy_id, minutes_ago=0)
    return {
        "cognito_user_without_row": orphan,
        "row_without_cognito_user": no_cognito,
        "enabled_mismatch": disabled,
        "groups_mismatch": regrouped,
        "stale_outbox": stale,
    }


async def test_a_pool_and_table_in_step_exit_0(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    for role in Role:
        await rig.user(role)
    await rig.user(Role.OFFICER, active=False)
    status, document = await rig.reconcile(capsys)
    assert (status, document["status"]) == (0, "in_step")
    assert document["found"]["cognito_users"] == document["found"]["rows"] == 5
    assert document["found"]["drift"] == []


@pytest.mark.parametrize("kind", ["email_username", "email_alias", "plain"])
async def test_every_kind_of_drift_is_reported_with_exit_1(
    endpoint: str, fresh_database_url: str, capsys: pytest.CaptureFixture[str], kind: PoolKind
) -> None:
    rig = Rig(fresh_pool(endpoint, kind), fresh_database_url)
    planted = await plant_every_kind(rig)
    status, document = await rig.reconcile(capsys)
    assert (status, document["status"]) == (1, "drift")
    assert kinds(document["found"]) == {kind: {email} for kind, email in planted.items()}
    assert document["found"]["in_flight"] == 1
    [orphan] = [i for i in document["found"]["drift"] if i["kind"] == "cognito_user_without_row"]
    assert "FORCE_CHANGE_PASSWORD" in orphan["detail"]
    assert orphan["cognito_username"]
    # Reporting changes nothing.
    again_status, again = await rig.reconcile(capsys)
    assert (again_status, kinds(again["found"])) == (1, kinds(document["found"]))


async def test_apply_repairs_what_is_safe_and_reports_the_rest(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    planted = await plant_every_kind(rig)
    status, document = await rig.reconcile(capsys, apply=True)
    # Drift remains: the orphan (report only by default) and the row without a Cognito user.
    assert status == 1
    assert kinds(document["remaining"]) == {
        "cognito_user_without_row": {planted["cognito_user_without_row"]},
        "row_without_cognito_user": {planted["row_without_cognito_user"]},
    }
    assert rig.pool.find(planted["enabled_mismatch"])["Enabled"] is True  # type: ignore[index]
    assert rig.pool.groups_of(planted["groups_mismatch"]) == {"DISPATCHER"}
    pending = await execute_sql(rig.database_url, "SELECT count(*) FROM outbox")
    # The stale row was carried out; the in-flight one is the worker's.
    assert pending[0][0] == 1
    assert len(document["repairs"]["done"]) == 3
    # The orphan is still there, untouched.
    assert rig.pool.find(planted["cognito_user_without_row"]) is not None


async def test_orphans_that_never_signed_in_are_adopted_with_their_groups_role(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    await rig.user(Role.ADMIN)
    adoptable, two_groups, officer, signed_in, young = (
        new_email(label) for label in ("adoptable", "two-groups", "officer", "signed-in", "young")
    )
    rig.pool.create_user(adoptable, role=Role.EXECUTIVE)
    rig.pool.create_user(two_groups, role=Role.EXECUTIVE)
    rig.pool.client.admin_add_user_to_group(
        UserPoolId=rig.pool.user_pool_id, Username=two_groups, GroupName="ADMIN"
    )
    rig.pool.create_user(officer, role=Role.OFFICER)
    rig.pool.create_user(signed_in, role=Role.EXECUTIVE, confirmed=True)
    for email in (adoptable, two_groups, officer, signed_in):
        rig.pool.make_older(email, ADOPTABLE_AFTER * 2)
    rig.pool.create_user(young, role=Role.EXECUTIVE)

    status, document = await rig.reconcile(capsys, apply=True, orphans=OrphanAction.ADOPT)
    assert status == 1
    assert kinds(document["remaining"]) == {
        "cognito_user_without_row": {two_groups, officer, signed_in, young}
    }
    rows = await execute_sql(
        rig.database_url,
        f"SELECT role, is_active, cognito_user_id FROM users WHERE email = '{adoptable}'",
    )
    assert [(row.role, row.is_active) for row in rows] == [("EXECUTIVE", True)]
    assert rows[0].cognito_user_id == rig.pool.find(adoptable)["attributes"]["sub"]  # type: ignore[index]
    skipped = "\n".join(document["repairs"]["skipped"])
    assert "2 role groups" in skipped
    assert "OFFICER needs a responsible province" in skipped
    assert "has signed in" in skipped
    assert "created moments ago" in skipped


async def test_orphans_that_never_signed_in_can_be_removed_and_others_never(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    removable, signed_in = new_email("removable"), new_email("signed-in")
    rig.pool.create_user(removable, role=Role.DISPATCHER)
    rig.pool.create_user(signed_in, role=Role.DISPATCHER, confirmed=True)
    for email in (removable, signed_in):
        rig.pool.make_older(email, ADOPTABLE_AFTER * 2)
    status, document = await rig.reconcile(capsys, apply=True, orphans=OrphanAction.REMOVE)
    assert status == 1
    assert rig.pool.find(removable) is None
    assert rig.pool.find(signed_in) is not None
    assert kinds(document["remaining"]) == {"cognito_user_without_row": {signed_in}}


async def test_apply_with_everything_repairable_ends_in_step_with_exit_0(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    _, disabled = await rig.user(label="disabled")
    rig.pool.client.admin_disable_user(UserPoolId=rig.pool.user_pool_id, Username=disabled)
    status, document = await rig.reconcile(capsys, apply=True)
    assert (status, document["status"]) == (0, "in_step")
    assert rig.pool.find(disabled)["Enabled"] is True  # type: ignore[index]


async def test_what_cannot_be_checked_exits_2(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    await rig.user()
    unreachable = CognitoUserPool(cognito_client(unreachable_endpoint()), rig.pool.user_pool_id)
    unknown_pool = CognitoUserPool(rig.pool.new_client(), "ap-southeast-1_NoSuchPool")
    no_database = make_settings(
        "postgresql+asyncpg://nobody:unused@127.0.0.1:1/none",
        cognito_user_pool_id=rig.pool.user_pool_id,
    )
    for cognito, settings, reason in [
        (unreachable, None, "Cognito"),
        (unknown_pool, None, "misconfigured"),
        (None, no_database, "database is unreachable"),
    ]:
        status, document = await rig.reconcile(capsys, cognito=cognito, settings=settings)
        assert (status, document["status"]) == (2, "cannot_check")
        assert reason in document["reason"]


# -- the command line, as the systemd timer runs it ------------------------------------------


def command(
    database_url: str, pool: MotoCognito, cwd: Path, *arguments: str
) -> subprocess.CompletedProcess[str]:
    """`python -m app.cli.reconcile ...` with only the environment the API would have."""
    client_id = pool.client.create_user_pool_client(
        UserPoolId=pool.user_pool_id,
        ClientName="spa",
        ExplicitAuthFlows=["ALLOW_USER_SRP_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
    )["UserPoolClient"]["ClientId"]
    environment = cli_environment(database_url, pool, COGNITO_APP_CLIENT_ID=client_id)
    return run_cli("app.cli.reconcile", environment, cwd, *arguments)


async def test_the_command_line_reports_drift_and_checks_the_pool(rig: Rig, tmp_path: Path) -> None:
    await rig.user()
    orphan = new_email("orphan")
    rig.pool.create_user(orphan, role=Role.ADMIN)
    run = await asyncio.to_thread(command, rig.database_url, rig.pool, tmp_path, "--json")
    assert run.returncode == 1, run.stderr
    assert kinds(json.loads(run.stdout)["found"]) == {"cognito_user_without_row": {orphan}}

    text = await asyncio.to_thread(command, rig.database_url, rig.pool, tmp_path)
    assert text.returncode == 1
    assert f"drift: cognito_user_without_row: {orphan}" in text.stdout

    check = await asyncio.to_thread(
        command, rig.database_url, rig.pool, tmp_path, "--check-pool", "--json"
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["username_mode"] == "email as username"
    rig.pool.client.delete_group(UserPoolId=rig.pool.user_pool_id, GroupName="OFFICER")
    broken = await asyncio.to_thread(command, rig.database_url, rig.pool, tmp_path, "--check-pool")
    assert broken.returncode == 1
    assert "the group OFFICER is missing" in broken.stdout


async def test_check_pool_that_cannot_reach_cognito_exits_2(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    unreachable = CognitoUserPool(cognito_client(unreachable_endpoint()), "ap-southeast-1_x")
    assert await run_check_pool(rig.settings, unreachable, as_json=True) == 2
    assert json.loads(capsys.readouterr().out)["status"] == "cannot_check"
