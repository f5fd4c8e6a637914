"""Each log line leaves the process in one write, newline included: processes that share a log
(gunicorn's workers, honcho's pipe) can then never glue a line of one to a line of another."""
from __future__ import annotations

import json
import sys

import structlog

from models.logs import configure_logging


class RecordedStream:
    """A text stream that keeps each write() it is given, as a file keeps each system call's bytes together."""

    def __init__(self):
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_a_log_line_is_one_write_with_its_newline(monkeypatch):
    stream = RecordedStream()
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        configure_logging("json")
        log = structlog.get_logger("test_log_lines")
        log.info("first_thing", order_id="ord_1")
        log.warning("second_thing", detail="x" * 5000)
    finally:
        monkeypatch.undo()
        configure_logging("json")
    assert len(stream.writes) == 2
    assert all(write.endswith("\n") and write.count("\n") == 1 for write in stream.writes)
    assert [json.loads(write)["event"] for write in stream.writes] == ["first_thing", "second_thing"]
