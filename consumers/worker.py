"""`shop worker`: consume the work queues and run each message through its handler, ack after commit."""
from __future__ import annotations

import socket
import time

import structlog
from kombu import Connection, Consumer, Message

from consumers.broker import QUEUES
from consumers.process import LongRunningProcess
from consumers.processing import give_up_if_out_of_deliveries, process_message
from models.logs import describe_error
from models.settings import Settings

log = structlog.get_logger(__name__)


class Worker(LongRunningProcess):
    """Unacknowledged messages of a stopped worker go back to the broker (or are re-published)."""

    name = "worker"

    def on_message(self, body: dict, message: Message) -> None:
        outbox_id = body.get("outbox_id") if isinstance(body, dict) else None
        if not isinstance(outbox_id, int):
            log.error("message_rejected", reason="body has no integer outbox_id", body=str(body)[:200])
            message.reject()  # to the dead-letter queue where the broker has one
            return
        try:
            if message.delivery_info.get("redelivered") and give_up_if_out_of_deliveries(
                    self.factory, self.settings, outbox_id):
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
        with Consumer(conn, queues=list(QUEUES.values()), callbacks=[self.on_message], accept=["json"],
                      on_decode_error=self.on_decode_error, prefetch_count=self.settings.worker_prefetch):
            while not self.stopping:
                try:
                    conn.drain_events(timeout=1)
                except (socket.timeout, TimeoutError):
                    continue


def run_worker(settings: Settings) -> None:
    Worker(settings).run()
