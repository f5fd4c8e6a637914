"""How the worker reaches the SMTP server: TLS with the server's certificate checked (SMTP_CA_FILE for a
private CA), STARTTLS on smtp://, no password in clear across a network, percent-encoded credentials;
the settings that go with them; and a confirmation that is no longer true when it is retried."""
from __future__ import annotations

import dataclasses
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import stripe
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy import select

from consumers.mail import MailNotSent, send_mail
from consumers.staff_actions import refund_order
from models.events import OutboxMessage, OutboxStatus, Topic
from models.orders import Order
from models.settings import Settings
from tests.integration.test_mail import Mailbox
from tests.support import confirm_card, event_for, rendered_logs

MESSAGE = {"kind": "confirmation", "order_id": "ord_1", "to": "taro@example.jp", "subject": "Thank you",
           "body": "It will be shipped to Taro Yamada, Tokyo ...", "my_page_path": "/orders/ord_1?token=t"}


# --- a private CA, a server certificate it signed for 127.0.0.1, and one for another name -------------------


@dataclasses.dataclass
class Pki:
    ca: Path             # the CA's certificate: what SMTP_CA_FILE names
    server: tuple[Path, Path]      # certificate and key for 127.0.0.1 / localhost, signed by the CA
    other_name: tuple[Path, Path]  # signed by the same CA, for mitm.attacker.example


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed(folder: Path, name: str, alt_names: str) -> tuple[Path, Path]:
    (folder / f"{name}.ext").write_text(f"subjectAltName={alt_names}\nbasicConstraints=CA:FALSE\n"
                                        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=folder)
    return folder / f"{name}.pem", folder / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Shop test private CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)
    return Pki(ca=folder / "ca.pem",
               server=_signed(folder, "server", f"IP:127.0.0.1,DNS:localhost,DNS:{socket.gethostname()}"),
               other_name=_signed(folder, "mitm", "DNS:mitm.attacker.example"))


def _server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert)
    return context


class LoginMailbox(Mailbox):
    """A server that asks for a login (accepting `password`) and keeps every login it was given.
    tls: "smtps" (implicit TLS), "starttls" (offered, and AUTH only after it) or None."""

    def __init__(self, *, password: str = "s3cret", tls: str | None = None, cert=None, hostname="127.0.0.1"):
        super().__init__()
        self.password, self.tls, self.cert, self.hostname, self.logins = password, tls, cert, hostname, []

    def check(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password.decode() == self.password)

    def start(self):
        options = {"authenticator": self.check, "auth_require_tls": self.tls == "starttls"}
        if self.tls == "smtps":
            options["ssl_context"] = _server_context(self.cert)
        elif self.tls == "starttls":
            options["tls_context"] = _server_context(self.cert)
        self.server = Controller(self, hostname=self.hostname, port=self.port, **options)
        self.server.start()


@pytest.fixture
def mailboxes():
    started = []

    def start(**options) -> LoginMailbox:
        box = LoginMailbox(**options)
        box.start()
        started.append(box)
        return box
    yield start
    for box in started:
        box.stop()


def _settings(smtp_url: str, **env) -> Settings:
    return Settings.from_env({"SMTP_URL": smtp_url, "MAIL_FROM": "Shop <shop@shop.test>",
                              "ADMIN_BASE_URL": "https://shop.test", **env})


# --- smtps:// -----------------------------------------------------------------------------------------------


def test_smtps_gives_a_server_whose_certificate_no_trusted_ca_signed_neither_the_password_nor_the_mail(
        pki, mailboxes):
    box = mailboxes(tls="smtps", cert=pki.server)
    with pytest.raises(MailNotSent) as refused:
        send_mail(_settings(f"smtps://shop:s3cret@127.0.0.1:{box.port}"), MESSAGE)
    assert "certificate" in str(refused.value) and "SMTP_CA_FILE" in str(refused.value), refused.value
    assert box.logins == [] and box.messages == []


def test_smtps_refuses_a_certificate_of_the_trusted_ca_made_out_to_another_name(pki, mailboxes):
    box = mailboxes(tls="smtps", cert=pki.other_name)
    with pytest.raises(MailNotSent) as refused:
        send_mail(_settings(f"smtps://shop:s3cret@127.0.0.1:{box.port}", SMTP_CA_FILE=str(pki.ca)), MESSAGE)
    assert "certificate" in str(refused.value), refused.value
    assert box.logins == [] and box.messages == []


def test_smtps_sends_to_a_server_whose_certificate_the_smtp_ca_file_ca_signed(pki, mailboxes):
    box = mailboxes(tls="smtps", cert=pki.server)
    send_mail(_settings(f"smtps://shop:s3cret@127.0.0.1:{box.port}", SMTP_CA_FILE=str(pki.ca)), MESSAGE)
    assert box.logins == [("shop", "s3cret")]
    assert [to for to, _ in box.messages] == [["taro@example.jp"]]


# --- smtp:// and STARTTLS -------------------------------------------------------------------------------------


def _host_name_of_this_machine() -> tuple[str, str]:
    """This machine by its name (not a loopback address or `localhost`), and the address it resolves to.
    The service does not resolve SMTP_URL's host to decide: a name may reach a server across a network."""
    name = socket.gethostname()
    return name, socket.gethostbyname(name)


def test_smtp_starts_tls_when_offered_and_logs_in_to_a_server_that_allows_auth_only_after_it(pki, mailboxes):
    """A submission server (port 587) offers AUTH only once STARTTLS is done, as most providers' do."""
    name, address = _host_name_of_this_machine()
    box = mailboxes(tls="starttls", cert=pki.server, hostname=address)
    send_mail(_settings(f"smtp://shop:s3cret@{name}:{box.port}", SMTP_CA_FILE=str(pki.ca)), MESSAGE)
    assert box.logins == [("shop", "s3cret")]
    assert [to for to, _ in box.messages] == [["taro@example.jp"]]


def test_starttls_to_a_server_whose_certificate_is_not_trusted_sends_it_nothing(pki, mailboxes):
    name, address = _host_name_of_this_machine()
    box = mailboxes(tls="starttls", cert=pki.server, hostname=address)
    with pytest.raises(MailNotSent) as refused:
        send_mail(_settings(f"smtp://shop:s3cret@{name}:{box.port}"), MESSAGE)
    assert "certificate" in str(refused.value) and "SMTP_CA_FILE" in str(refused.value), refused.value
    assert box.logins == [] and box.messages == []


def test_a_relay_on_this_machine_offering_starttls_with_a_certificate_of_its_own_gets_the_mail(pki, mailboxes):
    """postfix on localhost with its self-signed certificate: nothing crosses the network, so it is not checked."""
    box = mailboxes(tls="starttls", cert=pki.server)
    send_mail(_settings(f"smtp://shop:s3cret@127.0.0.1:{box.port}"), MESSAGE)
    assert box.logins == [("shop", "s3cret")] and len(box.messages) == 1


def test_a_password_is_not_sent_in_clear_to_a_server_without_starttls_the_mail_is_retried_then_dead(
        client, checkout, post_event, sessions, settings, mailboxes):
    from tests.conftest import deliver_with

    name, address = _host_name_of_this_machine()
    box = mailboxes(hostname=address)
    order = checkout([("TEA-01", 1)], email="hanako@example.jp")
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"]))
    deliver_with(dataclasses.replace(settings, smtp_url=f"smtp://shop:s3cret@{name}:{box.port}"), sessions)

    with sessions() as session:
        mail = session.scalars(select(OutboxMessage).where(OutboxMessage.topic == Topic.MAIL)).one()
        assert mail.status is OutboxStatus.DEAD and mail.attempts == settings.max_attempts
        assert "offers no STARTTLS" in mail.last_error and "smtps://" in mail.last_error, mail.last_error
    assert box.logins == [] and box.messages == []


def test_a_relay_on_this_machine_without_starttls_still_gets_the_login(mailboxes):
    box = mailboxes()
    send_mail(_settings(f"smtp://shop:s3cret@127.0.0.1:{box.port}"), MESSAGE)
    assert box.logins == [("shop", "s3cret")] and len(box.messages) == 1


@pytest.mark.parametrize(("written", "user", "password"), [
    ("shop:p%2Fss%231", "shop", "p/ss#1"),   # / and # cannot be written raw in a URL
    ("postmaster%40mg.shop.test:p%40ss%3Aw%25rd", "postmaster@mg.shop.test", "p@ss:w%rd"),
])
def test_a_percent_encoded_user_and_password_in_smtp_url_are_sent_decoded(mailboxes, written, user, password):
    box = mailboxes(password=password)
    send_mail(_settings(f"smtp://{written}@127.0.0.1:{box.port}"), MESSAGE)
    assert box.logins == [(user, password)] and len(box.messages) == 1


# --- settings ------------------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return {"DATABASE_URL": f"sqlite:///{tmp_path / 'shop.db'}", "SECRET_KEY": "k" * 40,
            "MAIL_FROM": "Shop <shop@shop.test>"}


@pytest.mark.parametrize("name, value", [("SMTP_URL", "smtps://shop:pw@smtp.provider.example:465"),
                                         ("STAFF_ALERT_URL", "https://hooks.slack.com/services/T0/B0/token")])
def test_mails_or_alerts_without_admin_base_url_stop_the_process_naming_it(env, name, value):
    """Else buyers were mailed, and staff alerted, links to http://127.0.0.1:8000/…"""
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env({**env, name: value})
    message = str(stopped.value.code)
    assert message.startswith(f"ADMIN_BASE_URL must be set when {name} is"), message
    settings = Settings.from_env({**env, name: value, "ADMIN_BASE_URL": "https://shop.test/"})
    assert settings.admin_base_url == "https://shop.test"
    assert Settings.from_env(env).admin_base_url == Settings.admin_base_url  # neither set: links go nowhere


def test_smtp_ca_file_must_be_a_pem_file_of_certificates(env, tmp_path, pki):
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env({**env, "SMTP_CA_FILE": "no-such-ca.pem"})
    message = str(stopped.value.code)
    assert message.startswith("SMTP_CA_FILE must be a PEM file") and "no-such-ca.pem' is not a file" in message
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env({**env, "SMTP_CA_FILE": "notes.txt"})
    assert "cannot be read as one" in str(stopped.value.code), stopped.value.code
    assert Settings.from_env({**env, "SMTP_CA_FILE": str(pki.ca)}).smtp_ca_file == str(pki.ca)
    assert Settings.from_env(env).smtp_ca_file is None


# --- a confirmation retried after its order moved on -------------------------------------------------------


def _charge_of(order: dict) -> str:
    charge = stripe.PaymentIntent.retrieve(order["payment_intent_id"]).to_dict()["latest_charge"]
    return charge["id"] if isinstance(charge, dict) else charge


def _disputed(order: dict) -> dict:
    from tests.integration.test_refunds_and_disputes import dispute_event

    return dispute_event("created", order, _charge_of(order), "needs_response")


@pytest.mark.parametrize("then", ["refunded", "disputed"])
def test_a_confirmation_retried_after_its_order_was_refunded_or_disputed_is_dropped(
        client, checkout, post_event, sessions, settings, then):
    """SMTP down when the order is paid; staff refund it (shipment cancelled) or the buyer disputes the
    charge (the order needs review, staff decide and tell the buyer); SMTP back: no "It will be shipped"."""
    from tests.conftest import deliver_with

    box = Mailbox()  # not started: down
    mailing = dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{box.port}", retry_base_seconds=0.2)
    order = checkout([("TEA-01", 1)], email="taro@example.jp")
    assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"]))
    deliver_with(mailing, sessions, max_rounds=2)
    with sessions() as session:
        mail = session.scalars(select(OutboxMessage).where(OutboxMessage.topic == Topic.MAIL)).one()
        assert mail.status is OutboxStatus.PENDING and mail.attempts >= 1, mail.status  # to be retried

    with rendered_logs() as lines:
        if then == "refunded":
            refund_order(sessions, order["order_id"], actor="alice", reason="the buyer asked to cancel")
        else:
            assert post_event(_disputed(order)).status_code == 200
            deliver_with(mailing, sessions, max_rounds=2)  # the mail's retry may run in this batch too
        with sessions() as session:
            row = session.get(Order, order["order_id"])
            assert row.status.value == ("refunded" if then == "refunded" else "needs_review"), row.status
        box.start()
        try:
            deadline = time.monotonic() + 30
            while mail.status is OutboxStatus.PENDING and time.monotonic() < deadline:  # its retry falls due
                deliver_with(mailing, sessions, max_rounds=2)
                with sessions() as session:
                    mail = session.get(OutboxMessage, mail.id)
        finally:
            box.stop()
    assert mail.status is OutboxStatus.DONE, mail.status
    assert box.messages == []
    assert any("mail_dropped" in line and order["order_id"] in line for line in lines), lines
