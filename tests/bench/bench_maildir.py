"""Maildir delivery throughput: msgs/s for 1 and 10 concurrent deliveries, fsync included.

    .venv/bin/python tests/bench/bench_maildir.py [--dir DIR] [--messages N] [--size BYTES]

Each message goes to one of --mailboxes mailboxes (made beforehand, so creation is not timed).
Point --dir at the volume you care about: a tmpfs makes fsync free and the figure meaningless.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import time
from pathlib import Path

from mailpod.pipeline import Envelope, LocalRecipient, Message
from mailpod.storage import MaildirStorage

ENVELOPE = Envelope(session_id="bench", client_ip="192.0.2.1", helo="bench", mail_from="b@x.test")


async def deliver(storage: MaildirStorage, mailbox: str, message: Message) -> None:
    delivery = await storage.start(ENVELOPE)
    await delivery.add_rcpt(LocalRecipient(rcpt=mailbox, mailbox=mailbox))
    await delivery.body(message)
    await delivery.commit()


async def run(root: Path, concurrency: int, messages: int, size: int, mailboxes: int) -> float:
    storage = MaildirStorage(root)
    names = [f"user{i}@bench.test" for i in range(mailboxes)]
    header = b"Subject: bench\r\n\r\n"
    message = Message(data=header + b"x" * (size - len(header)))
    try:
        for name in names:
            await deliver(storage, name, message)
        counter = itertools.count()

        async def worker() -> None:
            while (n := next(counter)) < messages:
                await deliver(storage, names[n % mailboxes], message)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return messages / (time.perf_counter() - started)
    finally:
        storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to make the temp mail root")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--mailboxes", type=int, default=100)
    args = parser.parse_args()
    print(f"pid {os.getpid()}: {args.messages} messages of {args.size} bytes, fsync on")
    for concurrency in (1, 10):
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-maildir-") as root:
            rate = asyncio.run(
                run(Path(root), concurrency, args.messages, args.size, args.mailboxes)
            )
        print(f"concurrency {concurrency:>2}: {rate:8.0f} msgs/s")


if __name__ == "__main__":
    main()
