"""Inbound throughput with every check on (SPF, DKIM, DMARC, ARC, HELO, rate limits, a DNSBL,
greylisting; DNS answered by a local PowerDNS, cache warm) against the same pod with checks off.

    .venv/bin/python -m tests.bench.bench_checks [--messages N] [--sessions S] [--workers W]

A Python asyncio client sends a DKIM-signed (RSA-2048), SPF-authorised, DMARC-aligned 10 KiB
message over S concurrent sessions, a new connection per message (as MTAs deliver to an MX),
to a real `mailpod run`. The client shares the machine's CPUs with the pod, equally in both runs.
Prints figures; asserts nothing (target: on >= 60 % of off).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from mailpod.config import DkimAlgorithm
from mailpod.dkim import DkimSigner, key_record, sign
from tests.harness.powerdns import PowerDns
from tests.integration.mailpod_harness import MailpodProcess

DOMAIN = "inb-bench.test"
SIZE = 10 * 1024


def _txt(value: str) -> str:
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


def _message() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    body = (b"x" * 76 + b"\r\n") * (SIZE // 78)
    data = (
        f"From: Bench <bench@{DOMAIN}>\r\nTo: alice@example.com\r\nSubject: bench\r\n"
        f"Message-ID: <bench@{DOMAIN}>\r\n\r\n"
    ).encode() + body
    signer = DkimSigner(DOMAIN, "b1", DkimAlgorithm.RSA_SHA256, key)
    _message.record = key_record(key)  # type: ignore[attr-defined]
    return b"".join(sign(data, [signer])) + data


async def _send(port: int, data: bytes) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:

        async def reply() -> bytes:
            while True:
                line = await reader.readline()
                if line[3:4] != b"-":
                    return line

        await reply()
        for command in (
            f"EHLO client.{DOMAIN}",
            f"MAIL FROM:<bounce@{DOMAIN}>",
            "RCPT TO:<alice@example.com>",
            "DATA",
        ):
            writer.write(command.encode() + b"\r\n")
            if (await reply())[:1] not in (b"2", b"3"):
                return False
        writer.write(data + b".\r\nQUIT\r\n")
        ok = (await reply()).startswith(b"250")
        await reply()
        return ok
    finally:
        writer.close()


async def _load(port: int, data: bytes, messages: int, sessions: int) -> tuple[float, int]:
    queue = iter(range(messages))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for _ in queue:
            if not await _send(port, data):
                failures += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(sessions)))
    return time.monotonic() - started, failures


def _start(root: Path, overrides: dict[str, Any], args: argparse.Namespace) -> MailpodProcess:
    root.mkdir()
    return MailpodProcess(root, workers=args.workers, overrides=overrides).start()


def _warm(pod: MailpodProcess, data: bytes, args: argparse.Namespace) -> None:
    asyncio.run(_load(pod.ports["smtp"], data, 100, args.sessions))  # DNS cache warm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = _message()
    with PowerDns() as pdns, tempfile.TemporaryDirectory(prefix="bench-checks-") as tmp:
        pdns.create_zone(
            DOMAIN,
            [
                (DOMAIN, "TXT", 300, [_txt("v=spf1 ip4:127.0.0.1 -all")]),
                (f"_dmarc.{DOMAIN}", "TXT", 300, [_txt("v=DMARC1; p=reject")]),
                (f"b1._domainkey.{DOMAIN}", "TXT", 300, [_txt(_message.record)]),  # type: ignore[attr-defined]
            ],
        )
        pdns.create_zone(
            "bl.inb-bench.test", [("2.0.0.127.bl.inb-bench.test", "A", 300, ["127.0.0.2"])]
        )
        resolver = {"nameservers": [pdns.nameserver], "timeout_seconds": 2.0}
        limits = {"max_message_bytes": 200_000, "max_connections_per_ip": 10_000}
        generous = {"count": 1_000_000, "seconds": 1}
        on = {
            "resolver": resolver,
            "limits": limits,
            "checks": {
                "exempt_networks": [],  # the load comes from 127.0.0.1: check it like anyone
                "rate_limits": {
                    "connections_per_ip": generous,
                    "connections_per_network": generous,
                    "messages_per_ip": generous,
                    "messages_per_network": generous,
                },
                "dnsbl": [{"zone": "bl.inb-bench.test"}],
                "greylisting": {"enabled": True, "delay_seconds": 1.0},
            },
        }
        off = {"resolver": resolver, "limits": limits, "checks": {"enabled": False}}
        pods = {name: _start(Path(tmp) / name, o, args) for name, o in (("off", off), ("on", on))}
        try:
            for pod in pods.values():
                _warm(pod, data, args)
            time.sleep(1.2)  # past the greylisting delay: the triplet is known from now on
            # Rounds alternate between the pods, and the best of each counts: other users of
            # the machine's CPUs slow some rounds down, never speed one up.
            best = {"off": 0.0, "on": 0.0}
            for round_number in range(1, args.rounds + 1):
                for name, pod in pods.items():
                    seconds, failures = asyncio.run(
                        _load(pod.ports["smtp"], data, args.messages, args.sessions)
                    )
                    rate = args.messages / seconds
                    best[name] = max(best[name], rate)
                    print(
                        f"round {round_number} checks {name:3}: {rate:7.1f} msg/s "
                        f"({args.messages} messages, {args.sessions} sessions, "
                        f"{args.workers} workers, {failures} refused)"
                    )
        finally:
            for pod in pods.values():
                pod.stop()
        print(f"best: off {best['off']:.1f} msg/s, on {best['on']:.1f} msg/s")
        ratio = best["on"] / best["off"]
        print(f"on / off: {ratio:.0%} (target >= 60 %)")


if __name__ == "__main__":
    main()
