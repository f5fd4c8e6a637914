"""Generated webhook requests: anything not validly signed, or not a storable event, is a 400 or 413
that stores nothing and logs no traceback; a validly signed event is stored exactly once. Never a 5xx.

Each test builds its app and database once and runs its examples on them; every example compares
the row counts before and after its own requests, so what earlier examples stored does not matter.
Together the tests make over 11,000 requests on SQLite, and a fifth as many again on PostgreSQL.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from consumers.handlers import HANDLED_EVENT_TYPES
from models.events import InboxEvent, OutboxMessage
from tests.support import WEBHOOK_SECRET, event_for, rendered_logs

LIMIT = 8192  # a small body limit, so that 413s are cheap to generate
TOLERANCE = 300  # the suite's webhook_tolerance_seconds (the Settings default)


def fuzz(max_examples: int):
    # Generating bodies of up to 240 KB is slow and large on purpose.
    return hypothesis_settings(max_examples=max_examples, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def examples(on_sqlite: int, database_url: str) -> int:
    """All of them on SQLite (over 10,000 requests in every run); a fifth again on PostgreSQL when the run
    has it: parsing does not depend on the database, and the backend's part is storing the valid ones."""
    return on_sqlite if database_url.startswith("sqlite") else on_sqlite // 5


@pytest.fixture
def fuzz_client(make_client):
    return make_client(max_webhook_bytes=LIMIT)


@pytest.fixture
def logs(client, fuzz_client):
    """Rendered log lines; started after the app is built (building it reconfigures logging)."""
    with rendered_logs() as lines:
        yield lines


COUNTS = select(select(func.count()).select_from(InboxEvent).scalar_subquery(),
                select(func.count()).select_from(OutboxMessage).scalar_subquery())


def counts(sessions) -> tuple[int, int]:
    """(inbox rows, outbox rows), in one round trip: it runs after every generated request."""
    with sessions() as session:
        return tuple(session.execute(COUNTS).one())


def mac(body: bytes, timestamp: int, secret: str = WEBHOOK_SECRET) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def post(client, body: bytes, header: str | None, content_type: str = "application/json"):
    headers = {"Content-Type": content_type}
    if header is not None:
        headers["Stripe-Signature"] = header
    return client.post("/webhooks/stripe", data=body, headers=headers)


def assert_refused(response, sessions, before, logs):
    """400 or 413 in the one error shape, nothing stored, and a warning at most: no traceback."""
    assert response.status_code in (400, 413), (response.status_code, response.get_data(as_text=True))
    error = response.get_json()["error"]
    assert error["code"] and error["message"]
    assert counts(sessions) == before
    assert_no_traceback(logs)


def assert_no_traceback(logs):
    for line in logs:
        assert "Traceback" not in line and "request_failed" not in line, line
    logs.clear()


TEMPLATE = json.dumps(event_for("localstripe_payment_intent.succeeded"))  # read from disk once, not per example


def fresh_event(event_type: str = "payment_intent.succeeded") -> dict:
    event = json.loads(TEMPLATE)
    event["id"] = f"evt_{uuid.uuid4().hex}"
    event["type"] = event_type
    return event


# --- strategies -----------------------------------------------------------------------------------------------

# Any header text the test client can send (no CR/LF: werkzeug refuses those before the app sees them).
header_text = st.text(st.characters(exclude_characters="\r\n"), max_size=300)
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
bodies = st.one_of(
    st.binary(max_size=600),
    st.text(max_size=600).map(str.encode),
    st.integers(LIMIT - 8, LIMIT + 2000).map(lambda n: b"{" + b" " * (n - 2) + b"}"),
)


@st.composite
def random_requests(draw):
    """Headers that are anything at all: missing, empty, random text, random `k=v` lists."""
    header = draw(st.one_of(
        st.none(),
        header_text,
        st.lists(st.tuples(st.sampled_from(["t", "v1", "v0", " t", "t ", "", "T", "v1 "]), header_text),
                 max_size=6).map(lambda items: ",".join(f"{k}={v}" for k, v in items)),
    ))
    body = draw(bodies)
    content_type = draw(st.sampled_from(["application/json", "text/plain", "application/octet-stream", ""]))
    return header, body, content_type


# A header assembled from labelled parts, so the test knows, without the app's parser, whether it is
# valid: exactly one clean `t=` inside the tolerance, at least one v1 that is its HMAC, nothing dirty.
MAIN_TIMESTAMP = st.one_of(
    st.tuples(st.just("inside"), st.integers(-TOLERANCE + 5, TOLERANCE - 5)),
    st.tuples(st.just("future"), st.integers(TOLERANCE + 5, 10**8)),
    st.tuples(st.just("past"), st.integers(-(10**8), -TOLERANCE - 5)),
)
PART_KINDS = ["t_main", "v1_main", "v1_other", "v1_random", "v0", "t_other", "t_other_spaced",
              "t_main_spaced", "v1_non_ascii", "v1_not_hex", "v1_upper", "empty", "junk", "t_plus"]
DIRTY = {"t_other_spaced", "t_main_spaced", "v1_non_ascii", "v1_not_hex", "v1_upper", "empty", "junk", "t_plus"}
SAFE_HEADER_CHARACTERS = st.characters(exclude_characters="\r\n,")


@st.composite
def assembled_headers(draw, body: bytes):
    now = int(time.time())
    where, offset = draw(MAIN_TIMESTAMP)
    main = now + offset
    other = now + draw(st.integers(-TOLERANCE + 5, TOLERANCE - 5).filter(lambda o: o != offset))
    kinds = draw(st.lists(st.sampled_from(PART_KINDS), min_size=1, max_size=6))
    parts = []
    for kind in kinds:
        parts.append({
            "t_main": lambda: f"t={main}",
            "t_plus": lambda: f"t=+{main}",
            "t_main_spaced": lambda: f" t={main}",
            "t_other": lambda: f"t={other}",
            "t_other_spaced": lambda: f" t={other}",
            "v1_main": lambda: f"v1={mac(body, main)}",
            "v1_other": lambda: f"v1={mac(body, other)}",
            "v1_random": lambda: f"v1={draw(hex64)}",
            "v1_upper": lambda: f"v1={mac(body, main).upper()}",
            "v1_non_ascii": lambda: f"v1={draw(st.text(SAFE_HEADER_CHARACTERS, max_size=8))}é",
            "v1_not_hex": lambda: f"v1={draw(st.text('ghijklmnopqrstuvwxyz', min_size=1, max_size=64))}",
            "v0": lambda: f"v0={draw(hex64)}",
            "empty": lambda: "",
            "junk": lambda: draw(st.text(SAFE_HEADER_CHARACTERS, max_size=20)) + " ",
        }[kind]())
    # Valid: one exact `t` (main or other), on time, with a v1 that is its HMAC, and nothing dirty.
    timestamps = [kind for kind in kinds if kind in ("t_main", "t_other")]
    valid = (not DIRTY.intersection(kinds) and len(timestamps) == 1
             and ((timestamps == ["t_main"] and where == "inside" and "v1_main" in kinds)
                  or (timestamps == ["t_other"] and "v1_other" in kinds)))
    return ",".join(parts), valid


@st.composite
def broken_bodies(draw):
    """Bodies that must not be stored even with a valid signature: not UTF-8, not strict JSON, not an event."""
    event = fresh_event()
    text = json.dumps(event)
    kind = draw(st.sampled_from(["not_utf8", "text", "json_value", "nan", "duplicate_key", "bom", "nested",
                                 "trailing", "bad_field", "missing_field", "truncated"]))
    if kind == "not_utf8":
        raw = draw(st.binary(min_size=1, max_size=200))
        return text.encode()[:draw(st.integers(0, len(text)))] + b"\xff" + raw
    if kind == "text":
        return draw(st.text(max_size=300)).encode()
    if kind == "json_value":
        values = st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=20),
            lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                               max_size=4),
            max_leaves=8)
        value = draw(values)
        if isinstance(value, dict) and value.get("object") == "event":
            value["object"] = "not an event"
        return json.dumps(value).encode()
    if kind == "nan":
        constant = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999"]))
        assert '"amount": 3100' in text
        return text.replace('"amount": 3100', f'"amount": {constant}', 1).encode()
    if kind == "duplicate_key":
        key = draw(st.sampled_from(["id", "type", "object", "livemode", "data"]))
        return (text[:-1] + f', "{key}": ' + json.dumps(event[key]) + "}").encode()
    if kind == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if kind == "nested":  # deeper than any recursion limit (hypothesis raises it while a test runs)
        depth = draw(st.integers(5_000, 20_000))
        return (text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}").encode()
    if kind == "trailing":
        return (text + draw(st.sampled_from([" {}", "x", ",", "]", " 1"]))).encode()
    if kind == "truncated":
        return text.encode()[:draw(st.integers(0, len(text) - 1))]
    if kind == "missing_field":
        field = draw(st.sampled_from(["id", "type", "object", "data"]))
        return json.dumps({k: v for k, v in event.items() if k != field}).encode()
    field, value = draw(st.one_of(
        st.tuples(st.just("id"), st.one_of(st.text(max_size=30).filter(lambda s: not s.startswith("evt_")),
                                           st.just("evt_" + "a" * 300), st.just("evt_\ud800"),
                                           st.integers(), st.none())),
        st.tuples(st.just("type"), st.one_of(st.just(""), st.just("x" * 101), st.just("a\nb"),
                                             st.integers(), st.none())),
        st.tuples(st.just("object"), st.text(max_size=10).filter(lambda s: s != "event")),
        st.tuples(st.just("api_version"), st.one_of(st.integers(), st.just("2" * 41), st.just("2024 01"))),
        st.tuples(st.just("livemode"), st.one_of(st.text(max_size=5), st.integers(), st.just([]))),
        st.tuples(st.just("data"), st.one_of(st.none(), st.just({}), st.text(max_size=5),
                                             st.just({"object": "pi_1"}),
                                             st.just({"object": {"id": "pi_" + "x" * 300}}))),
    ))
    return json.dumps({**event, field: value}).encode()


def valid_events():
    """Validly shaped events: any type name Stripe could send, unknown fields holding any text."""
    event_types = st.one_of(st.sampled_from(sorted(HANDLED_EVENT_TYPES)),
                            st.sampled_from(["charge.refunded", "customer.created", "invoice.paid"]),
                            st.from_regex(r"[a-z_]{1,20}\.[a-z_.]{1,30}", fullmatch=True))
    return st.tuples(event_types,
                     st.dictionaries(st.text(max_size=10), st.text(max_size=40) | st.integers(-(10**30), 10**30)
                                     | st.floats(allow_nan=False, allow_infinity=False), max_size=4),
                     st.booleans())


# --- the properties -------------------------------------------------------------------------------------------
# Each test builds its app and database once (the fixtures) and runs its examples against them with an
# inner @given function; every example compares the row counts before and after its own requests.


def test_unsigned_and_garbled_requests_answer_400_or_413_and_store_nothing(fuzz_client, sessions, logs,
                                                                           database_url):
    @fuzz(examples(2500, database_url))
    @given(request=random_requests())
    def check(request):
        header, body, content_type = request
        before = counts(sessions)
        assert_refused(post(fuzz_client, body, header, content_type), sessions, before, logs)

    check()


def test_an_assembled_signature_header_is_accepted_only_when_it_is_valid(fuzz_client, sessions, logs, database_url):
    """Would catch a non-ASCII v1 answering 500, and a second `t=` read one way by the SDK, another by a check."""

    @fuzz(examples(3000, database_url))
    @given(data=st.data())
    def check(data):
        event = fresh_event()
        body = json.dumps(event).encode()
        header, valid = data.draw(assembled_headers(body))
        before = counts(sessions)
        response = post(fuzz_client, body, header)
        if valid:
            assert response.status_code == 200, (header, response.get_json())
            assert response.get_json() == {"received": True, "duplicate": False}
            assert counts(sessions) == (before[0] + 1, before[1] + 1)
            assert_no_traceback(logs)
        else:
            assert_refused(response, sessions, before, logs)

    check()


def test_validly_signed_bodies_that_are_not_storable_events_answer_400_and_store_nothing(client, sessions, logs,
                                                                                          database_url):
    """On the default 256 KiB limit, so that even the deepest nesting is read and refused as JSON."""

    @fuzz(examples(2500, database_url))
    @given(body=broken_bodies())
    def check(body):
        before = counts(sessions)
        now = int(time.time())
        response = post(client, body, f"t={now},v1={mac(body, now)}")
        assert_refused(response, sessions, before, logs)
        assert response.status_code == 400

    check()


def test_a_wrong_secret_or_a_timestamp_outside_the_tolerance_either_way_is_400_and_stores_nothing(
        fuzz_client, sessions, logs, database_url):
    @fuzz(examples(1000, database_url))
    @given(secret=st.text(min_size=1, max_size=40).filter(lambda s: s != WEBHOOK_SECRET),
           offset=st.one_of(st.integers(-5, 5), st.integers(TOLERANCE + 2, 10**9),
                            st.integers(-(10**9), -TOLERANCE - 2)),
           use_our_secret=st.booleans())
    def check(secret, offset, use_our_secret):
        if use_our_secret and abs(offset) <= 5:
            offset = TOLERANCE + 2 + abs(offset)  # ours and on time would be valid: push it out of the tolerance
        body = json.dumps(fresh_event()).encode()
        signed_at = int(time.time()) + offset
        header = f"t={signed_at},v1={mac(body, signed_at, WEBHOOK_SECRET if use_our_secret else secret)}"
        before = counts(sessions)
        response = post(fuzz_client, body, header)
        assert_refused(response, sessions, before, logs)
        assert response.get_json()["error"]["code"] == "invalid_signature"

    check()


def test_a_validly_signed_event_is_stored_exactly_once_and_its_redelivery_is_a_duplicate(
        fuzz_client, sessions, logs, database_url):
    @fuzz(examples(1000, database_url))
    @given(shape=valid_events(), ascii_only=st.booleans())
    def check(shape, ascii_only):
        event_type, extra, redeliver_changed = shape
        event = fresh_event(event_type)
        event["data"]["object"]["metadata"] = extra
        body = json.dumps(event, ensure_ascii=ascii_only).encode()
        assert len(body) <= LIMIT
        before = counts(sessions)
        now = int(time.time())
        first = post(fuzz_client, body, f"t={now},v1={mac(body, now)}")
        assert first.status_code == 200, first.get_json()
        assert first.get_json() == {"received": True, "duplicate": False}
        after = (before[0] + 1, before[1] + (1 if event_type in HANDLED_EVENT_TYPES else 0))
        assert counts(sessions) == after
        if redeliver_changed:  # Stripe's retry of the same event id: the first stored copy stays
            event["data"]["object"]["metadata"] = {"changed": "yes"}
            body = json.dumps(event).encode()
        again = post(fuzz_client, body, f"t={now},v1={mac(body, now)}")
        assert again.status_code == 200 and again.get_json() == {"received": True, "duplicate": True}
        assert counts(sessions) == after
        assert_no_traceback(logs)

    check()
