"""Orders in the console: a list by status (the review queue first of all), one page per order
with its whole story, search, and the decisions accept, cancel, refund and ship (its shipment
left the warehouse), each behind a page that says what will happen to the money and the stock.

The decisions are the functions the CLI calls (consumers/staff_actions.py), with the logged-in
staff member as the actor; this module reads the form, calls, and redirects to the order's page.
The form carries what its page showed of the order (OrderAsSeen): a decision on an order changed
since is refused, not carried out on money or a status nobody confirmed.
"""
from __future__ import annotations

import re
from contextlib import nullcontext

from flask import abort, flash, redirect, render_template, request, url_for
from sqlalchemy import or_, select
from sqlalchemy.exc import DBAPIError

from consumers.checkout import PaymentProviderBusy, stripe_call_slots
from consumers.order_story import find_orders_by_reference, order_story
from consumers.payments import PaymentGatewayError
from consumers.staff_actions import (OrderAsSeen, RefundPartlyDone, accept_order, cancel_order, find_orders,
                                     not_shippable, order_id_of_message, refund_order, refund_ruled_out_on,
                                     refund_scope, refunds_ruled_out, ship_order)
from models.catalog import ReservationStatus, Stock
from models.db import DECISION_ABORTED, aborted_by_a_conflict
from models.errors import DomainError, NotFound
from models.events import InboxEvent, OutboxMessage, OutboxStatus
from models.orders import (Order, OrderStatus, PaymentWaiting, ShipmentStatus, can_transition, cancel_ruled_out,
                           get_order, intents_counted_for, money_in_other_currencies, payment_waiting,
                           payments_waiting)
from models.refunds import Dispute
from webhook_app import state
from webhook_app.admin import actor, bp, page_arg
from webhook_app.admin.display import money, review_sentence

PAGE_SIZE = 25
DECISIONS = ("accept", "cancel", "refund", "ship")


def _status_arg(text: str | None) -> OrderStatus | None:
    try:
        return OrderStatus(text) if text else None
    except ValueError:
        return None


@bp.route("/orders", methods=["GET", "POST"])
def orders():
    if request.method == "POST":  # the filter form: posted (it carries the CSRF token), then a plain GET
        status = _status_arg(request.form.get("status"))
        return redirect(url_for("admin.orders", **({"status": status.value} if status else {})), 303)
    status = _status_arg(request.args.get("status"))
    page = page_arg(PAGE_SIZE)
    with state().sessions() as session:
        found, total = find_orders(session, status, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
        disputed = refunds_ruled_out(session, found)
        waiting = payments_waiting(session, [o.id for o in found])
        # Only an order holding none of its own money can be refunded for money in another currency alone.
        elsewhere = money_in_other_currencies(session, [o for o in found if o.money_held <= 0])
        rows = [{"id": o.id, "status": o.status.value, "total": money(o.total, o.currency),
                 "held": money(o.money_held, o.currency), "created_at": o.created_at, "updated_at": o.updated_at,
                 "reason": review_sentence(o.review_reason) if o.status is OrderStatus.NEEDS_REVIEW else None,
                 "decisions": available_decisions(o, disputed.get(o.id), waiting.get(o.id), elsewhere.get(o.id))}
                for o in found]
    title = "Orders needing review" if status is OrderStatus.NEEDS_REVIEW else (
        f"Orders: {status.value}" if status else "Orders")
    return render_template("admin/orders.html", title=title, rows=rows, total=total, page=page,
                           pages=max(-(-total // PAGE_SIZE), 1), status=status.value if status else "",
                           page_args={"status": status.value} if status else {},
                           statuses=[s.value for s in OrderStatus])


def available_decisions(order: Order, disputed: Dispute | None = None,
                        waiting: PaymentWaiting | None = None, elsewhere: dict[str, int] | None = None) -> list[str]:
    """The decisions that can succeed on the order as it is now (others would only be refused);
    `disputed`: the dispute that rules its refund out, if one does (`refunds_ruled_out`: no undisputed
    payment holds money); `waiting`: a payment for it stored and not yet applied, which rules a cancel out;
    `elsewhere`: money its payments in other currencies hold (`money_in_other_currencies`), which a refund
    gives back too, unless the order is refunded already."""
    decisions = []
    if order.status is OrderStatus.NEEDS_REVIEW and order.money_held > 0:
        decisions.append("accept")
    if can_transition(order.status, OrderStatus.CANCELLED) and waiting is None:
        decisions.append("cancel")
    money_to_give_back = order.money_held > 0 or (elsewhere and order.status is not OrderStatus.REFUNDED)
    if order.refundable and money_to_give_back and disputed is None:
        decisions.append("refund")
    if not_shippable(order) is None:
        decisions.append("ship")
    return decisions


@bp.get("/orders/<order_id>")
def order(order_id: str):
    with state().sessions() as session:
        try:
            story = order_story(session, order_id)
        except NotFound:
            abort(404)
        current = session.get(Order, order_id)
        dead = [{"id": m.id, "what": (f"{m.inbox_event.type} {m.inbox_event.event_id}" if m.inbox_event
                                      else m.topic.value.replace("_", " "))}
                for m in _dead_letters_of(session, current)]
        decisions = available_decisions(current, refunds_ruled_out(session, [current]).get(order_id),
                                        payment_waiting(session, current),
                                        money_in_other_currencies(session, [current]).get(order_id))
        reason = review_sentence(current.review_reason) if current.status is OrderStatus.NEEDS_REVIEW else None
    return render_template("admin/order.html", title=f"Order {order_id}", story=story, dead=dead,
                           decisions=decisions, reason=reason)


def _dead_letters_of(session, order: Order) -> list[OutboxMessage]:
    """The order's dead letters: its mails and Stripe calls, and the events about its PaymentIntent."""
    about = [OutboxMessage.order_id == order.id, InboxEvent.order_id == order.id]
    if order.payment_intent_id:
        about.append(InboxEvent.object_id == order.payment_intent_id)
    candidates = session.scalars(
        select(OutboxMessage).outerjoin(InboxEvent, OutboxMessage.inbox_event_id == InboxEvent.id)
        .where(OutboxMessage.status == OutboxStatus.DEAD, or_(*about)).order_by(OutboxMessage.id))
    return [m for m in candidates if order_id_of_message(session, m) == order.id]


def consequences(session, order: Order, decision: str, refund: bool = False) -> list[str]:
    """What the decision will do to money and stock, in sentences, from the order as it is now."""
    held = money(order.money_held, order.currency)
    holds = [r for r in order.reservations if r.status is ReservationStatus.ACTIVE]
    taken = [r for r in order.reservations if r.status is ReservationStatus.CONSUMED]
    gone = [r for r in order.reservations if r.status in (ReservationStatus.RELEASED, ReservationStatus.RETURNED)]

    def units(rows) -> str:
        return ", ".join(f"{r.quantity} × {r.sku}" for r in rows)

    shipment = order.shipment
    unshipped = shipment is not None and shipment.status is ShipmentStatus.PENDING
    # Paid in another currency than the order's: not in its money (`Order.counts_currency`), said apart.
    elsewhere = money_in_other_currencies(session, [order]).get(order.id, {})
    other = ", ".join(money(amount, currency) for currency, amount in sorted(elsewhere.items()))
    if decision == "ship":
        problem = not_shippable(order)
        if problem is not None:
            return [f"Refused: {problem}."]
        return ["Money: unchanged.",
                f"Stock: unchanged; its units ({units(taken)}) left the shelf when it was paid. From now on a refund "
                f"or cancel no longer puts them back on sale.",
                f"Shipment {shipment.id} is recorded as shipped; the order stays {order.status.value}."]
    money_back = decision == "refund" or (decision == "cancel" and refund and (order.money_held > 0 or elsewhere))
    disputed = refunds_ruled_out(session, [order]).get(order.id) if money_back else None
    if disputed is not None:
        return [f"Refused: {refund_ruled_out_on(disputed)}."]
    waiting = payment_waiting(session, order) if decision == "cancel" else None
    if waiting is not None:
        return [f"Refused: {cancel_ruled_out(waiting)}.",
                "Money: taken at Stripe, and counted on the order once that payment is applied; nothing changes.",
                "Stock: its units stay held for that payment."]
    # Paid on another intent (a second checkout tab) only: the one the order holds can still be paid.
    own_unpaid = ([f"Its PaymentIntent {order.payment_intent_id}, never paid (the money came on another), is "
                   f"cancelled at Stripe, so the customer cannot pay twice."]
                  if order.payment_intent_id and order.money_held > 0
                  and order.payment_intent_id not in intents_counted_for(session, order) else [])
    if decision == "accept":
        out = [f"Money: the {held} taken is kept; nothing goes back to the customer."]
        if elsewhere:
            out.append(f"Money in another currency than the order's, not in its money: {other}. Accept leaves it "
                       f"at Stripe as it is: refund it in Stripe's dashboard if it should go back.")
        if shipment is not None and shipment.status is not ShipmentStatus.CANCELLED:
            out.append(f"Stock: unchanged; its goods were already taken (shipment {shipment.status.value}). "
                       f"The order goes back to paid.")
            return out + own_unpaid
        if holds:
            out.append(f"Stock: the units it holds ({units(holds)}) leave the shelf.")
        if gone:
            available = {s.sku: s.available for s in session.scalars(
                select(Stock).where(Stock.sku.in_([r.sku for r in gone])))}
            out.append(f"Stock: its hold was released, so {units(gone)} are taken from available stock "
                       f"(now available: {', '.join(f'{sku} {n}' for sku, n in sorted(available.items()))}); "
                       f"if any is short, nothing changes and you are told which.")
        out.append("The order becomes paid, a shipment is created and the confirmation e-mail is queued.")
        return out + own_unpaid
    if money_back:
        # A disputed payment is left out (Stripe refuses to refund it, or the card network gave it back).
        scope = refund_scope(session, order)
        left_out, contested = scope.left_out, scope.held_under_dispute
        if order.money_held <= 0 and elsewhere:
            out = []
        elif not left_out:
            out = [f"Money: {held} goes back to the customer's card at Stripe, in full. Stripe keeps its fee."]
        else:
            out = [f"Money: {money(order.money_held - contested, order.currency)} goes back to the customer's card "
                   f"at Stripe, from the payments not disputed. Stripe keeps its fee."]
            out += [f"Payment intent {intent_id} is left out: "
                    + (f"its dispute {d.stripe_dispute_id} was lost, the card network gave "
                       f"{money(d.amount, d.currency)} back already." if d.status == "lost" else
                       f"dispute {d.stripe_dispute_id} is {d.status}, and Stripe does not refund a disputed payment.")
                    for intent_id, d in left_out.items()]
        if elsewhere:
            out.append(f"{'Also' if out else 'Money:'} {other}, paid in another currency than the order's (so not in "
                       f"its money), goes back to the customer's card at Stripe. Stripe keeps its fee.")
        if contested > 0:
            out.append(f"The order keeps {money(contested, order.currency)} under dispute and stays in review, "
                       f"its units held: decide again once the dispute is closed.")
            return out + own_unpaid
        if holds or (taken and unshipped):
            out.append(f"Stock: {units(holds + (taken if unshipped else []))} go back on the shelf"
                       + (f"; shipment {shipment.id} is cancelled." if unshipped else "."))
        elif shipment is not None and shipment.status is ShipmentStatus.SHIPPED:
            out.append("Stock: unchanged; the goods have already been shipped.")
        else:
            out.append("Stock: nothing is held for it; nothing changes.")
        out.append("The order ends refunded.")
        return out + own_unpaid
    # cancel without money to give back
    if order.money_held > 0 or elsewhere:
        taken = ", ".join(([held] if order.money_held > 0 else []) + ([f"{other} in another currency"] if other else []))
        # Accept takes only an order in review: a paid one keeps its money by being left as it is.
        keep = ("accept instead" if order.status is OrderStatus.NEEDS_REVIEW else
                "leave the order as it is: it ships" if order.status is OrderStatus.PAID else
                "leave the order as it is")
        return [f"Money: this order holds {taken} taken from the customer. Cancelling is refused unless you "
                f"tick “refund” (the money goes back, the order ends refunded); to keep the money, {keep}."]
    out = ["Money: none was taken; nothing is charged or refunded."]
    out.append(f"Stock: {units(holds)} go back on the shelf." if holds else "Stock: nothing is held for it.")
    if order.status in (OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_FAILED) and order.payment_intent_id:
        out.append(f"Its PaymentIntent {order.payment_intent_id} is cancelled at Stripe, so the customer can "
                   f"no longer pay for it.")
    out.append("The order ends cancelled.")
    return out


@bp.route("/orders/<order_id>/<decision>", methods=["GET", "POST"])
def decide(order_id: str, decision: str):
    """GET: the confirmation page (what will happen, a note to write); POST: do it."""
    if decision not in DECISIONS:
        abort(404)
    if request.method == "POST":
        return _decided(order_id, decision)
    with state().sessions() as session:
        try:
            current = get_order(session, order_id)
        except NotFound:
            abort(404)
        elsewhere = money_in_other_currencies(session, [current]).get(current.id)
        page = {"order_id": current.id, "status": current.status.value, "total": money(current.total, current.currency),
                "held": money(current.money_held, current.currency),
                "reason": review_sentence(current.review_reason)
                if current.status is OrderStatus.NEEDS_REVIEW else None,
                "effects": consequences(session, current, decision),
                "effects_with_refund": consequences(session, current, decision, refund=True)
                if decision == "cancel" and (current.money_held > 0 or elsewhere) else None,
                "possible": decision in available_decisions(
                    current, refunds_ruled_out(session, [current]).get(current.id),
                    payment_waiting(session, current), elsewhere),
                "seen": OrderAsSeen.of(current)}
    return render_template("admin/order_decision.html", title=f"{decision.capitalize()} order {order_id}",
                           decision=decision, o=page)


def _decided(order_id: str, decision: str):
    note = request.form.get("note", "").strip()
    if not note:
        flash(f"Not done: {decision} needs a note saying why (it is kept in the audit trail).", "error")
        return redirect(url_for("admin.decide", order_id=order_id, decision=decision), 303)
    try:
        seen = _seen_on_the_page()
    except ValueError as exc:
        flash(f"Not done: the form did not say what its page showed of the order ({exc}); nothing changed. "
              f"Read the order on this page again and confirm.", "error")
        return redirect(url_for("admin.decide", order_id=order_id, decision=decision), 303)
    sessions, settings, who = state().sessions, state().settings, actor()
    refund = decision == "refund" or (decision == "cancel" and request.form.get("refund") == "yes")
    try:
        # A refund asks Stripe on this web request: it takes one of the process's Stripe call slots, as
        # the shop's calls do, so staff refunding behind a stalled Stripe cannot hold the threads
        # webhooks need (StripeCallSlots).
        with stripe_call_slots(settings.stripe_max_concurrent_calls).call() if refund else nullcontext():
            if decision == "accept":
                result = accept_order(sessions, order_id, actor=who, note=note, expected=seen)
            elif decision == "refund":
                result = refund_order(sessions, order_id, actor=who, reason=note, expected=seen)
            elif decision == "ship":
                result = ship_order(sessions, order_id, actor=who, note=note, expected=seen)
            else:
                result = cancel_order(sessions, order_id, actor=who, note=note, refund=refund, expected=seen)
    except NotFound:
        abort(404)
    except DBAPIError as exc:
        if not aborted_by_a_conflict(exc):
            raise
        flash(f"Not done: {DECISION_ABORTED}.", "error")
    except PaymentProviderBusy:
        flash(f"Not done: this server is already waiting on Stripe for as many calls as it allows "
              f"(STRIPE_MAX_CONCURRENT_CALLS={settings.stripe_max_concurrent_calls}), so Stripe is slow to answer; "
              f"nothing was asked of Stripe and nothing changed here. Try again in a moment.", "error")
    except DomainError as exc:
        flash(f"Not done: {exc.message}", "error")
    except RefundPartlyDone as exc:
        done = exc.decision
        flash(f"Order {order_id}: {decision} partly done, {done.status_before} → {done.status_after} "
              f"({done.detail}). What went back is recorded; the order stays in review for what it still holds.", "error")
    except PaymentGatewayError as exc:
        flash(f"Not done: Stripe did not take the refund ({exc}). Nothing changed here; try again later.", "error")
    else:
        flash(f"Order {order_id}: {decision} done, {result.status_before} → {result.status_after} "
              f"({result.detail}).", "ok")
    return redirect(url_for("admin.order", order_id=order_id), 303)


def _seen_on_the_page() -> OrderAsSeen | None:
    """What the confirmation page showed of the order, from its hidden fields; None from a form that sends
    none of them (one posted by a script, not from the page), which is carried out as the CLI's is."""
    fields = {name: request.form.get(name) for name in ("seen_status", "seen_held", "seen_shipment")}
    if all(value is None for value in fields.values()):
        return None
    status, held, shipment = fields["seen_status"], fields["seen_held"], fields["seen_shipment"]
    if status not in {s.value for s in OrderStatus}:
        raise ValueError("its seen_status is not an order status")
    if held is None or not re.fullmatch(r"-?[0-9]{1,18}", held):
        raise ValueError("its seen_held is not an amount in minor units")
    if shipment is None or shipment not in {"", *(s.value for s in ShipmentStatus)}:
        raise ValueError("its seen_shipment is not a shipment status (or empty: none)")
    return OrderAsSeen(status, int(held), shipment or None)


@bp.route("/search", methods=["GET", "POST"])
def search():
    """An order id, PaymentIntent id, event id or e-mail: one match opens the order's page."""
    if request.method == "POST":  # the search box: posted (it carries the CSRF token), then a plain GET
        return redirect(url_for("admin.search", q=request.form.get("q", "").strip()), 303)
    text = request.args.get("q", "").strip()
    with state().sessions() as session:
        found, total = find_orders_by_reference(session, text)
        rows = [{"id": o.id, "status": o.status.value, "total": money(o.total, o.currency),
                 "created_at": o.created_at} for o in found]
    if len(rows) == 1:
        return redirect(url_for("admin.order", order_id=rows[0]["id"]), 303)
    return render_template("admin/search.html", title="Search", q=text, rows=rows, total=total), \
        (200 if rows or not text else 404)
