"""Customer e-mail: queued in the outbox inside the order's transaction, sent by the worker."""
from __future__ import annotations

import ipaddress
import json
import smtplib
import ssl
from datetime import timedelta
from email.message import EmailMessage
from functools import lru_cache
from urllib.parse import unquote, urlparse

import structlog
from sqlalchemy.orm import Session

from models.base import utcnow
from models.db import add_row
from models.events import OutboxMessage, OutboxStatus, Topic
from models.logs import describe_error
from models.money import money
from models.orders import Order, OrderStatus, ShipmentStatus
from models.settings import Settings

log = structlog.get_logger(__name__)

SUBJECTS = {
    "confirmation": "Thank you for your order {order_id}",
    "payment_failed": "Your payment for order {order_id} did not go through",
}


def _body(order: Order, kind: str) -> str:
    # Every amount by the order's currency, as the console writes it: 1200 usd is 12.00 USD, never "1200".
    lines = [f"{line.quantity} x {line.name} ({line.sku}): {money(line.unit_amount * line.quantity, order.currency)}"
             for line in order.lines]
    if kind == "confirmation":
        head = f"We have received your payment for order {order.id}."
        tail = f"It will be shipped to {order.ship_name}, {order.ship_prefecture} {order.ship_address}."
    else:
        head = f"Your card was declined for order {order.id} ({order.failure_message or order.failure_code})."
        tail = "Your items stay reserved for a while: you can try again with another card."
    return "\n".join([head, "", *lines, f"Shipping: {money(order.shipping_fee, order.currency)}",
                      f"Total: {money(order.total, order.currency)}", "", tail])


def queue_order_mail(session: Session, order: Order, kind: str) -> None:
    body = {
        "kind": kind,
        "order_id": order.id,
        "to": order.email,
        "subject": SUBJECTS[kind].format(order_id=order.id),
        "body": _body(order, kind),
        # The buyer's "my page": the order's own URL with its access token. The sender puts the
        # service's base in front (the worker knows it from its settings).
        "my_page_path": f"/orders/{order.id}?token={order.access_token}",
    }
    # As `enqueue`, through `add_row`: nothing in the transaction reads a queued mail back.
    now = utcnow()
    sender = session.info.get(_SENT_AFTER_COMMIT) if kind == "confirmation" else None
    row = OutboxMessage(topic=Topic.MAIL, payload=json.dumps(body, sort_keys=True), order_id=order.id,
                        available_at=now, created_at=now)
    if sender is not None:  # handed to this worker, as if published to it (see MailsAfterCommit)
        row.status, row.available_at = OutboxStatus.PUBLISHED, now + timedelta(seconds=sender.sweep_seconds)
    add_row(session, row)
    if sender is not None:
        sender.rows.append(row)


class MailsAfterCommit:
    """Confirmation mails a worker's transaction queues, sent by that worker right after its
    commit, not through the relay and the broker (two messages a paid order instead of four).

    They are queued as published to that worker, due for the relay's re-publication only
    `sweep_seconds` later: if the worker dies before sending one, the relay publishes it then,
    like any mail a worker took and never finished. A send that fails is recorded and retried
    as for a mail message. A confirmation sent right after the commit that paid its order is
    true, so it needs no second look at the order (a retry gets one: `is_still_true`).
    Attached with `send_after_commit`.
    """

    def __init__(self, sweep_seconds: float):
        self.sweep_seconds = sweep_seconds
        self.rows: list[OutboxMessage] = []

    def committed(self) -> list[OutboxMessage]:
        """The mails the commit kept (one queued in a savepoint that was rolled back has no id)."""
        return [row for row in self.rows if row.id is not None]


_SENT_AFTER_COMMIT = "mails_sent_after_commit"


def send_after_commit(session: Session, sweep_seconds: float) -> MailsAfterCommit:
    """From now on this session's confirmation mails are for its worker to send after the commit."""
    return session.info.setdefault(_SENT_AFTER_COMMIT, MailsAfterCommit(sweep_seconds))


def is_still_true(session: Session, message: dict) -> bool:
    """A "payment failed" mail queued before a later success must not reach a paid customer, and a
    confirmation ("It will be shipped to ...") retried after its order was refunded, cancelled or
    put in review (a dispute) must not reach the buyer either: staff tell them what happens."""
    kind = message.get("kind")
    if kind not in ("payment_failed", "confirmation"):
        return True
    order = session.get(Order, message["order_id"])
    if order is None:
        return False
    if kind == "payment_failed":
        return order.status is OrderStatus.PAYMENT_FAILED
    return order.status is OrderStatus.PAID and (order.shipment is None
                                                 or order.shipment.status is not ShipmentStatus.CANCELLED)


class MailNotSent(Exception):
    """The SMTP server refused or failed a mail. Its text is the server's error with the recipient's
    address masked: it becomes the outbox row's last_error, a log line and maybe a staff alert."""


class MailServerUnreachable(MailNotSent):
    """The SMTP server could not be reached, or stopped answering: no connection, a connection closed,
    or no answer within SMTP_TIMEOUT_SECONDS. A batch's next mails would wait as long for it, so
    they are left for the relay (consumers.processing)."""


# How long a mail waits for the SMTP server to connect or to answer one command.
SMTP_TIMEOUT_SECONDS = 10.0


def mail_text(settings: Settings, message: dict) -> str:
    """The mail's text as sent: the queued body, then the link to the buyer's page of the order."""
    if not message.get("my_page_path"):  # queued before mails carried the link
        return message["body"]
    return f"{message['body']}\n\nYour order: {settings.admin_base_url}{message['my_page_path']}"


@lru_cache(maxsize=None)
def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Checks the SMTP server's certificate and name, against the system's CAs or SMTP_CA_FILE's."""
    return ssl.create_default_context(cafile=ca_file)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _start_tls(smtp: smtplib.SMTP, context: ssl.SSLContext, host: str, logs_in: bool) -> None:
    """smtp://: STARTTLS whenever the server offers it. A server that offers none gets no password:
    it would cross the network in clear. A relay on this machine (loopback) is the exception, and its
    certificate is not checked: nothing crosses the network, and a local relay's certificate is
    often one it made itself (postfix's)."""
    smtp.ehlo_or_helo_if_needed()
    if not smtp.has_extn("starttls"):
        if logs_in and not _is_loopback(host):
            raise MailNotSent(f"the SMTP server {host} offers no STARTTLS, and the SMTP_URL password is not sent "
                              f"in clear: use smtps:// (port 465) or a server that offers STARTTLS (port 587)")
        return
    smtp.starttls(context=_loopback_tls_context() if _is_loopback(host) else context)


@lru_cache(maxsize=None)
def _loopback_tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def send_mail(settings: Settings, message: dict) -> None:
    """Send one queued e-mail; without SMTP_URL it is written to the log instead.

    Neither way logs the recipient's address or the body (it names the customer and their address):
    the order id, kind and subject are enough to find the mail, and the order holds the rest.
    Over smtps://, and smtp:// with STARTTLS, the server's certificate is checked (SMTP_CA_FILE
    for a private CA); one that fails the check gets neither the password nor the mail.
    """
    if not settings.smtp_url:
        log.info("mail_logged", order_id=message.get("order_id"), kind=message.get("kind"),
                 subject=message["subject"])
        return
    url = urlparse(settings.smtp_url)
    email = EmailMessage()
    email["From"] = settings.mail_from
    email["To"] = message["to"]
    email["Subject"] = message["subject"]
    email.set_content(mail_text(settings, message))
    host, context = url.hostname or "localhost", _tls_context(settings.smtp_ca_file)
    try:
        if url.scheme == "smtps":
            smtp = smtplib.SMTP_SSL(host, url.port or 465, timeout=SMTP_TIMEOUT_SECONDS, context=context)
        else:
            smtp = smtplib.SMTP(host, url.port or 25, timeout=SMTP_TIMEOUT_SECONDS)
        try:
            if url.scheme == "smtp":
                _start_tls(smtp, context, host, logs_in=bool(url.username))
            if url.username:  # percent-encoded in the URL, as RFC 3986 (and DATABASE_URL) has it
                smtp.login(unquote(url.username), unquote(url.password or ""))
            smtp.send_message(email)
        except BaseException:
            smtp.close()
            raise
    except ssl.SSLCertVerificationError as exc:
        raise MailNotSent(f"the SMTP server {host}'s certificate was refused ({exc.verify_message}): nothing was "
                          f"sent to it; if a private CA signed it, set SMTP_CA_FILE to that CA's PEM file") from None
    except ssl.SSLError as exc:
        raise MailNotSent(f"TLS with the SMTP server {host} failed: {describe_error(exc)}") from None
    except (smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected, OSError) as exc:
        raise MailServerUnreachable(f"no session with the SMTP server {host}: {describe_error(exc)}") from None
    except smtplib.SMTPException as exc:
        # SMTPRecipientsRefused and its kin quote the address; `from None` keeps the original, address
        # and all, out of the traceback that the worker stores with the failed attempt.
        raise MailNotSent(describe_error(exc)) from None
    _quit(smtp, host)
    log.info("mail_sent", order_id=message.get("order_id"), kind=message.get("kind"))


def _quit(smtp: smtplib.SMTP, host: str) -> None:
    """End a session whose mail the server took. A QUIT it answers with other than 221, or not at all,
    is logged, not a failure: a failure would send the mail again, and the buyer would get it twice."""
    try:
        code, answer = smtp.docmd("QUIT")
        if code != 221:
            log.warning("smtp_quit_answered", host=host, code=code, answer=answer.decode(errors="replace")[:200])
    except (smtplib.SMTPException, OSError) as exc:
        log.warning("smtp_quit_failed", host=host, error=describe_error(exc))
    finally:
        smtp.close()
