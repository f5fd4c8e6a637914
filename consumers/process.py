"""What `shop worker` and `shop relay` share: their database, a loop that survives outages, SIGTERM."""
from __future__ import annotations

import signal
import time
from abc import ABC, abstractmethod

import structlog
from kombu import Connection

from consumers.broker import connect, declare_topology
from models.db import engine_for, make_session_factory
from models.logs import describe_error
from models.settings import Settings

log = structlog.get_logger(__name__)


class LongRunningProcess(ABC):
    name = "process"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.engine = engine_for(settings)
        self.factory = make_session_factory(self.engine)
        self.stopping = False

    def stop(self, *_args) -> None:
        # SIGTERM: finish the work in hand, then leave. Only a flag here: a signal handler that
        # logs can deadlock on the log writer's lock when the signal lands mid-log-line.
        self.stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info(f"{self.name}_started")
        while not self.stopping:
            try:
                with connect(self.settings) as conn:
                    conn.ensure_connection(max_retries=3, interval_start=0.5, interval_step=1, interval_max=3)
                    # Idempotent; without it RabbitMQ would silently drop what workers reject.
                    declare_topology(conn)
                    log.info(f"{self.name}_connected", broker=conn.as_uri())
                    self.serve(conn)
            except Exception as exc:  # noqa: BLE001 - broker or database down: wait, reconnect, go on
                log.warning(f"{self.name}_paused", error=describe_error(exc))
                time.sleep(1)
        log.info(f"{self.name}_stopping")
        self.engine.dispose()
        log.info(f"{self.name}_stopped")

    @abstractmethod
    def serve(self, conn: Connection) -> None:
        """Work until self.stopping; raise to reconnect."""
