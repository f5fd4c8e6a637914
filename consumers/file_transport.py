"""kombu's file transport, with each message written whole and claimed by exactly one consumer.

kombu writes a message straight into its final `.msg` name; a consumer polling the folder
can take the file before its bytes are in, read nothing, and lose the message until the
relay re-publishes it. Here a message is written under a name consumers ignore and then
renamed, which is atomic on one file system. kombu also claims a message by moving it to
the system's temp folder, a copy when that is another file system, so two workers could
both take it; here the claim is a rename inside the broker folder. And kombu reads an
exchange's bindings file, under a lock, for every message it routes; here it is read again
only when the file changed.
"""
from __future__ import annotations

import collections
import os
import uuid
from queue import Empty
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.json import dumps, loads


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = f"{final}.partial"  # ends in .partial, so no consumer picks it up
        try:
            with open(partial, "wb") as f:
                f.write(dumps(payload).encode())
            os.replace(partial, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc

    def get_table(self, exchange):
        # Read once a publish, the bindings file was a sixth of the relay's time. A binding only
        # ever adds to the file (kombu rewrites it whole, under a lock), so a change of its inode,
        # size or modification time says it must be read again; a file not there binds nothing.
        tables = self.__dict__.setdefault("_tables", {})
        try:
            stat = os.stat(self._exchange_file(exchange))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot open the bindings of exchange {exchange!r}") from exc
        seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = tables.get(exchange)
        if cached is None or cached[0] != seen:
            cached = tables[exchange] = (seen, super().get_table(exchange))
        return cached[1]

    def _get(self, queue):
        # The folder is listed once for many messages, not once a message: with a backlog of n
        # messages, listing and sorting it on every get cost O(n log n) each (a fifth of a
        # worker's time). A name another consumer claimed since the listing fails its rename.
        listed = self.__dict__.setdefault("_listed", {})
        names = listed.get(queue)
        if not names:
            suffix = f"{queue}.msg"
            names = listed[queue] = collections.deque(
                sorted(name for name in os.listdir(self.data_folder_in) if name.partition(".")[2] == suffix))
        while names:
            name = names.popleft()
            claimed = os.path.join(self.processed_folder, name)
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except OSError:
                continue  # another consumer claimed it first
            try:
                with open(claimed, "rb") as f:
                    payload = f.read()
                os.remove(claimed)
            except OSError as exc:
                raise filesystem.ChannelError(f"Cannot read file {claimed!r} from queue.") from exc
            return loads(payload.decode())
        raise Empty()


class Transport(filesystem.Transport):
    Channel = Channel
