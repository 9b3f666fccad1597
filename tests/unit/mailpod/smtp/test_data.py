"""The bulk DATA reader against aiosmtpd's line-by-line algorithm, on crafted and random input."""

from __future__ import annotations

import asyncio
import random

import pytest

from mailpod.smtp.data import read_data

FOLLOWING = b"QUIT\r\n"  # pipelined after the data: must stay unread


def reference(stream: bytes, limit: int | None) -> tuple[bytes | None, bytes]:
    """aiosmtpd 1.4's smtp_DATA, without its line-length limit: (content or None if too much,
    what is left after the end-of-data line)."""
    lines: list[bytes] = []
    size = 0
    position = 0
    while True:
        end = stream.index(b"\r\n", position) + 2
        line = stream[position:end]
        position = end
        if line == b".\r\n":
            break
        size += len(line)
        lines.append(line[1:] if line.startswith(b".") else line)
    rest = stream[position:]
    if limit and size > limit:
        return None, rest
    return b"".join(lines), rest


async def run(
    stream: bytes, limit: int | None, pieces: list[int] | None = None, reader_limit: int = 64
) -> tuple[bytes | None, bytes]:
    reader = asyncio.StreamReader(limit=reader_limit)
    task = asyncio.ensure_future(read_data(reader, limit))
    position = 0
    for size in pieces or [len(stream)]:
        reader.feed_data(stream[position : position + size])
        position += size
        await asyncio.sleep(0)
    reader.feed_data(stream[position:])
    reader.feed_eof()
    content = await task
    return content, await reader.read()


@pytest.mark.parametrize(
    ("data", "content"),
    [
        (b".\r\n", b""),  # empty message: the DATA line's CRLF is the marker's first CRLF
        (b"\r\n.\r\n", b"\r\n"),
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"Subject: x\r\n\r\nbody\r\n.\r\n", b"Subject: x\r\n\r\nbody\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),  # transparency
        (b"a\r\n..b\r\n...\r\n.\r\n", b"a\r\n.b\r\n..\r\n"),
        (b".a\r\n.b\r\n.\r\n", b"a\r\nb\r\n"),  # an unstuffed leading dot goes, as in aiosmtpd
        (b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n"),  # bare LF before the dot: not the end
        (b"a\r.\r\nb\r\n.\r\n", b"a\r.\r\nb\r\n"),
        (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\nb\r\n"),  # (the hook rejects the bare LF)
        (b"a\r\n.\rb\r\n.\r\n", b"a\r\n\rb\r\n"),
        (b"a.\r\n.\r\n", b"a.\r\n"),
        (b"\r\n\r\n\r\n.\r\n", b"\r\n\r\n\r\n"),
        (b"x" * 300 + b"\r\n.\r\n", b"x" * 300 + b"\r\n"),  # beyond the reader's limit
    ],
)
async def test_end_of_data_and_transparency(data: bytes, content: bytes) -> None:
    assert reference(data + FOLLOWING, None) == (content, FOLLOWING)
    assert await run(data + FOLLOWING, None) == (content, FOLLOWING)
    # One byte at a time: every possible split of the marker.
    assert await run(data + FOLLOWING, None, [1] * len(data)) == (content, FOLLOWING)


async def test_size_limit_reads_to_the_end_and_discards() -> None:
    data = b"x" * 98 + b"\r\n"  # 100 bytes
    assert await run(data + b".\r\n" + FOLLOWING, 100) == (data, FOLLOWING)
    assert await run(data + b"y\r\n.\r\n" + FOLLOWING, 100) == (None, FOLLOWING)
    assert await run(data * 50 + b".\r\n" + FOLLOWING, 100, [7] * 700) == (None, FOLLOWING)
    assert await run(data * 50 + b".\r\n" + FOLLOWING, 0) == (data * 50, FOLLOWING)


async def test_waits_for_the_marker_without_reading_past_it() -> None:
    reader = asyncio.StreamReader(limit=64)
    task = asyncio.ensure_future(read_data(reader, None))
    for piece in (b"a\r\n", b".", b"\r", b"\nMAIL FROM:<x@y>\r\n"):
        assert not task.done()
        reader.feed_data(piece)
        await asyncio.sleep(0)
    assert await task == b"a\r\n"
    assert reader._buffer == b"MAIL FROM:<x@y>\r\n"  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", range(300))
async def test_random_input_matches_aiosmtpd(seed: int) -> None:
    rng = random.Random(seed)
    atoms = [b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.", b".\r\n", b"\r\n..", b"\0", b"xyz" * 9]
    body = b"".join(rng.choice(atoms) for _ in range(rng.randrange(0, 60)))
    stream = body + b"\r\n.\r\n" + FOLLOWING
    limit = rng.choice([None, 0, rng.randrange(1, 80)])
    expected = reference(stream, limit)
    pieces = [rng.randrange(1, 12) for _ in range(len(stream) // 3)]
    assert await run(stream, limit, pieces, reader_limit=rng.choice([8, 16, 1001])) == expected
    assert await run(stream, limit) == expected
