"""SesChannel: email through Amazon SES v2 ``SendEmail`` (raw MIME), on the amazon provider's AWS connection.

One boto3 ``sesv2`` client (thread-safe) is shared by a few threads, one message per call. The
SDK's own retries are off unless the connection's ``config_kwargs`` set ``retries``: a retried
call after a timeout could send a message twice, and the delivery engine already retries
transient failures with backoff. Errors become results by their code: throttling, limits and
5xx ``transient``; a rejected message or an unverified sender ``permanent``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from airflow_campaign.channels.base import OPEN, Envelope, Gate, Outcome, Result
from airflow_campaign.channels.pool import (
    OnUncertain,
    WorkerPool,
    check_count,
    check_on_uncertain,
    drain,
    uncertain,
)
from airflow_campaign.errors import CampaignError
from airflow_campaign.extras import needs

DEFAULT_THREADS = 8
MAX_THREADS = 64

# The message or its sender is refused: sending it again will not help.
PERMANENT_CODES = frozenset(
    {
        "MessageRejected",
        "EndpointDisabled",
        "InvalidParameter",
        "OptedOut",
        "MailFromDomainNotVerifiedException",
        "BadRequestException",
        "InvalidParameterValue",
        "ValidationException",
    }
)
# Worth trying again later: throttling and limits, the service's own faults, and account states
# that are not this recipient's fault (sending paused, access denied, credentials) -- the
# engine's retry limit and max_error_rate stop a send that keeps failing on those.
TRANSIENT_CODES = frozenset(
    {
        "TooManyRequestsException",
        "Throttling",
        "ThrottlingException",
        "LimitExceededException",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalServiceError",
        "InternalServerError",
        "SendingPausedException",
        "AccountSuspendedException",
        "AccessDeniedException",
        "NotFoundException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
    }
)

Classified = Literal["transient", "permanent", "uncertain"]


def classify(exc: BaseException) -> tuple[Classified, str]:
    """What a failed ``SendEmail`` call means for its message, and the words to record.

    ``uncertain``: the request went out but no answer came back (a read timeout, a connection
    closed mid-response): SES may have sent the message.
    """
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        text = f"{code}: {error.get('Message', '')}".rstrip(": ")
        if code in PERMANENT_CODES:
            return "permanent", text
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            return "transient", text
        return "permanent", text
    if isinstance(exc, (ReadTimeoutError, ConnectionClosedError)):
        return "uncertain", f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return "transient", f"{type(exc).__name__}: {exc}"
    if isinstance(exc, BotoCoreError):  # a request that could not be built (parameter validation)
        return "permanent", f"{type(exc).__name__}: {exc}"
    return "transient", f"{type(exc).__name__}: {exc}"


def outcome_of(exc: BaseException, log_id: int, on_uncertain: OnUncertain, service: str = "SES") -> Result:
    kind, text = classify(exc)
    if kind == "uncertain":
        return uncertain(log_id, on_uncertain, f"no answer from {service} ({text})")
    outcome: Outcome = kind
    return Result(log_id, outcome, error=text)


def make_client(
    client_type: str, aws_conn_id: str | None, region_name: str | None, threads: int, feature: str
) -> Any:
    """A boto3 client of ``client_type`` from the amazon provider's AWS connection, for ``threads``
    threads, with the SDK's retries off unless the connection's ``config_kwargs`` set some."""
    with needs("amazon", feature):
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

    where = f"aws_conn_id={aws_conn_id!r}"
    hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type=client_type, region_name=region_name)
    try:
        session = hook.get_session(region_name=hook.region_name)
        region = session.region_name
        credentials = session.get_credentials()
    except BotoCoreError as exc:
        raise CampaignError(f"{where}: cannot set up AWS credentials ({exc}). Check the connection.") from exc
    if not region:
        raise CampaignError(
            f"{where}: no AWS region. Set region_name in the connection's extra (or pass region_name=)."
        )
    if credentials is None:
        raise CampaignError(
            f"{where}: no AWS credentials found. Set the access key and secret on the connection, or "
            "give the worker an IAM role / AWS_* environment variables."
        )
    base = hook.config
    ours: dict[str, Any] = {"max_pool_connections": max(threads, base.max_pool_connections or 10)}
    if base.retries is None:
        ours["retries"] = {"total_max_attempts": 1}
    return hook.get_client_type(region_name=region, config=base.merge(Config(**ours)))


class SesChannel:
    """Email through Amazon SES v2, ``threads`` calls in flight at a time.

    :param aws_conn_id: the amazon provider's AWS connection (credentials, region, endpoint).
    :param threads: how many messages are sent in parallel.
    :param configuration_set: the SES configuration set to send with (event publishing, IP pool).
    :param region_name: the AWS region, when the connection does not name one.
    :param on_uncertain: a call that got no answer may have sent its message: ``skip`` reports it
        ``permanent`` (never sent twice), ``resend`` ``transient``.
    """

    name = "ses"
    resend_safe = False

    def __init__(
        self,
        aws_conn_id: str | None = "aws_default",
        threads: int = DEFAULT_THREADS,
        configuration_set: str | None = None,
        region_name: str | None = None,
        on_uncertain: OnUncertain = "skip",
    ) -> None:
        self.aws_conn_id = aws_conn_id
        self.threads = check_count("threads", threads, MAX_THREADS)
        self.configuration_set = configuration_set
        self.region_name = region_name
        self.on_uncertain = check_on_uncertain(on_uncertain)
        self.client: Any = None
        self._pool: WorkerPool | None = None

    @property
    def concurrency(self) -> int:
        return self.threads

    def check(self) -> None:
        if self.client is None:
            self.client = make_client(
                "sesv2", self.aws_conn_id, self.region_name, self.threads, "channel='ses'"
            )

    def open(self) -> None:
        if self._pool is not None:
            return
        self.check()
        self._pool = WorkerPool(self.threads, "ses")

    def send_batch(self, envelopes: Sequence[Envelope], gate: Gate = OPEN) -> list[Result]:
        if self._pool is None:
            raise RuntimeError("SesChannel.send_batch() before open()")
        results, left = self._pool.run(envelopes, lambda _i, queue: drain(queue, gate, self._send))
        return results + [Result(e.log_id, "transient", error="not sent") for e in left]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> SesChannel:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, envelope: Envelope) -> Result:
        request: dict[str, Any] = {
            "Destination": {"ToAddresses": [envelope.recipient]},
            "Content": {"Raw": {"Data": envelope.message}},
        }
        if envelope.sender:
            request["FromEmailAddress"] = envelope.sender
        if self.configuration_set:
            request["ConfigurationSetName"] = self.configuration_set
        try:
            response = self.client.send_email(**request)
        except Exception as exc:  # one message's fault, or the service's: never raised
            return outcome_of(exc, envelope.log_id, self.on_uncertain)
        return Result(envelope.log_id, "sent", provider_id=response.get("MessageId"))
