"""The one place the service talks to Stripe's API (the official SDK): create, cancel, refund, list events."""
from __future__ import annotations

import time
from typing import Iterator

import stripe

from models.settings import Settings


class PaymentGatewayError(Exception):
    """Stripe could not be reached or refused the call; the message says which."""


class PaymentRefused(PaymentGatewayError):
    """Stripe answered and refused the request: not an outage (asking again will not help) and not a
    declined card. `code` is Stripe's error code when it gives one, `reason` Stripe's own words."""

    def __init__(self, message: str, code: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.code, self.reason = code, reason


class IntentNotConfirmable(PaymentRefused):
    """Stripe refused to confirm the intent because of the state it is in (`status`, as Stripe reports
    it): already paid, cancelled, or (localstripe) declined once and never confirmable again."""

    def __init__(self, message: str, *, payment_intent_id: str, status: str | None, code: str | None = None,
                 reason: str | None = None):
        super().__init__(message, code, reason)
        self.payment_intent_id, self.status = payment_intent_id, status


class CardDeclined(Exception):
    """The card issuer (or Stripe's checks) refused the payment; `message` is Stripe's wording for
    the buyer, `code` the decline code. The intent can be confirmed again with another card."""

    def __init__(self, message: str, code: str | None):
        super().__init__(message)
        self.message, self.code = message, code


def configure_stripe(settings: Settings) -> None:
    stripe.api_key = settings.stripe_api_key
    if settings.stripe_api_base:
        stripe.api_base = settings.stripe_api_base.rstrip("/")
    # Safe to retry: every call that changes money carries an idempotency key. Two tries of
    # 6 s suit the worker and the CLI; checkout, which a customer waits for, does not use
    # this client but one total deadline of its own (create_payment_intent).
    stripe.max_network_retries = 1
    stripe.default_http_client = stripe.new_default_http_client(timeout=6)


def create_payment_intent(*, order_id: str, amount: int, currency: str, email: str,
                          deadline_seconds: float = 8.0, replacing: str | None = None) -> stripe.PaymentIntent:
    """Create the order's PaymentIntent, giving up after `deadline_seconds` in all, retries included.

    A customer waits for this call in a web request: a stalled Stripe must cost them one
    bounded wait, never two full SDK timeouts back to back. `replacing` names the intent this
    one takes over from (see checkout.replace_payment_intent).
    """
    params = {
        "amount": amount,
        "currency": currency,
        "metadata": {"order_id": order_id, "email": email},
        "payment_method_types": ["card"],
    }
    # Derived from the order, so a retried checkout can never create a second intent.
    options = {"idempotency_key": f"order-{order_id}-payment-intent"
                                  + (f"-replacing-{replacing}" if replacing else "")}
    return _within_deadline(lambda client: client.v1.payment_intents.create(params=params, options=options),
                            deadline_seconds)


def create_setup_intent(*, order_id: str, deadline_seconds: float = 8.0) -> stripe.SetupIntent:
    """A SetupIntent through which Stripe.js turns the card the buyer types into a PaymentMethod.

    The card goes from the browser to Stripe only; the shop receives the PaymentMethod's id and
    confirms the order's PaymentIntent with it on the server.
    """
    params = {"payment_method_types": ["card"], "metadata": {"order_id": order_id}}
    return _within_deadline(lambda client: client.v1.setup_intents.create(params=params), deadline_seconds)


def confirm_payment_intent(*, payment_intent_id: str, payment_method_id: str,
                           deadline_seconds: float = 8.0) -> stripe.PaymentIntent:
    """Attach the buyer's PaymentMethod to the order's intent and confirm it (server-side confirmation).

    Returns the intent: `succeeded`, `processing`, or `requires_action` (3-D Secure: the page
    completes it with Stripe.js). Raises CardDeclined when the card is refused,
    IntentNotConfirmable when the intent's state does not allow a confirmation, PaymentRefused
    when Stripe refuses the request for another reason, PaymentGatewayError when it cannot answer.
    """
    # Attached, then confirmed (two calls: localstripe refuses `payment_method` on confirm). The
    # same card sent twice (a double click, a retried request) is the same two requests at Stripe.
    key = f"{payment_intent_id}-{payment_method_id}"

    def attach_and_confirm(client: stripe.StripeClient) -> stripe.PaymentIntent:
        try:
            client.v1.payment_intents.update(payment_intent_id, params={"payment_method": payment_method_id},
                                             options={"idempotency_key": f"{key}-attach"})
        except stripe.InvalidRequestError as exc:
            _refuse_if_state(client, payment_intent_id, exc, confirming=False)
            raise
        try:
            return client.v1.payment_intents.confirm(payment_intent_id, options={"idempotency_key": f"{key}-confirm"})
        except stripe.InvalidRequestError as exc:
            _refuse_if_state(client, payment_intent_id, exc, confirming=True)
            raise

    return _within_deadline(attach_and_confirm, deadline_seconds)


def create_card_payment_method(card_number: str, *, deadline_seconds: float = 8.0) -> str:
    """What Stripe.js does in a buyer's browser: make a PaymentMethod of a card number, and return its
    id. For `shop demo` and the tests, against localstripe or Stripe's test mode (which alone takes a
    raw number from a server). Raises as `confirm_payment_intent` does."""
    params = {"type": "card", "card": {"number": card_number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
    return _within_deadline(lambda client: client.v1.payment_methods.create(params=params), deadline_seconds).id


def _refuse_if_state(client: stripe.StripeClient, payment_intent_id: str, exc: stripe.InvalidRequestError, *,
                     confirming: bool) -> None:
    """Raise IntentNotConfirmable, with the intent's status, when Stripe refused because of that state.

    Stripe says so with the code `payment_intent_unexpected_state`. localstripe refuses a confirm
    of an intent that is not `requires_confirmation` with a bare 400 (no code, no param): after
    a declined card its intent stays `requires_payment_method` even with a new PaymentMethod
    attached, where Stripe would let it be confirmed again. A refusal naming a parameter (an
    unknown PaymentMethod) is about the request, not the intent, and is left as it is.
    """
    code = getattr(exc, "code", None)
    bare_confirm_refusal = (confirming and getattr(exc, "http_status", None) == 400 and not code
                            and not getattr(exc, "param", None))
    if code != "payment_intent_unexpected_state" and not bare_confirm_refusal:
        return
    status = client.v1.payment_intents.retrieve(payment_intent_id).status
    raise IntentNotConfirmable(_describe(exc), payment_intent_id=payment_intent_id, status=status, code=code,
                               reason=getattr(exc, "user_message", None)) from exc


# Worth another try inside the deadline: the request may not have reached Stripe, or Stripe
# asked us to come back. Anything else (a card error, a bad request) will not get better.
_RETRYABLE = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError)
_TRIES = 2
_RETRY_PAUSE_SECONDS = 0.25
_MIN_TRY_SECONDS = 0.5


def _within_deadline(call, deadline_seconds: float):
    """Run `call(client)` with fresh clients whose timeouts never pass one total deadline."""
    deadline = time.monotonic() + deadline_seconds
    for attempt in range(1, _TRIES + 1):
        remaining = deadline - time.monotonic()
        # requests' timeout bounds the connect and each wait for bytes: a server that accepts
        # and never answers is given up on when the deadline is reached.
        http_client = stripe.RequestsClient(timeout=(min(remaining, 3.0), remaining))
        client = stripe.StripeClient(stripe.api_key, base_addresses={"api": stripe.api_base},
                                     max_network_retries=0, http_client=http_client)
        try:
            return call(client)
        except _RETRYABLE as exc:
            if attempt == _TRIES or deadline - time.monotonic() < _RETRY_PAUSE_SECONDS + _MIN_TRY_SECONDS:
                raise PaymentGatewayError(f"{_describe(exc)} (gave up after try {attempt})") from exc
            time.sleep(_RETRY_PAUSE_SECONDS)
        except stripe.CardError as exc:
            raise CardDeclined(getattr(exc, "user_message", None) or "Your card was declined.",
                               getattr(exc, "code", None)) from exc
        except (stripe.InvalidRequestError, stripe.IdempotencyError) as exc:
            # Stripe answered: the request itself is refused, asking again will not help.
            raise PaymentRefused(_describe(exc), getattr(exc, "code", None),
                                 getattr(exc, "user_message", None)) from exc
        except stripe.StripeError as exc:
            raise PaymentGatewayError(_describe(exc)) from exc
        finally:
            http_client.close()


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


def retrieve_payment_intent(payment_intent_id: str, *, deadline_seconds: float | None = None) -> dict | None:
    """Stripe's own record of an intent (id, amount, currency, livemode, metadata), or None if
    Stripe does not know it. Raises PaymentGatewayError when Stripe cannot answer: retry later.
    With `deadline_seconds` (a page a buyer waits on), every try ends within that total time."""
    try:
        if deadline_seconds is not None:
            return _within_deadline(lambda client: client.v1.payment_intents.retrieve(payment_intent_id),
                                    deadline_seconds).to_dict()
        return stripe.PaymentIntent.retrieve(payment_intent_id).to_dict()
    except stripe.InvalidRequestError as exc:
        if getattr(exc, "http_status", None) == 404:
            return None
        raise PaymentGatewayError(_describe(exc)) from exc
    except stripe.StripeError as exc:
        raise PaymentGatewayError(_describe(exc)) from exc


def cancel_order_payment_intents(*, order_id: str, payment_intent_id: str | None = None,
                                 created_since: int | None = None) -> dict[str, str]:
    """Cancel the PaymentIntents of an order that will never be paid; returns {intent id: what happened}.

    With `payment_intent_id`, that intent. Without it (checkout gave up before Stripe's answer
    came, so the intent, if Stripe made one, is known only to Stripe), every intent whose
    metadata names the order, created since `created_since` (a Unix time). An intent that
    already succeeded is left alone: money was taken, and its succeeded event flags the order
    for a person.
    """
    if payment_intent_id:
        return {payment_intent_id: cancel_payment_intent(payment_intent_id)}
    results = {}
    for intent in _intents_created_since(created_since or 0):
        if (intent.metadata.to_dict() if intent.metadata else {}).get("order_id") != order_id:
            continue
        if intent.status in ("succeeded", "processing", "canceled"):
            results[intent.id] = f"not cancellable: already {intent.status}"
        else:
            results[intent.id] = cancel_payment_intent(intent.id)
    return results


def _intents_created_since(created_since: int):
    try:
        try:
            listing = stripe.PaymentIntent.list(created={"gte": created_since}, limit=100)
        except stripe.InvalidRequestError:
            # An API without the `created` filter (localstripe): list everything, filter here.
            listing = stripe.PaymentIntent.list(limit=100)
        return [intent for intent in listing.auto_paging_iter() if intent.created >= created_since]
    except stripe.StripeError as exc:
        raise PaymentGatewayError(_describe(exc)) from exc


def refund_payment(*, order_id: str, payment_intent_id: str, amount: int, attempt: int,
                   stray: bool = False) -> stripe.Refund:
    """Refund `amount` of the intent's charge: what is left of it, as the caller counted from Stripe's
    own refunds (so a refund never gives back more than the charge, whatever the API's default).
    Staff's reason stays in our database: it is not a parameter, so a re-run with other words is the
    same request under the same key.

    `stray`: the intent is not the one the order holds, but a payment on it was counted for the order."""
    # Keyed on the order, the intent (a stray one: the order's own keeps the key it always had) and
    # the attempt: pressing the button again, or a re-run after our commit was lost, asks Stripe
    # for the same refund, never a second one.
    key = f"order-{order_id}-refund-{payment_intent_id}-{attempt}" if stray else f"order-{order_id}-refund-{attempt}"
    try:
        return stripe.Refund.create(payment_intent=payment_intent_id, amount=amount,
                                    metadata={"order_id": order_id}, idempotency_key=key)
    except stripe.StripeError as exc:
        raise PaymentGatewayError(_describe(exc)) from exc


def find_refunds(payment_intent_id: str) -> list[stripe.Refund]:
    """The refunds Stripe holds for an intent (a re-run records one it made but we never stored)."""
    try:
        return list(stripe.Refund.list(payment_intent=payment_intent_id, limit=100).auto_paging_iter())
    except stripe.StripeError as exc:
        raise PaymentGatewayError(_describe(exc)) from exc


def list_refunds(payment_intent_id: str) -> list[dict]:
    """`find_refunds` as plain dicts, for a handler (the worker fetches them outside its transaction)."""
    return [refund.to_dict() for refund in find_refunds(payment_intent_id)]


def events_since(created_gte: int) -> Iterator[dict]:
    """Every event Stripe holds created at or after `created_gte` (a Unix time), in the order the API
    lists them: newest first at Stripe (localstripe lists oldest first). A caller that needs them in
    the order they happened sorts them itself (`consumers.reconcile` does).

    Raises PaymentGatewayError when Stripe cannot be asked, also midway through the pages.
    """
    try:
        for event in stripe.Event.list(created={"gte": created_gte}, limit=100).auto_paging_iter():
            # for_json: decimal strings (a Billing object's `unit_amount_decimal`, say) stay strings, not
            # Decimal, which json.dumps cannot write: one plan or price event would stop every run there.
            yield event.to_dict(for_json=True)
    except stripe.StripeError as exc:
        raise PaymentGatewayError(_describe(exc)) from exc


def _describe(exc: stripe.StripeError) -> str:
    message = getattr(exc, "user_message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {message}"
