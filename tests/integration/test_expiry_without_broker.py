"""The relay's expiry sweep needs only the database: holds run out on time while the broker is
unreachable or refuses what the relay publishes."""
from __future__ import annotations

import dataclasses
import signal
import threading
import time

from consumers.broker import ConfirmedPublisher, PublishNotConfirmed
from consumers.relay import Relay
from models.orders import Order, OrderStatus
from tests.support import free_port, let_the_hold_run_out, rendered_logs


def run_relay_until(settings, sessions, order_id: str, seconds: float = 20) -> OrderStatus:
    """Run `shop relay` (Relay.run, in this thread, as the command does) until the order is no
    longer waiting for its payment or `seconds` have passed; the order's status then."""
    relay = Relay(settings)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    deadline = time.monotonic() + seconds

    def watch() -> None:
        while time.monotonic() < deadline:
            with sessions() as session:
                if session.get(Order, order_id).status is not OrderStatus.PENDING_PAYMENT:
                    break
            time.sleep(0.1)
        relay.stop()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        relay.run()
    finally:
        relay.stop()
        for sig, handler in handlers.items():  # Relay.run took SIGTERM and SIGINT: pytest's again
            signal.signal(sig, handler)
        watcher.join(seconds)
    with sessions() as session:
        return session.get(Order, order_id).status


def test_an_expired_hold_is_released_while_the_broker_is_unreachable(settings, sessions, checkout):
    order = checkout()
    let_the_hold_run_out(sessions, order["order_id"])
    nobody_listens = dataclasses.replace(settings, broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    with rendered_logs() as lines:
        status = run_relay_until(nobody_listens, sessions, order["order_id"])
    assert status is OrderStatus.CANCELLED, f"order still {status.value}: its expired hold was never released"
    assert any("reservation_expired" in line for line in lines)
    assert not any("relay_connected" in line for line in lines), "the broker was reachable after all"


def test_an_expired_hold_is_released_while_the_broker_refuses_every_publish(settings, sessions, checkout,
                                                                            monkeypatch):
    order = checkout()
    let_the_hold_run_out(sessions, order["order_id"])

    def refuse(_publisher) -> None:
        raise PublishNotConfirmed("the broker refused 1 of the messages")  # as under a disk alarm

    monkeypatch.setattr(ConfirmedPublisher, "confirm", refuse)
    with rendered_logs() as lines:
        status = run_relay_until(settings, sessions, order["order_id"])
    assert status is OrderStatus.CANCELLED, f"order still {status.value}: its expired hold was never released"
    assert any("relay_paused" in line and "refused" in line for line in lines)


def test_the_sweep_keeps_a_hold_that_has_not_run_out_and_leaves_with_the_relay(settings, sessions, checkout):
    order = checkout()
    nobody_listens = dataclasses.replace(settings, broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    started = time.monotonic()
    status = run_relay_until(nobody_listens, sessions, order["order_id"], seconds=2)
    assert status is OrderStatus.PENDING_PAYMENT
    # run() joins the sweep's thread: it returned, within one broker connection attempt of the stop.
    assert time.monotonic() - started < 15
