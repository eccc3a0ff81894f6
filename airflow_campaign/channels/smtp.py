"""SmtpChannel: email over SMTP, a few long-lived connections sending in parallel, from an Airflow smtp connection.

The connection is read the way the smtp provider's ``SmtpHook`` reads it (host, port, login,
password; extras ``disable_ssl``, ``disable_tls``, ``ssl_context``, ``timeout``, ``from_email``),
plus clearer extras of our own that win when given: ``ssl`` (implicit TLS), ``starttls``
(``true``: required, ``false``: never, ``"auto"``: when the server offers it), ``ssl_verify``,
``ssl_cafile`` and ``local_hostname``. Unlike ``SmtpHook``, implicit TLS is not on by default: it
is used on port 465 (or when asked for), and STARTTLS is used whenever the server offers it.

Each message is one SMTP transaction (``MAIL FROM``, one ``RCPT TO``, ``DATA``) on a connection
that stays open for the whole send; the connections work in parallel, one thread each. Replies
become results: 2xx ``sent`` (with the server's queue id when its reply names one), 4xx
``transient``, 5xx ``permanent`` with the server's words. A connection that drops is reopened for
the next message; the message in flight is ``transient`` if the server cannot have accepted it
yet, and *uncertain* if the whole message was sent but no reply came (see ``on_uncertain``).
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_campaign.channels.base import OPEN, Envelope, Gate, Outcome, Result, held
from airflow_campaign.channels.pool import (
    OnUncertain,
    WorkerPool,
    WorkQueue,
    check_count,
    check_on_uncertain,
    uncertain,
)
from airflow_campaign.errors import CampaignError

DEFAULT_CONNECTIONS = 4
MAX_CONNECTIONS = 64
DEFAULT_TIMEOUT_S = 30.0  # SmtpHook's default
IDLE_CHECK_S = 20.0  # a connection idle longer than this is checked with NOOP before it is used again

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class SmtpSettings:
    """What an Airflow smtp connection says, resolved.

    :param starttls: ``True`` required, ``False`` never, ``None`` when the server offers it.
    """

    conn_id: str
    host: str
    port: int
    login: str
    password: str
    ssl: bool
    starttls: bool | None
    ssl_verify: bool
    ssl_cafile: str | None
    timeout: float
    from_email: str
    local_hostname: str | None

    @property
    def where(self) -> str:
        return f"smtp_conn_id={self.conn_id!r} ({self.host}:{self.port})"


def _flag(extra: Mapping[str, Any], key: str, conn_id: str) -> bool:
    value = extra[key]
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, str)) and str(value).strip().lower() in _TRUE | _FALSE:
        return str(value).strip().lower() in _TRUE
    raise CampaignError(
        f"smtp_conn_id={conn_id!r}: extra {key}={value!r} is not a boolean; set it to true or false."
    )


def settings_from_connection(conn: Any, conn_id: str, timeout: float | None = None) -> SmtpSettings:
    """Resolve an Airflow connection (anything with host, port, login, password, extra_dejson)."""
    extra: dict[str, Any] = dict(conn.extra_dejson or {})
    if not conn.host:
        raise CampaignError(
            f"smtp_conn_id={conn_id!r}: the connection has no host; set the SMTP server's host name on it."
        )
    if "ssl" in extra:
        use_ssl = _flag(extra, "ssl", conn_id)
    elif "disable_ssl" in extra:
        use_ssl = not _flag(extra, "disable_ssl", conn_id)
    else:
        use_ssl = conn.port == 465
    starttls: bool | None = None
    if "starttls" in extra and str(extra["starttls"]).strip().lower() != "auto":
        starttls = _flag(extra, "starttls", conn_id)
    elif "starttls" not in extra and "disable_tls" in extra and _flag(extra, "disable_tls", conn_id):
        starttls = False
    if use_ssl and starttls:
        raise CampaignError(
            f"smtp_conn_id={conn_id!r}: extras ssl and starttls are both true; a server speaks either "
            "implicit TLS (ssl: true, usually port 465) or STARTTLS (port 587 or 25): keep one."
        )
    if "ssl_verify" in extra:
        verify = _flag(extra, "ssl_verify", conn_id)
    else:
        verify = str(extra.get("ssl_context", "default")).lower() != "none"
    cafile = extra.get("ssl_cafile") or None
    if cafile is not None and not Path(cafile).is_file():
        raise CampaignError(
            f"smtp_conn_id={conn_id!r}: extra ssl_cafile={cafile!r} is not a file; give the path of the "
            "PEM file of the CA that signed the server's certificate."
        )
    raw_timeout = timeout if timeout is not None else extra.get("timeout", DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw_timeout)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        raise CampaignError(
            f"smtp_conn_id={conn_id!r}: timeout={raw_timeout!r} is not a positive number of seconds; "
            "set the extra timeout (or the timeout= parameter), e.g. 30."
        )
    return SmtpSettings(
        conn_id=conn_id,
        host=conn.host,
        port=int(conn.port or (465 if use_ssl else 25)),
        login=conn.login or "",
        password=conn.password or "",
        ssl=use_ssl,
        starttls=None if use_ssl else starttls,
        ssl_verify=verify,
        ssl_cafile=cafile,
        timeout=seconds,
        from_email=str(extra.get("from_email") or ""),
        local_hostname=extra.get("local_hostname") or None,
    )


def read_settings(conn_id: str, timeout: float | None = None) -> SmtpSettings:
    """The settings of Airflow connection ``conn_id`` (a CampaignError naming it when it does not exist)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise CampaignError(
            f"smtp_conn_id={conn_id!r}: no Airflow connection by that name. Create it, e.g. "
            f"`airflow connections add {conn_id} --conn-type smtp --conn-host smtp.example.com "
            "--conn-port 587 --conn-login USER --conn-password PASSWORD`."
        ) from None
    return settings_from_connection(conn, conn_id, timeout)


def tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.ssl_cafile)
    if not settings.ssl_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def connect(settings: SmtpSettings, local_hostname: str) -> smtplib.SMTP:
    """One ready connection: greeted, upgraded to TLS as configured, logged in."""
    client: smtplib.SMTP
    if settings.ssl:
        client = smtplib.SMTP_SSL(
            settings.host,
            settings.port,
            local_hostname=local_hostname,
            timeout=settings.timeout,
            context=tls_context(settings),
        )
    else:
        client = smtplib.SMTP(
            settings.host, settings.port, local_hostname=local_hostname, timeout=settings.timeout
        )
    try:
        client.ehlo_or_helo_if_needed()
        if not settings.ssl and settings.starttls is not False:
            if settings.starttls or client.has_extn("starttls"):
                client.starttls(context=tls_context(settings))
                client.ehlo()
        if settings.login:
            client.login(settings.login, settings.password)
    except BaseException:
        client.close()
        raise
    return client


def open_error(settings: SmtpSettings, exc: BaseException) -> CampaignError:
    """A CampaignError naming the connection, what went wrong opening it, and the likely fix."""
    where = settings.where
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return CampaignError(
            f"{where}: the server refused login {settings.login!r} ({exc.smtp_code} {_text(exc.smtp_error)}). "
            "Check the connection's login and password."
        )
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        if "STARTTLS" in str(exc).upper():
            return CampaignError(
                f"{where}: extra starttls is true but the server does not offer STARTTLS. Use a port that "
                "does (usually 587), set ssl: true for implicit TLS (usually 465), or starttls: auto."
            )
        return CampaignError(
            f"{where}: the connection has a login but the server offers no AUTH ({exc}). Many servers "
            "offer AUTH only over TLS: leave starttls on (the default) or use ssl: true; or remove the login."
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return CampaignError(
            f"{where}: the server's TLS certificate did not verify ({exc.verify_message}). Set the extra "
            "ssl_cafile to the PEM file of the CA that signed it (ssl_verify: false only for tests)."
        )
    if isinstance(exc, ssl.SSLError):
        return CampaignError(
            f"{where}: the TLS handshake failed ({exc}). If port {settings.port} speaks plain SMTP, set "
            "the extra ssl: false (STARTTLS is used when offered); for implicit TLS use ssl: true."
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        return CampaignError(
            f"{where}: the server answered {exc.smtp_code} {_text(exc.smtp_error)} while the connection "
            "was opened. Check the host, the port and the server's limits."
        )
    if isinstance(exc, (smtplib.SMTPServerDisconnected, TimeoutError)):
        return CampaignError(
            f"{where}: the server closed the connection or did not answer within {settings.timeout:g}s "
            f"({exc or type(exc).__name__}). If port {settings.port} expects implicit TLS (usually 465), "
            "set the extra ssl: true; otherwise check the host, the port and the timeout extra."
        )
    return CampaignError(
        f"{where}: cannot connect ({exc}). Check the connection's host and port, and that the server is "
        "running and reachable from the worker."
    )


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())


def envelope_address(address: str) -> str:
    """``<address>`` for MAIL FROM and RCPT TO: what ``smtplib.quoteaddr`` gives, without parsing plain addresses."""
    if any(c in address for c in '<> "(),;'):
        return smtplib.quoteaddr(address)
    return f"<{address}>"


_BARE_LF = re.compile(rb"(?<!\r)\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")


def data_block(message: bytes) -> bytes:
    """``message`` as the DATA part of a transaction: CRLF line ends, leading dots doubled, the final dot."""
    if message.count(b"\n") != message.count(b"\r\n"):
        message = _BARE_LF.sub(b"\r\n", message)
    if message.startswith(b".") or b"\n." in message:
        message = _LEADING_DOT.sub(b"..", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + b".\r\n"


def queue_id(reply: bytes) -> str | None:
    """The id a server gives the accepted message, if its reply names one.

    The last word of the reply when it looks like an id (six characters or more, with a digit):
    Postfix ``2.0.0 Ok: queued as 4Xyz12``, Exim ``OK id=1uAbc-0001``, Amazon SES ``Ok 0100018f...``.
    """
    words = _text(reply).split()
    if not words:
        return None
    last = words[-1].removeprefix("id=").strip("<>")
    return last if len(last) >= 6 and any(c.isdigit() for c in last) else None


def outcome_of(code: int) -> Outcome:
    """An SMTP reply code as an outcome: 5xx permanent; 4xx (and anything unexpected) transient."""
    return "permanent" if 500 <= code <= 599 else "transient"


class SmtpChannel:
    """Email through an SMTP server, on ``connections`` connections kept open for the whole send.

    :param smtp_conn_id: the Airflow connection (type smtp) of the server.
    :param connections: how many connections send in parallel (one thread each).
    :param timeout: seconds to wait for the server on each command; default the connection's
        ``timeout`` extra, else 30.
    :param max_messages_per_connection: close and reopen a connection after this many messages,
        for servers that limit messages per session (default: no limit).
    :param on_uncertain: a message whose whole content was sent but whose reply never came may have
        been delivered: ``skip`` reports it ``permanent`` (never sent twice), ``resend`` ``transient``.
    """

    name = "smtp"
    resend_safe = False

    def __init__(
        self,
        smtp_conn_id: str = "smtp_default",
        connections: int = DEFAULT_CONNECTIONS,
        timeout: float | None = None,
        max_messages_per_connection: int | None = None,
        on_uncertain: OnUncertain = "skip",
    ) -> None:
        self.smtp_conn_id = smtp_conn_id
        self.connections = check_count("connections", connections, MAX_CONNECTIONS)
        self.timeout = timeout
        if max_messages_per_connection is not None:
            check_count("max_messages_per_connection", max_messages_per_connection, 10**9)
        self.max_messages_per_connection = max_messages_per_connection
        self.on_uncertain = check_on_uncertain(on_uncertain)
        self.settings: SmtpSettings | None = None
        self._pool: WorkerPool | None = None
        self._clients: list[smtplib.SMTP | None] = []
        self._last_used: list[float] = []
        self._sent_on: list[int] = []
        self._local_hostname = ""
        self._last_error = ""

    # ---- the protocol ------------------------------------------------------------------------

    @property
    def concurrency(self) -> int:
        return self.connections

    def check(self) -> None:
        if self.settings is None:
            self.settings = read_settings(self.smtp_conn_id, self.timeout)

    def open(self) -> None:
        if self._pool is not None:
            return
        self.check()
        settings = self.settings
        assert settings is not None
        self._local_hostname = settings.local_hostname or socket.getfqdn()
        self._clients = [None] * self.connections
        self._last_used = [0.0] * self.connections
        self._sent_on = [0] * self.connections
        self._pool = WorkerPool(self.connections, "smtp")
        try:
            self._pool.map(self._reconnect)
        except (smtplib.SMTPException, OSError) as exc:
            self.close()
            raise open_error(settings, exc) from exc

    def send_batch(self, envelopes: Sequence[Envelope], gate: Gate = OPEN) -> list[Result]:
        if self._pool is None or self.settings is None:
            raise RuntimeError("SmtpChannel.send_batch() before open()")
        if not self.settings.from_email and any(not e.sender for e in envelopes):
            raise CampaignError(
                f"smtp_conn_id={self.smtp_conn_id!r}: a message has no sender; give the delivery a from "
                "address, or set the connection's extra from_email."
            )
        results, left = self._pool.run(envelopes, lambda i, queue: self._drain(i, queue, gate))
        results += [
            Result(
                e.log_id,
                "transient",
                error=f"not sent: no SMTP connection could be reopened ({self._last_error})",
            )
            for e in left
        ]
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        for index, client in enumerate(self._clients):
            if client is not None:
                self._clients[index] = None
                try:
                    client.quit()
                except (smtplib.SMTPException, OSError):
                    client.close()

    def __enter__(self) -> SmtpChannel:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- one connection's work ---------------------------------------------------------------

    def _reconnect(self, index: int) -> None:
        assert self.settings is not None
        self._drop(index)
        self._clients[index] = connect(self.settings, self._local_hostname)
        self._last_used[index] = time.monotonic()
        self._sent_on[index] = 0

    def _drop(self, index: int) -> None:
        client, self._clients[index] = self._clients[index], None
        if client is not None:
            client.close()

    def _ready(self, index: int) -> smtplib.SMTP:
        """Connection ``index``, checked when it sat idle, reopened when it was dropped or used up."""
        client = self._clients[index]
        if client is not None and client.sock is None:  # closed after a 421, or by smtplib itself
            client = None
        elif client is not None and self.max_messages_per_connection is not None:
            if self._sent_on[index] >= self.max_messages_per_connection:
                try:
                    client.quit()
                except (smtplib.SMTPException, OSError):
                    pass
                client = None
        if client is not None and time.monotonic() - self._last_used[index] > IDLE_CHECK_S:
            try:
                client = client if client.noop()[0] == 250 else None
            except (smtplib.SMTPException, OSError):
                client = None
        if client is None:
            self._reconnect(index)
            client = self._clients[index]
            assert client is not None
        return client

    def _drain(self, index: int, queue: WorkQueue, gate: Gate) -> list[Result]:
        results: list[Result] = []
        while (envelope := queue.take()) is not None:
            try:
                client = self._ready(index)
            except Exception as exc:  # cannot reconnect: this connection stops, the others go on
                self._drop(index)
                self._last_error = f"{type(exc).__name__}: {exc}"
                result = Result(envelope.log_id, "transient", error=f"reconnect failed: {self._last_error}")
                gate.after(result)
                results.append(result)
                break
            if gate.before(envelope):
                result = self._transact(index, client, envelope)
                self._last_used[index] = time.monotonic()
                self._sent_on[index] += 1
            else:
                result = held(envelope)
            gate.after(result)
            results.append(result)
        return results

    def _transact(self, index: int, client: smtplib.SMTP, envelope: Envelope) -> Result:
        """One SMTP transaction; never raises."""
        assert self.settings is not None
        sender = envelope.sender or self.settings.from_email
        mail_from, rcpt_to = envelope_address(sender), envelope_address(envelope.recipient)
        options: list[str] = []
        if not (mail_from.isascii() and rcpt_to.isascii()):
            if not client.has_extn("smtputf8"):
                return Result(
                    envelope.log_id,
                    "permanent",
                    error=f"the address {envelope.recipient!r} or sender {sender!r} is not ASCII and the "
                    "server does not offer SMTPUTF8",
                )
            options.append("SMTPUTF8")
            client.command_encoding = "utf-8"  # what smtplib's mail() does for this option
        if not envelope.message.isascii() and client.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        stage = "MAIL FROM"
        try:
            code, reply = client.docmd("mail", f"FROM:{mail_from}{''.join(' ' + o for o in options)}")
            if code != 250:
                return self._refused(index, client, envelope, code, reply, f"sender {sender} refused")
            stage = "RCPT TO"
            code, reply = client.docmd("rcpt", f"TO:{rcpt_to}")
            if code not in (250, 251):
                return self._refused(index, client, envelope, code, reply, "recipient refused")
            stage = "DATA"
            code, reply = client.docmd("data")
            if code != 354:
                return self._refused(index, client, envelope, code, reply, "DATA refused")
            stage = "message"
            client.send(data_block(envelope.message))
            stage = "reply"
            code, reply = client.getreply()
            if code != 250:
                return self._refused(index, client, envelope, code, reply, "message refused")
        except Exception as exc:  # a dropped connection, a timeout, a garbled reply: not this message's fault
            self._drop(index)
            what = f"connection lost ({type(exc).__name__}: {exc})"
            if stage == "reply":
                return uncertain(
                    envelope.log_id, self.on_uncertain, f"{what} after the whole message was sent"
                )
            return Result(envelope.log_id, "transient", error=f"{what} during {stage}; reconnecting")
        return Result(envelope.log_id, "sent", provider_id=queue_id(reply))

    def _refused(
        self, index: int, client: smtplib.SMTP, envelope: Envelope, code: int, reply: bytes, what: str
    ) -> Result:
        """The result of a 4xx/5xx reply; the connection is reset for the next message (or dropped on 421)."""
        if code in (421, -1):  # the server is closing the connection / the reply was unreadable
            self._drop(index)
        else:
            try:
                client.rset()
            except (smtplib.SMTPException, OSError):
                self._drop(index)
        return Result(envelope.log_id, outcome_of(code), error=f"{what}: {code} {_text(reply)}")
