"""Retry back-off and redelivery on the outbox, catalog validation, and Stripe-compatible signing."""
from __future__ import annotations

import copy
import json
import time
from datetime import timedelta

import pytest
import stripe

from models.base import utcnow
from models.catalog_file import validate_catalog
from models.errors import InvalidInput
from models.events import OutboxMessage, OutboxStatus, Topic, retry_delay
from tests.support import CATALOG, WEBHOOK_SECRET
from webhook_app.signing import sign

# --- retry_delay ---------------------------------------------------------------------------


@pytest.mark.parametrize("attempt, expected", [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (8, 256.0)])
def test_retry_delay_doubles_with_each_attempt(attempt, expected):
    assert retry_delay(attempt, 2.0) == expected


def test_retry_delay_is_capped_at_an_hour_by_default():
    assert retry_delay(11, 2.0) == 2048.0
    assert retry_delay(12, 2.0) == 3600.0
    assert retry_delay(200, 2.0) == 3600.0


def test_retry_delay_honours_a_custom_cap():
    assert retry_delay(3, 10.0, cap_seconds=30.0) == 30.0
    assert retry_delay(2, 10.0, cap_seconds=30.0) == 20.0


def test_retry_delay_is_zero_with_a_zero_base():
    assert retry_delay(5, 0.0) == 0.0


# --- OutboxMessage.schedule_retry ----------------------------------------------------------


def outbox_message() -> OutboxMessage:
    return OutboxMessage(id=1, topic=Topic.STRIPE_EVENT, payload='{"event_id": "evt_1"}',
                         status=OutboxStatus.PUBLISHED, attempts=0, deliveries=1, available_at=utcnow())


def test_failed_attempt_is_counted_and_the_next_one_scheduled_after_the_back_off():
    message = outbox_message()
    before = utcnow()
    again = message.schedule_retry("OperationalError: database is locked", max_attempts=3, base_seconds=10.0)
    after = utcnow()
    assert again is True
    assert message.attempts == 1
    assert message.status is OutboxStatus.PENDING
    assert message.last_error == "OperationalError: database is locked"
    assert before + timedelta(seconds=10) <= message.available_at <= after + timedelta(seconds=10)


def test_each_further_attempt_waits_twice_as_long():
    message = outbox_message()
    message.schedule_retry("boom 1", max_attempts=5, base_seconds=10.0)
    before = utcnow()
    message.schedule_retry("boom 2", max_attempts=5, base_seconds=10.0)
    after = utcnow()
    assert message.attempts == 2
    assert message.last_error == "boom 2"
    assert before + timedelta(seconds=20) <= message.available_at <= after + timedelta(seconds=20)


def test_message_is_dead_lettered_after_max_attempts():
    message = outbox_message()
    results = [message.schedule_retry(f"boom {i}", max_attempts=3, base_seconds=1.0) for i in range(1, 4)]
    assert results == [True, True, False]
    assert message.attempts == 3
    assert message.status is OutboxStatus.DEAD
    assert message.last_error == "boom 3"


def test_a_single_allowed_attempt_dead_letters_on_the_first_failure():
    message = outbox_message()
    assert message.schedule_retry("boom", max_attempts=1, base_seconds=1.0) is False
    assert message.status is OutboxStatus.DEAD


# --- OutboxMessage.mark_published ----------------------------------------------------------


def test_publishing_counts_the_delivery_and_waits_before_redelivering():
    message = OutboxMessage(id=1, topic=Topic.MAIL, payload="{}", status=OutboxStatus.PENDING,
                            attempts=0, deliveries=0, available_at=utcnow())
    message.mark_published(120.0)
    assert message.deliveries == 1
    assert message.status is OutboxStatus.PUBLISHED
    assert message.published_at is not None
    assert message.available_at - message.published_at == timedelta(seconds=120)
    assert message.attempts == 0  # a redelivery is not a failed attempt


def test_redelivery_wait_doubles_per_delivery_and_is_capped_at_32_times():
    message = OutboxMessage(id=1, topic=Topic.MAIL, payload="{}", status=OutboxStatus.PENDING,
                            attempts=0, deliveries=0, available_at=utcnow())
    waits = []
    for _ in range(9):
        message.mark_published(10.0)
        waits.append((message.available_at - message.published_at).total_seconds())
    assert waits == [10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 320.0, 320.0, 320.0]
    assert message.deliveries == 9
    assert message.attempts == 0


# --- validate_catalog ----------------------------------------------------------------------


def valid_catalog() -> dict:
    return copy.deepcopy(CATALOG)


def assert_invalid(catalog: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_catalog(catalog)
    assert caught.value.field == field
    assert field in caught.value.message


def test_the_demo_catalog_is_valid():
    assert validate_catalog(valid_catalog()) is None


def test_catalog_without_currency_is_refused_naming_currency():
    catalog = valid_catalog()
    del catalog["currency"]
    assert_invalid(catalog, "currency")


def test_catalog_with_negative_stock_is_refused_naming_the_product_field():
    catalog = valid_catalog()
    catalog["products"][1]["stock"] = -1
    assert_invalid(catalog, "products[1].stock")


def test_catalog_with_a_duplicate_sku_is_refused_naming_the_second_one():
    catalog = valid_catalog()
    catalog["products"].append(copy.deepcopy(catalog["products"][0]))
    assert_invalid(catalog, "products[2].sku")


def test_catalog_with_an_unknown_prefecture_is_refused_naming_the_rate():
    catalog = valid_catalog()
    catalog["shipping"]["rates"][1]["prefectures"] = ["Okinawa", "Atlantis"]
    assert_invalid(catalog, "shipping.rates[1].prefectures")


@pytest.mark.parametrize("value", [True, False])
def test_catalog_with_a_boolean_unit_amount_is_refused(value):
    catalog = valid_catalog()
    catalog["products"][0]["unit_amount"] = value
    assert_invalid(catalog, "products[0].unit_amount")


@pytest.mark.parametrize("value", [1200.0, "1200", None, -1])
def test_catalog_with_a_non_integer_or_negative_unit_amount_is_refused(value):
    catalog = valid_catalog()
    catalog["products"][0]["unit_amount"] = value
    assert_invalid(catalog, "products[0].unit_amount")


@pytest.mark.parametrize("prefectures", [["hokkaido-ken"], "default"], ids=["prefecture", "default"])
def test_catalog_listing_a_prefecture_in_two_rates_is_refused(prefectures):
    # Two fees for one prefecture is ambiguous; loading it would hit the shipping table's
    # primary key (IntegrityError) instead of an error naming the field.
    catalog = valid_catalog()
    catalog["shipping"]["rates"].append({"prefectures": prefectures, "fee": 500})
    assert_invalid(catalog, "shipping.rates[3].prefectures")


# --- signing -------------------------------------------------------------------------------

PAYLOAD = json.dumps({"id": "evt_test", "object": "event", "type": "payment_intent.succeeded",
                      "data": {"object": {"id": "pi_test", "object": "payment_intent"}}})


def test_signature_is_accepted_by_stripes_own_verifier():
    header = sign(PAYLOAD, WEBHOOK_SECRET)
    assert stripe.WebhookSignature.verify_header(PAYLOAD, header, WEBHOOK_SECRET, 300) is True


def test_signature_header_has_stripes_shape():
    header = sign(PAYLOAD, WEBHOOK_SECRET, timestamp=1700000000)
    t, v1 = header.split(",")
    assert t == "t=1700000000"
    assert v1.startswith("v1=") and len(v1) == 3 + 64


def test_signature_with_a_recent_timestamp_is_accepted():
    header = sign(PAYLOAD, WEBHOOK_SECRET, timestamp=int(time.time()) - 240)
    assert stripe.WebhookSignature.verify_header(PAYLOAD, header, WEBHOOK_SECRET, 300) is True


def test_signature_with_a_wrong_secret_is_rejected():
    header = sign(PAYLOAD, "whsec_someone_else")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(PAYLOAD, header, WEBHOOK_SECRET, 300)


def test_signature_older_than_the_tolerance_is_rejected():
    header = sign(PAYLOAD, WEBHOOK_SECRET, timestamp=int(time.time()) - 301)
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.WebhookSignature.verify_header(PAYLOAD, header, WEBHOOK_SECRET, 300)


def test_signature_does_not_cover_a_tampered_payload():
    header = sign(PAYLOAD, WEBHOOK_SECRET)
    tampered = PAYLOAD.replace("pi_test", "pi_other")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(tampered, header, WEBHOOK_SECRET, 300)


@pytest.mark.parametrize("name_ja", [None, 7, "  ", "茶" * 201])
def test_catalog_with_a_japanese_name_that_is_not_a_short_text_is_refused_naming_it(name_ja):
    catalog = valid_catalog()
    catalog["products"][1]["name_ja"] = name_ja
    assert_invalid(catalog, "products[1].name_ja")


def test_a_japanese_name_is_optional_per_product():
    catalog = valid_catalog()
    catalog["products"][0]["name_ja"] = "北海道紅茶"
    assert validate_catalog(catalog) is None
