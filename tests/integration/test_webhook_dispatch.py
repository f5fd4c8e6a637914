"""The webhook path is served in front of Flask (webhook_app.webhooks.WebhookDispatcher): only that path
goes to it, and it answers what the Flask app answered — methods, limits, request ids, errors."""
from __future__ import annotations

import io
import json

import structlog
from flask import Response
from sqlalchemy import func, select
from werkzeug.test import EnvironBuilder

from models.events import InboxEvent
from tests.support import assert_error, event_for, rendered_logs, signed_headers
from webhook_app import webhooks


def stored(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(InboxEvent))


def call(client, environ: dict) -> Response:
    """The app's answer to exactly this WSGI environ (the test client's open() would rebuild it)."""
    return Response.from_app(client.application, environ)


def signed_environ(path: str = "/webhooks/stripe") -> tuple[str, dict]:
    payload, headers = signed_event()
    environ = EnvironBuilder(path="/webhooks/stripe", method="POST", data=payload, headers=headers).get_environ()
    environ["PATH_INFO"] = path
    return payload, environ


def signed_event() -> tuple[str, dict]:
    payload = json.dumps(event_for("localstripe_payment_intent.succeeded"))
    return payload, signed_headers(payload)


# --- what goes to Flask ----------------------------------------------------------------------------------------


def test_other_paths_still_reach_flask_with_its_routes_hooks_and_error_shape(client):
    assert client.post("/carts").status_code == 201  # a Flask view, POST like the webhook
    missing = client.get("/no-such-page", headers={"X-Request-Id": "req_elsewhere"})
    assert_error(missing, 404, "not_found")
    assert missing.headers["X-Request-Id"] == "req_elsewhere"


def test_paths_near_the_webhooks_are_flasks_404_and_store_nothing(client, sessions):
    payload, headers = signed_event()
    for path in ("/webhooks/stripe/", "/webhooks/stripe/x", "/webhooks/stripex", "/webhooks", "/webhooks/"):
        assert_error(client.post(path, data=payload, headers=headers), 404, "not_found")
    assert stored(sessions) == 0


def test_a_path_with_repeated_leading_slashes_is_the_webhook_as_flasks_routing_had_it(client, sessions):
    _payload, environ = signed_environ("//webhooks/stripe")
    response = call(client, environ)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert stored(sessions) == 1


# --- methods -------------------------------------------------------------------------------------------------


def test_get_put_and_delete_on_the_webhook_are_405_in_the_error_shape_and_store_nothing(client, sessions):
    payload, headers = signed_event()
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        response = client.open("/webhooks/stripe", method=method, data=payload,
                               headers={**headers, "X-Request-Id": "req_method"})
        error = assert_error(response, 405, "method_not_allowed")
        assert error["message"] == "The method is not allowed for the requested URL."
        assert response.status == "405 METHOD NOT ALLOWED"
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["X-Request-Id"] == "req_method"
    assert stored(sessions) == 0


def test_head_on_the_webhook_is_405_with_no_body_but_its_length(client):
    get = client.get("/webhooks/stripe")
    head = client.head("/webhooks/stripe")
    assert head.status_code == 405
    assert head.get_data() == b""
    assert head.headers["Content-Length"] == str(len(get.get_data())) == get.headers["Content-Length"]
    assert head.headers["Content-Type"] == "application/json"
    assert head.headers["X-Request-Id"].startswith("req_")


def test_options_on_the_webhook_names_post_as_flask_did(client):
    response = client.options("/webhooks/stripe")
    assert response.status_code == 200
    assert response.get_data() == b""
    assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}


# --- the body: its limit and its declared length ---------------------------------------------------------------


def test_a_declared_length_over_the_limit_is_413_before_the_body_is_read(make_client, sessions):
    small = make_client(max_webhook_bytes=4096)
    _payload, environ = signed_environ()  # about 2 KB: only the header says it is too large
    environ["CONTENT_LENGTH"] = "4097"
    assert_error(call(small, environ), 413, "payload_too_large")
    assert stored(sessions) == 0


def test_a_body_longer_than_its_content_length_is_read_only_as_far_as_declared(client, sessions):
    payload, environ = signed_environ()
    environ["CONTENT_LENGTH"] = str(len(payload) - 1)  # the signed body, all there, but one byte not declared
    error = assert_error(call(client, environ), 400, "invalid_signature")
    assert "no v1 signature matches" in error["message"]
    assert stored(sessions) == 0


def test_a_body_with_no_usable_content_length_is_not_read_unless_the_server_ends_it(client, sessions):
    for content_length in (None, "not-a-number"):
        _payload, environ = signed_environ()
        if content_length is None:
            del environ["CONTENT_LENGTH"]
        else:
            environ["CONTENT_LENGTH"] = content_length
        # Without wsgi.input_terminated nothing says where the body ends: it is read as empty.
        assert_error(call(client, environ), 400, "invalid_signature")
    assert stored(sessions) == 0


def test_a_body_shorter_than_its_content_length_is_refused_not_stored_in_part(client, sessions):
    payload, environ = signed_environ()
    environ["wsgi.input"] = io.BytesIO(payload.encode()[:-20])  # the client stopped sending early
    assert_error(call(client, environ), 400, "invalid_signature")
    assert stored(sessions) == 0


# --- request ids, log context, unexpected errors --------------------------------------------------------------


def test_the_callers_request_id_is_echoed_and_carried_by_the_webhooks_log_line(client):
    payload, headers = signed_event()
    with rendered_logs() as lines:
        response = client.post("/webhooks/stripe", data=payload, headers={**headers, "X-Request-Id": "req_from_lb"})
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] == "req_from_lb"
    assert response.headers["Content-Type"] == "application/json"
    assert response.get_data() == b'{"duplicate":false,"received":true}'
    [line] = [line for line in lines if " webhook_received " in line]
    assert "request_id=req_from_lb" in line


def test_without_a_request_id_a_new_one_is_made_for_each_request(client):
    payload, headers = signed_event()
    first = client.post("/webhooks/stripe", data=payload, headers=headers).headers["X-Request-Id"]
    second = client.post("/webhooks/stripe", data=payload, headers=headers).headers["X-Request-Id"]
    assert first.startswith("req_") and second.startswith("req_") and first != second


def test_the_webhooks_log_context_does_not_outlive_its_request(client):
    payload, headers = signed_event()
    structlog.contextvars.bind_contextvars(left_over="from an earlier request")
    assert client.post("/webhooks/stripe", data=payload, headers=headers).status_code == 200
    assert structlog.contextvars.get_contextvars() == {}


def test_an_unexpected_error_in_the_webhook_is_a_logged_500_in_the_error_shape(client, sessions, monkeypatch):
    def broken(_payload):
        raise RuntimeError("a defect")

    monkeypatch.setattr(webhooks, "parse_event_json", broken)
    payload, headers = signed_event()
    with rendered_logs() as lines:
        response = client.post("/webhooks/stripe", data=payload, headers={**headers, "X-Request-Id": "req_defect"})
    assert_error(response, 500, "internal_error")
    assert response.headers["X-Request-Id"] == "req_defect"
    assert [line for line in lines if " request_failed " in line and "request_id=req_defect" in line]
    assert stored(sessions) == 0


def test_the_webhooks_refusals_are_the_same_bytes_as_flasks_own(client):
    """Flask answers a wrong method on a route of its own; the webhook's answer must not differ from it."""
    flasks = client.put("/carts", headers={"X-Request-Id": "req_same"})
    webhooks_own = client.put("/webhooks/stripe", headers={"X-Request-Id": "req_same"})
    assert (webhooks_own.status, webhooks_own.get_data()) == (flasks.status, flasks.get_data())
    assert dict(webhooks_own.headers) == {key: value for key, value in flasks.headers.items() if key != "Vary"}


def test_a_405_says_which_methods_the_url_takes(client):
    # RFC 9110: a 405 MUST carry Allow, for the webhook and for Flask's own routes alike.
    assert client.get("/webhooks/stripe").headers["Allow"] == "OPTIONS, POST"
    assert client.put("/carts").headers["Allow"] == "OPTIONS, POST"
