"""Real SMTP servers for the channel tests: aiosmtpd in a thread, with faults on demand, and a throwaway CA."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Received:
    """One message as the server stored it."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    queue_id: str
    peer: Any  # the client's (address, port): one per connection


@dataclass
class Inbox:
    """An aiosmtpd handler that stores every message it accepts, with faults on demand.

    :param rcpt_faults: answer ``rcpt_reply`` to this many RCPT commands (the first ones).
    :param data_faults: answer ``data_reply`` to this many messages (after their data arrived).
    :param reject: recipients containing one of these words get a 550.
    :param drop_after: close the connection after this many stored messages (then again after
        as many more, and so on); ``drop_before_reply`` closes it before the 250 of that
        message is sent (the message is stored, the client never hears of it).
    """

    rcpt_faults: int = 0
    rcpt_reply: str = "451 4.3.0 Temporary lookup failure, try again later"
    data_faults: int = 0
    data_reply: str = "421 4.7.0 Too busy, closing the connection"
    reject: tuple[str, ...] = ()
    drop_after: int | None = None
    drop_before_reply: bool = False
    messages: list[Received] = field(default_factory=list)
    rcpt_faults_sent: int = 0
    drops: int = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if any(word in address for word in self.reject):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in local recipient table"
        if self.rcpt_faults_sent < self.rcpt_faults:
            self.rcpt_faults_sent += 1
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_faults > 0:
            self.data_faults -= 1
            return self.data_reply
        queue_id = f"Q{len(self.messages) + 1:08d}"
        self.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, queue_id, session.peer)
        )
        if self.drop_after and len(self.messages) % self.drop_after == 0:
            self.drops += 1
            if self.drop_before_reply:
                server.transport.abort()
            else:  # after the reply has been written
                server.loop.call_soon(server.transport.close)
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def by_recipient(self) -> dict[str, Received]:
        return {m.rcpt_tos[0]: m for m in self.messages}

    def connections(self) -> int:
        """How many connections delivered messages."""
        return len({m.peer for m in self.messages})


class _AnyPortController(Controller):
    """aiosmtpd's Controller on port 0: the port the system chose is read back before the first connection."""

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@contextmanager
def smtp_server(handler: Any, **options: Any) -> Iterator[Controller]:
    """An aiosmtpd server on 127.0.0.1 and a free port; ``options`` go to aiosmtpd's SMTP."""
    controller = _AnyPortController(handler, hostname="127.0.0.1", port=0, ready_timeout=10, **options)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


def authenticator(login: str, password: str) -> Any:
    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        expected = LoginPassword(login.encode(), password.encode())
        ok = isinstance(data, LoginPassword) and data == expected
        return AuthResult(success=ok, handled=False)

    return check


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def self_signed(folder: Path) -> Certificate:
    """A throwaway self-signed certificate for 127.0.0.1 and localhost (its own CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Certificate(cert_path, key_path)
