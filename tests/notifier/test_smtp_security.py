"""TLS and AUTH against a real SMTP server (aiosmtpd): STARTTLS, implicit TLS, LOGIN and PLAIN.

The server's certificate is self-signed, made by the ``openssl`` command for the test run, and
the mailer trusts it through ``ca_file`` alone, as ``smtp_ca_file`` does in production.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from heraldo.notifier.mailer import Mailer, SMTPTarget
from heraldo.v1 import notification_pb2 as pb
from tests.notifier.conftest import FaultyHandler

USER = "billing@heraldo.test"
PASSWORD = "s3cret-Passw0rd"
MESSAGE = (b"From: billing@heraldo.test\r\nTo: jane@example.com\r\nSubject: Invoice\r\n"
           b"Message-ID: <tls-1@heraldo>\r\nX-Heraldo-Notification-Id: tls-1\r\n\r\nHello\r\n")


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, valid for a day."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl command is needed (Debian package openssl, listed in .ci/run)")
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    # An EC key is generated in milliseconds, unlike RSA on a loaded machine.
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key_file), "-out", str(cert_file), "-days", "1",
         "-subj", "/CN=heraldo-test-smtp",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60)
    return Certificate(cert_file=cert_file, key_file=key_file)


class AuthHandler(FaultyHandler):
    """Stores each accepted message with the user the session authenticated as."""

    def __init__(self) -> None:
        super().__init__()
        self.users: list[str | None] = []
        self.mechanisms: list[str] = []

    def authenticator(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, auth_data: LoginPassword) -> AuthResult:
        self.mechanisms.append(mechanism)
        ok = (auth_data.login.decode(), auth_data.password.decode()) == (USER, PASSWORD)
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login.decode())

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            self.users.append(session.auth_data if session.authenticated else None)
        return reply


@dataclass
class Server:
    handler: AuthHandler
    port: int


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture(params=["lockstep", "pipelining"])
async def start_server(request, certificate: Certificate) -> AsyncIterator[ServerFactory]:
    """Starts aiosmtpd servers on free ports: ``implicit`` wraps the socket in TLS from the
    first byte; otherwise STARTTLS is offered (and required) when ``starttls`` is set. Each test
    runs without PIPELINING and with it, whose transactions borrow the TLS transport."""
    servers: list[asyncio.Server] = []

    async def start(*, starttls: bool = True, implicit: bool = False,
                    exclude: tuple[str, ...] = ()) -> Server:
        handler = AuthHandler()
        handler.pipelining = request.param == "pipelining"
        context = certificate.server_context()

        def protocol() -> SMTP:
            return SMTP(handler, hostname="test-smtp", decode_data=False,
                        tls_context=context if starttls and not implicit else None,
                        require_starttls=starttls and not implicit,
                        authenticator=handler.authenticator, auth_required=True,
                        # Under implicit TLS aiosmtpd does not know the link is encrypted.
                        auth_require_tls=not implicit, auth_exclude_mechanism=exclude)

        server = await asyncio.get_running_loop().create_server(
            protocol, "127.0.0.1", 0, ssl=context if implicit else None)
        servers.append(server)
        return Server(handler=handler, port=server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()


def mailer_for(server: Server, certificate: Certificate, *, tls: str,
               password: str = PASSWORD) -> Mailer:
    return Mailer(target=SMTPTarget(host="127.0.0.1", port=server.port, tls=tls, username=USER,
                                    password=password, ca_file=str(certificate.cert_file)),
                  timeout_s=10, connections=1, retries=2, retry_backoff_s=0.01)


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
async def test_starttls_and_auth_deliver_as_the_configured_user(start_server, certificate,
                                                                mechanism):
    other = {"LOGIN": "PLAIN", "PLAIN": "LOGIN"}[mechanism]
    server = await start_server(exclude=(other,))
    mailer = mailer_for(server, certificate, tls="starttls")
    try:
        outcome = await mailer.send(USER, ["jane@example.com"], MESSAGE)
    finally:
        await mailer.close()

    assert outcome.status == pb.DELIVERY_STATUS_SENT, outcome.detail
    assert server.handler.received_ids() == ["tls-1"]
    assert server.handler.users == [USER]
    assert server.handler.mechanisms == [mechanism]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_implicit_tls_with_auth_delivers(start_server, certificate):
    server = await start_server(implicit=True)
    mailer = mailer_for(server, certificate, tls="implicit")
    try:
        outcome = await mailer.send(USER, ["jane@example.com"], MESSAGE)
    finally:
        await mailer.close()

    assert outcome.status == pb.DELIVERY_STATUS_SENT, outcome.detail
    assert server.handler.users == [USER]


async def test_a_wrong_password_is_a_permanent_failure_with_code_535(start_server, certificate):
    server = await start_server()
    mailer = mailer_for(server, certificate, tls="starttls", password="wrong")
    try:
        outcome = await mailer.send(USER, ["jane@example.com"], MESSAGE)
    finally:
        await mailer.close()

    assert outcome.status == pb.DELIVERY_STATUS_PERMANENT_FAILURE
    assert outcome.smtp_code == 535
    assert "AUTH" in outcome.detail and USER in outcome.detail
    assert PASSWORD not in outcome.detail and "wrong" not in outcome.detail
    assert server.handler.received == []
    assert server.handler.mail_commands == 0


async def test_required_starttls_that_the_server_does_not_offer_sends_nothing(start_server,
                                                                              certificate):
    server = await start_server(starttls=False)
    mailer = mailer_for(server, certificate, tls="starttls")
    try:
        outcome = await mailer.send(USER, ["jane@example.com"], MESSAGE)
    finally:
        await mailer.close()

    assert outcome.status == pb.DELIVERY_STATUS_TEMPORARY_FAILURE
    assert "smtp_tls=starttls" in outcome.detail and "STARTTLS" in outcome.detail
    assert "nothing was sent" in outcome.detail
    # Neither a message nor even a MAIL command went over the clear-text link.
    assert server.handler.mail_commands == 0
    assert server.handler.received == []
    # Retrying a link that cannot be secured cannot help: one connection, no retries.
    assert server.handler.connections == 1


async def test_without_the_ca_file_a_self_signed_certificate_is_refused(start_server):
    server = await start_server()
    # The system's CA bundle (the default without ca_file) does not know a self-signed cert.
    mailer = Mailer(target=SMTPTarget(host="127.0.0.1", port=server.port, tls="starttls",
                                      username=USER, password=PASSWORD),
                    timeout_s=10, connections=1)
    try:
        outcome = await mailer.send(USER, ["jane@example.com"], MESSAGE)
    finally:
        await mailer.close()

    assert outcome.status == pb.DELIVERY_STATUS_TEMPORARY_FAILURE
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.detail or "certificate" in outcome.detail
    assert server.handler.received == []
