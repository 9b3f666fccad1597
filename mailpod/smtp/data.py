"""Reading an SMTP DATA section in bulk instead of line by line.

aiosmtpd reads DATA one line at a time (a readuntil() and a debug log call per line, ~18% of the
CPU per 10 KiB message); this reads up to the end-of-data marker in one call. Same results as
aiosmtpd's reader (tests/unit/mailpod/smtp/test_data.py compares them on random input), except
that lines longer than 1,000 octets are accepted, as Postfix does.

Only CRLF "." CRLF ends the data, the CRLF that ends the DATA command line counting as the first
CRLF (so ".\\r\\n" right after it is an empty message). A bare CR or LF, or a NUL, never ends or
splits anything here; the DATA hook rejects messages containing them (SMTP smuggling).
"""

from __future__ import annotations

import asyncio

END = b"\r\n.\r\n"
# A suffix of what was read that may be the start of an END still to be completed, longest first.
_PARTIAL_ENDS = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")


def _partial_end(tail: bytes) -> int:
    """How many of the last bytes read could be the start of an END: 0 to 4."""
    for partial in _PARTIAL_ENDS:
        if tail.endswith(partial):
            return len(partial)
    return 0


async def read_data(reader: asyncio.StreamReader, limit: int | None) -> bytes | None:
    """Read the data after the 354 reply, up to and including the end-of-data line.

    Returns the message without that line and with the transparency dots removed (RFC 5321
    §4.5.2), or None if it exceeded `limit` bytes (counted as aiosmtpd does: the data as sent,
    without the final ".\\r\\n"); an oversized message is still read to its end, but not kept.
    Never reads past the end-of-data line: pipelined commands after it stay in `reader`."""
    chunks: list[bytes] = []
    size = 0  # bytes read, the final ".\r\n" included
    keep = limit + 3 if limit else None
    tail = b"\r\n"  # the last bytes read (up to 4); at first, the DATA command line's CRLF
    while True:
        partial = _partial_end(tail)
        if partial:
            # The marker may have begun in what was already read: take only the bytes that would
            # complete it. There are at least that many before the end of the data, wherever the
            # marker is, so this never blocks on, or consumes, what follows the data.
            chunk = await reader.readexactly(len(END) - partial)
        else:
            # No marker can straddle the bytes already read, so the first END in the stream is
            # the end of the data.
            try:
                chunk = await reader.readuntil(END)
            except asyncio.LimitOverrunError as error:
                # No END in the first `consumed` bytes (it may still start right after them).
                chunk = await reader.read(error.consumed)
        size += len(chunk)
        if keep is None or size <= keep:
            chunks.append(chunk)
        elif chunks:
            chunks.clear()  # too large: read on to the end, but let the data go
        if len(chunk) >= len(END):
            ended, tail = chunk.endswith(END), chunk[-4:]
        else:  # the marker may straddle: look at it with the bytes read before
            window = tail + chunk
            ended, tail = window.endswith(END), window[-4:]
        if ended:
            break
    if limit and size - 3 > limit:
        return None
    data = b"".join(chunks)[:-3]  # the CRLF before the "." ends the last line: it stays
    data = data.replace(b"\r\n.", b"\r\n")
    return data[1:] if data[:1] == b"." else data
