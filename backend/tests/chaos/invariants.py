"""The invariants a chaos run judges, each a function of what was recorded or what is there now.

A violation is a line that says what broke, for whom, and when (seconds since the run began).
Nothing here is judged where the harness cannot know the truth: a deactivation counts only when
the harness knows the user was active when it was sent (see `tests.chaos.run`), and a /health
probe of an instance that was being killed is not the app's to answer.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from app.services.cognito import ROLE_GROUPS
from tests.chaos.record import HealthProbe, MeCall, Recorder
from tests.chaos.stack import Instance, harness_connection, pending_background_work

# The design's bound on /health (its 2 s database check), plus 1 s for a loaded 2-core host.
HEALTH_BOUND_SECONDS: Final = 3.0
# A /health probe may answer 503 this long after the harness cut the apps' database sessions:
# the probe's own connection may be among them.
SESSIONS_CUT_GRACE_SECONDS: Final = 3.0


@dataclass
class Verdict:
    name: str
    violations: list[str]
    # False when it could not be judged (what it needs did not happen): it fails the run too.
    judged: bool = True

    @property
    def ok(self) -> bool:
        return self.judged and not self.violations


def honest_errors(recorder: Recorder) -> Verdict:
    """No 500 (or any 5xx but 503) ever; every 503 of the API says when to retry."""
    return Verdict(
        "no 500 ever; every API 503 carries Retry-After",
        [*recorder.server_errors, *recorder.unhonest_503s],
    )


def sessions_end_for_good(calls: Iterable[MeCall], t0: float) -> Verdict:
    """No token of a session begun before a deactivation is accepted after its answer.

    "Begun before" is strict: the sign-in's answer arrived before the deactivation was sent. A
    token accepted is a violation when its request was sent after the deactivation answered.
    """
    broken: dict[tuple[int, int], list[MeCall]] = defaultdict(list)
    for call in calls:
        for index, deactivation in enumerate(call.session.user.deactivations):
            if call.session.began < deactivation.sent and deactivation.answered < call.sent:
                broken[(id(call.session), index)].append(call)
    violations = []
    for (_, index), accepted in broken.items():
        session = accepted[0].session
        deactivation = session.user.deactivations[index]
        refreshed = sum(1 for call in accepted if call.token_iat != session.auth_time)
        first = accepted[0]
        violations.append(
            f"{session.user.email}: session signed in at {session.began - t0:.2f} s "
            f"(auth_time {session.auth_time}), deactivated (through {deactivation.instance}) "
            f"sent {deactivation.sent - t0:.2f} s, answered {deactivation.answered - t0:.2f} s; "
            f"{len(accepted)} call(s) answered 200 after it ({refreshed} with a refreshed "
            f"token), the first sent {first.sent - t0:.2f} s through {first.instance}"
        )
    return Verdict("sessions end for good", violations)


def health_never_starved(
    probes: Iterable[HealthProbe], instances: dict[str, Instance], cuts: list[float], t0: float
) -> Verdict:
    """Every /health probe of a running instance answered within the bound, 200 or 503, and
    503 only just after the harness cut the database sessions (the database stays up through
    every fault of the run: locks do not touch `SELECT 1`, and a read-only server answers it)."""
    violations = []
    for probe in probes:
        if instances[probe.instance].was_down(probe.sent, probe.answered):
            continue  # killed: the ALB's own probe would fail too, and drain it
        took = probe.answered - probe.sent
        where = f"/health of {probe.instance} sent {probe.sent - t0:.2f} s"
        if probe.status is None:
            violations.append(f"{where}: no answer after {took:.2f} s")
        elif took > HEALTH_BOUND_SECONDS:
            violations.append(f"{where}: {probe.status} after {took:.2f} s")
        elif probe.status == 503:
            if not any(
                probe.sent - SESSIONS_CUT_GRACE_SECONDS <= cut <= probe.answered for cut in cuts
            ):
                violations.append(f"{where}: 503 while the database was up")
        elif probe.status != 200:
            violations.append(f"{where}: {probe.status}")
    return Verdict("/health never starved", violations)


async def directory_findings(
    database_url: str, cognito: Any, pool_id: str
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """What is out of step now: orphans either side, Cognito's enabled state and role group
    against each row, and work the apps still owe Cognito. Also the rows, by email."""
    async with harness_connection(database_url) as connection:
        rows = await connection.fetch(
            "SELECT cognito_user_id, lower(email) AS email, role, is_active, "
            "extract(epoch FROM created_at)::float8 AS created FROM users"
        )
    by_sub = {str(row["cognito_user_id"]): dict(row) for row in rows}
    cognito_users = await asyncio.to_thread(_all_cognito_users, cognito, pool_id)
    findings = []
    for sub, user in sorted(cognito_users.items()):
        if sub not in by_sub:
            findings.append(
                f"orphan in Cognito: {user['email']} ({user['status']}, "
                f"{'enabled' if user['enabled'] else 'disabled'}) has no row"
            )
    for sub, row in sorted(by_sub.items()):
        found = cognito_users.get(sub)
        if found is None:
            findings.append(f"orphan row: {row['email']} has no Cognito user")
            continue
        if found["enabled"] != row["is_active"]:
            findings.append(
                f"{row['email']}: Cognito {'enabled' if found['enabled'] else 'disabled'}, "
                f"row {'active' if row['is_active'] else 'inactive'}"
            )
        groups = await asyncio.to_thread(_role_groups, cognito, pool_id, found["username"])
        if groups != {row["role"]}:
            findings.append(
                f"{row['email']}: Cognito role groups {sorted(groups)}, row role {row['role']}"
            )
    pending = await pending_background_work(database_url)
    if any(pending.values()):
        findings.append(f"work still pending: {pending}")
    return findings, {str(row["email"]): dict(row) for row in rows}


def _all_cognito_users(cognito: Any, pool_id: str) -> dict[str, dict[str, Any]]:
    users: dict[str, dict[str, Any]] = {}
    arguments: dict[str, Any] = {"UserPoolId": pool_id, "Limit": 60}
    while True:
        page = cognito.list_users(**arguments)
        for user in page["Users"]:
            attributes = {a["Name"]: a["Value"] for a in user.get("Attributes", [])}
            users[attributes["sub"]] = {
                "username": user["Username"],
                "email": attributes.get("email", user["Username"]),
                "enabled": user["Enabled"],
                "status": user["UserStatus"],
            }
        if not page.get("PaginationToken"):
            return users
        arguments["PaginationToken"] = page["PaginationToken"]


def _role_groups(cognito: Any, pool_id: str, username: str) -> set[str]:
    response = cognito.admin_list_groups_for_user(UserPoolId=pool_id, Username=username)
    return {group["GroupName"] for group in response["Groups"]} & set(ROLE_GROUPS)


def reconcile_findings(exit_status: int, stdout: str, stderr: str) -> list[str]:
    """`reconcile --json`'s report: nothing, when it found no drift."""
    try:
        document = json.loads(stdout)
    except ValueError:
        return [f"reconcile --json: exit {exit_status}, no JSON: {stderr.strip()[-300:]}"]
    if exit_status == 0 and document.get("status") == "in_step":
        return []
    drift = document.get("found", {}).get("drift", document.get("reason"))
    return [f"reconcile --json: exit {exit_status}, {document.get('status')}: {drift}"]


def no_false_email_taken(
    refusals: list[tuple[str, float, float]], rows: dict[str, Any], t0: float
) -> Verdict:
    """A create refused as `email_taken` while no row held the email, judged at the moment it
    was answered: the row that holds it now (rows are never deleted) must have been created
    before the answer (its transaction began before it; same host, one clock)."""
    violations = []
    for email, at, wall in refusals:
        row = rows.get(email)
        if row is None:
            violations.append(
                f"create of {email} answered 409 email_taken at {at - t0:.2f} s; no row holds it"
            )
        elif row["created"] > wall:
            violations.append(
                f"create of {email} answered 409 email_taken at {at - t0:.2f} s; its row was "
                f"created {row['created'] - wall:.2f} s after that answer"
            )
    return Verdict("409 email_taken only when a row holds the email", violations)


def every_fault_fired(
    kinds: Iterable[str], fired: Counter[str], proxied: Iterable[str], injected: Counter[str]
) -> Verdict:
    """Each kind of fault happened at least once (a Cognito kind: met by at least one call)."""
    proxied = set(proxied)
    return Verdict(
        "every fault kind fired",
        [
            f"{kind} never fired"
            for kind in kinds
            if fired[kind] == 0 or (kind in proxied and injected[kind] == 0)
        ],
    )


def error_lines(instances: Iterable[Instance]) -> int:
    """Lines the apps logged at ERROR (reported, not judged: an undo that failed under a
    fault is worth a look, not necessarily a broken invariant)."""
    return sum(
        instance.log_path.read_text(errors="replace").count('"level": "ERROR"')
        for instance in instances
        if instance.log_path.exists()
    )
