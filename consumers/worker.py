"""`shop worker`: consume the work queues and run each message through its handler, ack after commit."""
from __future__ import annotations

import socket
import time
from functools import partial

import structlog
from kombu import Connection, Consumer, Message

from consumers.broker import QUEUES
from consumers.process import LongRunningProcess
from consumers.processing import process_batch, process_message, start_copy
from models.base import LARGEST_ID
from models.logs import describe_error
from models.settings import Settings

log = structlog.get_logger(__name__)


def _outbox_id(body: dict, message: Message) -> int | None:
    # An id past LARGEST_ID would fail in the database when the message is claimed and again when
    # its failure is recorded, which the worker takes for a database that is down: the message
    # would be put back and tried forever.
    outbox_id = body.get("outbox_id") if isinstance(body, dict) else None
    if type(outbox_id) is not int or not 0 < outbox_id <= LARGEST_ID:  # not bool: True is not id 1
        log.error("message_rejected", reason="body has no outbox_id that is a positive 64-bit integer",
                  body=str(body)[:200])
        message.reject()  # to the dead-letter queue where the broker has one
        return None
    return outbox_id


def _is_copy(body: dict, message: Message) -> bool:
    """A message a worker may have taken before: the relay published it again, or the broker
    redelivers it (a retry after a failed attempt is a new delivery, not a copy)."""
    return bool(message.delivery_info.get("redelivered")) or (isinstance(body, dict) and body.get("copy") is True)


class Worker(LongRunningProcess):
    """Unacknowledged messages of a stopped worker go back to the broker (or are re-published).

    With WORKER_BATCH above 1 the messages already delivered (up to that many) are run in one
    transaction (`process_batch`) and acknowledged after its commit; a copy of a message
    delivered before goes alone through `on_message`, which first counts it as started
    (committed) against MAX_DELIVERIES.
    """

    name = "worker"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.pending: list[tuple[int, Message]] = []

    def collect(self, body: dict, message: Message) -> None:
        if _is_copy(body, message):
            self.on_message(body, message)
            return
        outbox_id = _outbox_id(body, message)
        if outbox_id is not None:
            self.pending.append((outbox_id, message))

    def run_pending(self, conn: Connection | None = None) -> None:
        """Run the collected messages as one batch; ack each after the commit (reject a dead letter).
        With the broker's `conn`, the batch sends its heartbeats between the calls it makes after its
        commit, and makes no more once the connection is lost (`_still_connected`)."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        connected = partial(_still_connected, conn) if conn is not None else (lambda: True)
        try:
            results = process_batch(self.factory, self.settings, [outbox_id for outbox_id, _ in pending], connected)
        except Exception as exc:  # noqa: BLE001 - the database itself is unreachable
            log.error("messages_requeued", count=len(pending), error=describe_error(exc))
            for _, message in pending:
                message.requeue()
            time.sleep(1)
            return
        for outbox_id, message in pending:
            if results[outbox_id].outcome == "dead":
                message.reject()
            else:
                message.ack()
        log.debug("messages_acked", count=len(pending))

    def on_message(self, body: dict, message: Message) -> None:
        outbox_id = _outbox_id(body, message)
        if outbox_id is None:
            return
        try:
            if _is_copy(body, message) and start_copy(self.factory, self.settings, outbox_id):
                message.reject()
                return
            result = process_message(self.factory, self.settings, outbox_id)
        except Exception as exc:  # noqa: BLE001 - the database itself is unreachable
            # Nothing was recorded, so the message must not be acked: give it back and pause.
            log.error("message_requeued", outbox_id=outbox_id, error=describe_error(exc))
            message.requeue()
            time.sleep(1)
            return
        if result.outcome == "dead":
            # Recorded as dead in the database; on RabbitMQ the rejection also drops the message
            # into shop.dead (the queue's dead-letter exchange), where operators look for it.
            message.reject()
            return
        message.ack()
        log.debug("message_acked", outbox_id=outbox_id, result=result.outcome)

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        log.error("message_rejected", reason=f"undecodable body: {exc}", content_type=message.content_type)
        message.reject()

    def serve(self, conn: Connection) -> None:
        batch = self.settings.worker_batch
        callback = self.collect if batch > 1 else self.on_message
        idle_wait = _idle_wait(conn)
        with Consumer(conn, queues=list(QUEUES.values()), callbacks=[callback], accept=["json"],
                      on_decode_error=self.on_decode_error,
                      prefetch_count=max(self.settings.worker_prefetch, batch)):
            try:
                while not self.stopping:
                    conn.heartbeat_check()
                    # Messages can arrive before this loop runs (RabbitMQ delivers while the
                    # consumer is still being set up): those are run without waiting for more,
                    # since with `prefetch_count` of them unacknowledged the broker sends nothing.
                    if not self.pending:
                        _drain(conn, timeout=idle_wait)
                    # Take what the broker has already sent, without waiting for more.
                    while 0 < len(self.pending) < batch and _drain(conn, timeout=0.005):
                        pass
                    self.run_pending(conn)
            finally:
                # Unacknowledged and not run: back to the broker (a lost connection does the same).
                pending, self.pending = self.pending, []
                for _, message in pending:
                    try:
                        message.requeue()
                    except Exception:  # noqa: BLE001 - the connection is gone: the broker requeues them
                        break


def _still_connected(conn: Connection) -> bool:
    """Send RabbitMQ a heartbeat when one is due, and say whether the connection is still there. A batch
    asks between the mails, Stripe calls, alerts and messages run alone that follow its commit:
    RabbitMQ closes a connection silent for about three heartbeat intervals (90 s at 30 s) and hands its
    unacked messages to another worker, which would send the batch's mails a second time. Only sends:
    py-amqp's own check (`heartbeat_check`) would also count the broker's heartbeats, which nobody
    reads while the batch runs, and call a live connection dead after two intervals."""
    amqp = conn.connection if conn.transport.driver_type == "amqp" else None
    if amqp is None or not getattr(amqp, "heartbeat", None):
        return True
    try:
        if time.monotonic() > amqp.last_heartbeat_sent + amqp.heartbeat / 2:
            amqp.send_heartbeat()
            amqp.last_heartbeat_sent = time.monotonic()
    except Exception as exc:  # noqa: BLE001 - the connection is gone: the broker delivers them again
        log.warning("broker_connection_lost_in_batch", error=describe_error(exc))
        return False
    return True


def _idle_wait(conn: Connection) -> float:
    """How long the loop waits for a message before it comes round again (and sends a heartbeat
    when one is due): under a quarter of the AMQP heartbeat. py-amqp's drain reads on through the
    broker's heartbeats (RabbitMQ sends one every half interval) and returns only on a message or
    on that long a silence, so with a longer wait an idle worker would never send its own."""
    heartbeat = getattr(conn.connection, "heartbeat", None) if conn.transport.driver_type == "amqp" else None
    return min(1.0, heartbeat / 4) if heartbeat else 1.0


def _drain(conn: Connection, timeout: float) -> bool:
    """Handle what the broker sends within `timeout` seconds; False if it sent nothing."""
    try:
        conn.drain_events(timeout=timeout)
    except (socket.timeout, TimeoutError):
        return False
    return True


def run_worker(settings: Settings) -> None:
    Worker(settings).run()
