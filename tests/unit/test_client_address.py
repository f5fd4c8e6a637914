"""Which address a request comes from behind a proxy: X-Forwarded-For only from a proxy FORWARDED_ALLOW_IPS trusts."""
from __future__ import annotations

import pytest

from webhook_app.client_address import PEER_ADDR, ClientAddressFromTrustedProxy


def seen_by_the_app(forwarded_allow_ips, peer, forwarded_for=None):
    """REMOTE_ADDR (and the proxy's address kept beside it) as the application behind the middleware sees them."""
    seen = {}

    def app(environ, start_response):
        seen.update(remote_addr=environ.get("REMOTE_ADDR"), peer=environ.get(PEER_ADDR))
        return [b""]

    environ = {"REMOTE_ADDR": peer}
    if forwarded_for is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded_for
    ClientAddressFromTrustedProxy(app, forwarded_allow_ips)(environ, lambda *args: None)
    assert environ["REMOTE_ADDR"] == seen["remote_addr"]  # in place: gunicorn's access line reads this environ
    return seen["remote_addr"], seen["peer"]


GUNICORNS_DEFAULT = ("127.0.0.1", "::1")


@pytest.mark.parametrize(("allowed", "peer", "forwarded_for", "client"), [
    # The right-most entry is the one the trusted proxy appended; what is left of it, the client wrote.
    (GUNICORNS_DEFAULT, "127.0.0.1", "203.0.113.5", "203.0.113.5"),
    (GUNICORNS_DEFAULT, "::1", "198.51.100.1, 203.0.113.5", "203.0.113.5"),
    (GUNICORNS_DEFAULT, "127.0.0.1", "198.51.100.1,2001:DB8::0:1", "2001:db8::1"),  # in its usual spelling
    (("10.0.0.2",), "10.0.0.2", "203.0.113.5", "203.0.113.5"),
    (("10.0.0.0/8", "192.0.2.1"), "10.200.0.9", "203.0.113.5", "203.0.113.5"),
    (("2001:db8:ff::/48",), "2001:db8:ff::7", "203.0.113.5", "203.0.113.5"),
    (("*",), "198.51.100.20", "203.0.113.5", "203.0.113.5"),
    (("10.0.0.2",), "", "203.0.113.5", "203.0.113.5"),  # a UNIX socket: gunicorn trusts it unconditionally
    # Some proxies append the client's port too.
    (("10.0.0.2",), "10.0.0.2", "203.0.113.5:4711", "203.0.113.5"),
    (("10.0.0.2",), "10.0.0.2", "[2001:db8::1]:4711", "2001:db8::1"),
    (("10.0.0.2",), "10.0.0.2", "[2001:db8::1]", "2001:db8::1"),
])
def test_a_trusted_proxys_appended_address_is_the_clients(allowed, peer, forwarded_for, client):
    assert seen_by_the_app(allowed, peer, forwarded_for) == (client, peer)


@pytest.mark.parametrize(("allowed", "peer"), [
    (GUNICORNS_DEFAULT, "198.51.100.20"),
    (("10.0.0.0/8",), "11.0.0.1"),
    (("10.0.0.2",), "127.0.0.1"),  # once FORWARDED_ALLOW_IPS is set, gunicorn's default no longer applies
    (("127.0.0.1",), "::ffff:127.0.0.1"),  # as gunicorn: an IPv4-mapped address is not the IPv4 one
    ((), "127.0.0.1"),  # FORWARDED_ALLOW_IPS set empty: no proxy is trusted
])
def test_x_forwarded_for_from_a_peer_not_trusted_is_ignored(allowed, peer):
    assert seen_by_the_app(allowed, peer, "203.0.113.5") == (peer, None)


@pytest.mark.parametrize("forwarded_for", [
    "", " ", ",", "203.0.113.5,", "203.0.113.5, ", "unknown", "203.0.113.5, unknown", "999.0.0.1", "203.0.113",
    "203.0.113.5:99999", "203.0.113.5:", "[2001:db8::1", "2001:db8::1]:443", "[[2001:db8::1]]", "proxy.internal",
    "203.0.113.5 203.0.113.6", "0x7f.1", "é", "1" * 5000])
def test_a_malformed_entry_from_a_trusted_proxy_leaves_the_proxys_address(forwarded_for):
    assert seen_by_the_app(GUNICORNS_DEFAULT, "127.0.0.1", forwarded_for) == ("127.0.0.1", None)


def test_without_x_forwarded_for_the_peer_is_the_client():
    assert seen_by_the_app(("*",), "198.51.100.20") == ("198.51.100.20", None)
