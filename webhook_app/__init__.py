"""HTTP side of the service: the app factory, its blueprints, and the `shop` CLI."""
from __future__ import annotations

from dataclasses import dataclass

import structlog
from flask import Flask, current_app, g, request
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from consumers.payments import configure_stripe
from models.base import new_id
from models.db import engine_for, make_session_factory, store_engine_for
from models.logs import configure_logging
from models.settings import Settings


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store_engine: Engine  # the webhook's (models.db.store_engine_for)

    def dispose(self) -> None:
        """Close every pooled connection (tests, and a process that forks after using the app)."""
        self.engine.dispose()
        if self.store_engine is not self.engine:
            self.store_engine.dispose()


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_format)
    configure_stripe(settings)
    app = Flask(__name__)
    engine = engine_for(settings)
    app.extensions["shop"] = AppState(settings, engine, make_session_factory(engine),
                                      store_engine_for(settings, engine))

    from webhook_app.admin import init_admin
    from webhook_app.client_address import ClientAddressFromTrustedProxy
    from webhook_app.errors import register_error_handlers
    from webhook_app.health import bp as health_bp
    from webhook_app.shop_api import bp as shop_bp
    from webhook_app.shop_pages import bp as shop_pages_bp
    from webhook_app.validation import MAX_REQUEST_BYTES, refuse_oversized_body, refuse_unstorable_input
    from webhook_app.webhooks import StripeWebhookEndpoint, WebhookDispatcher

    # No body the app reads may be larger (a chunked one is cut off here); the webhook, served in front
    # of Flask, keeps its own WEBHOOK_MAX_BYTES.
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    register_error_handlers(app)
    app.register_blueprint(health_bp)
    app.register_blueprint(shop_bp)
    app.register_blueprint(shop_pages_bp)
    init_admin(app, secret_key=settings.secret_key, admin_base_url=settings.admin_base_url)

    @app.before_request
    def _bind_request_id():
        structlog.contextvars.clear_contextvars()
        g.request_id = request.headers.get("X-Request-Id") or new_id("req")
        structlog.contextvars.bind_contextvars(request_id=g.request_id)

    # After the request id is bound, before every blueprint's own hooks and views: a body over the limit
    # is refused unread, and NUL and other control characters never reach a query (webhook_app.validation).
    app.before_request(refuse_oversized_body)
    app.before_request(refuse_unstorable_input)

    @app.after_request
    def _echo_request_id(response):
        response.headers["X-Request-Id"] = g.get("request_id", "")
        if request.is_secure:  # behind the trusted TLS proxy: browsers keep to https from now on
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        if request.blueprint == "shop":  # the API: orders' addresses, client secrets and access tokens
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.teardown_request
    def _unbind(_exc):
        structlog.contextvars.clear_contextvars()

    # Stripe's webhook is served in front of Flask, by a plain WSGI callable (webhook_app.webhooks).
    endpoint = app.extensions["webhook_endpoint"] = StripeWebhookEndpoint(app.extensions["shop"])
    app.wsgi_app = WebhookDispatcher(app.wsgi_app, endpoint)
    # In front of both: behind a trusted proxy REMOTE_ADDR is the client's, for the login limit, the
    # failed logins it records, and the address in every request's log line (gunicorn's and the webhook's).
    app.wsgi_app = ClientAddressFromTrustedProxy(app.wsgi_app, settings.forwarded_allow_ips)
    return app


def state() -> AppState:
    return current_app.extensions["shop"]
