"""Fixed-rate runs: latency from the schedule, the generator's own lag, and the generator itself.

Timelines are made up (no clock is read); the generator runs against a small local HTTP server
and is checked by what the server saw, not by how fast anything was.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.fixed_rate import (
    FixedRateOutputError,
    Timeline,
    format_result_line,
    parse_result_line,
    percentile,
    summarize,
)
from bench.openloop import build_requests, fixed_rate, response_end
from bench.report import (
    CONTROL_SCENARIO,
    METRICS_AA_SCENARIO,
    METRICS_OFF_SCENARIO,
    METRICS_ON_SCENARIO,
    fixed_rate_plan,
)
from bench.run import Bench, parse_args
from bench.scenarios import scenarios
from tests.bench.reports import PASSING, report_of

RATE = 100.0  # a request due every 10 ms
COUNT = 200  # two seconds


def timeline(
    answered: list[float | None], *, status: int = 200, lag: float = 0.0, deadline: float = 12.0
) -> Timeline:
    """A run started at 0; each request dispatched `lag` late and sent at once."""
    dispatched = [i / RATE + lag for i in range(len(answered))]
    return Timeline(
        start=0.0,
        rate=RATE,
        dispatched=dispatched,
        sent=list(dispatched),
        answered=answered,
        status=[status if a is not None else 0 for a in answered],
        deadline=deadline,
        connections=4,
    )


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7
    assert percentile([], 0.5) == 0


def test_a_stall_counts_every_request_due_during_it() -> None:
    # Answers take 1 ms, but the server stalls from 0.5 s to 1.5 s: each request due then is
    # answered at 1.5 s. Counted from the schedule, half the run waited; p50 and p99 say so.
    answered = [
        max(i / RATE, 1.5) + 0.001 if 0.5 <= i / RATE < 1.5 else i / RATE + 0.001
        for i in range(COUNT)
    ]
    result = summarize(timeline(list(answered)))
    assert result.scheduled == result.answered == COUNT
    # 100 of 200 requests fall in the stall, waiting 1000 ms down to 10 ms (+1 ms service).
    assert result.p50_ms == pytest.approx(1.0)
    assert result.p90_ms == pytest.approx(801.0)
    assert result.p99_ms == pytest.approx(981.0)
    assert result.max_ms == pytest.approx(1001.0)
    # Counted from the actual send instead, as a closed-loop tool would (one request in flight
    # through the stall, the others never sent), only the stall's first request is late.
    closed_loop = [a - i / RATE for i, a in enumerate(answered) if not 0.5 < i / RATE < 1.5]
    assert percentile(closed_loop, 0.99) * 1000 == pytest.approx(1.0)


def test_the_generator_holds_the_rate_or_says_it_did_not() -> None:
    on_time = summarize(timeline([i / RATE + 0.001 for i in range(COUNT)], lag=0.0005))
    assert on_time.held
    assert on_time.achieved_rps == pytest.approx(RATE, rel=0.001)
    assert on_time.lag_p99_ms == pytest.approx(0.5)
    late = summarize(timeline([i / RATE + 0.01 for i in range(COUNT)], lag=0.006))
    assert late.lag_p99_ms == pytest.approx(6.0)
    assert not late.held  # 6 ms behind its schedule: more than 5 ms


def test_a_generator_that_sends_too_slowly_is_flagged() -> None:
    # Dispatched at 95 per second instead of 100: the last request goes out 105 ms late.
    slow = Timeline(
        start=0.0,
        rate=RATE,
        dispatched=[i / 95 for i in range(COUNT)],
        sent=[i / 95 for i in range(COUNT)],
        answered=[i / 95 + 0.001 for i in range(COUNT)],
        status=[200] * COUNT,
        deadline=12.0,
        connections=4,
    )
    result = summarize(slow)
    assert result.achieved_rps < 0.98 * RATE
    assert not result.held


def test_unanswered_requests_count_in_the_tail_and_as_errors() -> None:
    answered: list[float | None] = [i / RATE + 0.001 for i in range(COUNT)]
    for index in range(190, 200):
        answered[index] = None
    result = summarize(timeline(answered, deadline=12.0))
    assert result.answered == 190
    assert result.socket_errors == 10
    assert result.errors == 10
    # The 10 unanswered requests count with their wait until the deadline (about 10 s).
    assert result.max_ms == pytest.approx(12000 - 190 * 10)
    assert result.p99_ms > 10_000


def test_non_2xx_answers_are_errors() -> None:
    result = summarize(timeline([i / RATE + 0.001 for i in range(COUNT)], status=401))
    assert result.non2xx == COUNT
    assert result.errors == COUNT


def test_the_result_line_round_trips() -> None:
    result = summarize(timeline([i / RATE + 0.002 for i in range(COUNT)]))
    assert parse_result_line("noise\n" + format_result_line(result) + "\n") == result
    with pytest.raises(FixedRateOutputError):
        parse_result_line("Traceback ...\n")


def test_every_request_asks_as_a_browser_does() -> None:
    # Each token's request, and the one without a token, accept gzip (the list pages go so).
    for tokens in (["t1", "t2"], []):
        for request in build_requests("127.0.0.1:8000", "/api/v1/users?page=1", tokens):
            head = request.decode().split("\r\n")
            assert head[0] == "GET /api/v1/users?page=1 HTTP/1.1"
            assert "Accept-Encoding: gzip, deflate, br" in head
            assert request.endswith(b"\r\n\r\n")


def test_a_response_is_complete_once_its_content_length_has_arrived() -> None:
    head = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 5\r\ncontent-type: x\r\n\r\n"
    assert response_end(head + b"abc") is None
    assert response_end(head + b"abcde" + b"HTTP/1.1") == (401, len(head) + 5)
    not_modified = b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n"
    assert response_end(not_modified) == (304, len(not_modified))
    with pytest.raises(ValueError, match="chunked"):
        response_end(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")


def test_rates_are_shares_of_the_capacities_measured() -> None:
    report = report_of(PASSING)  # capacities at 16 connections: baseline 4,000, users/me 3,600
    own = fixed_rate_plan(report, [CONTROL_SCENARIO, "users/me"], [0.5, 0.8], own_capacity=True)
    assert own == [
        (CONTROL_SCENARIO, 0.5, 2000.0),
        ("users/me", 0.5, 1800.0),
        (CONTROL_SCENARIO, 0.8, 3200.0),
        ("users/me", 0.8, 2880.0),
    ]
    same = fixed_rate_plan(report, ["users/me"], [0.5], own_capacity=False)
    assert same == [("users/me", 0.5, 2000.0)]


def test_a_scenario_faster_than_the_baseline_runs_at_a_share_of_the_baselines_capacity() -> None:
    """Its baseline rounds run at its rate: a share of its own capacity could overload them."""
    report = report_of({**PASSING, "users/me": ((1200, 0.8), (5000, 3.2))})
    plan = fixed_rate_plan(report, ["users/me"], [0.5, 0.8], own_capacity=True)
    assert plan == [("users/me", 0.5, 2000.0), ("users/me", 0.8, 3200.0)]


class _Server:
    """A keep-alive HTTP/1.1 server that answers 200 (401 without a token) and keeps count."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while head := await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b"":
            auth = [line for line in head.split(b"\r\n") if line.startswith(b"Authorization")]
            self.tokens.append(auth[0].decode().rsplit(" ", 1)[-1] if auth else "")
            status = b"200 OK" if auth else b"401 Unauthorized"
            writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[_Server, int]]:
    state = _Server()
    listening = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    yield state, port
    listening.close()
    await listening.wait_closed()


async def test_the_generator_sends_every_scheduled_request_and_counts_every_answer(
    server: tuple[_Server, int],
) -> None:
    state, port = server
    url = f"http://127.0.0.1:{port}/api/v1/users/me"
    run = await fixed_rate(url, 200, 0.25, ["t1", "t2", "t3"], connections=4)
    result = summarize(run)
    assert (result.scheduled, result.answered, result.errors) == (50, 50, 0)
    assert state.connections == 4
    assert state.tokens[:4] == ["t1", "t2", "t3", "t1"]  # in rotation
    assert sorted(set(state.tokens)) == ["t1", "t2", "t3"]
    unauthenticated = summarize(await fixed_rate(url, 200, 0.05, [], connections=2))
    assert unauthenticated.non2xx == 10


async def test_requests_whose_connection_fails_count_as_socket_errors() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    listening = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        run = await fixed_rate(f"http://127.0.0.1:{port}/", 200, 0.1, connections=2)
    finally:
        listening.close()
        await listening.wait_closed()
    result = summarize(run)
    assert (result.scheduled, result.answered, result.socket_errors) == (20, 0, 20)


def test_capacity_is_what_the_server_sustained_at_every_saturated_level() -> None:
    report = report_of(PASSING)
    at_16 = [m for m in report.measurements if m.connections == 16]
    slower = [dataclasses.replace(m, connections=64) for m in at_16 if m.scenario != "users/me"]
    me = next(m for m in at_16 if m.scenario == "users/me")
    fewer = dataclasses.replace(me.result, requests=me.result.requests // 2)
    report.measurements += [*slower, dataclasses.replace(me, connections=64, result=fewer)]
    assert report.capacity("users/me") == pytest.approx(1800)  # not 3,600 at 16
    assert report.capacity("baseline") == pytest.approx(4000)


def test_a_full_run_has_more_fixed_rate_and_metrics_rounds_than_other_closed_loop_ones() -> None:
    """docs/performance.md: 15 fixed-rate rounds a scenario and rate in up to three attempts,
    24 of the metrics' servers at once, five of every other closed-loop scenario."""
    args = parse_args([])
    assert (args.rate_rounds, args.rate_attempts) == (15, 3)
    assert (args.metrics_rounds, args.rounds) == (24, 5)


def test_the_metrics_servers_are_loaded_at_saturated_levels_only() -> None:
    """Their target reads 16 and 64 connections; every other scenario runs at every level,
    the baseline beside them rather than in a turn of its own."""
    args = parse_args(["--users", "2000"])
    bench = Bench(args, "wrk", Path("unused"), scenarios(args.users))
    plan = bench.closed_loop_plan()
    metrics = {METRICS_ON_SCENARIO, METRICS_OFF_SCENARIO, METRICS_AA_SCENARIO}
    assert [level for level, s in plan if s.name == METRICS_ON_SCENARIO] == [16, 64]
    assert not [s for _, s in plan if s.name in metrics - {METRICS_ON_SCENARIO}]
    others = [s.name for s in scenarios(args.users) if s.name not in metrics | {"baseline"}]
    for level in (1, 16, 64):
        assert [s.name for lv, s in plan if lv == level and s.name not in metrics] == others
