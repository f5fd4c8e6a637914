"""kombu's file transport, with each message written whole before a consumer can see it.

kombu writes a message straight into its final `.msg` name; a consumer polling the folder
can take the file before its bytes are in, read nothing, and lose the message until the
relay re-publishes it. Here a message is written under a name consumers ignore and then
renamed, which is atomic on one file system.
"""
from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.json import dumps


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


class Transport(filesystem.Transport):
    Channel = Channel
