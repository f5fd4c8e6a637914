"""Reservation arithmetic on Stock: units are held, given back, or leave the shelf, never below zero."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.catalog import Stock
from models.errors import OutOfStock


def stock(on_hand: int = 10, reserved: int = 0) -> Stock:
    return Stock(sku="TEA-01", on_hand=on_hand, reserved=reserved)


def snapshot(s: Stock) -> tuple[int, int]:
    return s.on_hand, s.reserved


def test_available_is_on_hand_minus_reserved():
    assert stock(10, 3).available == 7
    assert stock(5, 5).available == 0


def test_reserve_holds_units_without_taking_them_off_the_shelf():
    s = stock(10)
    s.reserve(4)
    assert (s.on_hand, s.reserved, s.available) == (10, 4, 6)


def test_reserve_up_to_exactly_the_available_units_succeeds():
    s = stock(10, 3)
    s.reserve(7)
    assert (s.on_hand, s.reserved, s.available) == (10, 10, 0)


def test_reserving_more_than_available_raises_out_of_stock_with_details_and_changes_nothing():
    s = stock(10, 6)
    with pytest.raises(OutOfStock) as caught:
        s.reserve(5)
    assert (caught.value.sku, caught.value.requested, caught.value.available) == ("TEA-01", 5, 4)
    assert caught.value.field == "sku"
    assert "TEA-01" in str(caught.value)
    assert snapshot(s) == (10, 6)


def test_release_gives_reserved_units_back():
    s = stock(10, 4)
    s.release(3)
    assert (s.on_hand, s.reserved, s.available) == (10, 1, 9)


def test_releasing_more_than_reserved_is_refused_and_changes_nothing():
    s = stock(10, 2)
    with pytest.raises(ValueError, match="only 2 reserved"):
        s.release(3)
    assert snapshot(s) == (10, 2)


def test_consume_turns_reserved_units_into_a_real_decrement():
    s = stock(10, 4)
    s.consume(4)
    assert (s.on_hand, s.reserved, s.available) == (6, 0, 6)


def test_consuming_more_than_reserved_is_refused_and_changes_nothing():
    s = stock(10, 2)
    with pytest.raises(ValueError):
        s.consume(3)
    assert snapshot(s) == (10, 2)


def test_stock_never_goes_negative_when_the_shelf_is_empty():
    s = stock(0)
    with pytest.raises(OutOfStock):
        s.reserve(1)
    with pytest.raises(ValueError):
        s.consume(1)
    with pytest.raises(ValueError):
        s.release(1)
    assert snapshot(s) == (0, 0)


@pytest.mark.parametrize("operation", ["reserve", "release", "consume"])
@pytest.mark.parametrize("quantity", [0, -1, -5, True, False, 1.0, 2.5, "1", None])
def test_bad_quantities_are_refused_with_value_error_and_change_nothing(operation, quantity):
    s = stock(10, 5)
    with pytest.raises(ValueError):
        getattr(s, operation)(quantity)
    assert snapshot(s) == (10, 5)


def test_set_on_hand_below_reserved_is_refused():
    s = stock(10, 6)
    with pytest.raises(ValueError, match="below the 6 units reserved"):
        s.set_on_hand(5)
    assert snapshot(s) == (10, 6)


def test_set_on_hand_to_exactly_reserved_or_more_is_accepted():
    s = stock(10, 6)
    s.set_on_hand(6)
    assert (s.on_hand, s.available) == (6, 0)
    s.set_on_hand(50)
    assert (s.on_hand, s.reserved, s.available) == (50, 6, 44)


def test_set_on_hand_never_accepts_a_negative_count():
    s = stock(10, 0)
    with pytest.raises(ValueError):
        s.set_on_hand(-1)
    assert snapshot(s) == (10, 0)


OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["reserve", "release", "consume"]), st.integers(min_value=1, max_value=15)),
    max_size=60,
)


@settings(deadline=None)  # correctness, not speed: a loaded machine may stall one example
@given(initial_on_hand=st.integers(min_value=0, max_value=40), operations=OPERATIONS)
def test_any_sequence_of_operations_keeps_stock_consistent(initial_on_hand, operations):
    s = stock(initial_on_hand, 0)
    left_the_shelf = 0
    for name, quantity in operations:
        before = snapshot(s)
        try:
            getattr(s, name)(quantity)
        except (OutOfStock, ValueError):
            # A refused operation leaves no trace.
            assert snapshot(s) == before
        else:
            if name == "consume":
                left_the_shelf += quantity
        assert 0 <= s.reserved <= s.on_hand
        assert s.available == s.on_hand - s.reserved
        assert s.available >= 0
    assert initial_on_hand - s.on_hand == left_the_shelf
