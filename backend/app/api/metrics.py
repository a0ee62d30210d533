"""`GET /metrics`: the instance's metrics in Prometheus' text format, for the host's agent.

Served on the app's own port and never routed by Nginx to the internet (nginx/one-system.conf
answers 404 for it); the CloudWatch agent on the host scrapes it (deploy/cloudwatch/). The
process metrics are every web worker's (`app.core.metrics`); the background work's are read
from the database at scrape time, so they are the same whichever worker answers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.core import metrics
from app.core.db import ReadSessionsDep
from app.core.errors import describe_database_error
from app.services.worker_status import BackgroundWorkStatus, background_work_status

logger = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)


class _BackgroundWork(Collector):
    """The outbox backlog and the worker's last turn, as read for this scrape."""

    def __init__(self, status: BackgroundWorkStatus | None) -> None:
        self._status = status

    def collect(self) -> Iterable[Metric]:
        reachable = GaugeMetricFamily(
            "one_system_metrics_database_up",
            "1 when this scrape could read the background work's state from the database",
        )
        reachable.add_metric([], 0 if self._status is None else 1)
        yield reachable
        if self._status is None:
            return
        pending = GaugeMetricFamily(
            "one_system_outbox_pending", "Outbox entries not yet carried out", labels=["kind"]
        )
        oldest = GaugeMetricFamily(
            "one_system_outbox_oldest_age_seconds",
            "Age of the oldest outbox entry not yet carried out (database clock)",
            labels=["kind"],
        )
        for backlog in self._status.backlog:
            pending.add_metric([backlog.kind], backlog.pending)
            oldest.add_metric([backlog.kind], backlog.oldest_age_seconds)
        yield pending
        yield oldest
        if self._status.last_turn_age_seconds is not None:
            last_turn = GaugeMetricFamily(
                "one_system_worker_last_turn_age_seconds",
                "Seconds since any worker's last turn that reached the outbox (database clock)",
            )
            last_turn.add_metric([], self._status.last_turn_age_seconds)
            yield last_turn


@router.get("/metrics")
async def instance_metrics(read_sessions: ReadSessionsDep) -> Response:
    try:
        status: BackgroundWorkStatus | None = await background_work_status(read_sessions)
    except Exception as error:
        # A scrape still reports the processes' metrics while the database is down.
        logger.warning("metrics: background work not read: %s", describe_database_error(error))
        status = None
    metrics.PER_REQUEST.flush()  # this process's requests up to now; the others' flush each second
    background = CollectorRegistry()
    background.register(_BackgroundWork(status))
    body = generate_latest(metrics.instance_registry()) + generate_latest(background)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
