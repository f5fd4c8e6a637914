"""The embedded transport never shows a consumer a message that is still being written."""
from __future__ import annotations

import json
import threading

import pytest
from kombu.transport import filesystem

from consumers import file_transport


def _torn_reads(channel_cls, folder, messages: int = 60, size: int = 2_000_000) -> int:
    """Write big messages while another thread reads every visible .msg file; count unreadable ones."""
    channel = channel_cls.__new__(channel_cls)
    channel.data_folder_out = str(folder)
    done = threading.Event()
    torn = []

    def read_everything():
        while not done.is_set():
            for path in folder.glob("*.msg"):
                try:
                    json.loads(path.read_bytes())
                except ValueError:
                    torn.append(path.name)
                except FileNotFoundError:
                    pass

    reader = threading.Thread(target=read_everything)
    reader.start()
    try:
        for i in range(messages):
            channel._put("q", {"body": "x" * size, "n": i})
    finally:
        done.set()
        reader.join()
    return len(torn)


def test_messages_appear_only_when_whole(tmp_path):
    assert _torn_reads(file_transport.Channel, tmp_path) == 0


def test_the_same_reader_catches_torn_writes_in_kombus_own_transport(tmp_path):
    # Shows the test above can fail: kombu's writer makes a file visible before its bytes are in.
    # A race, so up to five rounds for the reader to see it at least once.
    torn = 0
    for round_ in range(5):
        (tmp_path / str(round_)).mkdir()
        torn = _torn_reads(filesystem.Channel, tmp_path / str(round_))
        if torn:
            break
    assert torn > 0


def test_each_message_is_claimed_by_exactly_one_of_two_racing_consumers(tmp_path):
    from queue import Empty

    (tmp_path / "queue").mkdir()
    (tmp_path / "claimed").mkdir()

    def channel():
        ch = file_transport.Channel.__new__(file_transport.Channel)
        ch.data_folder_out = ch.data_folder_in = str(tmp_path / "queue")
        ch.processed_folder = str(tmp_path / "claimed")
        return ch

    for n in range(300):
        channel()._put("q", {"n": n})
    got = [[], []]

    def consume(into):
        ch = channel()
        while True:
            try:
                into.append(ch._get("q")["n"])
            except Empty:
                return

    threads = [threading.Thread(target=consume, args=(got[i],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got[0] + got[1]) == list(range(300))
    assert not list((tmp_path / "claimed").iterdir())


def test_a_backlog_is_listed_once_and_what_comes_after_the_listing_is_taken_too(tmp_path, monkeypatch):
    from queue import Empty

    (tmp_path / "queue").mkdir()
    (tmp_path / "claimed").mkdir()
    ch = file_transport.Channel.__new__(file_transport.Channel)
    ch.data_folder_out = ch.data_folder_in = str(tmp_path / "queue")
    ch.processed_folder = str(tmp_path / "claimed")
    listings = []
    listdir = file_transport.os.listdir
    monkeypatch.setattr(file_transport.os, "listdir", lambda path: listings.append(path) or listdir(path))

    for n in range(50):
        ch._put("q", {"n": n})
        ch._put("other", {"n": n})  # another queue's messages in the same folder are left alone
    assert sorted(ch._get("q")["n"] for _ in range(50)) == list(range(50))
    assert len(listings) == 1  # not once a message: that cost a worker O(n log n) per message
    for n in range(50, 55):
        ch._put("q", {"n": n})
    assert sorted(ch._get("q")["n"] for _ in range(5)) == list(range(50, 55))
    with pytest.raises(Empty):
        ch._get("q")
    assert len(listings) == 3
    assert len([name for name in (tmp_path / "queue").iterdir() if ".other." in name.name]) == 50


def test_a_binding_made_after_the_first_publish_gets_the_next_messages(tmp_path, monkeypatch):
    """The exchange's bindings are read once, not for every message, and read again once they change."""
    from kombu import Connection, Exchange, Queue

    folder = tmp_path / "broker"
    for sub in ("queue", "claimed", "control"):
        (folder / sub).mkdir(parents=True)
    options = {"data_folder_in": str(folder / "queue"), "data_folder_out": str(folder / "queue"),
               "processed_folder": str(folder / "claimed"), "control_folder": str(folder / "control")}
    exchange = Exchange("shop", type="direct")
    reads = []
    read_table = filesystem.Channel.get_table
    monkeypatch.setattr(filesystem.Channel, "get_table", lambda self, name: reads.append(name) or read_table(self, name))

    def connect():
        return Connection("filesystem://localhost//", transport=file_transport.Transport, transport_options=options)

    def taken(connection, queue) -> list[int]:
        got = []
        while (message := queue(connection.default_channel).get(no_ack=True)) is not None:
            got.append(message.payload["n"])
        return sorted(got)

    first = Queue("first", exchange, routing_key="stripe")
    second = Queue("second", exchange, routing_key="stripe")
    with connect() as publisher, connect() as other:
        first(publisher.default_channel).declare()
        producer = publisher.Producer(exchange=exchange)
        for n in range(3):
            producer.publish({"n": n}, routing_key="stripe")
        assert reads == ["shop"]  # once, not once a message
        second(other.default_channel).declare()  # another process binds a queue meanwhile
        producer.publish({"n": 3}, routing_key="stripe")
        assert reads == ["shop", "shop"]
        assert taken(publisher, first) == [0, 1, 2, 3]
        assert taken(other, second) == [3]
