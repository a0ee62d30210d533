"""The reconcile command against moto's Cognito and a database of the test's own.

Each test gets a fresh pool, plants drift of each kind, and reads the command's JSON report and
exit status; pages of two users make every listing take several pages. The repairs that could
widen access (a role from a Cognito group, re-enabling a user disabled in Cognito, removing a
user a create is adopting) are each tried and must not happen.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.cli.reconcile import run_check_pool, run_reconcile
from app.core.config import Settings
from app.core.roles import Role
from app.schemas.user import UserCreate
from app.services.adoption import ADOPTABLE_AFTER
from app.services.cognito import CognitoUserPool
from app.services.reconcile import DEFAULT_OUTBOX_THRESHOLD, OrphanAction
from tests.support.app_env import cli_environment, run_cli
from tests.support.database import execute_sql
from tests.support.harness import add_user, make_settings
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
        adoption: UserCreate | None = None,
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
            adoption=adoption,
        )
        document: dict[str, Any] = json.loads(capsys.readouterr().out)
        return status, document

    async def row_of(self, email: str) -> Any:
        """The user's row (role, province, active, sub, revoked), or None."""
        rows = await execute_sql(
            self.database_url,
            "SELECT role, responsible_province, is_active, cognito_user_id, sessions_revoked_at "
            f"FROM users WHERE email = '{email}'",
        )
        return rows[0] if rows else None


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
    enabled_id, enabled = await rig.user(label="enabled")
    await execute_sql(
        rig.database_url, f"UPDATE users SET is_active = false WHERE id = '{enabled_id}'"
    )
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
        "enabled_mismatch": enabled,
        "disabled_in_cognito": disabled,
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


async def test_a_create_in_flight_is_counted_in_flight_not_as_a_user_without_a_row(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its Cognito user exists and its row does not yet: the create (or the worker settling
    its intent) is finishing it. A stuck intent, past the threshold, is drift again."""
    await rig.user(Role.ADMIN)
    email = new_email("creating")
    rig.pool.create_user(email)
    payload = json.dumps({"email": email, "began": "2026-01-01T00:00:00+00:00"})
    await execute_sql(
        rig.database_url,
        f"INSERT INTO outbox (kind, key, payload) VALUES ('user_creation', '{email}', '{payload}')",
    )
    status, document = await rig.reconcile(capsys)
    assert (status, document["found"]["drift"], document["found"]["in_flight"]) == (0, [], 1)
    await execute_sql(
        rig.database_url, "UPDATE outbox SET created_at = now() - interval '6 minutes'"
    )
    status, document = await rig.reconcile(capsys)
    assert status == 1
    assert kinds(document["found"]) == {"cognito_user_without_row": {email}}


async def test_a_difference_is_confirmed_against_the_pending_work_as_it_is_now(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    """A role change recorded after the snapshot of pending work, before the confirming read:
    in flight, not drift."""
    user_id, email = await rig.user(Role.DISPATCHER)
    rig.pool.client.admin_add_user_to_group(
        UserPoolId=rig.pool.user_pool_id, Username=email, GroupName="OFFICER"
    )
    adapter = rig.pool.adapter()

    def change_recorded_meanwhile(**_: object) -> None:
        asyncio.run(rig.outbox_row(user_id, minutes_ago=0))

    adapter._client.meta.events.register(
        "before-send.cognito-idp.AdminGetUser",
        change_recorded_meanwhile,  # type: ignore[arg-type]
    )
    status, document = await rig.reconcile(capsys, cognito=adapter)
    assert (status, document["found"]["drift"]) == (0, [])


async def test_a_late_disable_awaiting_its_read_back_is_in_flight_not_disabled_wins(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    """A disable that landed after the reactivation, with the worker's read-back of the user
    still due: the worker will enable the user; reconcile --apply must not deactivate it."""
    await rig.user(Role.ADMIN)
    user_id, email = await rig.user(Role.DISPATCHER)
    rig.pool.client.admin_disable_user(UserPoolId=rig.pool.user_pool_id, Username=email)
    await execute_sql(
        rig.database_url,
        "INSERT INTO outbox (kind, key, payload, next_attempt_at) VALUES "
        f"""('directory', '{user_id}', '{{"settle_check": true}}', now() + interval '8 s')""",
    )
    status, document = await rig.reconcile(capsys, apply=True)
    assert (status, document["found"]["drift"], document["found"]["in_flight"]) == (0, [], 1)
    row = await rig.row_of(email)
    assert (row.is_active, row.sessions_revoked_at) == (True, None)


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
    assert rig.pool.find(planted["enabled_mismatch"])["Enabled"] is False  # type: ignore[index]
    # Disabled wins: the row is deactivated, the Cognito user stays disabled.
    assert rig.pool.find(planted["disabled_in_cognito"])["Enabled"] is False  # type: ignore[index]
    assert (await rig.row_of(planted["disabled_in_cognito"])).is_active is False
    assert rig.pool.groups_of(planted["groups_mismatch"]) == {"DISPATCHER"}
    pending = await execute_sql(rig.database_url, "SELECT count(*) FROM outbox")
    # The stale row was carried out; the in-flight one is the worker's, and so is the one the
    # deactivation recorded (it signs the user out everywhere).
    assert pending[0][0] == 2
    assert len(document["repairs"]["done"]) == 4
    # The orphan is still there, untouched.
    assert rig.pool.find(planted["cognito_user_without_row"]) is not None


async def test_a_user_disabled_in_cognito_is_deactivated_unless_a_reactivation_is_pending(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    _, disabled = await rig.user(Role.ADMIN, label="console-disabled")
    await rig.user(Role.ADMIN)
    reactivated_id, reactivated = await rig.user(label="reactivated")
    for email in (disabled, reactivated):
        rig.pool.client.admin_disable_user(UserPoolId=rig.pool.user_pool_id, Username=email)
    # An admin reactivated this user; Cognito has failed to follow for ten minutes.
    await rig.outbox_row(reactivated_id, minutes_ago=10)

    status, document = await rig.reconcile(capsys)
    assert status == 1
    assert kinds(document["found"]) == {
        "disabled_in_cognito": {disabled, reactivated},
        "stale_outbox": {reactivated},
    }

    status, document = await rig.reconcile(capsys, apply=True)
    # Disabled wins: the row is deactivated and its sessions revoked; Cognito stays disabled.
    row = await rig.row_of(disabled)
    assert (row.is_active, row.sessions_revoked_at is not None) == (False, True)
    assert rig.pool.find(disabled)["Enabled"] is False  # type: ignore[index]
    # The pending reactivation is the worker's: the row stays active, Cognito untouched here.
    row = await rig.row_of(reactivated)
    assert (row.is_active, row.sessions_revoked_at) == (True, None)
    assert rig.pool.find(reactivated)["Enabled"] is False  # type: ignore[index]
    assert "a reactivation is pending" in "\n".join(document["repairs"]["skipped"])
    assert status == 1
    assert kinds(document["remaining"]) == kinds(
        {"drift": [i for i in document["found"]["drift"] if i["email"] == reactivated]}
    )


async def test_an_orphan_in_the_admin_group_is_adopted_only_with_the_role_the_operator_names(
    rig: Rig, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    await rig.user(Role.ADMIN)
    grouped, officer = new_email("admin-group"), new_email("officer")
    # Made in the console with a temporary password someone knows.
    sub = rig.pool.create_user(grouped, role=Role.ADMIN, password="Known-To-Someone-1!")
    rig.pool.create_user(officer, role=Role.ADMIN)
    for email in (grouped, officer):
        rig.pool.make_older(email, ADOPTABLE_AFTER * 2)

    # A role from the Cognito group: the command line has no such option any more.
    by_group = await asyncio.to_thread(
        command, rig.database_url, rig.pool, tmp_path, "--apply", "--orphans", "adopt", "--json"
    )
    assert by_group.returncode == 2, by_group.stdout
    no_role = await asyncio.to_thread(
        command, rig.database_url, rig.pool, tmp_path, "--apply", "--adopt", grouped
    )
    assert no_role.returncode == 2
    assert "--adopt needs --role" in no_role.stderr
    # Without an explicit role: reported, never adopted, never touched.
    status, document = await rig.reconcile(capsys, apply=True)
    assert status == 1
    assert await rig.row_of(grouped) is None
    assert rig.pool.signs_in(grouped, "Known-To-Someone-1!")
    assert "--adopt EMAIL --role ROLE" in "\n".join(document["repairs"]["skipped"])

    # With one: adopted with that role, whatever the group says; Cognito follows the row.
    adopted = await asyncio.to_thread(
        command,
        rig.database_url,
        rig.pool,
        tmp_path,
        "--apply",
        "--adopt",
        grouped.upper(),
        "--role",
        "EXECUTIVE",
        "--json",
    )
    assert adopted.returncode == 1, adopted.stdout + adopted.stderr  # the officer is left
    row = await rig.row_of(grouped)
    assert (row.role, row.is_active, row.cognito_user_id) == ("EXECUTIVE", True, sub)
    outbox = await execute_sql(
        rig.database_url,
        "SELECT count(*) FROM outbox JOIN users ON users.id::text = outbox.key "
        f"WHERE users.email = '{grouped}'",
    )
    assert outbox[0][0] == 1
    assert "adopted as EXECUTIVE" in "\n".join(json.loads(adopted.stdout)["repairs"]["done"])
    # Adopted with a new temporary password: the one known before no longer signs in.
    assert not rig.pool.signs_in(grouped, "Known-To-Someone-1!")

    # An OFFICER needs the province, as a create through the API does.
    no_province = await asyncio.to_thread(
        command,
        rig.database_url,
        rig.pool,
        tmp_path,
        "--apply",
        "--adopt",
        officer,
        "--role",
        "OFFICER",
    )
    assert no_province.returncode == 2
    assert "responsible_province is required" in no_province.stderr
    status, document = await rig.reconcile(
        capsys,
        apply=True,
        adoption=UserCreate(
            email=officer,
            role=Role.OFFICER,
            responsible_province="Chiang Mai",
            full_name="Adopted Officer",
        ),
    )
    assert status == 0, document
    row = await rig.row_of(officer)
    assert (row.role, row.responsible_province) == ("OFFICER", "Chiang Mai")
    # Naming a user that is no orphan adopts nothing, and says so.
    status, document = await rig.reconcile(
        capsys,
        apply=True,
        adoption=UserCreate(email=new_email("nobody"), role=Role.ADMIN, full_name="Nobody"),
    )
    assert "no Cognito user without a row has this email" in document["repairs"]["skipped"][0]


async def test_orphans_that_never_signed_in_can_be_removed_and_others_never(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    removable, signed_in, young = new_email("removable"), new_email("signed-in"), new_email("young")
    rig.pool.create_user(removable, role=Role.DISPATCHER)
    rig.pool.create_user(signed_in, role=Role.DISPATCHER, confirmed=True)
    for email in (removable, signed_in):
        rig.pool.make_older(email, ADOPTABLE_AFTER * 2)
    # Younger than the adoption rule's age: a create in flight may own it.
    rig.pool.create_user(young, role=Role.DISPATCHER)
    status, document = await rig.reconcile(capsys, apply=True, orphans=OrphanAction.REMOVE)
    assert status == 1
    assert rig.pool.find(removable) is None
    assert rig.pool.find(signed_in) is not None
    assert rig.pool.find(young) is not None
    assert kinds(document["remaining"]) == {"cognito_user_without_row": {signed_in, young}}
    skipped = "\n".join(document["repairs"]["skipped"])
    assert "has signed in" in skipped
    assert "created moments ago" in skipped


def reads_of(
    adapter: CognitoUserPool, during: int = 0, action: Callable[[], None] | None = None
) -> dict[str, int]:
    """Count the adapter's AdminGetUser calls, and those before its first AdminDeleteUser; run
    `action` while the `during`-th read (1-based) is on its way to Cognito."""
    counts = {"reads": 0, "before_delete": -1}

    def read(**_: object) -> None:
        counts["reads"] += 1
        if action is not None and counts["reads"] == during:
            action()

    def delete(**_: object) -> None:
        if counts["before_delete"] < 0:
            counts["before_delete"] = counts["reads"]

    events = adapter._client.meta.events
    events.register("before-send.cognito-idp.AdminGetUser", read)  # type: ignore[arg-type]
    events.register("before-send.cognito-idp.AdminDeleteUser", delete)  # type: ignore[arg-type]
    return counts


async def test_an_orphan_a_create_adopts_meanwhile_is_not_removed(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    # How many times the removal reads the Cognito user before it deletes it.
    first = new_email("first")
    rig.pool.create_user(first, role=Role.DISPATCHER)
    rig.pool.make_older(first, ADOPTABLE_AFTER * 2)
    counts = reads_of(adapter := rig.pool.adapter())
    await rig.reconcile(capsys, apply=True, orphans=OrphanAction.REMOVE, cognito=adapter)
    assert rig.pool.find(first) is None
    assert counts["before_delete"] >= 1

    # A create adopts the orphan (its row commits) while the removal reads it, the last time
    # before the delete included: the removal sees the row and leaves the user alone.
    for during in range(1, counts["before_delete"] + 1):
        email = new_email(f"adopted-during-read-{during}")
        sub = rig.pool.create_user(email, role=Role.DISPATCHER)
        rig.pool.make_older(email, ADOPTABLE_AFTER * 2)

        def adopt(email: str = email, sub: str = sub) -> None:
            # In boto3's thread, with a loop of its own: the row commits before the read ends.
            asyncio.run(add_user(rig.database_url, Role.DISPATCHER, email=email, sub=sub))

        reads_of(adapter := rig.pool.adapter(), during, adopt)
        status, document = await rig.reconcile(
            capsys, apply=True, orphans=OrphanAction.REMOVE, cognito=adapter
        )
        assert rig.pool.find(email) is not None, f"removed though adopted during read {during}"
        assert (await rig.row_of(email)).cognito_user_id == sub
        assert "a row refers to it now" in "\n".join(document["repairs"]["skipped"])
        assert status == 0


async def test_apply_with_everything_repairable_ends_in_step_with_exit_0(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    _, disabled = await rig.user(label="disabled")
    rig.pool.client.admin_disable_user(UserPoolId=rig.pool.user_pool_id, Username=disabled)
    status, document = await rig.reconcile(capsys, apply=True)
    assert (status, document["status"]) == (0, "in_step")
    assert rig.pool.find(disabled)["Enabled"] is False  # type: ignore[index]
    assert (await rig.row_of(disabled)).is_active is False


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
