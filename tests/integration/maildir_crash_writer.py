"""Deliver messages in a loop until killed, printing each id only once commit() has returned.

    python maildir_crash_writer.py <mail_root> <id prefix>

Run by test_maildir_crash.py, which SIGKILLs it at a random moment. Each message names its own
length and SHA-256, so a truncated or mixed-up file is detectable."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import sys
from pathlib import Path

from mailpod.pipeline import Envelope, LocalRecipient, Message
from mailpod.storage import MaildirStorage

CONCURRENCY = 4
RECIPIENTS = (
    LocalRecipient(rcpt="alice@example.com", mailbox="alice@example.com"),
    LocalRecipient(rcpt="postmaster@example.com", mailbox="alice@example.com"),  # a dupe
    LocalRecipient(rcpt="bob@example.com", mailbox="bob@example.com", folder="Junk"),
)


def message(message_id: str) -> Message:
    payload = os.urandom(int.from_bytes(os.urandom(2)) % 30_000 + 1).hex().encode()
    digest = hashlib.sha256(payload).hexdigest()
    head = f"Message-Id: <{message_id}>\r\nX-Length: {len(payload)}\r\nX-Sha256: {digest}\r\n\r\n"
    return Message(data=head.encode() + payload)


async def main(root: Path, prefix: str) -> None:
    storage = MaildirStorage(root)
    envelope = Envelope(session_id=prefix, client_ip="192.0.2.1", helo="t", mail_from="s@x.test")
    counter = itertools.count()

    async def loop(worker: int) -> None:
        while True:
            message_id = f"{prefix}-{worker}-{next(counter)}"
            delivery = await storage.start(envelope)
            for recipient in RECIPIENTS:
                await delivery.add_rcpt(recipient)
            await delivery.body(message(message_id))
            await delivery.commit()
            print(message_id, flush=True)

    await asyncio.gather(*(loop(worker) for worker in range(CONCURRENCY)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
