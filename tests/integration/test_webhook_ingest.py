"""POST /webhooks/stripe: verify, store once with its outbox row, answer; every refusal stores nothing."""
from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
from sqlalchemy import func, select, text
from werkzeug.test import EnvironBuilder

from models.events import EventStatus, InboxEvent, OutboxMessage, OutboxStatus, Topic
from tests.backends import servers_available
from tests.support import (FIXTURES, WEBHOOK_SECRET, assert_error, event_for, rendered_logs, signed_headers,
                           stripe_fixture)

LIMIT = 4096
FIXTURE_NAMES = sorted(p.stem for p in (FIXTURES / "stripe").glob("*.json"))


def counts(sessions) -> tuple[int, int]:
    with sessions() as session:
        return (session.scalar(select(func.count()).select_from(InboxEvent)),
                session.scalar(select(func.count()).select_from(OutboxMessage)))


def inbox_row(sessions, event_id: str) -> InboxEvent:
    with sessions() as session:
        return session.scalars(select(InboxEvent).where(InboxEvent.event_id == event_id)).one()


def outbox_rows(sessions) -> list[OutboxMessage]:
    with sessions() as session:
        return session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()


def post_raw(client, body: bytes | str, headers: dict):
    return client.post("/webhooks/stripe", data=body, headers=headers)


# --- 200 ------------------------------------------------------------------------------------------------------


def test_signed_event_is_stored_with_one_outbox_row_and_acknowledged(post_event, sessions):
    event = event_for("localstripe_payment_intent.succeeded")
    response = post_event(event)
    assert response.status_code == 200
    assert response.get_json() == {"received": True, "duplicate": False}
    row = inbox_row(sessions, event["id"])
    assert (row.type, row.status, row.object_id) == ("payment_intent.succeeded", EventStatus.RECEIVED,
                                                     event["data"]["object"]["id"])
    assert json.loads(row.payload) == event
    [message] = outbox_rows(sessions)
    assert (message.topic, message.status, message.inbox_event_id) == (Topic.STRIPE_EVENT, OutboxStatus.PENDING,
                                                                         row.id)


def test_second_delivery_of_the_same_event_is_acknowledged_as_duplicate_and_changes_nothing(post_event, sessions):
    event = event_for("localstripe_payment_intent.succeeded")
    assert post_event(event).get_json() == {"received": True, "duplicate": False}
    before = inbox_row(sessions, event["id"]).to_dict()
    again = post_event(event)
    assert again.status_code == 200
    assert again.get_json() == {"received": True, "duplicate": True}
    assert counts(sessions) == (1, 1)
    assert inbox_row(sessions, event["id"]).to_dict() == before


def test_redelivery_with_a_changed_body_keeps_the_first_stored_copy(post_event, sessions):
    event = event_for("localstripe_payment_intent.succeeded")
    post_event(event)
    tampered = {**event, "data": {"object": {**event["data"]["object"], "amount": 1}}}
    assert post_event(tampered).get_json() == {"received": True, "duplicate": True}
    assert json.loads(inbox_row(sessions, event["id"]).payload)["data"]["object"]["amount"] == 3100
    assert counts(sessions) == (1, 1)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_shared_stripe_fixture_is_accepted(post_event, sessions, name):
    event = stripe_fixture(name)
    response = post_event(event)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"received": True, "duplicate": False}
    assert inbox_row(sessions, event["id"]).type == event["type"]


def test_unknown_fields_anywhere_in_the_event_are_accepted(post_event, sessions):
    event = event_for("localstripe_payment_intent.succeeded")
    event["brand_new_top_level_field"] = {"nested": [1, 2, 3]}
    event["data"]["object"]["brand_new_intent_field"] = "x"
    assert post_event(event).get_json() == {"received": True, "duplicate": False}
    assert counts(sessions) == (1, 1)


@pytest.mark.parametrize("name", ["charge.captured", "customer.updated"])
def test_unhandled_event_types_are_stored_ignored_with_no_outbox_row(post_event, sessions, name):
    event = {**stripe_fixture("charge.refunded"), "type": name}
    assert post_event(event).get_json() == {"received": True, "duplicate": False}
    row = inbox_row(sessions, event["id"])
    assert row.status is EventStatus.IGNORED
    assert name in row.outcome
    assert counts(sessions) == (1, 0)


def test_event_for_a_payment_intent_of_no_order_ends_ignored_with_a_reason_and_is_not_retried(
        post_event, sessions, deliver):
    event = stripe_fixture("payment_intent.succeeded")
    post_event(event)
    deliver()
    row = inbox_row(sessions, event["id"])
    assert row.status is EventStatus.IGNORED
    assert "no order" in row.outcome and event["data"]["object"]["id"] in row.outcome
    assert row.attempts == 1
    assert row.last_error is None
    assert [m.status for m in outbox_rows(sessions)] == [OutboxStatus.DONE]
    assert deliver() == 0  # nothing is due again


# --- 400 ------------------------------------------------------------------------------------------------------


def _payload() -> str:
    return json.dumps(event_for("localstripe_payment_intent.succeeded"))


def test_missing_signature_header_is_400_and_stores_nothing(client, sessions):
    response = post_raw(client, _payload(), {"Content-Type": "application/json"})
    error = assert_error(response, 400, "missing_signature")
    assert "Stripe-Signature" in error["message"]
    assert counts(sessions) == (0, 0)


@pytest.mark.parametrize("header", [
    pytest.param(lambda p: f"t={int(time.time())},v1={'0' * 64}", id="wrong-mac"),
    pytest.param(lambda p: "garbage", id="unparseable"),
    pytest.param(lambda p: f"t={int(time.time())}", id="no-v1"),
    pytest.param(lambda p: signed_headers(p + " ")["Stripe-Signature"], id="body-changed-after-signing"),
])
def test_bad_signature_is_400_and_stores_nothing(client, sessions, header):
    payload = _payload()
    response = post_raw(client, payload, {"Content-Type": "application/json", "Stripe-Signature": header(payload)})
    error = assert_error(response, 400, "invalid_signature")
    assert "signature" in error["message"]
    assert counts(sessions) == (0, 0)


def test_signature_made_with_another_secret_is_400_and_stores_nothing(post_event, sessions):
    response = post_event(_payload(), secret="whsec_someone_elses_endpoint")
    error = assert_error(response, 400, "invalid_signature")
    assert "signature" in error["message"].lower()
    assert counts(sessions) == (0, 0)


def test_stale_timestamp_is_400_and_stores_nothing(post_event, sessions):
    response = post_event(_payload(), timestamp=int(time.time()) - 301)
    error = assert_error(response, 400)
    assert "tolerance" in error["message"] or "timestamp" in error["message"].lower()
    assert counts(sessions) == (0, 0)


def test_timestamp_just_inside_tolerance_is_accepted(post_event, sessions):
    assert post_event(_payload(), timestamp=int(time.time()) - 290).status_code == 200
    assert counts(sessions) == (1, 1)


def test_future_timestamp_beyond_tolerance_is_400_and_stores_nothing(post_event, sessions):
    response = post_event(_payload(), timestamp=int(time.time()) + 3600)
    error = assert_error(response, 400)
    assert "timestamp" in error["message"].lower() or "tolerance" in error["message"]
    assert counts(sessions) == (0, 0)


def test_correctly_signed_body_that_is_not_json_is_400_and_stores_nothing(post_event, sessions):
    error = assert_error(post_event("this is not json {"), 400, "invalid_payload")
    assert "JSON" in error["message"]
    assert counts(sessions) == (0, 0)


def test_correctly_signed_body_that_is_not_utf8_is_400_and_stores_nothing(client, sessions):
    body = b'{"id": "evt_\xff\xfe", "object": "event"}'
    timestamp = int(time.time())
    mac = hmac.new(WEBHOOK_SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "Stripe-Signature": f"t={timestamp},v1={mac}"}
    response = post_raw(client, body, headers)
    error = assert_error(response, 400, "invalid_payload")
    assert "UTF-8" in error["message"]
    assert counts(sessions) == (0, 0)


def _event() -> dict:
    return event_for("localstripe_payment_intent.succeeded")


NOT_EVENTS = [
    pytest.param(lambda: {k: v for k, v in _event().items() if k != "id"}, "id", id="no-id"),
    pytest.param(lambda: {**_event(), "id": "pi_123"}, "id", id="id-not-evt"),
    pytest.param(lambda: {**_event(), "object": "payment_intent"}, "object", id="object-not-event"),
    pytest.param(lambda: {k: v for k, v in _event().items() if k != "object"}, "object", id="no-object"),
    pytest.param(lambda: {k: v for k, v in _event().items() if k != "type"}, "type", id="no-type"),
    pytest.param(lambda: {**_event(), "data": {}}, "data.object", id="no-data-object"),
    pytest.param(lambda: {**_event(), "data": {"object": "pi_123"}}, "data.object", id="data-object-not-object"),
    pytest.param(lambda: {k: v for k, v in _event().items() if k != "data"}, "data.object", id="no-data"),
    pytest.param(lambda: [_event()], "JSON object", id="a-list"),
    pytest.param(lambda: "evt_123", "JSON object", id="a-string"),
    pytest.param(lambda: None, "JSON object", id="null"),
]


@pytest.mark.parametrize("make, said", NOT_EVENTS)
def test_signed_json_that_is_not_an_event_is_400_saying_what_is_wrong_and_stores_nothing(
        post_event, sessions, make, said):
    response = post_event(json.dumps(make()))
    error = assert_error(response, 400, "not_an_event")
    assert said in error["message"]
    assert counts(sessions) == (0, 0)


# --- 413 ------------------------------------------------------------------------------------------------------


def _event_of_size(size: int) -> str:
    event = event_for("localstripe_payment_intent.succeeded")
    event["padding"] = ""
    filler = size - len(json.dumps(event))
    event["padding"] = "x" * filler
    payload = json.dumps(event)
    assert len(payload.encode()) == size
    return payload


def test_body_over_the_limit_is_413_and_stores_nothing(make_client, sessions):
    small = make_client(max_webhook_bytes=LIMIT)
    payload = _event_of_size(LIMIT + 1)
    error = assert_error(post_raw(small, payload, signed_headers(payload)), 413, "payload_too_large")
    assert str(LIMIT) in error["message"]
    assert counts(sessions) == (0, 0)


def test_body_exactly_at_the_limit_is_accepted(make_client, sessions):
    small = make_client(max_webhook_bytes=LIMIT)
    payload = _event_of_size(LIMIT)
    response = post_raw(small, payload, signed_headers(payload))
    assert response.status_code == 200, response.get_json()
    assert counts(sessions) == (1, 1)


def test_body_over_the_limit_without_content_length_is_413(make_client, sessions):
    small = make_client(max_webhook_bytes=LIMIT)
    payload = _event_of_size(2 * LIMIT)
    environ = EnvironBuilder(path="/webhooks/stripe", method="POST", data=payload,
                             headers=signed_headers(payload)).get_environ()
    # A body of unknown length, as with chunked transfer encoding: only the read can stop it.
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    assert_error(small.open(environ), 413, "payload_too_large")
    assert counts(sessions) == (0, 0)


def test_body_within_the_limit_without_content_length_is_read_and_stored(make_client, sessions):
    small = make_client(max_webhook_bytes=LIMIT)
    payload = _event_of_size(LIMIT - 10)
    environ = EnvironBuilder(path="/webhooks/stripe", method="POST", data=payload,
                             headers=signed_headers(payload)).get_environ()
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    response = small.open(environ)
    assert response.status_code == 200, response.get_json()
    assert counts(sessions) == (1, 1)


# --- secrets --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["whsec_old", "whsec_new"])
def test_during_secret_rotation_an_event_signed_with_either_secret_is_accepted(make_client, sessions, secret):
    rotating = make_client(webhook_secrets=("whsec_old", "whsec_new"))
    payload = _payload()
    response = post_raw(rotating, payload, signed_headers(payload, secret))
    assert response.status_code == 200
    assert response.get_json() == {"received": True, "duplicate": False}
    assert counts(sessions) == (1, 1)


def test_during_secret_rotation_a_third_secret_is_still_refused(make_client, sessions):
    rotating = make_client(webhook_secrets=("whsec_old", "whsec_new"))
    payload = _payload()
    assert_error(post_raw(rotating, payload, signed_headers(payload, "whsec_other")), 400, "invalid_signature")
    assert counts(sessions) == (0, 0)


def _refused_unconfigured(client) -> float:
    series = 'shop_webhooks_received_total{outcome="rejected",reason="webhook_not_configured",type="unverified"}'
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_no_configured_secret_is_500_with_a_clear_message_and_stores_nothing(make_client, sessions):
    unconfigured = make_client(webhook_secrets=())
    before = _refused_unconfigured(unconfigured)
    payload = _payload()
    error = assert_error(post_raw(unconfigured, payload, signed_headers(payload)), 500, "webhook_not_configured")
    assert "STRIPE_WEBHOOK_SECRETS" in error["message"]
    assert "not stored" in error["message"]
    assert counts(sessions) == (0, 0)
    # Every delivery is refused until the secret is set: the refusals are counted, for an alert.
    assert _refused_unconfigured(unconfigured) == before + 1


# --- 503 ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "sqlite"])
def test_a_database_that_cannot_be_reached_is_503_never_a_500(tmp_path, scheme):
    """The webhook stores through the pool's driver connection: a server that is down, or a
    database file that cannot be opened, is the same clear 503 as a refused statement."""
    from tests.support import free_port, settings_for
    from webhook_app import create_app

    url = (f"{scheme}://postgres@127.0.0.1:{free_port()}/shop" if scheme.startswith("postgresql")
           else f"sqlite:///{tmp_path / 'missing-folder' / 'shop.db'}")  # nothing listens / no such folder
    app = create_app(settings_for(url, broker_url=f"memory://localhost/{tmp_path.name}",
                                  stripe_api_base="http://127.0.0.1:1"))
    try:
        payload = json.dumps(event_for("localstripe_payment_intent.succeeded"))
        response = app.test_client().post("/webhooks/stripe", data=payload, headers=signed_headers(payload))
    finally:
        app.extensions["shop"].dispose()
    error = assert_error(response, 503, "storage_unavailable")
    assert "retry" in error["message"]


def test_database_that_cannot_store_is_503_so_stripe_retries_and_the_retry_is_stored(post_event, sessions):
    event = event_for("localstripe_payment_intent.succeeded")
    with sessions() as session:
        session.execute(text("ALTER TABLE inbox_events RENAME TO inbox_events_away"))
        session.commit()
    try:
        response = post_event(event)
    finally:
        with sessions() as session:
            session.execute(text("ALTER TABLE inbox_events_away RENAME TO inbox_events"))
            session.commit()
    error = assert_error(response, 503, "storage_unavailable")
    assert "could not be stored" in error["message"] and "retry" in error["message"]
    assert counts(sessions) == (0, 0)
    # Stripe delivers again; now it is stored, and not as a duplicate.
    assert post_event(event).get_json() == {"received": True, "duplicate": False}
    assert counts(sessions) == (1, 1)


# The webhook's PostgreSQL pool has no pre-ping (a round trip per request): a connection the
# server closed is found by the store itself, which takes a fresh one once. Only PostgreSQL has
# server-side connections to lose (the summary says NOT RUN otherwise; CI always has it).
if servers_available():
    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_a_connection_the_server_closed_is_replaced_and_the_event_stored(app, post_event, sessions):
        assert post_event(event_for("localstripe_payment_intent.succeeded")).status_code == 200
        with sessions() as session:  # a restart or failover: the server ends every other session
            ended = session.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
        assert ended >= 1  # at least the webhook's pooled connection
        response = post_event(event_for("localstripe_payment_intent.succeeded"))
        assert response.status_code == 200, response.get_json()
        assert response.get_json() == {"received": True, "duplicate": False}
        assert counts(sessions) == (2, 2)


def test_a_timestamp_with_trailing_text_is_read_as_stripes_sdk_reads_it_never_a_500(client, sessions):
    import hmac as _hmac

    event = event_for("payment_intent.succeeded")
    payload = json.dumps(event)
    now = int(time.time())
    mac = _hmac.new(WEBHOOK_SECRET.encode(), f"{now}.{payload}".encode(), hashlib.sha256).hexdigest()
    response = client.post("/webhooks/stripe", data=payload,
                           headers={"Content-Type": "application/json", "Stripe-Signature": f"t={now}=x,v1={mac}"})
    assert response.status_code == 200, response.get_json()


# --- malformed Stripe-Signature headers: 400 saying what is wrong, never a 500 ---------------------------------


def _mac(payload: str, timestamp: int, secret: str = WEBHOOK_SECRET) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()


MALFORMED_HEADERS = [
    pytest.param(lambda p, now: f"t={now},v1=éé", "non-ASCII", id="non-ascii-signature"),
    pytest.param(lambda p, now: f"t={now},v1={_mac(p, now)},v0=ü", "non-ASCII", id="non-ascii-in-another-part"),
    pytest.param(lambda p, now: f"t={now},v1={_mac(p, now)[:-1]}\x00", "control", id="control-character"),
    pytest.param(lambda p, now: f"t={now}, v1={_mac(p, now)}", "space", id="space-after-comma"),
    pytest.param(lambda p, now: f"t={now},,v1={_mac(p, now)}", "key=value", id="empty-part"),
    pytest.param(lambda p, now: f"t={now},v1={_mac(p, now)},", "key=value", id="trailing-comma"),
    pytest.param(lambda p, now: f"t={now},v1", "key=value", id="v1-without-value"),
    pytest.param(lambda p, now: f"t={now},={_mac(p, now)}", "key=value", id="empty-key"),
    pytest.param(lambda p, now: f"v1={_mac(p, now)}", "no t=", id="no-timestamp"),
    pytest.param(lambda p, now: f"t=,v1={_mac(p, now)}", "not a number", id="empty-timestamp"),
    pytest.param(lambda p, now: f"t=+{now},v1={_mac(p, now)}", "not a number", id="signed-timestamp"),
    pytest.param(lambda p, now: f"t={now}.5,v1={_mac(p, now)}", "not a number", id="fractional-timestamp"),
    pytest.param(lambda p, now: f"t={'9' * 40},v1={'0' * 64}", "not a number", id="huge-timestamp"),
    pytest.param(lambda p, now: f"t={now}", "no v1=", id="no-v1"),
    pytest.param(lambda p, now: f"t={now},v0={_mac(p, now)}", "no v1=", id="only-v0"),
    pytest.param(lambda p, now: f"t={now},v1=xyz", "hex", id="non-hex-signature"),
    pytest.param(lambda p, now: f"t={now},v1={_mac(p, now).upper()}", "hex", id="uppercase-hex"),
    pytest.param(lambda p, now: f"t={now},v1={_mac(p, now)}00", "hex", id="signature-too-long"),
    pytest.param(lambda p, now: f"t={now},v1={_mac(p, now)},t={now}", "more than one t=", id="repeated-timestamp"),
    pytest.param(lambda p, now: f"t={now},v1={'0' * 64}," + ",".join(["v0=" + "0" * 64] * 40), "over 2048",
                 id="huge-header"),
]


@pytest.mark.parametrize("header, said", MALFORMED_HEADERS)
def test_malformed_signature_header_is_400_saying_what_is_wrong_stores_nothing_and_logs_no_traceback(
        client, sessions, header, said):
    payload = _payload()
    with rendered_logs() as lines:
        response = post_raw(client, payload, {"Content-Type": "application/json",
                                              "Stripe-Signature": header(payload, int(time.time()))})
    error = assert_error(response, 400, "invalid_signature")
    assert said in error["message"]
    assert counts(sessions) == (0, 0)
    assert lines and not any("Traceback" in line for line in lines), lines


def test_several_v1_signatures_as_during_a_secret_roll_are_accepted_when_one_matches(client, sessions):
    payload = _payload()
    now = int(time.time())
    header = f"t={now},v1={_mac(payload, now, 'whsec_the_old_one')},v1={_mac(payload, now)},v0={'0' * 64}"
    response = post_raw(client, payload, {"Content-Type": "application/json", "Stripe-Signature": header})
    assert response.status_code == 200, response.get_json()
    assert counts(sessions) == (1, 1)


def test_a_second_timestamp_cannot_carry_a_future_signature_past_the_tolerance_check(client, sessions):
    """The SDK verifies against the first exact `t` key; a check that read the header its own way (stripping
    spaces) saw the other one. `, t=<now>,t=<future>` signed for the future used to be stored."""
    payload = _payload()
    now, future = int(time.time()), int(time.time()) + 3600
    for header in (f", t={now},t={future},v1={_mac(payload, future)}",
                   f"t={now},t={future},v1={_mac(payload, now)}",
                   f"t={future},t={now},v1={_mac(payload, future)}"):
        response = post_raw(client, payload, {"Content-Type": "application/json", "Stripe-Signature": header})
        assert_error(response, 400, "invalid_signature")
    assert counts(sessions) == (0, 0)


def test_stale_and_future_timestamps_are_refused_from_the_one_parse_that_verified_them(client, sessions):
    payload = _payload()
    # 302, not 301: the service compares with its own clock's fraction of a second, and a second may begin
    # between this line and its check.
    for offset, said in ((-301, "older than the 300-second tolerance"), (302, "in the future")):
        signed_at = int(time.time()) + offset
        header = f"t={signed_at},v1={_mac(payload, signed_at)}"
        error = assert_error(post_raw(client, payload, {"Stripe-Signature": header}), 400, "invalid_signature")
        assert said in error["message"]
    assert counts(sessions) == (0, 0)


# --- validly signed bodies that are not strict JSON or not a storable event: 400, nothing stored ---------------


def _event_text(**changes) -> str:
    return json.dumps({**_event(), **changes})


SIGNED_BAD_BODIES = [
    pytest.param(lambda: _event_text(amount="NaN").replace('"NaN"', "NaN"), "invalid_payload", "NaN", id="nan"),
    pytest.param(lambda: _event_text(amount="I").replace('"I"', "Infinity"), "invalid_payload", "Infinity",
                 id="infinity"),
    pytest.param(lambda: _event_text(amount="I").replace('"I"', "-Infinity"), "invalid_payload", "Infinity",
                 id="minus-infinity"),
    pytest.param(lambda: _event_text(amount="I").replace('"I"', "1e400"), "invalid_payload", "too large",
                 id="float-overflowing-to-inf"),
    pytest.param(lambda: _event_text(amount="I").replace('"I"', "9" * 5000), "invalid_payload", "JSON",
                 id="integer-of-5000-digits"),
    pytest.param(lambda: _event_text()[:-1] + ', "type": "charge.refunded"}', "invalid_payload", "repeats a key",
                 id="duplicate-key"),
    pytest.param(lambda: "\ufeff" + _event_text(), "invalid_payload", "byte-order mark", id="bom"),
    pytest.param(lambda: _event_text()[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}",
                 "invalid_payload", "nested too deeply", id="deeply-nested"),
    pytest.param(lambda: _event_text() + " {}", "invalid_payload", "JSON", id="trailing-data"),
    pytest.param(lambda: "", "invalid_payload", "JSON", id="empty"),
    pytest.param(lambda: _event_text(id="evt_\\ud800").replace("\\\\ud800", "\\ud800"), "not_an_event", "id",
                 id="lone-surrogate-in-id"),
    pytest.param(lambda: _event_text(id="evt_" + "a" * 300), "not_an_event", "id", id="id-too-long"),
    pytest.param(lambda: _event_text(id="evt_a\u0000b"), "not_an_event", "id", id="nul-in-id"),
    pytest.param(lambda: _event_text(type="x" * 101), "not_an_event", "type", id="type-too-long"),
    pytest.param(lambda: _event_text(type="payment_intent.succeeded\n"), "not_an_event", "type",
                 id="type-with-newline"),
    pytest.param(lambda: _event_text(api_version={"v": 1}), "not_an_event", "api_version", id="api-version-object"),
    pytest.param(lambda: _event_text(api_version="2" * 41), "not_an_event", "api_version",
                 id="api-version-too-long"),
    pytest.param(lambda: _event_text(livemode="false"), "not_an_event", "livemode", id="livemode-a-string"),
    pytest.param(lambda: _event_text(data={"object": {"id": "pi_" + "x" * 300}}), "not_an_event", "data.object.id",
                 id="object-id-too-long"),
]


@pytest.mark.parametrize("make, code, said", SIGNED_BAD_BODIES)
def test_validly_signed_body_that_is_not_a_storable_event_is_400_and_stores_nothing(
        client, sessions, make, code, said):
    payload = make()
    with rendered_logs() as lines:
        response = post_raw(client, payload, signed_headers(payload))
    error = assert_error(response, 400, code)
    assert said in error["message"]
    assert counts(sessions) == (0, 0)
    assert not any("Traceback" in line for line in lines), lines


# --- one log line per webhook request ------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["stored", "rejected"])
def test_a_webhook_request_is_one_log_line_with_the_access_lines_fields(client, outcome):
    event = event_for("localstripe_payment_intent.succeeded")
    payload = json.dumps(event)
    headers = signed_headers(payload) if outcome == "stored" else {"Stripe-Signature": "t=1,v1=" + "0" * 64}
    with rendered_logs() as lines:
        response = client.post("/webhooks/stripe", data=payload, headers={**headers,
                                                                        "Content-Type": "application/json"})
    name, status = ("webhook_received", 200) if outcome == "stored" else ("webhook_rejected", 400)
    assert response.status_code == status
    [line] = [line for line in lines if f" {name} " in line]  # the tests' console format: key=value
    for field in (f"http_status={status}", "method=POST", "path=/webhooks/stripe", "duration_ms=", "request_id=req_"):
        assert field in line, line
    # gunicorn's access line is then left out for it: tests/e2e/test_web_logs.py, under a real gunicorn.
