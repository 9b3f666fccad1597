"""Outbound queue throughput: DKIM-sign (RSA-2048 + Ed25519), enqueue durably (fsync), deliver
to Postfix's smtp-sink through MX records served by a real PowerDNS.

    .venv/bin/python tests/bench/bench_queue.py [--messages N] [--size BYTES] [--dir DIR]
        [--sessions N] [--connections N]

Figures printed: the accept side (sign + fsync'd enqueue, what happens before the 250), the
delivery side (queue → smtp-sink, outcomes journalled) and end to end; plus signing alone.
Point --dir at the volume you care about: a tmpfs makes fsync free. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import shutil
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailpod.config import DkimAlgorithm, OutboundConfig, ResolverConfig
from mailpod.dkim import DkimKeyring, DkimSigner
from mailpod.dns import CachingResolver
from mailpod.outbound.deliver import Connector
from mailpod.queue.scheduler import QueueRunner
from mailpod.queue.store import QueuedMessage, QueuedRecipient, QueueStore, new_id
from tests.harness.ports import free_port
from tests.harness.powerdns import PowerDns
from tests.integration.test_outbound import SmtpSink

DOMAIN = "bench-queue.test"
SINK = "127.0.0.77"


def keyring() -> DkimKeyring:
    pem = serialization.PrivateFormat.PKCS8
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    return DkimKeyring(
        [
            DkimSigner.from_pem(
                "example.com",
                "rsa",
                DkimAlgorithm.RSA_SHA256,
                rsa_key.private_bytes(
                    serialization.Encoding.PEM, pem, serialization.NoEncryption()
                ),
            ),
            DkimSigner.from_pem(
                "example.com",
                "ed",
                DkimAlgorithm.ED25519_SHA256,
                ed_key.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption()),
            ),
        ]
    )


def message_bytes(n: int, size: int) -> bytes:
    header = (
        f"From: Alice <alice@example.com>\r\nTo: <r{n}@{DOMAIN}>\r\nSubject: bench {n}\r\n"
        f"Message-ID: <{n}.bench@example.com>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    return header + line * max(1, (size - len(header)) // len(line))


async def bench(args: argparse.Namespace, pdns: PowerDns, root: Path) -> None:
    port = free_port()
    pdns.create_zone(
        DOMAIN, [(DOMAIN, "MX", 300, [f"10 mx.{DOMAIN}."]), (f"mx.{DOMAIN}", "A", 300, [SINK])]
    )
    keys = keyring()
    bodies = [message_bytes(n, args.size) for n in range(args.messages)]

    started = time.perf_counter()
    for body in bodies[:200]:
        keys.sign(body)
    sign_rate = 200 / (time.perf_counter() - started)

    config = OutboundConfig(
        smtp_port=port,
        max_connections_per_destination=args.connections,
        max_messages_per_connection=100_000,
    )
    resolver = CachingResolver(ResolverConfig(nameservers=(pdns.nameserver,)))
    store = QueueStore(root / "queue")
    store.ensure()
    pool = concurrent.futures.ThreadPoolExecutor(16)
    runner = QueueRunner(
        store,
        Connector(config, resolver, "mail.example.com"),
        lambda: config,
        hostname="mail.example.com",
        io_pool=pool,
    )
    loop = asyncio.get_running_loop()
    with SmtpSink(SINK, port=port, dump=False):
        stop = asyncio.Event()
        if not args.phases:
            task = asyncio.create_task(runner.run(stop))
        counter = iter(range(args.messages))

        async def session() -> None:
            for n in counter:
                body = bodies[n]
                # Signing in a thread: OpenSSL drops the GIL for the RSA operation.
                signatures = await loop.run_in_executor(pool, keys.sign, body)
                message = QueuedMessage(
                    new_id(), "alice@example.com", time.time(), [QueuedRecipient(f"r{n}@{DOMAIN}")]
                )
                prepared = await loop.run_in_executor(
                    pool, store.prepare, message, [*signatures, body]
                )
                await loop.run_in_executor(pool, store.commit, prepared)
                runner.wake()

        started = time.perf_counter()
        await asyncio.gather(*(session() for _ in range(args.sessions)))
        accepted = time.perf_counter() - started
        if args.phases:  # delivery alone, from a full queue
            started = time.perf_counter()
            task = asyncio.create_task(runner.run(stop))
        while runner.delivered < args.messages:
            await asyncio.sleep(0.01)
            if time.perf_counter() - started > 600:
                break
        total = time.perf_counter() - started
        stop.set()
        await task
    print(f"messages: {args.messages} x {args.size} bytes, {args.sessions} sessions, "
          f"{args.connections} connections, queue on {root}")  # fmt: skip
    print(f"DKIM RSA-2048 + Ed25519 signing alone (one thread): {sign_rate:8.0f} msg/s")
    accept_rate = args.messages / accepted
    print(f"{'accept (sign + fsync-ed enqueue):':52}{accept_rate:8.0f} msg/s")
    what = "deliver alone (queue -> smtp-sink)" if args.phases else "end to end (accept + deliver)"
    print(f"{what + ':':52}{runner.delivered / total:8.0f} msg/s")
    print(f"delivered {runner.delivered}, deferred {runner.deferred}, failed {runner.failed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument(
        "--phases", action="store_true", help="accept everything first, then time delivery alone"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-queue-", dir=args.dir or Path.cwd()))
    try:
        with PowerDns() as pdns:
            asyncio.run(bench(args, pdns, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
