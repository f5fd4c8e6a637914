"""The shop screens' words and formats: amounts by their currency (yen as written in Japan), both languages
for every label."""
from datetime import datetime, timezone

from models.shipping import PREFECTURES
from webhook_app.shop_text import LANGUAGES, PREFECTURE_NAMES_JA, TEXT, local_time, prefecture_label, price


def test_yen_is_written_with_the_sign_and_thousands_separators():
    assert price(3100, "jpy") == "¥3,100"
    assert price(1200000, "jpy") == "¥1,200,000"
    assert price(0, "jpy") == "¥0"


def test_other_currencies_are_written_in_their_major_unit():
    assert price(3100, "usd") == "$31.00"
    assert price(1250, "eur") == "€12.50"
    assert price(999, "gbp") == "£9.99"
    assert price(1250, "chf") == "12.50 CHF"


def test_every_label_exists_in_japanese_and_english_with_the_same_placeholders():
    import string

    for key, words in TEXT.items():
        assert set(words) == set(LANGUAGES), key
        fields = {language: {name for _, name, _, _ in string.Formatter().parse(text) if name}
                  for language, text in words.items()}
        assert fields["ja"] == fields["en"], key


def test_the_47_prefectures_have_their_japanese_names():
    assert set(PREFECTURE_NAMES_JA) == set(PREFECTURES) and len(PREFECTURES) == 47
    assert prefecture_label("Tokyo", "ja") == "東京都"
    assert prefecture_label("Tokyo", "en") == "Tokyo"


def test_times_are_shown_in_japan_time():
    moment = datetime(2026, 11, 25, 23, 30, tzinfo=timezone.utc)
    assert local_time(moment, "en") == "2026-11-26 08:30 (JST)"
    assert local_time(moment.replace(tzinfo=None), "ja") == "2026年11月26日 08:30"
