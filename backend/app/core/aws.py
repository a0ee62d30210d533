"""AWS clients with bounded waits, and the base every AWS adapter builds on.

`aws_client` makes a boto3 client whose calls answer or fail within seconds. `AwsAdapter` is
what an adapter of one service (Cognito's user pool; SQS or S3 in later phases) adds to it:

- **a deadline per unit of work** (`deadline()`, over `app.core.deadline`): every call made
  inside one request's (or one outbox entry's) block shares it; past it the call is abandoned
  and the caller gets the adapter's `timeout_error` (503 with Retry-After) at once;
- **bounded retries**: botocore's `standard` retry mode with `total_max_attempts` (the client
  made with `sdk_retries=True`), and a client that sends each call once (`without_sdk_retries`)
  for callers that retry themselves and must know whether a call landed (the outbox's handlers);
- **error mapping**: `domain_error` turns what botocore raised into a domain error. A subclass
  maps its service's own codes first and hands the rest to `common_error`: throttling → 429
  with Retry-After; a 5xx, a timeout, a dropped or refused connection → 503 with Retry-After;
- **call metrics**: each call counted by operation and outcome, and timed (`AwsCallMetrics`).

What botocore does, which this relies on (botocore 1.44, `botocore/retries/standard.py` and
`botocore/exceptions.py`; the boto3 guide "Retries", standard mode): standard mode retries the
throttling codes listed in `THROTTLING_CODES`, the transient codes `RequestTimeout`,
`RequestTimeoutException`, `PriorRequestNotComplete`, HTTP 500/502/503/504, and the
`ConnectionError` and `HTTPClientError` families; `total_max_attempts` counts the first attempt.
A connection that never opened raises `EndpointConnectionError` or `ConnectTimeoutError` (both a
`ConnectionError`); an answer that never came raises `ReadTimeoutError` and a connection dropped
mid-answer `ConnectionClosedError` (both an `HTTPClientError`). A refusal the service answered is a
`ClientError` carrying its `Error.Code` and HTTP status.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Literal, TypeVar, overload

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter

from app.core.config import AwsSettings
from app.core.deadline import run_blocking, within_deadline
from app.core.errors import DomainError, ServiceUnavailableError, TooManyRequestsError

if TYPE_CHECKING:
    from mypy_boto3_cognito_idp import CognitoIdentityProviderClient
    from mypy_boto3_secretsmanager import SecretsManagerClient

logger = logging.getLogger(__name__)

T = TypeVar("T")
ClientT = TypeVar("ClientT")

THROTTLED_RETRY_AFTER_SECONDS: Final = 2
UNAVAILABLE_RETRY_AFTER_SECONDS: Final = 5
# The codes botocore's standard retry mode treats as throttling (ThrottledRetryableChecker).
THROTTLING_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)


def client_config(settings: AwsSettings, *, sdk_retries: bool = True) -> Config:
    """Bounded connect and read timeouts; `settings.aws_max_attempts` attempts, or one."""
    return Config(
        connect_timeout=settings.aws_connect_timeout_seconds,
        read_timeout=settings.aws_read_timeout_seconds,
        # total_max_attempts counts the first try; botocore's max_attempts would add retries
        # on top of it and stretch an outage past the seconds a request may wait.
        retries={
            "total_max_attempts": settings.aws_max_attempts if sdk_retries else 1,
            "mode": "standard",
        },
    )


def single_attempt(config: Config) -> Config:
    """`config` without SDK retries: for a call that is not idempotent, or a caller that retries."""
    return config.merge(Config(retries={"total_max_attempts": 1, "mode": "standard"}))


@overload
def aws_client(
    service: Literal["cognito-idp"], settings: AwsSettings, *, sdk_retries: bool = True
) -> CognitoIdentityProviderClient: ...
@overload
def aws_client(
    service: Literal["secretsmanager"], settings: AwsSettings, *, sdk_retries: bool = True
) -> SecretsManagerClient: ...
@overload
def aws_client(service: str, settings: AwsSettings, *, sdk_retries: bool = True) -> Any: ...
def aws_client(service: str, settings: AwsSettings, *, sdk_retries: bool = True) -> Any:
    """A client with `client_config(settings)`: SDK retries bounded, or none."""
    # Endpoints for local emulators come from boto3's own AWS_ENDPOINT_URL* variables.
    config = client_config(settings, sdk_retries=sdk_retries)
    return boto3.client(service, region_name=settings.aws_region, config=config)  # type: ignore[call-overload]


@dataclass(frozen=True, slots=True)
class AwsCallMetrics:
    """A service's call counter (by operation and outcome) and time counter (by operation)."""

    calls: Counter
    seconds: Counter


def call_outcome(error: BaseException | None) -> str:
    """`ok`, the error code AWS answered, botocore's error class, or `deadline` (abandoned)."""
    if error is None:
        return "ok"
    # An adapter raises its own error from the SDK's (or from None, after a timeout): the
    # outcome is what lies beneath.
    for cause in (error, error.__cause__, error.__context__):
        if isinstance(cause, ClientError):
            return error_code(cause) or "ClientError"
        if isinstance(cause, BotoCoreError):
            return type(cause).__name__
        if isinstance(cause, TimeoutError):
            return "deadline"
    return "error"


@contextlib.contextmanager
def observed_aws_call(observed: AwsCallMetrics, operation: str) -> Iterator[None]:
    """Count the call in the block by its outcome and time it, whatever it raises."""
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        yield
    except BaseException as raised:
        error = raised
        raise
    finally:
        observed.seconds.labels(operation).inc(time.perf_counter() - started)
        observed.calls.labels(operation, call_outcome(error)).inc()


def error_code(error: ClientError) -> str:
    """The `Error.Code` the service answered ('' when it sent none)."""
    return str(error.response.get("Error", {}).get("Code") or "")


def error_message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message") or "").strip()


def http_status(error: ClientError) -> int:
    """The HTTP status of the service's answer (0 when unknown)."""
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


class DependencyTimeoutError(ServiceUnavailableError):
    """A dependency did not answer within the unit of work's deadline."""

    code = "dependency_timeout"


class AwsAdapter(Generic[ClientT]):
    """One AWS service as a domain needs it: calls within a deadline, domain errors out.

    A subclass names the service (`service_name`, `unavailable_subject`), may name its own
    `timeout_error`, calls the service with `await self.call(operation, callable)`, and
    overrides `domain_error` for its service's own codes, ending in `common_error`.
    """

    service_name: ClassVar[str] = "aws"  # in log lines
    unavailable_subject: ClassVar[str] = "A dependency"  # in the client's error detail
    timeout_error: ClassVar[type[ServiceUnavailableError]] = DependencyTimeoutError

    def __init__(
        self,
        client: ClientT,
        observed: AwsCallMetrics,
        *,
        once_client: ClientT | None = None,
        deadline_seconds: float = 8.0,
    ) -> None:
        self._client = client
        # The same endpoint and timeouts, one attempt only (`single_attempt`).
        self._once_client = client if once_client is None else once_client
        self._observed = observed
        self.deadline_seconds = deadline_seconds

    def deadline(self) -> contextlib.AbstractContextManager[None]:
        """The deadline of one unit of work's calls (a request, an outbox entry)."""
        return within_deadline(self.deadline_seconds)

    def without_sdk_retries(self: AdapterT) -> AdapterT:
        """This adapter with every call sent once: for a caller that is itself the retrier. A
        call botocore retried could land after the caller saw it succeed; sent once, a call
        that answered has landed, and one that did not is a failure the caller sees."""
        once = copy.copy(self)
        once._client = self._once_client
        return once

    async def call(self, operation: str, call: Callable[[], T]) -> T:
        """`call()` in a worker thread within the deadline, counted; domain errors out."""
        with observed_aws_call(self._observed, operation):
            try:
                return await run_blocking(call)
            except (ClientError, BotoCoreError) as error:
                raise self.domain_error(operation, error) from error
            except TimeoutError:
                logger.warning("%s %s abandoned: the deadline passed", self.service_name, operation)
                raise self.timeout_error(
                    f"{self.unavailable_subject} did not answer in time; try again shortly",
                    retry_after=UNAVAILABLE_RETRY_AFTER_SECONDS,
                ) from None

    def domain_error(self, operation: str, error: ClientError | BotoCoreError) -> DomainError:
        """What a failed call means to a client; a subclass maps its own codes first."""
        return self.common_error(operation, error)

    def common_error(self, operation: str, error: ClientError | BotoCoreError) -> DomainError:
        """Throttling → 429; anything else (5xx, timeouts, connections, refusals no subclass
        knows) → 503, both with Retry-After, logged as their kind deserves."""
        if isinstance(error, ClientError):
            code, status = error_code(error) or "Unknown", http_status(error)
            if code in THROTTLING_CODES:
                return TooManyRequestsError(
                    f"{self.unavailable_subject} is busy; try again shortly",
                    retry_after=THROTTLED_RETRY_AFTER_SECONDS,
                )
            # A refusal nobody mapped is not the caller's request, and not known to pass: an
            # operator looks. A 5xx is the service's own trouble.
            log = logger.error if status < 500 else logger.warning
            log("%s %s failed: %s (HTTP %s)", self.service_name, operation, code, status)
        else:
            logger.warning("%s %s failed: %s", self.service_name, operation, type(error).__name__)
        return ServiceUnavailableError(
            f"{self.unavailable_subject} is unavailable; try again shortly",
            retry_after=UNAVAILABLE_RETRY_AFTER_SECONDS,
        )


AdapterT = TypeVar("AdapterT", bound=AwsAdapter[Any])
