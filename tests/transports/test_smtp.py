"""The SMTP transport against a real SMTP server (aiosmtpd) on 127.0.0.1: plain, and STARTTLS with AUTH."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from alerts.config import Settings
from alerts.transports import build_transport
from alerts.transports.base import Outcome
from alerts.transports.smtp import SMTPTransport
from tests.transports.conftest import make_batch, recipient


@dataclass
class Catcher:
    """An aiosmtpd handler: keeps what it accepted, refuses some recipients."""

    refuse: dict[str, str] = field(default_factory=dict)  # address -> SMTP reply
    messages: list[tuple[int, str, list[str], bytes]] = field(default_factory=list)  # (session, from, to, data)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((id(session), envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def catcher() -> Iterator[tuple[Catcher, int]]:
    handler = Catcher()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


def test_one_connection_per_batch_one_message_per_recipient(catcher: tuple[Catcher, int]) -> None:
    handler, port = catcher
    transport = SMTPTransport("127.0.0.1", port, timeout_s=5)
    results = transport.send(make_batch(3))
    assert [(r.delivery_id, r.outcome) for r in results] == [(i, Outcome.SENT) for i in (1, 2, 3)]
    assert results[0].provider_message_id == "delivery-1@alerts.example.org"
    assert len(handler.messages) == 3
    assert len({session for session, *_ in handler.messages}) == 1, "one SMTP connection for the batch"
    _, mail_from, to, data = handler.messages[0]
    assert (mail_from, to) == ("alerts@alerts.example.org", ["person1@example.org"])
    message = message_from_bytes(data, policy=policy.default)
    assert message["List-Unsubscribe"] == "<https://alerts.example.org/unsubscribe/tok-1>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Message-ID"] == "<delivery-1@alerts.example.org>"
    text = message.get_body(("plain",))
    assert text is not None and "https://alerts.example.org/manage/tok-1" in text.get_content()


def test_refused_recipients_fail_alone_and_temporary_refusals_retry(catcher: tuple[Catcher, int]) -> None:
    handler, port = catcher
    handler.refuse = {
        "person2@example.org": "550 5.1.1 <person2@example.org>: mailbox unavailable",
        "person3@example.org": "450 4.2.0 greylisted, try again later",
    }
    results = SMTPTransport("127.0.0.1", port, timeout_s=5).send(make_batch(4))
    by_id = {r.delivery_id: r for r in results}
    assert (by_id[2].outcome, by_id[2].error_code) == (Outcome.FAILED, 550)
    assert by_id[2].error is not None and "mailbox unavailable" in by_id[2].error
    assert "person2@example.org" not in by_id[2].error
    assert (by_id[3].outcome, by_id[3].error_code) == (Outcome.RETRY, 450)
    assert by_id[1].outcome is by_id[4].outcome is Outcome.SENT
    assert [to for _, _, to, _ in handler.messages] == [["person1@example.org"], ["person4@example.org"]]


def test_no_server_means_retry() -> None:
    results = SMTPTransport("127.0.0.1", free_port(), timeout_s=2).send(make_batch(2))
    assert [(r.outcome, r.ambiguous) for r in results] == [(Outcome.RETRY, False)] * 2
    assert results[0].error is not None and "unavailable" in results[0].error


def test_unsafe_header_value_fails_that_message_only(catcher: tuple[Catcher, int]) -> None:
    handler, port = catcher
    bad = recipient(2)
    bad = type(bad)(2, bad.email, {"unsubscribe_url": "https://x.example/a\r\nBcc: evil@example.org"}, "<b@x>")
    results = SMTPTransport("127.0.0.1", port, timeout_s=5).send(make_batch(recipients=[recipient(1), bad]))
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.FAILED]
    assert len(handler.messages) == 1


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_starttls_and_auth(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret")

    handler = Catcher()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    )
    controller.start()
    try:
        client_tls = ssl.create_default_context(cafile=str(cert))
        good = SMTPTransport(
            "127.0.0.1", controller.port, "mailer", "s3cret", starttls=True, timeout_s=5, ssl_context=client_tls
        )
        assert {r.outcome for r in good.send(make_batch(2))} == {Outcome.SENT}
        assert len(handler.messages) == 2 and logins == [(b"mailer", b"s3cret")]
        # Wrong password: nothing sent, retried later (an operator fixes the setting).
        wrong = SMTPTransport(
            "127.0.0.1", controller.port, "mailer", "nope", starttls=True, timeout_s=5, ssl_context=client_tls
        )
        assert {r.outcome for r in wrong.send(make_batch(2))} == {Outcome.RETRY}
        # Without STARTTLS the server takes no mail: a configuration problem, retried (not failed) for all.
        plain = SMTPTransport("127.0.0.1", controller.port, timeout_s=5)
        refused = plain.send(make_batch(3))
        assert [(r.outcome, r.error_code) for r in refused] == [
            (Outcome.RETRY, 530),
            (Outcome.RETRY, None),
            (Outcome.RETRY, None),
        ]
        # An untrusted certificate is refused by default.
        unverified = SMTPTransport("127.0.0.1", controller.port, "mailer", "s3cret", starttls=True, timeout_s=5)
        assert {r.outcome for r in unverified.send(make_batch(1))} == {Outcome.RETRY}
        assert len(handler.messages) == 2
    finally:
        controller.stop()


def test_built_from_settings(catcher: tuple[Catcher, int], tmp_path: Path) -> None:
    handler, port = catcher
    settings = Settings(
        email_backend="smtp", smtp_host="127.0.0.1", smtp_port=port, from_email="alerts@alerts.example.org"
    )
    transport = build_transport(settings)
    assert isinstance(transport, SMTPTransport)
    assert transport.local_hostname == "alerts.example.org"
    assert {r.outcome for r in transport.send(make_batch(1))} == {Outcome.SENT}
    assert len(handler.messages) == 1
