"""Fault-injecting servers in front of localstripe: a black hole, a proxy that holds answers, and an
HTTP proxy that refuses one intent's refunds as Stripe does.

They run in threads of the test process and listen on 127.0.0.1 only. They stand between the
service and the real localstripe; apart from the refusal they are built to give, they never answer
for it.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import stripe

from tests.support import free_port


class _Server:
    def __init__(self):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._listener = socket.create_server(("127.0.0.1", self.port), backlog=128)
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(conn)
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._sockets.clear()


class BlackHole(_Server):
    """Accepts connections and reads what is sent, but never answers (a stalled Stripe).

    `cut()` ends the stall: every request held, and every later one, is answered at once with
    Stripe's error for a bad request (a failure no client retries).
    """

    def __init__(self):
        self.requests = 0
        self._cut = threading.Event()
        self._arrived = threading.Condition()
        super().__init__()

    ERROR = (b'{"error": {"type": "invalid_request_error", "message": "the request failed"}}')
    ANSWER = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
              b"Content-Length: " + str(len(ERROR)).encode() + b"\r\n\r\n" + ERROR)

    def handle(self, conn: socket.socket) -> None:
        counted = False
        while True:
            if self._cut.is_set() and counted:
                try:
                    conn.sendall(self.ANSWER)
                except OSError:
                    pass
                break
            try:
                conn.settimeout(0.1)
                data = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            if not counted:
                counted = True
                with self._arrived:
                    self.requests += 1
                    self._arrived.notify_all()
        try:
            conn.close()
        except OSError:
            pass

    def wait_for_requests(self, count: int, timeout: float = 10) -> None:
        with self._arrived:
            if not self._arrived.wait_for(lambda: self.requests >= count, timeout):
                raise AssertionError(f"{self.requests} requests reached the black hole, expected {count}")

    def cut(self) -> None:
        self._cut.set()


class HoldingProxy(_Server):
    """Forwards every request to localstripe at once; holds the answers to the ones `hold` picks.

    A held answer is sent when `release()` is called (or never, if the client gave up first):
    Stripe did the work, the caller never heard. `answered` counts held answers that came back
    from upstream, so a test knows the work was done.

    `rewrite(request_line, data)` may change an answer's bytes on their way back, keeping their
    length (so its Content-Length stays true): Stripe's state that localstripe cannot reach.
    """

    def __init__(self, upstream_port: int, hold=lambda request_line: True, rewrite=None):
        self.upstream_port = upstream_port
        self.hold = hold
        self.rewrite = rewrite
        self.answered = 0
        self._released = threading.Event()
        self._answers = threading.Condition()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            conn.close()
            return
        self._track(upstream)
        held = threading.Event()
        asked = [""]  # the connection's latest request line: its answer is the next to come back
        threading.Thread(target=self._pump_up, args=(conn, upstream, held, asked), daemon=True).start()
        self._pump_down(upstream, conn, held, asked)

    def _pump_up(self, client: socket.socket, upstream: socket.socket, held: threading.Event,
                 asked: list[str]) -> None:
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                break
            if not data:
                break
            first_line = data.split(b"\r\n", 1)[0].decode("latin-1")
            if first_line.split(" ")[0] in ("GET", "POST", "DELETE"):
                asked[0] = first_line
                if self.hold(first_line):
                    held.set()
            try:
                upstream.sendall(data)
            except OSError:
                break
        try:
            upstream.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _pump_down(self, upstream: socket.socket, client: socket.socket, held: threading.Event,
                   asked: list[str]) -> None:
        counted = False
        while True:
            try:
                data = upstream.recv(65536)
            except OSError:
                break
            if not data:
                break
            if held.is_set():
                if not counted:
                    counted = True
                    with self._answers:
                        self.answered += 1
                        self._answers.notify_all()
                while not self._released.wait(0.1):
                    if self._closed:
                        return
            if self.rewrite is not None:
                changed = self.rewrite(asked[0], data)
                assert len(changed) == len(data), "a rewrite must keep the answer's length"
                data = changed
            try:
                client.sendall(data)
            except OSError:
                break
        for sock in (client, upstream):
            try:
                sock.close()
            except OSError:
                pass

    def wait_for_answers(self, count: int, timeout: float = 10) -> None:
        with self._answers:
            if not self._answers.wait_for(lambda: self.answered >= count, timeout):
                raise AssertionError(f"{self.answered} held answers came back from upstream, expected {count}")

    def release(self) -> None:
        self._released.set()


class RefusingStripe:
    """Stripe in front of localstripe, refusing every refund of one intent as Stripe refuses to refund a
    charge whose dispute it holds (`charge_disputed`; its event has not reached the service yet). Every
    other request goes to localstripe and its answer comes back as it is."""

    ERROR = {"error": {"type": "invalid_request_error", "code": "charge_disputed",
                       "message": "This charge has been charged back; it cannot be refunded."}}

    def __init__(self, upstream_port: int, refused_intent: str):
        stripe_proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "POST" and self.path.split("?")[0] == "/v1/refunds" \
                        and parse_qs(body.decode()).get("payment_intent") == [stripe_proxy.refused_intent]:
                    stripe_proxy.refused += 1
                    return self._answer(400, json.dumps(stripe_proxy.ERROR).encode())
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                answer = upstream.getresponse()
                self._answer(answer.status, answer.read())
                upstream.close()

            def _answer(self, status: int, data: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self.refused_intent, self.refused = refused_intent, 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        self.working, stripe.api_base = stripe.api_base, self.base
        return self

    def __exit__(self, *exc):
        stripe.api_base = self.working
        self.server.shutdown()
        self.server.server_close()


def refunds_listed_as_failed(request_line: str, data: bytes) -> bytes:
    """A rewrite for HoldingProxy: every refund in a list of refunds reads failed, as Stripe lists a
    refund the card's bank sent back (localstripe's refunds always succeed). Same length: localstripe
    writes its JSON with ": " and JSON allows the spaces after the value."""
    method, path = request_line.split(" ")[:2]
    if method != "GET" or path.split("?")[0] != "/v1/refunds":
        return data
    return data.replace(b'"status": "succeeded"', b'"status": "failed"   ')


def creates_payment_intent(request_line: str) -> bool:
    """The request line of `POST /v1/payment_intents` (a create, not a confirm or cancel)."""
    method, path = request_line.split(" ")[:2]
    return method == "POST" and path.split("?")[0] == "/v1/payment_intents"


def the_first(prefix: str):
    """A `hold` for HoldingProxy: the first request whose line starts with `prefix` ("POST /v1/refunds"), no
    later one (a second decision's, a retry's)."""
    held: list[str] = []

    def hold(request_line: str) -> bool:
        if request_line.startswith(prefix) and not held:
            held.append(request_line)
            return True
        return False

    return hold


def wait(predicate, timeout: float = 10, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
