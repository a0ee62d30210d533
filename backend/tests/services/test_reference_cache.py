"""The reference cache on its own: TTL on an injected clock, single flight, errors not cached."""

from __future__ import annotations

import asyncio

import pytest

from app.services.reference import ReferenceCache, RenderedJson
from tests.support.jwt_tokens import FakeClock

SERVICE_TYPES_KEY = ("service-types", None)


class CountingLoader:
    """A load that counts its calls and, if `release` is given, waits for it before answering."""

    def __init__(self, body: bytes = b"[]", release: asyncio.Event | None = None) -> None:
        self.body = body
        self.release = release
        self.calls = 0

    async def __call__(self) -> RenderedJson:
        self.calls += 1
        if self.release is not None:
            await self.release.wait()
        return RenderedJson.of(self.body)


async def test_an_entry_is_served_until_its_ttl_passes() -> None:
    clock = FakeClock(start=0.0)
    cache = ReferenceCache(ttl_seconds=300, timer=clock)
    load = CountingLoader()

    await cache.get_or_load(SERVICE_TYPES_KEY, load)
    clock.now = 299.9
    await cache.get_or_load(SERVICE_TYPES_KEY, load)
    assert load.calls == 1

    clock.now = 300.1
    await cache.get_or_load(SERVICE_TYPES_KEY, load)
    assert load.calls == 2


async def test_concurrent_misses_of_one_key_load_once() -> None:
    cache = ReferenceCache(timer=FakeClock())
    release = asyncio.Event()
    load = CountingLoader(b'[{"id":1}]', release)

    callers = [asyncio.create_task(cache.get_or_load(SERVICE_TYPES_KEY, load)) for _ in range(20)]
    await asyncio.sleep(0)  # every caller has now missed and is queued behind the first
    release.set()
    results = await asyncio.gather(*callers)

    assert load.calls == 1
    assert {result.body for result in results} == {b'[{"id":1}]'}


async def test_different_keys_load_independently() -> None:
    cache = ReferenceCache(timer=FakeClock())
    load = CountingLoader()

    await cache.get_or_load(("complaint-types", None), load)
    await cache.get_or_load(("complaint-types", 2), load)
    await cache.get_or_load(("complaint-types", 2), load)

    assert load.calls == 2


async def test_a_failed_load_is_not_cached_and_the_next_waiter_loads_itself() -> None:
    cache = ReferenceCache(timer=FakeClock())
    release = asyncio.Event()

    async def failing_load() -> RenderedJson:
        await release.wait()
        raise ConnectionError("database went away")

    retry = CountingLoader(b"[1]")
    first = asyncio.create_task(cache.get_or_load(SERVICE_TYPES_KEY, failing_load))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.get_or_load(SERVICE_TYPES_KEY, retry))
    await asyncio.sleep(0)
    release.set()

    with pytest.raises(ConnectionError):
        await first
    assert (await second).body == b"[1]"
    assert retry.calls == 1


async def test_a_cancelled_loader_hands_over_to_the_next_waiter() -> None:
    cache = ReferenceCache(timer=FakeClock())
    never = CountingLoader(release=asyncio.Event())
    retry = CountingLoader(b"[2]")

    first = asyncio.create_task(cache.get_or_load(SERVICE_TYPES_KEY, never))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.get_or_load(SERVICE_TYPES_KEY, retry))
    await asyncio.sleep(0)
    first.cancel()

    assert (await second).body == b"[2]"
    assert first.cancelled()


def test_equal_bodies_have_equal_etags_and_different_bodies_do_not() -> None:
    assert RenderedJson.of(b"[1]").etag == RenderedJson.of(b"[1]").etag
    assert RenderedJson.of(b"[1]").etag != RenderedJson.of(b"[2]").etag


async def test_clear_forgets_every_entry() -> None:
    cache = ReferenceCache(timer=FakeClock())
    load = CountingLoader()
    await cache.get_or_load(SERVICE_TYPES_KEY, load)

    cache.clear()
    await cache.get_or_load(SERVICE_TYPES_KEY, load)

    assert load.calls == 2
