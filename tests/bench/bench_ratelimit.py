"""The cost of one rate-limit decision (a per-IP and a per-network bucket, as the MX takes one
at connect and one at MAIL FROM) in the pod-wide shared table, alone and with two processes
deciding at once; the bucket-table operation on its own; and counting one connection in and out
of the pod-wide open-connection table.

Run: .venv/bin/python -m tests.bench.bench_ratelimit   (prints figures; no timed assertions)
"""

from __future__ import annotations

import multiprocessing
import time

from mailpod.config import RateLimit
from mailpod.ratelimit import BucketTable, ClientLimits, ConnectionTable

DECISIONS = 200_000
LIMIT = RateLimit(count=1_000_000_000, seconds=1)  # never refuses: every call does full work
CLIENTS = [f"198.51.{n // 256 % 256}.{n % 256}" for n in range(5000)]


def _decisions(limits: ClientLimits, count: int) -> float:
    """Seconds for `count` decisions over a spread of clients."""
    started = time.perf_counter()
    for n in range(count):
        limits.allow("messages", CLIENTS[n % len(CLIENTS)], LIMIT, LIMIT)
    return time.perf_counter() - started


def _contending(
    table: BucketTable, count: int, results: multiprocessing.queues.Queue[float]
) -> None:
    results.put(_decisions(ClientLimits(table=table), count))


def main() -> None:
    table = BucketTable()
    best = min(_decisions(ClientLimits(table=table), DECISIONS) for _ in range(3))
    print(f"one process: {best / DECISIONS * 1e6:.2f} µs a decision (IP + /24 bucket)")
    context = multiprocessing.get_context("fork")
    results: multiprocessing.queues.Queue[float] = context.Queue()
    workers = [
        context.Process(target=_contending, args=(table, DECISIONS, results)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    seconds = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    print(
        f"two processes at once: {max(seconds) / DECISIONS * 1e6:.2f} µs a decision each, "
        f"{2 * DECISIONS / max(seconds):,.0f} decisions/s in all"
    )
    started = time.perf_counter()
    for n in range(DECISIONS):
        table.take(n + 1, 1e9, 1e9, 1.0)
    elapsed = time.perf_counter() - started
    print(f"table take (lock, probe, update, unlock): {elapsed / DECISIONS * 1e6:.2f} µs")
    connections = ConnectionTable(workers=2).worker(0)
    started = time.perf_counter()
    for n in range(DECISIONS):
        key = f"smtp|{CLIENTS[n % len(CLIENTS)]}"
        connections.acquire(key, 50)
        connections.release(key)
    elapsed = time.perf_counter() - started
    print(f"open-connection count, acquire + release: {elapsed / DECISIONS * 1e6:.2f} µs")


if __name__ == "__main__":
    main()
