"""While the database is unreachable every endpoint says so with 503, never a bare 500. Except /metrics,
which serves the process's counters and says the database is down in a gauge
(tests/integration/test_metrics_review_fixes.py)."""
from __future__ import annotations

import pytest

from tests.support import assert_error


@pytest.fixture
def client_without_database(make_client, tmp_path):
    return make_client(database_url=f"sqlite:///{tmp_path / 'no-such-dir' / 'shop.db'}")


@pytest.mark.parametrize("method, path", [("GET", "/products"), ("GET", "/products/TEA-01"), ("POST", "/carts"),
                                          ("GET", "/orders/ord_x")])
def test_api_answers_503_while_the_database_is_unreachable(client_without_database, method, path):
    response = client_without_database.open(path, method=method)
    assert_error(response, 503, "storage_unavailable")
