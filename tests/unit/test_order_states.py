"""The order state machine: the allowed moves, written out here so that any change to them is noticed."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.errors import IllegalTransition
from models.orders import TRANSITIONS, Order, OrderStatus, can_transition

S = OrderStatus
P, F, PAID, R, C, REF = (S.PENDING_PAYMENT, S.PAYMENT_FAILED, S.PAID, S.NEEDS_REVIEW, S.CANCELLED, S.REFUNDED)

# The expected table, row = from, column = to; "x" allowed, "." refused.
#                  to: pending  failed  paid  review  cancelled  refunded
EXPECTED_TABLE = {
    P:            ".       x       x     x       x          .",
    F:            ".       x       x     x       x          .",
    PAID:         ".       .       .     x       .          x",
    R:            ".       .       x     .       x          x",
    C:            ".       .       .     x       .          .",
    REF:          ".       .       .     .       .          .",
}
COLUMNS = [P, F, PAID, R, C, REF]
ALLOWED = {
    (source, target)
    for source, row in EXPECTED_TABLE.items()
    for target, mark in zip(COLUMNS, row.split(), strict=True)
    if mark == "x"
}
ALL_PAIRS = list(itertools.product(OrderStatus, OrderStatus))


def pair_id(pair) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def order_in(status: OrderStatus) -> Order:
    return Order(id="ord_test", status=status, payment_attempts=0, total=3100, currency="jpy")


def test_expected_table_covers_every_status():
    assert set(EXPECTED_TABLE) == set(OrderStatus)
    assert set(COLUMNS) == set(OrderStatus)
    assert len(ALL_PAIRS) == 36


def test_transition_table_has_a_row_for_every_status_and_nothing_else():
    assert set(TRANSITIONS) == set(OrderStatus)
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == ALLOWED


@pytest.mark.parametrize("pair", ALL_PAIRS, ids=pair_id)
def test_can_transition_matches_the_expected_table(pair):
    source, target = pair
    assert can_transition(source, target) is ((source, target) in ALLOWED)


# The Order methods and the status each moves to.
METHODS = {
    S.PAID: lambda order: order.mark_paid(),
    S.PAYMENT_FAILED: lambda order: order.record_failed_attempt("card_declined", "Your card was declined."),
    S.NEEDS_REVIEW: lambda order: order.flag_for_review("paid but out of stock: TEA-01"),
    S.CANCELLED: lambda order: order.cancel("reservation expired before payment"),
}
METHOD_PAIRS = [(source, target) for source in OrderStatus for target in METHODS]


@pytest.mark.parametrize("pair", [p for p in METHOD_PAIRS if p in ALLOWED], ids=pair_id)
def test_allowed_move_through_order_method_changes_status(pair):
    source, target = pair
    order = order_in(source)
    METHODS[target](order)
    assert order.status is target


@pytest.mark.parametrize("pair", [p for p in METHOD_PAIRS if p not in ALLOWED], ids=pair_id)
def test_forbidden_move_raises_illegal_transition_and_leaves_the_order_untouched(pair):
    source, target = pair
    order = order_in(source)
    with pytest.raises(IllegalTransition) as caught:
        METHODS[target](order)
    assert (caught.value.current, caught.value.target) == (source.value, target.value)
    assert "ord_test" in str(caught.value)
    assert order.status is source
    assert order.payment_attempts == 0
    assert order.paid_at is None
    assert order.failure_code is None
    assert order.review_reason is None
    assert order.cancel_reason is None


def test_mark_paid_records_the_time_and_clears_the_last_failure():
    order = order_in(F)
    order.failure_code, order.failure_message = "card_declined", "Your card was declined."
    order.mark_paid()
    assert order.status is PAID
    assert order.paid_at is not None and order.paid_at.utcoffset().total_seconds() == 0
    assert (order.failure_code, order.failure_message) == (None, None)


def test_each_declined_card_is_counted_as_an_attempt():
    order = order_in(P)
    order.record_failed_attempt("card_declined", "Your card was declined.")
    order.record_failed_attempt("insufficient_funds", "Your card has insufficient funds.")
    assert order.status is F
    assert order.payment_attempts == 2
    assert (order.failure_code, order.failure_message) == ("insufficient_funds", "Your card has insufficient funds.")


def test_flag_for_review_and_cancel_keep_their_reason():
    flagged = order_in(PAID)
    flagged.flag_for_review("amount mismatch")
    assert (flagged.status, flagged.review_reason) == (R, "amount mismatch")
    cancelled = order_in(P)
    cancelled.cancel("payment intent canceled")
    assert (cancelled.status, cancelled.cancel_reason) == (C, "payment intent canceled")


@pytest.mark.parametrize("target", list(OrderStatus), ids=lambda s: s.value)
def test_refunded_is_terminal(target):
    assert not can_transition(REF, target)
    if target in METHODS:
        order = order_in(REF)
        with pytest.raises(IllegalTransition):
            METHODS[target](order)
        assert order.status is REF


@pytest.mark.parametrize("source", list(OrderStatus), ids=lambda s: s.value)
def test_no_order_ever_moves_back_to_pending_payment(source):
    assert not can_transition(source, P)


def test_paid_order_never_moves_back_to_payment_failed():
    assert not can_transition(PAID, F)
    order = order_in(PAID)
    with pytest.raises(IllegalTransition):
        order.record_failed_attempt("card_declined", "Your card was declined.")
    assert order.status is PAID
    assert order.payment_attempts == 0


@settings(deadline=None)  # correctness, not speed: a loaded machine may stall one example
@given(st.lists(st.sampled_from(sorted(METHODS, key=lambda s: s.value)), max_size=30))
def test_once_paid_no_sequence_of_calls_reaches_payment_failed_or_pending_payment(calls):
    order = order_in(P)
    was_paid = False
    for target in calls:
        before = order.status
        try:
            METHODS[target](order)
        except IllegalTransition:
            assert order.status is before
        else:
            assert (before, target) in ALLOWED
            assert order.status is target
        was_paid = was_paid or order.status is PAID
        if was_paid:
            assert order.status not in (F, P)
