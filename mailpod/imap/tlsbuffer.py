"""One TLS receive buffer per worker process instead of one per connection.

asyncio's SSLProtocol gives every TLS connection its own receive buffer of `max_size` bytes
(256 KiB by default), held for the connection's whole life, though it only ever holds bytes
between a socket read and their copy into the TLS object, within one event-loop callback
(`get_buffer`, `recv_into`, `buffer_updated`). With 1,000 idle IMAP connections that was most
of the worker's memory. `install()` makes asyncio build its TLS connections with a subclass
that shares one buffer per process (one event loop per worker: nothing else can use it in
between) and reads with asyncio's default sizes again.

Installed by each worker for all its TLS listeners (IMAP and SMTP alike): asyncio looks the
class up as `asyncio.sslproto.SSLProtocol` at every connection, which is how this hooks in.
"""

from __future__ import annotations

import asyncio.sslproto
from typing import Any

__all__ = ["install"]

READ_SIZE = 256 * 1024
"""asyncio's own default: what one socket read and one TLS read take at most."""

_buffer = bytearray(READ_SIZE)
_view = memoryview(_buffer)


class SharedBufferSSLProtocol(asyncio.sslproto.SSLProtocol):
    # What `__init__` allocates per connection: nothing (the instance then reads READ_SIZE).
    max_size = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_size = READ_SIZE  # type: ignore[misc]
        self._ssl_buffer = _buffer
        self._ssl_buffer_view = _view

    def get_buffer(self, n: int) -> memoryview:
        return _view


def install() -> None:
    """Make asyncio's TLS connections in this process share the receive buffer."""
    asyncio.sslproto.SSLProtocol = SharedBufferSSLProtocol  # type: ignore[misc]
