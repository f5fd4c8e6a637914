"""The one place the service talks to Stripe's API (the official SDK): create, cancel, refund, list events."""
from __future__ import annotations

import stripe

from models.settings import Settings


class PaymentGatewayError(Exception):
    """Stripe could not be reached or refused the call; the message says which."""


def configure_stripe(settings: Settings) -> None:
    stripe.api_key = settings.stripe_api_key
    if settings.stripe_api_base:
        stripe.api_base = settings.stripe_api_base.rstrip("/")
    # Safe to retry: every call that changes money carries an idempotency key. Two tries of
    # 6 s stay inside gunicorn's 20 s request timeout, so a hung Stripe gets a clean 502.
    stripe.max_network_retries = 1
    stripe.default_http_client = stripe.new_default_http_client(timeout=6)


def create_payment_intent(*, order_id: str, amount: int, currency: str, email: str) -> stripe.PaymentIntent:
    try:
        return stripe.PaymentIntent.create(
            amount=amount,
            currency=currency,
            metadata={"order_id": order_id, "email": email},
            payment_method_types=["card"],
            # Derived from the order, so a retried checkout can never create a second intent.
            idempotency_key=f"order-{order_id}-payment-intent",
        )
    except stripe.StripeError as exc:
        raise PaymentGatewayError(_describe(exc)) from exc


def cancel_payment_intent(payment_intent_id: str) -> str:
    """Cancel an intent nobody paid, so an expired order can no longer be paid.

    Returns what happened. An intent that can no longer be cancelled (it succeeded meanwhile)
    is not an error: its succeeded event flags the order for a person.
    """
    try:
        return stripe.PaymentIntent.cancel(payment_intent_id).status
    except stripe.InvalidRequestError as exc:
        try:
            status = stripe.PaymentIntent.retrieve(payment_intent_id).status
        except stripe.StripeError:
            status = None
        if status in ("succeeded", "processing", "canceled"):
            return f"not cancellable: already {status}"
        raise PaymentGatewayError(_describe(exc)) from exc
    except stripe.StripeError as exc:
        raise PaymentGatewayError(_describe(exc)) from exc


def retrieve_payment_intent(payment_intent_id: str) -> dict | None:
    """Stripe's own record of an intent (id, amount, currency, livemode, metadata), or None if
    Stripe does not know it. Raises PaymentGatewayError when Stripe cannot answer: retry later."""
    try:
        return stripe.PaymentIntent.retrieve(payment_intent_id).to_dict()
    except stripe.InvalidRequestError as exc:
        if getattr(exc, "http_status", None) == 404:
            return None
        raise PaymentGatewayError(_describe(exc)) from exc
    except stripe.StripeError as exc:
        raise PaymentGatewayError(_describe(exc)) from exc


def refund_payment(*, order_id: str, payment_intent_id: str, attempt: int) -> stripe.Refund:
    """Refund what is left of the intent's charge. Staff's reason stays in our database: it is not
    a parameter, so a re-run with other words is the same request under the same key."""
    try:
        return stripe.Refund.create(
            payment_intent=payment_intent_id,
            metadata={"order_id": order_id},
            # Keyed on the order and the attempt: pressing the button again, or a re-run after
            # our commit was lost, asks Stripe for the same refund, never a second one.
            idempotency_key=f"order-{order_id}-refund-{attempt}",
        )
    except stripe.StripeError as exc:
        raise PaymentGatewayError(_describe(exc)) from exc


def find_refunds(payment_intent_id: str) -> list[stripe.Refund]:
    """The refunds Stripe holds for an intent (a re-run records one it made but we never stored)."""
    try:
        return list(stripe.Refund.list(payment_intent=payment_intent_id, limit=100).auto_paging_iter())
    except stripe.StripeError as exc:
        raise PaymentGatewayError(_describe(exc)) from exc


def _describe(exc: stripe.StripeError) -> str:
    message = getattr(exc, "user_message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {message}"
