"""The attempt number a staff refund is keyed on at Stripe (consumers.staff_actions.next_refund_attempt)."""
from __future__ import annotations

import stripe

from consumers.staff_actions import next_refund_attempt


def refund(refund_id: str, status: str) -> stripe.Refund:
    return stripe.Refund.construct_from({"id": refund_id, "object": "refund", "amount": 3100, "status": status},
                                        "sk_test_unused")


def test_the_first_refund_is_attempt_one():
    assert next_refund_attempt([]) == 1


def test_a_refund_after_one_that_failed_gets_a_key_of_its_own():
    # Keyed on the refunds that stand only, it would be attempt 1 again: the failed refund's key.
    assert next_refund_attempt([refund("re_Failed000000000001", "failed")]) == 2
    assert next_refund_attempt([refund("re_Failed000000000001", "failed"),
                                refund("re_Canceled0000000001", "canceled"),
                                refund("re_Partial0000000001", "succeeded")]) == 4
