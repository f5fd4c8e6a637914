"""Free text shown in one line (the order's story, `shop dlq list`): blank text is an empty line, never an error."""
from __future__ import annotations

import pytest

from consumers.order_story import _text
from webhook_app.cli import _first_line


@pytest.mark.parametrize("shorten", [_text, _first_line], ids=["story", "dlq-list"])
@pytest.mark.parametrize("blank", [None, "", " ", "   \n  ", "\n\n", "\t\r\n"])
def test_blank_text_is_an_empty_line(shorten, blank):
    assert shorten(blank) == ""


@pytest.mark.parametrize("shorten", [_text, _first_line], ids=["story", "dlq-list"])
def test_the_first_line_is_kept_without_its_blanks(shorten):
    assert shorten("  \n  shipped by hand\nsecond line") == "shipped by hand"
