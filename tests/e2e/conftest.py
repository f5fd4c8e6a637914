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


@pytest.fixture(params=backends())
def start_cluster(request, tmp_path, localstripe):
    """Start processes of a cluster on this backend (its own database, empty queues) whose Stripe API base is
    `stripe_base`: a fault server in front of localstripe. All stopped, and the database dropped, at the end."""
    made = []

    def start(stripe_base: str, *processes: str, **env) -> Cluster:
        database_url = broker_url = None
        if request.param == SERVERS:
            database_url = create_postgres_database()
            broker_url = os.environ["TEST_AMQP_URL"]
            purge_rabbitmq()
        cluster = Cluster(tmp_path, stripe_base=stripe_base, database_url=database_url, broker_url=broker_url, **env)
        made.append((cluster, database_url))
        for name in processes:
            cluster.start(name)
        return cluster

    yield start
    use_stripe(localstripe.base)
    for cluster, database_url in made:
        cluster.stop_all()
        if database_url:
            drop_postgres_database(database_url)
