"""The client's address behind a trusted proxy: the X-Forwarded-For entry that proxy appended.

gunicorn takes X-Forwarded-Proto from the proxies FORWARDED_ALLOW_IPS names, but REMOTE_ADDR stays
the peer's: behind a TLS proxy every request came from the proxy, and the console's login limit
counted everyone's failed logins as one address's. The same setting decides whose X-Forwarded-For
is believed; from any other peer the header is ignored, since anyone can write one.
"""
from __future__ import annotations

import ipaddress
import re

# The proxy's own address, kept in the WSGI environ where the client's replaced it in REMOTE_ADDR.
PEER_ADDR = "shop.peer_addr"

# An address with a port, as some proxies append it: 203.0.113.5:4711, [2001:db8::1]:4711, [2001:db8::1].
_WITH_PORT = re.compile(r"\[(?P<bracketed>[^\[\]]+)\](?::(?P<port6>\d{1,5}))?|(?P<ipv4>[\d.]+):(?P<port4>\d{1,5})")


class ClientAddressFromTrustedProxy:
    """WSGI middleware: REMOTE_ADDR becomes the right-most X-Forwarded-For entry when the peer is a proxy
    FORWARDED_ALLOW_IPS trusts (gunicorn's rule: listed address or network, `*` for any peer, and a
    connection with no IP address, a UNIX socket, always), and that entry is an address.

    Only the right-most entry: it is the one the trusted proxy appended (the address it saw); whatever
    is left of it came from the client. A malformed entry leaves the peer's address, so it can neither
    fail the request nor make a guesser count as someone new.
    """

    def __init__(self, app, forwarded_allow_ips: tuple[str, ...]):
        self.app = app
        self.trusts_every_peer = "*" in forwarded_allow_ips
        self.networks = tuple(ipaddress.ip_network(entry) for entry in forwarded_allow_ips if entry != "*")

    def __call__(self, environ, start_response):
        forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded_for is not None:
            peer = environ.get("REMOTE_ADDR")
            client = appended_address(forwarded_for) if self.trusts(peer) else None
            if client is not None:
                environ[PEER_ADDR] = peer
                environ["REMOTE_ADDR"] = client
        return self.app(environ, start_response)

    def trusts(self, peer: str | None) -> bool:
        if self.trusts_every_peer:
            return True
        try:
            address = ipaddress.ip_address(peer or "")
        except ValueError:
            return True  # not an IP connection (gunicorn on a UNIX socket): gunicorn trusts it unconditionally
        return any(address in network for network in self.networks)


def appended_address(forwarded_for: str) -> str | None:
    """The right-most entry of an X-Forwarded-For value as an address in its usual spelling, or None."""
    entry = forwarded_for.rpartition(",")[2].strip()
    with_port = _WITH_PORT.fullmatch(entry)
    if with_port:
        port = with_port["port6"] or with_port["port4"]
        if port is not None and int(port) > 65535:
            return None
        entry = with_port["bracketed"] or with_port["ipv4"]
    try:
        return str(ipaddress.ip_address(entry))
    except ValueError:
        return None
