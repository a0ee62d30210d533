"""Bearer tokens for the load, signed by the bench's local JWKS key, one file per kind."""

from __future__ import annotations

from pathlib import Path

from bench import data
from bench.wrk import WrkResult

ME_TOKENS = 256
# The cold path: more distinct users than the user cache (10,000) and the verified-claims cache
# (1,024) hold, asked for in a rotation that continues from run to run, so every request
# verifies a token and reads its user.
COLD_TOKENS = 12_000
COHERENCE_SUB_NUMBER = 3  # a dispatcher, active, outside the rotations above


def active_numbers(users: int, count: int, *, skip: frozenset[int] = frozenset()) -> list[int]:
    """`count` active user rows spread over the table, all roles."""
    step = max(1, users // count)
    numbers = [
        n
        for n in range(1, users + 1, step)
        if (n == 1 or n % data.INACTIVE_EVERY) and n not in skip
    ]
    return numbers[:count]


def mint_tokens(
    run_dir: Path, admin_sub: str, users: int, *, with_cold: bool = True
) -> dict[str, Path]:
    from tests.support.jwt_tokens import access_token_claims, mint_token, shared_rsa_key

    key = shared_rsa_key("bench-signing-key")

    def token(sub: str) -> str:
        return mint_token(
            access_token_claims({"sub": sub, "username": sub}, lifetime=6 * 3600), key
        )

    # Active users spread over the table, all roles: /users/me and the reference lists are
    # asked for by many callers, not one.
    numbers = active_numbers(users, ME_TOKENS, skip=frozenset({COHERENCE_SUB_NUMBER}))
    # Every active user but the warm set and the coherence user, in table order.
    cold = (
        []
        if not with_cold
        else [
            n
            for n in range(1, users + 1)
            if n % data.INACTIVE_EVERY and n not in numbers and n != COHERENCE_SUB_NUMBER
        ][:COLD_TOKENS]
    )
    if with_cold and len(cold) < COLD_TOKENS:
        raise SystemExit(
            f"the cold-cache scenario needs --users of at least {COLD_TOKENS * 1.1:,.0f}"
        )
    files = {
        "admin": run_dir / "tokens-admin.txt",
        "users": run_dir / "tokens-users.txt",
        "cold": run_dir / "tokens-cold.txt",
        "coherence": run_dir / "tokens-coherence.txt",
    }
    files["admin"].write_text(token(admin_sub) + "\n")
    files["users"].write_text("".join(token(data.bench_sub(n)) + "\n" for n in numbers))
    files["cold"].write_text("".join(token(data.bench_sub(n)) + "\n" for n in cold))
    files["coherence"].write_text(token(data.bench_sub(COHERENCE_SUB_NUMBER)) + "\n")
    return files


class Rotations:
    """Where each token file's rotation stands: the cold scenario never repeats a token soon."""

    def __init__(self) -> None:
        self._served: dict[str, int] = {}

    def start(self, tokens: str) -> int | None:
        return self._served.get(tokens, 0) if tokens == "cold" else None

    def advance(self, tokens: str, result: WrkResult) -> None:
        if tokens == "cold":
            self._served[tokens] = self._served.get(tokens, 0) + result.requests
