"""The CloudWatch agent's configuration (deploy/cloudwatch/) selects what the app exports.

Every selector must match a metric a running app's `/metrics` serves, with the labels named as
its dimensions, and none may select a histogram: the agent drops Prometheus histograms (it
converts counters, gauges and summaries only:
https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/ContainerInsights-Prometheus-metrics-conversion.html).
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.services.cognito import CognitoUserPool
from tests.support.database import REPO_ROOT
from tests.support.harness import UserFactory, auth_headers

CLOUDWATCH = REPO_ROOT / "deploy" / "cloudwatch"
# The names an operator's alarms read (docs/operations.md#alarms).
ALARMED = {
    "one_system_outbox_oldest_age_seconds",
    "one_system_worker_last_turn_age_seconds",
    "one_system_http_requests_total",
    "one_system_db_pool_waits_total",
    "one_system_db_pool_timeouts_total",
}


def declarations() -> list[dict[str, Any]]:
    agent = json.loads((CLOUDWATCH / "amazon-cloudwatch-agent.json").read_text())
    prometheus = agent["logs"]["metrics_collected"]["prometheus"]
    scrape = yaml.safe_load((CLOUDWATCH / "prometheus.yaml").read_text())
    assert prometheus["prometheus_config_path"].endswith("one-system-prometheus.yaml")
    [job] = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9145"]}]
    for declaration in prometheus["emf_processor"]["metric_declaration"]:
        assert declaration["source_labels"] == ["job"]
        assert re.fullmatch(declaration["label_matcher"], job["job_name"])
    return list(prometheus["emf_processor"]["metric_declaration"])


async def test_every_selector_names_an_exported_counter_or_gauge_with_its_dimensions(
    client: httpx.AsyncClient,
    waiting_work: str,
    make_user: UserFactory,
    cognito: CognitoUserPool,
) -> None:
    # Something of everything the agent reads: a signed-in request, a Cognito call.
    user = await make_user()
    assert (await client.get("/api/v1/users/me", headers=auth_headers(user))).status_code == 200
    assert await cognito.find_user("nobody@example.gov") is None
    exported = {
        sample.name: (family.type, set(sample.labels))
        for family in text_string_to_metric_families((await client.get("/metrics")).text)
        for sample in family.samples
    }
    selected: set[str] = set()
    for declaration in declarations():
        for selector in declaration["metric_selectors"]:
            names = [name for name in exported if re.search(selector, name)]
            assert names, f"{selector} selects nothing /metrics serves"
            for name in names:
                kind, labels = exported[name]
                assert kind in {"counter", "gauge"}, f"{name} is a {kind}: the agent drops it"
                for dimensions in declaration["dimensions"]:
                    assert set(dimensions) - {"job"} <= labels, (name, dimensions, labels)
                selected.add(name)
    assert selected >= ALARMED
