import pytest

from tests.e2e.cluster import Cluster
from tests.support import use_stripe


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, localstripe):
    workdir = tmp_path_factory.mktemp("cluster")
    running = Cluster(workdir, stripe_base=localstripe.base).start_all(workers=1, relays=1)
    localstripe.register_webhook(f"{running.base}/webhooks/stripe")
    use_stripe(localstripe.base)
    yield running
    running.stop_all()
