"""Broker topology and connections: RabbitMQ in production, a file-backed transport on a laptop."""
from __future__ import annotations

from kombu import Connection, Exchange, Queue

from consumers import file_transport
from models.events import Topic
from models.settings import Settings

EXCHANGE = Exchange("shop", type="direct", durable=True)
DEAD_LETTER_EXCHANGE = Exchange("shop.dlx", type="direct", durable=True)

DEAD_LETTER_QUEUE = Queue("shop.dead", DEAD_LETTER_EXCHANGE, routing_key="dead", durable=True)


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
    return Connection(
        settings.broker_url,
        heartbeat=30,
        connect_timeout=5,
        transport_options={"confirm_publish": True, "max_retries": 3},
    )


def declare_topology(connection: Connection) -> None:
    channel = connection.default_channel
    for queue in (*QUEUES.values(), DEAD_LETTER_QUEUE):
        queue(channel).declare()


def ping(settings: Settings) -> None:
    """Raise if the broker cannot be reached (used by /readyz)."""
    folder = settings.broker_folder
    if folder is not None:
        queue_dir = folder / "queue"
        if not queue_dir.is_dir():
            raise ConnectionError(f"broker folder {queue_dir} does not exist")
        return
    with connect(settings) as conn:
        conn.ensure_connection(max_retries=1, timeout=3)
