"""`GET /metrics`: requests by route template, the background work read from the database."""

from __future__ import annotations

import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.core.config import Settings
from app.main import create_app
from tests.support.harness import UserFactory, auth_headers, serve


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def requests_of(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], route: str, status: str
) -> float:
    labels = frozenset({"route": route, "method": "GET", "status": status}.items())
    return scraped.get(("one_system_http_requests_total", labels), 0.0)


async def test_requests_count_by_route_template_and_status_class(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    admin = await make_user()
    route = "/api/v1/users/{user_id}"
    before = await scrape(client)
    for _ in range(3):
        missing = await client.get(f"/api/v1/users/{uuid.uuid4()}", headers=auth_headers(admin))
        assert missing.status_code == 404
    found = await client.get(f"/api/v1/users/{admin.id}", headers=auth_headers(admin))
    assert found.status_code == 200
    after = await scrape(client)
    assert requests_of(after, route, "4xx") - requests_of(before, route, "4xx") == 3
    assert requests_of(after, route, "2xx") - requests_of(before, route, "2xx") == 1
    timed = frozenset({"route": route, "method": "GET"}.items())
    count = "one_system_http_request_duration_seconds_count"
    assert after[(count, timed)] - before.get((count, timed), 0.0) == 4


async def test_paths_no_route_matches_share_one_label(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    for path in ("/no-such-page", f"/no-such-page/{uuid.uuid4()}"):
        assert (await client.get(path)).status_code == 404
    after = await scrape(client)
    assert requests_of(after, "unmatched", "4xx") - requests_of(before, "unmatched", "4xx") == 2
    assert not any("no-such-page" in str(labels) for _, labels in after)


async def test_the_outbox_backlog_and_the_workers_last_turn_are_reported(
    client: httpx.AsyncClient, waiting_work: str
) -> None:
    scraped = await scrape(client)
    assert scraped[("one_system_outbox_pending", frozenset({("kind", waiting_work)}))] == 3
    oldest = scraped[("one_system_outbox_oldest_age_seconds", frozenset({("kind", waiting_work)}))]
    assert 0 <= oldest < 60
    assert 0 <= scraped[("one_system_worker_last_turn_age_seconds", frozenset())] < 60
    assert scraped[("one_system_metrics_database_up", frozenset())] == 1


async def test_the_release_is_reported(client: httpx.AsyncClient) -> None:
    scraped = await scrape(client)
    releases = [key for key in scraped if key[0] == "one_system_release_info"]
    assert releases, "no release reported"
    assert all(scraped[key] == 1 for key in releases)


async def test_metrics_off_serves_no_metrics(app_settings: Settings) -> None:
    app = create_app(app_settings.model_copy(update={"metrics": False}))
    async with serve(app) as client:
        assert (await client.get("/metrics")).status_code == 404
