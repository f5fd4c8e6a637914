"""Clusters of real processes for each backend this run has (see tests/backends.py)."""
import pytest

from tests.backends import SERVERS, backends, create_postgres_database, drop_postgres_database, purge_rabbitmq
from tests.e2e.cluster import Cluster
from tests.support import use_stripe
import os


@pytest.fixture(scope="session")
def make_cluster(tmp_path_factory, localstripe):
    """Build a cluster on a backend, with its own database and empty queues; stopped at the end."""
    made = []

    def make(backend: str, *, workers: int = 1, relays: int = 1, **env) -> Cluster:
        # One cluster runs at a time. A test that failed (or never stopped its cluster) must not
        # leave workers behind: on RabbitMQ they would consume the next cluster's queues and ack
        # its messages against the wrong database.
        for earlier, _ in made:
            earlier.stop_all()
        database_url = broker_url = None
        if backend == SERVERS:
            database_url = create_postgres_database()
            broker_url = os.environ["TEST_AMQP_URL"]
            purge_rabbitmq()
        workdir = tmp_path_factory.mktemp(f"cluster-{backend.split('+')[0]}")
        cluster = Cluster(workdir, stripe_base=localstripe.base, database_url=database_url,
                          broker_url=broker_url, **env)
        made.append((cluster, database_url))
        cluster.start_all(workers=workers, relays=relays)
        localstripe.register_webhook(f"{cluster.base}/webhooks/stripe")
        use_stripe(localstripe.base)
        return cluster

    yield make
    for cluster, database_url in made:
        cluster.stop_all()
        if database_url:
            drop_postgres_database(database_url)


@pytest.fixture(scope="module", params=backends())
def cluster(request, make_cluster):
    running = make_cluster(request.param)
    yield running
    running.stop_all()
