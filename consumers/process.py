"""What `shop worker` and `shop relay` share: their database, a loop that survives outages, SIGTERM."""
from __future__ import annotations

import signal
import threading
import time
from abc import ABC, abstractmethod
from typing import Callable, NamedTuple

import structlog
from kombu import Connection
from sqlalchemy.orm import Session, sessionmaker

from consumers.broker import connect, declare_topology
from models.db import engine_for, make_session_factory, schema_problem
from models.logs import describe_error
from models.settings import Settings

log = structlog.get_logger(__name__)

# AMQP's reply to a declare whose arguments differ from those of the queue or exchange RabbitMQ has.
PRECONDITION_FAILED = 406
TOPOLOGY_RETRY_SECONDS = 30


class TopologyConflict(Exception):
    """RabbitMQ has a queue or exchange of the service's with other arguments (a quorum queue made by
    hand, another dead-letter exchange) and refuses its declaration: no process of the service
    publishes or consumes until an operator makes them agree."""


def _declare(conn: Connection) -> None:
    try:
        declare_topology(conn)
    except Exception as exc:
        if getattr(exc, "reply_code", None) == PRECONDITION_FAILED:
            raise TopologyConflict() from exc
        raise


class Chore(NamedTuple):
    """Work that needs only the database, done every `seconds` on a thread of its own: a broker
    that is down, refuses publishes or hangs never holds it up. Logs `<name>_failed` and goes on."""

    name: str
    seconds: float
    run: Callable[[sessionmaker[Session]], object]


class LongRunningProcess(ABC):
    name = "process"
    chores: tuple[Chore, ...] = ()

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
        threads = [threading.Thread(target=self._keep_doing, args=(chore,), name=chore.name, daemon=True)
                   for chore in self.chores]
        for thread in threads:
            thread.start()
        while not self.stopping:
            try:
                with connect(self.settings) as conn:
                    conn.ensure_connection(max_retries=3, interval_start=0.5, interval_step=1, interval_max=3)
                    # Idempotent; without it RabbitMQ would silently drop what workers reject.
                    _declare(conn)
                    log.info(f"{self.name}_connected", broker=conn.as_uri())
                    self.serve(conn)
            except TopologyConflict as exc:
                # Nothing is published or delivered until an operator acts: an error, and a longer wait.
                log.error("broker_topology_conflict", error=describe_error(exc.__cause__),
                          fix=f"delete that queue or exchange (move or drain its messages first), or declare it as "
                              f"docs/deploy.md 'RabbitMQ topology' says; tried again every {TOPOLOGY_RETRY_SECONDS} s")
                self._pause(TOPOLOGY_RETRY_SECONDS)
            except Exception as exc:  # noqa: BLE001 - broker or database down: wait, reconnect, go on
                log.warning(f"{self.name}_paused", error=describe_error(exc), **schema_problem(exc))
                time.sleep(1)
        log.info(f"{self.name}_stopping")
        for thread in threads:
            thread.join()  # a chore in hand finishes its transaction before the engine goes
        self.engine.dispose()
        log.info(f"{self.name}_stopped")

    def _pause(self, seconds: float) -> None:
        """Sleep, looking at the stop flag a few times a second (stop() only sets it)."""
        due = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < due:
            time.sleep(min(0.2, max(0.0, due - time.monotonic())))

    def _keep_doing(self, chore: Chore) -> None:
        while not self.stopping:
            try:
                chore.run(self.factory)
            except Exception as exc:  # noqa: BLE001 - database down: try again at the next turn
                log.warning(f"{chore.name}_failed", error=describe_error(exc), **schema_problem(exc))
            self._pause(chore.seconds)

    @abstractmethod
    def serve(self, conn: Connection) -> None:
        """Work until self.stopping; raise to reconnect."""
