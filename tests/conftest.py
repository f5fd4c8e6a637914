"""Fixtures: a migrated real database, the Flask app on it, a real localstripe, and message delivery."""
from __future__ import annotations

import dataclasses
import json

import pytest
from kombu import Consumer
from kombu.transport import memory
from sqlalchemy.engine import make_url

from consumers.broker import QUEUES, ConfirmedPublisher, connect
from consumers.relay import publish_due
from consumers.worker import Worker
from models.db import make_engine, make_session_factory
from models.migrations import upgrade
from models.settings import Settings
from tests.backends import create_postgres_database, drop_postgres_database, servers_available
from tests.support import SHIPPING, WEBHOOK_SECRET, LocalStripe, load_catalog, settings_for, signed_headers, use_stripe


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory):
    server = LocalStripe(tmp_path_factory.mktemp("localstripe"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_template():
    """A migrated PostgreSQL database that each test's database is copied from (fast, isolated)."""
    url = create_postgres_database()
    upgrade(url)
    yield make_url(url).database
    drop_postgres_database(url)


@pytest.fixture(params=["sqlite", "postgresql"] if servers_available() else ["sqlite"])
def database_url(request, tmp_path):
    """A migrated, empty database of its own for each test: SQLite always, PostgreSQL when the run has it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shop.db'}"
        upgrade(url)
        yield url
        return
    url = create_postgres_database(template=request.getfixturevalue("postgres_template"))
    yield url
    drop_postgres_database(url)


@pytest.fixture
def settings(database_url, tmp_path, localstripe) -> Settings:
    # kombu's memory transport keeps its queues in one dict for the whole process, whatever the
    # URL: empty it, so a message one test left behind is never run against the next test's rows.
    memory.Channel.queues.clear()
    return settings_for(database_url, broker_url=f"memory://localhost/{tmp_path.name}",
                        stripe_api_base=localstripe.base)


@pytest.fixture
def sessions(settings):
    engine = make_engine(settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def catalog(sessions):
    return load_catalog(sessions)


@pytest.fixture
def app(settings, catalog):
    from webhook_app import create_app

    app = create_app(settings)
    app.config["TESTING"] = True
    use_stripe(settings.stripe_api_base)
    yield app
    app.extensions["shop"].dispose()


@pytest.fixture
def client(app):
    return app.test_client()


def app_with(settings, **changes):
    """A testing app on `settings` with some fields changed (same database unless database_url is one)."""
    from webhook_app import create_app

    app = create_app(dataclasses.replace(settings, **changes))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def make_client(app, settings):
    """A test client of an app built with changed settings, on the same database as `client`.

    Built after `app`; each app built here has its engine disposed at teardown.
    """
    apps = []

    def make(**changes):
        apps.append(app_with(settings, **changes))
        return apps[-1].test_client()

    yield make
    for built in apps:
        built.extensions["shop"].dispose()


@pytest.fixture
def post_event(client):
    """POST an event to the webhook endpoint, signed with Stripe's scheme."""

    def post(event: dict | str, secret: str = WEBHOOK_SECRET, timestamp: int | None = None):
        payload = event if isinstance(event, str) else json.dumps(event)
        return client.post("/webhooks/stripe", data=payload, headers=signed_headers(payload, secret, timestamp))

    return post


@pytest.fixture
def checkout(client):
    """Cart -> items -> checkout through the API, as a shop's front end does. Returns the 201 body."""

    def place(items=(("TEA-01", 2),), *, email="buyer@example.com", shipping=SHIPPING, key=None):
        cart = client.post("/carts").get_json()
        for sku, quantity in items:
            response = client.post(f"/carts/{cart['id']}/items", json={"sku": sku, "quantity": quantity})
            assert response.status_code == 200, response.get_json()
        headers = {"Idempotency-Key": key} if key else {}
        response = client.post("/checkout", json={"cart_id": cart["id"], "email": email, "shipping": shipping},
                               headers=headers)
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    return place


def deliver_with(settings, sessions, max_rounds: int = 20) -> int:
    """Relay the outbox through the in-memory broker and let a worker consume until nothing is left."""
    worker = Worker(settings)
    seen = []

    def on_message(body, message):
        seen.append(body)
        # As `shop worker` does: what arrived together runs as one batch (WORKER_BATCH).
        worker.collect(body, message) if settings.worker_batch > 1 else worker.on_message(body, message)

    try:
        with connect(settings) as conn:
            publisher = ConfirmedPublisher(conn)
            with Consumer(conn, queues=list(QUEUES.values()), accept=["json"], callbacks=[on_message]):
                for _ in range(max_rounds):
                    published = publish_due(sessions, publisher, settings)
                    before = len(seen)
                    while True:
                        try:
                            conn.drain_events(timeout=0.05)
                        except TimeoutError:
                            break
                        if len(worker.pending) >= settings.worker_batch:
                            worker.run_pending()
                    worker.run_pending()
                    if not published and len(seen) == before:
                        break
    finally:
        worker.engine.dispose()
    return len(seen)


@pytest.fixture
def deliver(settings, sessions):
    """Deliver everything due in the outbox, as relay + worker would (see deliver_with)."""
    return lambda max_rounds=20: deliver_with(settings, sessions, max_rounds)

def pytest_configure(config):
    from tests.backends import servers_available, servers_required

    if servers_required() and not servers_available():
        raise pytest.UsageError(
            "SHOP_REQUIRE_SERVERS=1 but TEST_POSTGRES_URL / TEST_AMQP_URL are not set: "
            "the PostgreSQL and RabbitMQ suites cannot run (.ci/run starts both servers)")


def pytest_terminal_summary(terminalreporter):
    from tests.backends import servers_available

    if not servers_available():
        terminalreporter.write_line(
            "NOT RUN: the PostgreSQL + RabbitMQ variants of the integration and end-to-end tests "
            "(TEST_POSTGRES_URL and TEST_AMQP_URL are unset; `bash .ci/run` starts both servers)",
            yellow=True)
