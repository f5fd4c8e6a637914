"""Broker topology and connections: RabbitMQ in production, a file-backed transport on a laptop."""
from __future__ import annotations

import json
import os
import socket
import time

from kombu import Connection, Exchange, Producer, Queue

from consumers import file_transport
from models.events import Topic
from models.settings import Settings, hide_password

EXCHANGE = Exchange("shop", type="direct", durable=True)
DEAD_LETTER_EXCHANGE = Exchange("shop.dlx", type="direct", durable=True)

DEAD_LETTER_QUEUE = Queue("shop.dead", DEAD_LETTER_EXCHANGE, routing_key="dead", durable=True)


BROKER_EXAMPLES = "amqp://user:password@host:5672/vhost (RabbitMQ) or filesystem://instance/broker (files, no server)"


# kombu's transports that live inside one process: the relay publishes into its own, no worker reads it.
_ONE_PROCESS_TRANSPORTS = frozenset({"memory"})


def refuse_unshared_transport(url: str) -> None:
    """Stop at start, naming BROKER_URL, when its transport lives inside one process (kombu's `memory://`):
    the web, the relay and the worker are processes of their own, so a paid order's event would be stored
    and published and never reach a worker, with every process looking healthy. For the processes that use
    the broker (gunicorn's master, `shop worker`, `shop relay`); a `shop` verb that does not may run with it."""
    for part in url.split(";"):
        transport = part.strip().partition("://")[0].partition("+")[0]
        if transport in _ONE_PROCESS_TRANSPORTS:
            raise SystemExit(f"BROKER_URL must be a broker every process shares: {transport}:// lives inside one "
                             f"process, so no worker would get what the relay publishes; use {BROKER_EXAMPLES}")


def refuse_unknown_transport(url: str) -> None:
    """Stop at start, naming BROKER_URL, when no kombu transport takes it (the relay and the worker
    would otherwise wait for that broker forever). Checked without connecting: a broker that is
    down is the relay's retry and /readyz's business. Every `shop` verb and gunicorn's master call it
    (not Settings.from_env: models/ has no kombu)."""
    from kombu.transport import resolve_transport

    for part in url.split(";"):  # kombu's list of fail-over URLs
        scheme, sep, _ = part.strip().partition("://")
        if not (sep and scheme):
            raise SystemExit(f"BROKER_URL must be a kombu URL such as {BROKER_EXAMPLES}, got {hide_password(url)!r}")
        transport = scheme.partition("+")[0]  # "sqla+postgresql://…": the transport, then its own scheme
        try:
            resolve_transport(transport)
        except (KeyError, ImportError, AttributeError, ValueError):
            raise SystemExit(f"BROKER_URL names a transport kombu does not have ({transport!r}): "
                             f"use {BROKER_EXAMPLES}") from None


def _work_queue(topic: Topic) -> Queue:
    return Queue(
        f"shop.{topic.value}",
        EXCHANGE,
        routing_key=topic.value,
        durable=True,
        # A message a worker rejects outright lands where operators look for dead letters.
        queue_arguments={"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name, "x-dead-letter-routing-key": "dead"},
    )


QUEUES: dict[Topic, Queue] = {topic: _work_queue(topic) for topic in Topic}


def connect(settings: Settings) -> Connection:
    folder = settings.broker_folder
    if folder is not None:
        queue_dir = folder / "queue"
        processed = folder / "processed"
        queue_dir.mkdir(parents=True, exist_ok=True)
        processed.mkdir(parents=True, exist_ok=True)
        return Connection(
            "filesystem://localhost//",
            transport=file_transport.Transport,
            transport_options={
                "data_folder_in": str(queue_dir),
                "data_folder_out": str(queue_dir),
                # Where a consumer claims a message by renaming it: must be on the same file system.
                "processed_folder": str(processed),
                "control_folder": str(folder / "control"),
                "store_processed": False,
                "polling_interval": 0.05,
            },
        )
    # Publisher confirms are taken per batch by `ConfirmedPublisher`, not per message (py-amqp's
    # confirm_publish waits for each message's ack: about 2 ms each, 460 messages/s at most).
    return Connection(settings.broker_url, heartbeat=30, connect_timeout=5, transport_options={"max_retries": 3})


class PublishNotConfirmed(Exception):
    """The broker refused (nacked) a message, or did not confirm it in time: the relay undoes its claim."""


class ConfirmedPublisher:
    """Publishes messages, then waits ONCE for the broker to have them all (`confirm`).

    On RabbitMQ the channel is in confirm mode: every persistent message is acknowledged by
    the broker once it is safely queued, and `confirm` waits for the acks of everything
    published since the last call, so a batch costs one wait, not one per message. On the
    file transport a publish is a file written and renamed before it returns: nothing to wait for.
    The relay claims its rows before it publishes them and undoes the claim when a publish or
    `confirm` raises (`consumers.relay.publish_due`).
    """

    def __init__(self, connection: Connection, confirm_timeout: float = 10.0):
        self.connection = connection
        self.channel = connection.channel()
        self.confirm_timeout = confirm_timeout
        self.amqp = connection.transport.driver_type == "amqp"
        # kombu's Producer only for the file transport; on RabbitMQ `publish` uses the channel itself.
        self.producer = None if self.amqp else Producer(self.channel)
        self.unconfirmed: set[int] = set()
        self.declared: set[str] = set()  # queues declared on this channel
        self.refused = 0
        self.sequence = 0
        if self.amqp:
            self.channel.confirm_select()
            self.channel.events["basic_ack"].add(self._acked)
            self.channel.events["basic_nack"].add(self._nacked)

    def _settle(self, delivery_tag: int, multiple: bool) -> int:
        settled = {tag for tag in self.unconfirmed if tag <= delivery_tag} if multiple else {delivery_tag}
        self.unconfirmed -= settled
        return len(settled)

    def _acked(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple)

    def _nacked(self, delivery_tag: int, multiple: bool) -> None:
        self.refused += self._settle(delivery_tag, multiple)

    def publish(self, body: dict, queue: Queue) -> None:
        if not self.amqp:
            self.producer.publish(body, exchange=EXCHANGE, routing_key=queue.routing_key, declare=[queue],
                                  serializer="json", delivery_mode=2)
            return
        # On RabbitMQ straight to the channel, as kombu's Producer would send it (a persistent JSON
        # message): the Producer's per-message work (its declare check copies and binds the queue,
        # its serializer registry) cost about 0.17 ms a message, the channel's own 0.05 ms.
        if queue.name not in self.declared:
            queue(self.channel).declare()
            self.declared.add(queue.name)
        message = self.channel.prepare_message(json.dumps(body), 0, "application/json", "utf-8", {},
                                               {"delivery_mode": 2})
        self.channel.basic_publish(message, exchange=EXCHANGE.name, routing_key=queue.routing_key)
        self.sequence += 1  # the broker numbers a confirm channel's messages 1, 2, ...
        self.unconfirmed.add(self.sequence)

    def confirm(self) -> None:
        """Return once the broker has every message published so far; raise PublishNotConfirmed if not."""
        deadline = time.monotonic() + self.confirm_timeout
        while self.unconfirmed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PublishNotConfirmed(f"{len(self.unconfirmed)} messages not confirmed by the broker "
                                          f"within {self.confirm_timeout:g} s")
            try:
                self.connection.drain_events(timeout=left)
            except (socket.timeout, TimeoutError):
                continue
        if self.refused:
            refused, self.refused = self.refused, 0
            raise PublishNotConfirmed(f"the broker refused {refused} of the messages")

    def close(self) -> None:
        self.channel.close()


def keep_alive(connection: Connection, seconds: float) -> None:
    """Wait `seconds` (0: not at all) reading what the broker sends, and send a heartbeat when due.

    For a process that publishes but does not consume (the relay between batches). py-amqp sends
    heartbeats only when asked (`heartbeat_check`) and notices the broker's only when it reads
    them: without both, RabbitMQ closes a connection that was idle for two heartbeat intervals,
    and py-amqp gives up on one whose heartbeats it did not read.
    """
    connection.heartbeat_check()
    if connection.transport.driver_type != "amqp":
        time.sleep(seconds)
    elif seconds > 0:
        try:
            connection.drain_events(timeout=seconds)
        except (socket.timeout, TimeoutError):
            pass


def declare_topology(connection: Connection) -> None:
    channel = connection.default_channel
    for queue in (*QUEUES.values(), DEAD_LETTER_QUEUE):
        queue(channel).declare()


def ping(settings: Settings) -> None:
    """Raise if the broker cannot be reached (used by /readyz)."""
    folder = settings.broker_folder
    if folder is not None:
        # No server to be down: ready once its folders are there (made as `connect` makes them, so a web
        # process started before any worker or relay is ready too) and writable.
        queue_dir = folder / "queue"
        try:
            for made in (queue_dir, folder / "processed"):
                made.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConnectionError(f"broker folder {queue_dir} cannot be made: {exc.strerror or exc}") from None
        if not os.access(queue_dir, os.W_OK | os.X_OK):
            raise ConnectionError(f"broker folder {queue_dir} is not writable by this process")
        return
    with connect(settings) as conn:
        conn.ensure_connection(max_retries=1, timeout=3)
