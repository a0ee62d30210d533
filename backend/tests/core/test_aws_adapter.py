"""The AWS adapter base serves a second service as is: a test-only SQS queue over moto.

`SqsQueue` is all an adapter of another service adds to `AwsAdapter`: its names, one call, and
its own error codes. The deadline, the bounded retries, the common error mapping and the metrics
are the base's, exercised here against moto's SQS (the same in-process moto server the Cognito
tests use) and against endpoints that refuse or never answer.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from botocore.exceptions import BotoCoreError, ClientError
from botocore.retries.standard import RetryContext, ThrottledRetryableChecker
from prometheus_client import CollectorRegistry, Counter

from app.core.aws import (
    THROTTLING_CODES,
    AwsAdapter,
    AwsCallMetrics,
    DependencyTimeoutError,
    aws_client,
    error_code,
)
from app.core.config import AwsSettings
from app.core.errors import (
    DomainError,
    ServiceUnavailableError,
    TooManyRequestsError,
)
from devtools.cognito_emulator import emulator_server
from tests.support.jwt_tokens import TEST_REGION
from tests.support.moto_cognito import (
    DUMMY_CREDENTIALS_ENV,
    aws_error_response,
    silent_endpoint,
    unreachable_endpoint,
)


class QueueMissingError(ServiceUnavailableError):
    """The configured queue does not exist: an operator must act."""

    code = "queue_missing"


class SqsQueue(AwsAdapter[Any]):
    """One SQS queue: what a phase-3 notification sender would add to the base."""

    service_name = "sqs"
    unavailable_subject = "The notification queue (SQS)"
    # SQS's JSON protocol answers the code; its query-compatible header the legacy one.
    missing_codes: ClassVar = frozenset(
        {"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"}
    )

    def __init__(self, client: Any, queue_url: str, observed: AwsCallMetrics, **kw: Any) -> None:
        super().__init__(client, observed, **kw)
        self.queue_url = queue_url

    async def send(self, body: str) -> str:
        sent = await self.call(
            "SendMessage",
            functools.partial(self._client.send_message, QueueUrl=self.queue_url, MessageBody=body),
        )
        return str(sent["MessageId"])

    def domain_error(self, operation: str, error: ClientError | BotoCoreError) -> DomainError:
        if isinstance(error, ClientError) and error_code(error) in self.missing_codes:
            return QueueMissingError(f"{self.unavailable_subject} does not exist", retry_after=60)
        return self.common_error(operation, error)


@pytest.fixture
def metrics() -> AwsCallMetrics:
    registry = CollectorRegistry()
    return AwsCallMetrics(
        Counter("sqs_calls", "calls", ["operation", "outcome"], registry=registry),
        Counter("sqs_call_seconds", "seconds", ["operation"], registry=registry),
    )


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with emulator_server() as url:
        yield url


def sqs_client(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, *, sdk_retries: bool = True, **settings: Any
) -> Any:
    """An SQS client as the app makes any client: `aws_client`, the endpoint from boto3's own
    variable."""
    for name, value in DUMMY_CREDENTIALS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", endpoint)
    defaults: dict[str, Any] = {"aws_region": TEST_REGION, "aws_max_attempts": 2}
    return aws_client("sqs", AwsSettings(**{**defaults, **settings}), sdk_retries=sdk_retries)


def calls(metrics: AwsCallMetrics, outcome: str) -> float:
    """How many SendMessage calls the adapter counted with `outcome`."""
    labels = {"operation": "SendMessage", "outcome": outcome}
    return sum(
        sample.value
        for family in metrics.calls.collect()
        for sample in family.samples
        if sample.name == "sqs_calls_total" and sample.labels == labels
    )


async def test_a_message_sent_through_the_base_arrives(
    monkeypatch: pytest.MonkeyPatch,
    moto_url: str,
    metrics: AwsCallMetrics,
) -> None:
    client = sqs_client(monkeypatch, moto_url)
    queue_url = client.create_queue(QueueName=f"q-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    queue = SqsQueue(client, queue_url, metrics)

    with queue.deadline():
        message_id = await queue.send("case 2026-000001 assigned")

    received = client.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"]
    assert [(m["MessageId"], m["Body"]) for m in received] == [
        (message_id, "case 2026-000001 assigned")
    ]
    assert calls(metrics, "ok") == 1


async def test_the_services_own_code_is_mapped_by_the_subclass(
    monkeypatch: pytest.MonkeyPatch,
    moto_url: str,
    metrics: AwsCallMetrics,
) -> None:
    client = sqs_client(monkeypatch, moto_url)
    queue = SqsQueue(client, f"{moto_url}/123456789012/no-such-queue", metrics)

    with pytest.raises(QueueMissingError) as raised:
        await queue.send("x")
    assert raised.value.status_code == 503
    assert raised.value.headers == {"Retry-After": "60"}


async def test_past_the_deadline_the_call_is_abandoned_with_a_503(
    monkeypatch: pytest.MonkeyPatch, metrics: AwsCallMetrics
) -> None:
    with silent_endpoint() as endpoint:
        client = sqs_client(monkeypatch, endpoint, aws_read_timeout_seconds=5)
        queue = SqsQueue(client, f"{endpoint}/1/q", metrics, deadline_seconds=0.3)
        with queue.deadline(), pytest.raises(DependencyTimeoutError) as raised:
            await queue.send("x")
    assert raised.value.status_code == 503
    assert raised.value.code == "dependency_timeout"
    assert raised.value.headers == {"Retry-After": "5"}
    assert calls(metrics, "deadline") == 1


@pytest.mark.parametrize("reach", ["refused", "read_timeout"])
async def test_an_unreachable_or_silent_service_is_a_503(
    monkeypatch: pytest.MonkeyPatch,
    metrics: AwsCallMetrics,
    reach: str,
) -> None:
    with silent_endpoint() as silent:
        endpoint = unreachable_endpoint() if reach == "refused" else silent
        client = sqs_client(monkeypatch, endpoint, aws_read_timeout_seconds=0.3)
        queue = SqsQueue(client, f"{endpoint}/1/q", metrics)
        with pytest.raises(ServiceUnavailableError) as raised:
            await queue.send("x")
    assert type(raised.value) is ServiceUnavailableError
    assert raised.value.headers == {"Retry-After": "5"}
    expected = "EndpointConnectionError" if reach == "refused" else "ReadTimeoutError"
    assert calls(metrics, expected) == 1


@pytest.mark.parametrize(("sdk_retries", "attempts"), [(True, 2), (False, 1)])
async def test_throttling_is_retried_within_bounds_then_a_429(
    monkeypatch: pytest.MonkeyPatch,
    moto_url: str,
    metrics: AwsCallMetrics,
    sdk_retries: bool,
    attempts: int,
) -> None:
    client = sqs_client(monkeypatch, moto_url)
    queue_url = client.create_queue(QueueName=f"q-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    queue = SqsQueue(
        client, queue_url, metrics, once_client=sqs_client(monkeypatch, moto_url, sdk_retries=False)
    )
    if not sdk_retries:
        queue = queue.without_sdk_retries()
    sent: list[int] = []

    def throttle(**_: object) -> object:
        sent.append(1)
        return aws_error_response(400, "RequestThrottled", "Rate exceeded")

    queue._client.meta.events.register("before-send.sqs.SendMessage", throttle)
    with pytest.raises(TooManyRequestsError) as raised:
        await queue.send("x")
    assert raised.value.headers == {"Retry-After": "2"}
    assert len(sent) == attempts
    assert calls(metrics, "RequestThrottled") == 1


@pytest.mark.parametrize("code", sorted(THROTTLING_CODES))
def test_every_code_mapped_as_throttling_is_throttling_to_botocore(code: str) -> None:
    """Checked against botocore's own standard-mode checker, not a copy of its list."""
    answer = RetryContext(attempt_number=1, parsed_response={"Error": {"Code": code}})
    assert ThrottledRetryableChecker().is_retryable(answer)
