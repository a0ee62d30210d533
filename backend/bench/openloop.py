"""The bench's fixed-rate load generator: requests sent on a schedule, whatever the answers do.

Debian packages neither wrk2 nor vegeta (the open-loop tools that count from the scheduled
send), so the bench has this small one. One asyncio loop (uvloop when installed) over plain
HTTP/1.1 keep-alive connections, one request in flight per connection:

- request `i` is due at `start + i / rate`; the loop sleeps until the next one is due and then
  dispatches every request whose time has come (the timer wakes about once a millisecond);
- a request goes out on an idle connection; when none is idle, a new one is opened (up to
  `max_connections`), so a slow server never holds back the schedule, and beyond that cap the
  request waits for the first connection to come free (its latency still runs from its due
  time);
- it asks for a real-time priority (`keep_time_first`), so that on a busy box it is not the
  one left waiting for a core, and for no deep CPU idle while it runs (`keep_cpus_awake`), so
  that on a quiet virtual machine an idle vCPU does not wake late for its next send;
- every time is `time.perf_counter()`, and `bench.fixed_rate.summarize` turns the timeline
  into figures: latency from the due time, and how late the generator itself got to each
  request, so a run in which it could not keep the rate says so.

    PYTHONPATH=backend python -m bench.openloop URL --rate 2000 --seconds 3 [--tokens-file F]

prints one `BENCH_FIXED_RATE {...}` line (`bench.fixed_rate.FixedRateResult`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from bench.fixed_rate import Timeline, format_result_line, summarize

CONNECTIONS = 32
ACCEPT_ENCODING = "gzip, deflate, br"
REALTIME_PRIORITY = 10  # low among real-time ones: above every ordinary process
TIMEOUT_S = 10.0  # as wrk's --timeout in the closed-loop runs
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")


def build_requests(host: str, path: str, tokens: Sequence[str]) -> list[bytes]:
    """One request per token (or one without `Authorization`), built once, sent in rotation,
    each with a browser's `Accept-Encoding` (as the closed-loop runs send: `bench/auth.lua`)."""
    head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: {ACCEPT_ENCODING}\r\n"
    if not tokens:
        return [(head + "\r\n").encode()]
    return [(head + f"Authorization: Bearer {token}\r\n\r\n").encode() for token in tokens]


def response_end(buffer: bytes | bytearray) -> tuple[int, int] | None:
    """(status, length of the whole response) once `buffer` starts with a complete response."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buffer[:head_end]).lower()
    if b"\r\ntransfer-encoding:" in head:
        raise ValueError("chunked responses are not supported; every route measured has a length")
    match = _CONTENT_LENGTH.search(head)
    total = head_end + 4 + (int(match.group(1)) if match else 0)
    return (int(head[9:12]), total) if len(buffer) >= total else None


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, on_answer: Callable[[_Connection, int, int], None]) -> None:
        self._on_answer = on_answer
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.index = -1  # the request in flight, or -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, though they are one.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, index: int, request: bytes) -> None:
        assert self.transport is not None
        self.index = index
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = response_end(self._buffer)
        if end is not None and self.index >= 0:
            status, length = end
            del self._buffer[:length]
            index, self.index = self.index, -1
            self._on_answer(self, index, status)

    def connection_lost(self, exc: Exception | None) -> None:
        index, self.index = self.index, -1
        self.transport = None
        if index >= 0:
            self._on_answer(self, index, -1)


class FixedRateLoad:
    """`count` requests at `rate` per second to `host:port`, the requests in rotation."""

    def __init__(
        self, host: str, port: int, requests: list[bytes], rate: float, count: int
    ) -> None:
        self._address = (host, port)
        self._requests = requests
        self._rate = rate
        self._count = count
        self._idle: list[_Connection] = []
        self._connections: list[_Connection] = []
        self._waiting: deque[int] = deque()
        self._opened = 0
        self._outstanding = count
        self._all_answered = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.dispatched = [0.0] * count
        self.sent: list[float | None] = [None] * count
        self.answered: list[float | None] = [None] * count
        self.status = [0] * count

    async def run(self, connections: int, drain_s: float) -> Timeline:
        self._max = connections
        for _ in range(connections):
            self._idle.append(await self._open())
        start = time.perf_counter() + 0.01
        for index in range(self._count):
            delay = start + index / self._rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.dispatched[index] = time.perf_counter()
            self._dispatch(index)
        deadline = start + self._count / self._rate + drain_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_answered.wait(), deadline - time.perf_counter())
        for connection in self._connections:
            if connection.transport is not None:
                connection.transport.close()
        return Timeline(
            start=start,
            rate=self._rate,
            dispatched=self.dispatched,
            sent=self.sent,
            answered=self.answered,
            status=self.status,
            deadline=deadline,
            connections=self._opened,
        )

    async def _open(self) -> _Connection:
        self._opened += 1
        _, connection = await asyncio.get_running_loop().create_connection(
            lambda: _Connection(self._answered), *self._address
        )
        self._connections.append(connection)
        return connection

    def _dispatch(self, index: int) -> None:
        while self._idle:
            connection = self._idle.pop()
            if connection.transport is not None:
                self._send(connection, index)
                return
            self._opened -= 1  # closed by the server while idle
        if self._opened < self._max:
            self._spawn(self._open_and_send(index))
        else:
            self._waiting.append(index)

    async def _open_and_send(self, index: int) -> None:
        try:
            connection = await self._open()
        except OSError:
            self._answered(None, index, -1)
            return
        self._send(connection, index)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, connection: _Connection, index: int) -> None:
        self.sent[index] = time.perf_counter()
        connection.send(index, self._requests[index % len(self._requests)])

    def _answered(self, connection: _Connection | None, index: int, status: int) -> None:
        if status >= 0:
            self.answered[index] = time.perf_counter()
        self.status[index] = status
        self._outstanding -= 1
        if self._outstanding == 0:
            self._all_answered.set()
        if connection is None or connection.transport is None:
            self._opened -= 1  # it failed; the next waiter, if any, gets a new one
            if self._waiting:
                self._spawn(self._open_and_send(self._waiting.popleft()))
            return
        if self._waiting:
            self._send(connection, self._waiting.popleft())
        else:
            self._idle.append(connection)


async def fixed_rate(
    url: str,
    rate: float,
    seconds: float,
    tokens: Sequence[str] = (),
    *,
    connections: int = CONNECTIONS,
    drain_s: float = TIMEOUT_S,
) -> Timeline:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    requests = build_requests(parts.netloc, path, tokens)
    load = FixedRateLoad(host, port, requests, rate, max(1, round(rate * seconds)))
    return await load.run(connections, drain_s)


def _run(coroutine: Coroutine[Any, Any, Timeline]) -> Timeline:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn's standard extra brings it
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def keep_time_first() -> bool:
    """Ask for a real-time (FIFO) priority, so other work on the box does not delay a send.

    The generator sleeps between sends, so it takes only the CPU its rate needs; at an
    ordinary priority, on a box busy with other work, it waited its turn for 10-20 ms and fell
    behind its schedule. Needs root (or CAP_SYS_NICE); without it the run goes on as it is,
    and its lag says how well it kept time.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    except (AttributeError, OSError):
        return False
    return True


def keep_cpus_awake() -> int | None:
    """Ask the kernel to keep every CPU out of deep idle states while this process lives.

    A PM QoS request (`/dev/cpu_dma_latency` held at 0 µs, as latency tools such as cyclictest
    do): the CPUs poll instead of halting, so a timer wakes the generator on time. On a virtual
    machine a halted vCPU was woken milliseconds late, on a quiet box more than a busy one.
    Both sides of every ratio run under it. Needs root; without it nothing changes. The request
    lasts while the returned descriptor is open (until the process exits).
    """
    try:
        descriptor = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError:
        return None
    try:
        os.write(descriptor, struct.pack("i", 0))
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--tokens-file", type=Path, help="bearer tokens, one a line")
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument(
        "--ordinary-priority",
        action="store_true",
        help="do not ask for a real-time priority nor for CPUs kept out of deep idle",
    )
    args = parser.parse_args(argv)
    if not args.ordinary_priority:
        keep_time_first()
        keep_cpus_awake()
    tokens = (
        [line for line in args.tokens_file.read_text().splitlines() if line]
        if args.tokens_file
        else []
    )
    timeline = _run(
        fixed_rate(args.url, args.rate, args.seconds, tokens, connections=args.connections)
    )
    print(format_result_line(summarize(timeline)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
