"""The chaos run: mixed traffic on two instances while faults combine, then the invariants.

See the package docstring for what it proves; `python -m tests.chaos` (`__main__.py`) runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from app.core.roles import Role
from tests.chaos import invariants
from tests.chaos.proxy import COGNITO_FAULTS, CognitoFaultProxy, CognitoFaults
from tests.chaos.record import (
    UNCERTAIN_SECONDS,
    Deactivation,
    HealthProbe,
    ManagedUser,
    MeCall,
    Recorder,
    Session,
    claims_of,
)
from tests.chaos.stack import (
    Instance,
    Stack,
    cli_environment,
    hold_row_locks,
    hold_table_lock,
    instance_environment,
    kill_listeners,
    plant_unreadable_intent,
    read_only_window,
    run_cli,
)
from tests.support.moto_cognito import cognito_client, create_pool

DB_FAULTS: Final = ("db_table_lock", "db_row_lock", "db_read_only", "db_listener_killed")
# What people and timers do beside the app: a user made in the console with a known password,
# and the hourly reconcile --apply; and work a handler cannot carry out (an unreadable intent).
OUTSIDE_ACTIONS: Final = ("console_user", "reconcile_apply", "unreadable_intent")
FAULT_KINDS: Final = (*COGNITO_FAULTS, *DB_FAULTS, "instance_killed", *OUTSIDE_ACTIONS)
# Kinds of which one at a time: the database has one read-only setting, and one instance stays.
EXCLUSIVE_FAULTS: Final = frozenset({"db_read_only", "instance_killed"})
CONVERGE_WITHIN_SECONDS: Final = 60.0
# Below Nginx's 30 s proxy timeout: what a browser behind it would wait at most.
CLIENT_TIMEOUT_SECONDS: Final = 25.0
MAX_USERS: Final = 60
MAX_SESSIONS_PER_USER: Final = 4
PASSWORD: Final = "Chaos-Passw0rd!"
CONSOLE_PASSWORD: Final = "Console-Passw0rd!"
# A create makes any role but ADMIN; a re-role may make any role, ADMIN too.
CREATED_ROLES: Final = tuple(role for role in Role if role is not Role.ADMIN)
ROLES: Final = (*CREATED_ROLES, Role.ADMIN)
USERS: Final = "/api/v1/users"
ME: Final = "/api/v1/users/me"


def _conflict_code(response: httpx.Response | None) -> str | None:
    if response is None or response.status_code != 409:
        return None
    return str(response.json().get("code"))


def _says_try_again(response: httpx.Response) -> bool:
    """429, 503, or a conflict with a create of the email still in flight."""
    in_progress = _conflict_code(response) == "create_in_progress"
    return response.status_code in (429, 503) or in_progress


def _role_body(role: Role) -> dict[str, Any]:
    return {"role": role, "responsible_province": "Chiang Mai" if role is Role.OFFICER else None}


class ChaosRun:
    def __init__(self, stack: Stack, seconds: float, rng: random.Random) -> None:
        self.stack = stack
        self.seconds = seconds
        self.rng = rng
        self.recorder = Recorder()
        self.users: list[ManagedUser] = []
        self.admin_tokens: list[str] = []
        self.faults = CognitoFaults(random.Random(rng.random()))
        self.t0 = time.monotonic()
        self.creates = 0
        self.stop_admins = asyncio.Event()
        self.stop_users = asyncio.Event()
        self.admin_deadline = float("inf")
        self.background: set[asyncio.Task[Any]] = set()
        self.http = httpx.AsyncClient(
            timeout=CLIENT_TIMEOUT_SECONDS,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        self.cognito: Any = None
        self.pool_id = ""
        self.client_id = ""
        self.proxy: CognitoFaultProxy | None = None

    # -- set-up -----------------------------------------------------------------------------

    async def set_up(self) -> None:
        await self.stack.open()
        self.admin_deadline = time.monotonic() + 60
        self.cognito = cognito_client(self.stack.moto_url, max_attempts=3)
        self.pool_id = create_pool(self.cognito, "plain")
        self.client_id = self.cognito.create_user_pool_client(
            UserPoolId=self.pool_id,
            ClientName="spa",
            ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
        )["UserPoolClient"]["ClientId"]
        self.proxy = CognitoFaultProxy(self.stack.moto_url, self.faults)
        cli = self.cli_env()
        for number in (1, 2):
            email = f"chaos-admin-{number}@example.gov"
            status, out, err = await run_cli(
                cli, self.stack.workdir, "app.cli.create_admin", "--email", email, "--name", "Admin"
            )
            if status != 0:
                raise RuntimeError(f"create_admin failed ({status}): {out} {err}")
            signed_in = await asyncio.to_thread(self._sign_in, email)
            if signed_in is None:
                raise RuntimeError(f"{email} could not sign in")
            self.admin_tokens.append(signed_in["AccessToken"])
        env = instance_environment(
            self.stack.database_url,
            self.stack.moto_url,
            self.proxy.url,
            self.pool_id,
            self.client_id,
        )
        self.stack.instances = [Instance(name, env, self.stack.workdir) for name in ("a", "b")]
        for instance in self.stack.instances:
            instance.start()
        await asyncio.gather(*(instance.ready() for instance in self.stack.instances))
        # Something to work on from the first second.
        await asyncio.gather(*(self.create(self.admin_tokens[0]) for _ in range(6)))
        self.t0 = time.monotonic()

    def cli_env(self) -> dict[str, str]:
        return cli_environment(
            self.stack.database_url, self.stack.moto_url, self.pool_id, self.client_id
        )

    # -- requests -----------------------------------------------------------------------------

    def instance(self, *, other_than: Instance | None = None) -> Instance:
        """An instance that is up, as the load balancer would choose (any, if none is)."""
        up = [i for i in self.stack.instances if i.up and i is not other_than]
        return self.rng.choice(up or self.stack.instances)

    async def call(
        self,
        kind: str,
        method: str,
        path: str,
        token: str | None,
        body: dict[str, Any] | None = None,
        instance: Instance | None = None,
    ) -> tuple[httpx.Response | None, float, float, Instance]:
        instance = instance or self.instance()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        sent = time.monotonic()
        try:
            response = await self.http.request(
                method, instance.url + path, headers=headers, json=body
            )
        except httpx.HTTPError as error:
            self.recorder.count(kind, None, type(error).__name__)
            return None, sent, time.monotonic(), instance
        answered = time.monotonic()
        status = response.status_code
        self.recorder.count(kind, status)
        where = f"{kind} {method} {path} through {instance.name} at {sent - self.t0:.2f} s"
        if status >= 500 and status != 503:
            self.recorder.server_errors.append(f"{where}: {status} {response.text[:300]}")
        if status == 503 and kind != "health" and not response.headers.get("Retry-After"):
            self.recorder.unhonest_503s.append(f"{where}: 503 without Retry-After")
        return response, sent, answered, instance

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # -- the admins ---------------------------------------------------------------------------

    async def admin(self, token: str) -> None:
        operations: list[tuple[Callable[[str], Awaitable[None]], int]] = [
            (self.start_create, 3),
            (self.rename, 2),
            (self.rerole, 2),
            (self.deactivate, 3),
            (self.reactivate, 2),
            (self.reset, 1),
        ]
        actions, weights = zip(*operations, strict=True)
        while not self.stop_admins.is_set():
            action = self.rng.choices(actions, weights)[0]
            await action(token)
            await asyncio.sleep(self.rng.uniform(0.2, 0.6))

    async def start_create(self, token: str) -> None:
        if self.creates < MAX_USERS:
            self.spawn(self.create(token))
        else:
            await self.rename(token)

    async def create(self, token: str) -> None:
        """Create a user, retrying as an admin would while the answer says to retry."""
        self.creates += 1
        email = f"chaos-{self.creates:03d}-{uuid.uuid4().hex[:6]}@example.gov"
        role = self.rng.choice(CREATED_ROLES)
        body = {"full_name": f"Chaos {self.creates}", "email": email, **_role_body(role)}
        if role is not Role.OFFICER:
            del body["responsible_province"]
        while time.monotonic() < self.admin_deadline:
            response, _, answered, _ = await self.call("create", "POST", USERS, token, body)
            if response is not None and response.status_code == 201:
                created = response.json()
                self.users.append(ManagedUser(created["id"], email, created["role"]))
                return
            if response is not None and not self._retry_create(email, response, answered):
                return
            if response is not None and response.status_code == 503 and self.rng.random() < 0.2:
                # The admin gives up: the intent is settled by the worker, adopted or dropped
                # at its give-up time.
                self.recorder.abandoned_creates += 1
                return
            retry_after = response.headers.get("Retry-After", "2") if response else "2"
            await asyncio.sleep(min(max(float(retry_after), 1.0), 6.0))

    def _retry_create(self, email: str, response: httpx.Response, answered: float) -> bool:
        """Whether the create's answer says to try again; records the conflicts it judges."""
        if _says_try_again(response):
            return True
        code = _conflict_code(response)
        if code == "email_taken":
            wall = time.time() - (time.monotonic() - answered)
            self.recorder.email_taken.append((email, answered, wall))
        elif code is not None:
            self.recorder.unexpected_conflicts.append(f"create of {email}: 409 {code}")
        return False

    async def console_user(self, token: str) -> bool:
        """Someone makes a user in the console with a password they know; then an admin creates
        that email through the API. It must not become the app's user with that password."""
        email = f"console-{uuid.uuid4().hex[:10]}@example.gov"
        await asyncio.to_thread(
            self.cognito.admin_create_user,
            UserPoolId=self.pool_id,
            Username=email,
            UserAttributes=[
                {"Name": "email", "Value": email},
                {"Name": "email_verified", "Value": "true"},
            ],
            TemporaryPassword=CONSOLE_PASSWORD,
            MessageAction="SUPPRESS",
        )
        try:
            await self._create_over_a_console_user(email, token)
        finally:
            # The operator removes the user they made (it never signed in), so nothing is left
            # behind, even when the run stops this action half-way: blocking, so that no
            # cancellation skips it.
            with contextlib.suppress(Exception):
                self.cognito.admin_delete_user(UserPoolId=self.pool_id, Username=email)
        return True

    async def _create_over_a_console_user(self, email: str, token: str) -> None:
        await asyncio.sleep(1.5)  # made before the create: not the create's to adopt
        body = {"full_name": "Console", "email": email, "role": Role.DISPATCHER}
        response = None
        while time.monotonic() < self.admin_deadline:
            response, *_ = await self.call("create", "POST", USERS, token, body)
            if response is not None and not _says_try_again(response):
                break
            await asyncio.sleep(1.0)
        known_works = await asyncio.to_thread(self._temporary_password_works, email)
        code = _conflict_code(response)
        if code == "cognito_user_exists":
            if not known_works:
                self.recorder.console_users.append(f"{email}: refused, yet its password changed")
        else:
            outcome = "no answer" if response is None else f"{response.status_code} {code}"
            self.recorder.console_users.append(f"{email}: {outcome}, not 409 cognito_user_exists")

    def _temporary_password_works(self, email: str) -> bool:
        try:
            self.cognito.initiate_auth(
                ClientId=self.client_id,
                AuthFlow="USER_PASSWORD_AUTH",
                AuthParameters={"USERNAME": email, "PASSWORD": CONSOLE_PASSWORD},
            )
        except ClientError:
            return False
        return True

    async def reconcile_apply(self) -> bool:
        """`reconcile --apply`, as its hourly timer runs it, in the middle of everything."""
        status, _, err = await run_cli(
            self.cli_env(), self.stack.workdir, "app.cli.reconcile", "--apply", "--json"
        )
        if status not in (0, 1, 2) or "Traceback" in err:
            self.recorder.reconcile_runs.append(f"exit {status}: {err.strip()[-300:]}")
        return True

    def target(self, wanted: Callable[[ManagedUser], bool]) -> ManagedUser | None:
        candidates = [u for u in self.users if wanted(u) and not u.lock.locked()]
        return self.rng.choice(candidates) if candidates else None

    async def put(
        self,
        token: str,
        user: ManagedUser,
        body: dict[str, Any],
        kind: str,
        instance: Instance | None = None,
    ) -> bool:
        """PUT the change (the caller holds the user's lock); whether it answered 200."""
        was_active = user.active
        response, sent, answered, through = await self.call(
            kind, "PUT", f"{USERS}/{user.id}", token, body, instance
        )
        certain = sent > user.uncertain_until
        if response is None or response.status_code >= 500:
            # Not known whether it committed: it may still land.
            user.uncertain_until = answered + UNCERTAIN_SECONDS
            if "is_active" in body:
                user.active = None
            return False
        if response.status_code != 200:
            return False
        changed = response.json()
        user.role = changed["role"]
        user.active = changed["is_active"] if certain else None
        if body.get("is_active") is False and was_active is True and certain:
            user.deactivations.append(Deactivation(sent, answered, through.name))
            self.spawn(self.refresh_ended_sessions(user))
        if body.get("is_active") is True and was_active is False:
            self.spawn(self.present_ended_sessions(user))
        return True

    async def rename(self, token: str) -> None:
        user = self.target(lambda u: True)
        if user is not None:
            async with user.lock:
                body = {"full_name": f"Chaos {self.rng.randint(0, 10**6)}"}
                await self.put(token, user, body, "rename")

    async def rerole(self, token: str) -> None:
        user = self.target(lambda u: True)
        if user is not None:
            async with user.lock:
                role = self.rng.choice([r for r in ROLES if r != user.role])
                body = _role_body(role)
                if role is not Role.OFFICER:
                    del body["responsible_province"]
                await self.put(token, user, body, "re-role")

    async def deactivate(self, token: str) -> None:
        """Deactivate; half the time reactivate through the other instance a moment later."""
        user = self.target(lambda u: u.active is not False)
        if user is None:
            return
        async with user.lock:
            first = self.instance()
            done = await self.put(token, user, {"is_active": False}, "deactivate", first)
            if done and self.rng.random() < 0.5:
                await asyncio.sleep(self.rng.uniform(0.3, 1.5))
                other = self.instance(other_than=first)
                await self.put(token, user, {"is_active": True}, "reactivate", other)

    async def reactivate(self, token: str) -> None:
        user = self.target(lambda u: u.active is not True)
        if user is not None:
            async with user.lock:
                await self.put(token, user, {"is_active": True}, "reactivate")

    async def reset(self, token: str) -> None:
        user = self.target(lambda u: True)
        if user is not None:
            async with user.lock:
                await self.call("reset", "POST", f"{USERS}/{user.id}/reset-password", token)

    # -- the users ----------------------------------------------------------------------------

    def _sign_in(self, email: str) -> dict[str, Any] | None:
        """Sign in with the password (set it first, as the user finishing an invitation or a
        reset would); None when Cognito refuses (a disabled user)."""
        for attempt in range(2):
            try:
                result: dict[str, Any] = self.cognito.initiate_auth(
                    ClientId=self.client_id,
                    AuthFlow="USER_PASSWORD_AUTH",
                    AuthParameters={"USERNAME": email, "PASSWORD": PASSWORD},
                )
            except ClientError as error:
                if "disabled" in str(error) or attempt == 1:
                    return None
                self.cognito.admin_set_user_password(
                    UserPoolId=self.pool_id, Username=email, Password=PASSWORD, Permanent=True
                )
                continue
            if "AuthenticationResult" in result:
                return dict(result["AuthenticationResult"])
            self.cognito.admin_set_user_password(
                UserPoolId=self.pool_id, Username=email, Password=PASSWORD, Permanent=True
            )
        return None

    async def sign_in(self, user: ManagedUser) -> None:
        try:
            result = await asyncio.to_thread(self._sign_in, user.email)
        except (ClientError, BotoCoreError) as error:
            self.recorder.sign_ins[f"sign-in failed ({type(error).__name__})"] += 1
            return
        began = time.monotonic()
        if result is None:
            self.recorder.sign_ins["sign-in refused"] += 1
            return
        self.recorder.sign_ins["signed in"] += 1
        token = result["AccessToken"]
        user.sessions.append(
            Session(user, began, claims_of(token)["auth_time"], result["RefreshToken"], token)
        )
        if len(user.sessions) > MAX_SESSIONS_PER_USER:
            # Keep the sessions a deactivation ended: they are the ones worth presenting.
            live = [s for s in user.sessions[:-1] if not user.ended_by_a_deactivation(s)]
            user.sessions.remove(live[-1] if live else user.sessions[0])

    async def refresh(self, session: Session) -> None:
        if session.refresh_revoked:
            return
        try:
            result = await asyncio.to_thread(
                self.cognito.initiate_auth,
                ClientId=self.client_id,
                AuthFlow="REFRESH_TOKEN_AUTH",
                AuthParameters={"REFRESH_TOKEN": session.refresh_token},
            )
        except ClientError:
            session.refresh_revoked = True
            self.recorder.sign_ins["refresh refused"] += 1
            return
        except BotoCoreError:
            return
        session.access_token = result["AuthenticationResult"]["AccessToken"]
        session.refreshes += 1
        self.recorder.sign_ins["refreshed"] += 1

    async def me(self, session: Session, instance: Instance | None = None) -> None:
        token = session.access_token
        ended = session.user.ended_by_a_deactivation(session)
        kind = "me (session ended by a deactivation)" if ended else "me"
        response, sent, answered, through = await self.call(kind, "GET", ME, token, None, instance)
        if response is not None and response.status_code == 200:
            self.recorder.accepted_me_calls.append(
                MeCall(session, claims_of(token)["iat"], sent, answered, through.name)
            )

    async def refresh_ended_sessions(self, user: ManagedUser) -> None:
        """Right after a deactivation: refresh the sessions it ended, before the global
        sign-out lands, as a client holding a refresh token would."""
        for delay in (0.0, 1.2, 1.5):
            await asyncio.sleep(delay)
            ended = [s for s in user.sessions if user.ended_by_a_deactivation(s)]
            await asyncio.gather(*(self.refresh(s) for s in ended))

    async def present_ended_sessions(self, user: ManagedUser) -> None:
        """Right after a reactivation: refresh the sessions a deactivation ended and present
        their tokens to every instance."""
        for delay in (0.0, 1.0, 2.0):
            await asyncio.sleep(delay)
            ended = [s for s in user.sessions if user.ended_by_a_deactivation(s)]
            await asyncio.gather(*(self.refresh(s) for s in ended))
            await asyncio.gather(
                *(self.me(s, instance) for s in ended for instance in self.stack.instances)
            )

    async def callers(self) -> None:
        while not self.stop_users.is_set():
            with_sessions = [u for u in self.users if u.sessions]
            if with_sessions:
                user = self.rng.choice(with_sessions)
                ended = [s for s in user.sessions if user.ended_by_a_deactivation(s)]
                pool = ended if ended and self.rng.random() < 0.5 else user.sessions
                await self.me(self.rng.choice(pool))
            await asyncio.sleep(0.12)

    async def signers_in(self) -> None:
        while not self.stop_users.is_set():
            wanted = [
                u
                for u in self.users
                if u.active is True and len(u.sessions) < MAX_SESSIONS_PER_USER
            ]
            if wanted:
                await self.sign_in(self.rng.choice(wanted))
            await asyncio.sleep(0.6)

    async def refreshers(self) -> None:
        while not self.stop_users.is_set():
            sessions = [s for u in self.users for s in u.sessions if not s.refresh_revoked]
            if sessions:
                await self.refresh(self.rng.choice(sessions))
            await asyncio.sleep(0.5)

    async def prober(self, instance: Instance) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while not self.stop_users.is_set():
                sent = time.monotonic()
                status: int | None
                try:
                    status = (await client.get(f"{instance.url}/health")).status_code
                except httpx.HTTPError as error:
                    status = None
                    self.recorder.count("health", None, type(error).__name__)
                else:
                    self.recorder.count("health", status)
                self.recorder.health_probes.append(
                    HealthProbe(instance.name, sent, time.monotonic(), status)
                )
                await asyncio.sleep(0.5)

    # -- faults -------------------------------------------------------------------------------

    async def inflict_faults(self, until: float) -> None:
        """Faults at random, every kind early on (a shuffled deck), several at once."""
        deck: list[str] = []
        busy: set[str] = set()
        running: set[asyncio.Task[None]] = set()
        while time.monotonic() < until:
            if not deck:
                deck = list(FAULT_KINDS)
                self.rng.shuffle(deck)
            kind = next((k for k in deck if k not in busy), None)
            if kind is not None:
                deck.remove(kind)
                if kind in EXCLUSIVE_FAULTS:
                    busy.add(kind)
                task = asyncio.create_task(self.inflict(kind, busy))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.sleep(self.rng.uniform(0.8, 2.5))
        await asyncio.gather(*running)

    async def inflict(self, kind: str, busy: set[str]) -> None:
        url = self.stack.database_url
        fired = True
        try:
            if kind in COGNITO_FAULTS:
                self.faults.open(kind, self.rng.uniform(3, 8))
            elif kind == "db_table_lock":
                await hold_table_lock(url, self.rng.uniform(2, 4))
            elif kind == "db_row_lock":
                await hold_row_locks(url, self.rng.uniform(3, 5), self.rng)
            elif kind == "db_read_only":
                async with read_only_window(url):
                    self.recorder.sessions_cut_at.append(time.monotonic())
                    await asyncio.sleep(self.rng.uniform(3, 5))
            elif kind == "db_listener_killed":
                self.recorder.sessions_cut_at.append(time.monotonic())
                fired = await kill_listeners(url) > 0
            elif kind == "console_user":
                fired = await self.console_user(self.admin_tokens[1])
            elif kind == "reconcile_apply":
                fired = await self.reconcile_apply()
            elif kind == "unreadable_intent":
                await plant_unreadable_intent(url)
            elif kind == "instance_killed":
                up = [i for i in self.stack.instances if i.up]
                fired = len(up) > 1
                if fired:
                    victim = self.rng.choice(up)
                    victim.kill()
                    await asyncio.sleep(self.rng.uniform(1, 3))
                    await victim.restart()
        except Exception as error:
            # A fault that could not be set up (a lock not granted in time) is not the app's.
            self.recorder.faults[f"{kind} (not set up: {type(error).__name__})"] += 1
        else:
            if fired:
                self.recorder.faults[kind] += 1
        finally:
            busy.discard(kind)

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> tuple[list[invariants.Verdict], dict[str, Any]]:
        tasks = [
            *(asyncio.create_task(self.admin(token)) for token in self.admin_tokens),
            asyncio.create_task(self.callers()),
            asyncio.create_task(self.signers_in()),
            asyncio.create_task(self.refreshers()),
            *(asyncio.create_task(self.prober(i)) for i in self.stack.instances),
        ]
        chaos_end = self.t0 + self.seconds
        self.admin_deadline = chaos_end + 20
        print(f"chaos: {self.seconds:.0f} s of faults on instances a and b", flush=True)
        await self.inflict_faults(chaos_end)
        self.faults.close_all()
        self.stop_admins.set()
        healed = time.monotonic()
        print(f"chaos: faults stopped at {healed - self.t0:.1f} s; converging", flush=True)

        findings, rows, converged_at = await self.converge(healed)
        await asyncio.gather(*tasks[: len(self.admin_tokens)])
        served = await self.active_users_served(rows) if converged_at is not None else []
        self.stop_users.set()
        await asyncio.gather(*tasks)
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)

        verdicts = self.verdicts(findings, rows, served, judged=converged_at is not None)
        converged = None if converged_at is None else round(converged_at - healed, 1)
        return verdicts, self.summary(verdicts, converged)

    def verdicts(
        self,
        findings: list[str],
        rows: dict[str, dict[str, Any]],
        served: list[str],
        *,
        judged: bool,
    ) -> list[invariants.Verdict]:
        """Every invariant, judged on what was recorded and what is there after convergence;
        without convergence, "served afterwards" cannot be judged (`judged` false)."""
        instances = {i.name: i for i in self.stack.instances}
        return [
            invariants.honest_errors(self.recorder),
            invariants.sessions_end_for_good(self.recorder.accepted_me_calls, self.t0),
            invariants.health_never_starved(
                self.recorder.health_probes, instances, self.recorder.sessions_cut_at, self.t0
            ),
            invariants.Verdict(
                f"directory converges within {CONVERGE_WITHIN_SECONDS:.0f} s (no orphan, "
                "Cognito matches every row, nothing pending, reconcile --json in step)",
                findings,
            ),
            invariants.no_false_email_taken(self.recorder.email_taken, rows, self.t0),
            invariants.Verdict(
                "a create of an email only someone else's Cognito user has is 409 "
                "cognito_user_exists and leaves its password alone; no other 409",
                [*self.recorder.console_users, *self.recorder.unexpected_conflicts],
            ),
            invariants.Verdict(
                "reconcile --apply during the run exits 0, 1 or 2, never a crash",
                self.recorder.reconcile_runs,
            ),
            invariants.every_fault_fired(
                FAULT_KINDS, self.recorder.faults, COGNITO_FAULTS, self.faults.injected
            ),
            invariants.Verdict(
                "active users served by every instance afterwards",
                served,
                judged=judged,
            ),
        ]

    def summary(
        self, verdicts: list[invariants.Verdict], converged: float | None
    ) -> dict[str, Any]:
        """The counts of the run, as `--report` writes them."""
        return {
            "seconds": self.seconds,
            "requests": {f"{k} -> {s}": n for (k, s), n in sorted(self.recorder.statuses.items())},
            "faults": dict(sorted(self.recorder.faults.items())),
            "cognito_calls_faulted": dict(sorted(self.faults.injected.items())),
            "cognito_calls": dict(sorted(self.faults.calls.items())),
            "sessions": dict(sorted(self.recorder.sign_ins.items())),
            "instance_starts": {i.name: i.starts for i in self.stack.instances},
            "users": len(self.users),
            "abandoned_creates": self.recorder.abandoned_creates,
            "deactivations": sum(len(u.deactivations) for u in self.users),
            "converged_seconds": converged,
            "error_log_lines": invariants.error_lines(self.stack.instances),
            "violations": {v.name: len(v.violations) for v in verdicts},
        }

    async def converge(
        self, healed: float
    ) -> tuple[list[str], dict[str, dict[str, Any]], float | None]:
        """Check until everything is in step, for at most CONVERGE_WITHIN_SECONDS."""
        deadline = healed + CONVERGE_WITHIN_SECONDS
        while True:
            findings, rows = await invariants.directory_findings(
                self.stack.database_url, self.cognito, self.pool_id
            )
            creating = time.monotonic() < self.admin_deadline and any(
                not t.done() for t in self.background
            )
            if not findings and not creating:
                status, out, err = await run_cli(
                    self.cli_env(), self.stack.workdir, "app.cli.reconcile", "--json"
                )
                findings = invariants.reconcile_findings(status, out, err)
                if not findings:
                    return [], rows, time.monotonic()
            if time.monotonic() > deadline:
                return findings, rows, None
            await asyncio.sleep(1.0)

    async def active_users_served(self, rows: dict[str, dict[str, Any]]) -> list[str]:
        """Every active user signs in anew and is served by every instance: nothing refuses
        a session begun after the last deactivation."""
        last = max((d.answered for u in self.users for d in u.deactivations), default=0.0)
        # A revocation instant is up to 2 s after the deactivation (AUTH_TIME_SKEW).
        await asyncio.sleep(max(0.0, last + 3.0 - time.monotonic()))
        problems = []
        for email, row in sorted(rows.items()):
            if not row["is_active"]:
                continue
            result = await asyncio.to_thread(self._sign_in, email)
            if result is None:
                problems.append(f"{email}: active, but Cognito refuses the sign-in")
                continue
            for instance in self.stack.instances:
                token = result["AccessToken"]
                response, *_ = await self.call(
                    "me (after convergence)", "GET", ME, token, None, instance
                )
                if response is None or response.status_code != 200:
                    status = "no answer" if response is None else response.status_code
                    problems.append(f"{email}: a new session answered {status} by {instance.name}")
        return problems
