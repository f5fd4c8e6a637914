"""The ingest benchmark's baseline: a bare Flask endpoint that reads the body and answers 200.

It runs under the same gunicorn settings as the service, so the ratio between the two is
what verifying, storing and logging an event costs, not what Flask and gunicorn cost.
"""
from __future__ import annotations

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/webhooks/stripe")
    def receive_stripe_event():
        request.get_data()
        return jsonify({"received": True}), 200

    return app
