"""Customer e-mail: queued in the outbox inside the order's transaction, sent by the worker."""
from __future__ import annotations

import ipaddress
import json
import re
import smtplib
import socket
import ssl
import time
from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from functools import lru_cache
from urllib.parse import unquote, urlparse

import structlog
from sqlalchemy.orm import Session

from models.base import utcnow
from models.db import add_row
from models.events import OutboxMessage, OutboxStatus, Topic
from models.logs import describe_error, redact
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
    no answer within SMTP_TIMEOUT_SECONDS, or a session too slow to end within the mail's time
    (`send_mail`'s deadline), all before the mail's last line was sent: it did not take the mail, which
    is retried. A batch's next mails would wait as long for it, so they are left for the relay
    (consumers.processing)."""


class MailOutcomeUnknown(MailNotSent):
    """The SMTP server was sent the whole mail (its final ".") and then gave no answer in time, or closed
    the connection: it may have taken the mail and may deliver it (RFC 5321 4.5.3.2.6). Not retried
    automatically, else the buyer may get it again on every retry: a dead letter, for staff to check the
    server's log (the mail's Message-ID) before retrying it."""


# How long a mail waits for the SMTP server to connect or to answer one command.
SMTP_TIMEOUT_SECONDS = 10.0
# How long it may wait for the answer to the mail's final "." (the server queues the mail, scans it,
# writes it to disk): RFC 5321 4.5.3.2.6 has clients wait 10 minutes, but never past `send_mail`'s
# deadline, which the worker sets inside the mail's lease (consumers.processing).
SMTP_DATA_ANSWER_SECONDS = 600.0


class _OutOfTime(smtplib.SMTPException):
    """The session's deadline came before the session's next step."""


class _SessionWithin:
    """An SMTP session that ends by `deadline` (`time.monotonic()`): SMTP_TIMEOUT_SECONDS for the
    connection and each command's answer, longer for the answer to the final "." (SMTP_DATA_ANSWER_SECONDS),
    none of them past the deadline. `dot_unanswered` says the server has the whole mail and has not
    answered it yet: a failure then leaves the mail's fate unknown, one before it is safe to retry."""

    def __init__(self, *args, deadline: float, **kwargs):
        self.deadline = deadline
        self.dot_unanswered = False
        self.cut_short = False  # the last wait was shortened to the deadline
        self._in_data = False
        super().__init__(*args, **kwargs)

    def _wait_at_most(self, seconds: float) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _OutOfTime("no time left")
        self.cut_short = left < seconds
        if self.sock is not None:
            self.sock.settimeout(min(seconds, left))

    def send(self, s):
        self._wait_at_most(SMTP_TIMEOUT_SECONDS)
        super().send(s)
        # smtplib's data() sends the whole mail, ending in CRLF "." CRLF, in this one call.
        if self._in_data and isinstance(s, bytes) and s.endswith(b"\r\n.\r\n"):
            self.dot_unanswered = True

    def getreply(self):
        self._wait_at_most(SMTP_DATA_ANSWER_SECONDS if self.dot_unanswered else SMTP_TIMEOUT_SECONDS)
        reply = super().getreply()
        self.dot_unanswered = False
        return reply

    def data(self, msg):
        self._in_data = True
        try:
            return super().data(msg)
        finally:
            self._in_data = False


class _Session(_SessionWithin, smtplib.SMTP):
    pass


class _TlsSession(_SessionWithin, smtplib.SMTP_SSL):
    pass


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


def message_id(settings: Settings, message: dict, outbox_id: int | None) -> str:
    """The mail's Message-ID: the same for every attempt to send one outbox row (so a mailbox can fold
    the copies an at-least-once sender may leave), at the domain of MAIL_FROM."""
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or socket.getfqdn()
    if outbox_id is None:  # a mail not from the outbox
        return make_msgid(idstring=message.get("kind"), domain=domain)
    left = ".".join(re.sub(r"[^A-Za-z0-9_-]", "", str(part))
                    for part in ("mail", outbox_id, message.get("kind"), message.get("order_id")) if part)
    return f"<{left}@{domain}>"


def send_mail(settings: Settings, message: dict, *, outbox_id: int | None = None,
              deadline: float | None = None) -> None:
    """Send one queued e-mail; without SMTP_URL it is written to the log instead.

    Neither way logs the recipient's address or the body (it names the customer and their address):
    the order id, kind and subject are enough to find the mail, and the order holds the rest.
    Over smtps://, and smtp:// with STARTTLS, the server's certificate is checked (SMTP_CA_FILE
    for a private CA); one that fails the check gets neither the password nor the mail.

    The session ends by `deadline` (`time.monotonic()`; none: SMTP_DATA_ANSWER_SECONDS from now): one
    that would run past it before the mail's final "." is given up (MailServerUnreachable, retried);
    once the server has the final ".", no answer to it in time is MailOutcomeUnknown (not retried).
    `outbox_id` makes the Message-ID (`message_id`).
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
    email["Date"] = format_datetime(utcnow())
    email["Message-ID"] = mail_id = message_id(settings, message, outbox_id)
    email.set_content(mail_text(settings, message))
    host, context = url.hostname or "localhost", _tls_context(settings.smtp_ca_file)
    deadline = time.monotonic() + SMTP_DATA_ANSWER_SECONDS if deadline is None else deadline
    smtp = None
    try:
        timeout = min(SMTP_TIMEOUT_SECONDS, deadline - time.monotonic())
        if timeout <= 0:
            raise _OutOfTime("no time left")
        if url.scheme == "smtps":
            smtp = _TlsSession(host, url.port or 465, timeout=timeout, context=context, deadline=deadline)
        else:
            smtp = _Session(host, url.port or 25, timeout=timeout, deadline=deadline)
        try:
            if url.scheme == "smtp":
                _start_tls(smtp, context, host, logs_in=bool(url.username))
            if url.username:  # percent-encoded in the URL, as RFC 3986 (and DATABASE_URL) has it
                smtp.login(unquote(url.username), unquote(url.password or ""))
            smtp.send_message(email)
        except BaseException:
            smtp.close()
            raise
    except (smtplib.SMTPException, OSError) as exc:
        # `from None`: SMTPRecipientsRefused and its kin quote the address; the original, address and
        # all, stays out of the traceback that the worker stores with the failed attempt.
        raise _not_sent(exc, host, mail_id, dot_unanswered=smtp is not None and smtp.dot_unanswered,
                        cut_short=smtp is not None and smtp.cut_short) from None
    _quit(smtp, host)
    log.info("mail_sent", order_id=message.get("order_id"), kind=message.get("kind"))


def _not_sent(exc: BaseException, host: str, mail_id: str, dot_unanswered: bool, cut_short: bool) -> MailNotSent:
    """What a failed session means for the mail. An SMTP server's refusal is an SMTPException, and every
    SMTPException is an OSError: the order of the questions matters."""
    if dot_unanswered:
        return MailOutcomeUnknown(
            f"the SMTP server {host} got the whole mail, then no answer ({redact(str(exc))}): "
            f"it may have taken it, so it is not retried; look for Message-ID "
            f"{mail_id.strip('<>').partition('@')[0]} in its log before a retry")
    if isinstance(exc, _OutOfTime) or (cut_short and "timed out" in str(exc)):
        return MailServerUnreachable(f"the SMTP server {host} was too slow: the session did not reach the mail's "
                                     f"end within the time the mail has (its lease); nothing was delivered")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return MailNotSent(f"the SMTP server {host}'s certificate was refused ({exc.verify_message}): nothing was "
                           f"sent to it; if a private CA signed it, set SMTP_CA_FILE to that CA's PEM file")
    if isinstance(exc, ssl.SSLError):
        return MailNotSent(f"TLS with the SMTP server {host} failed: {describe_error(exc)}")
    if isinstance(exc, (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError)):
        return MailServerUnreachable(f"no session with the SMTP server {host}: {describe_error(exc)}")
    if isinstance(exc, smtplib.SMTPException):  # the server answered: a refusal (550 user unknown, ...)
        return MailNotSent(describe_error(exc))
    return MailServerUnreachable(f"no session with the SMTP server {host}: {describe_error(exc)}")


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
