"""Token buckets per IP and per /24 (/64), in a table shared across forked processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable

from mailpod.config import RateLimit
from mailpod.ratelimit import (
    BucketTable,
    ClientLimits,
    ConnectionCounter,
    ConnectionTable,
    RateLimiter,
    network_key,
)


def test_network_keys() -> None:
    assert network_key("192.0.2.77") == "192.0.2.0/24"
    assert network_key("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert network_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert network_key("2001:db8::1") == "2001:db8::/64"


def test_bucket_allows_a_burst_then_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(RateLimit(count=3, seconds=3), clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # keys are independent
    assert abs(limiter.retry_after("a") - 1.0) < 1e-9
    now[0] = 1.0
    assert limiter.allow("a") and not limiter.allow("a")
    now[0] = 100.0
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]  # capped at 3


def test_bounded_memory_forgets_the_least_recently_updated_key() -> None:
    now = [0.0]
    # One stripe of 8 slots: every key lands in the same probe window.
    table = BucketTable(slots=8)
    limiter = RateLimiter(RateLimit(count=1, seconds=60), lambda: now[0], table)
    keys = [f"k{n}" for n in range(9)]
    for key in keys:
        now[0] += 1
        assert limiter.allow(key)
    # k0 was updated longest ago and gave its slot to k8: it starts full again; the others
    # are still remembered.
    assert limiter.allow("k0")
    assert not any(limiter.allow(key) for key in keys[2:])


def test_a_changed_limit_starts_fresh_buckets() -> None:
    table = BucketTable(slots=64)
    strict = RateLimiter(RateLimit(count=1, seconds=60), table=table, name="x")
    assert strict.allow("a") and not strict.allow("a")
    looser = RateLimiter(RateLimit(count=2, seconds=60), table=table, name="x")
    assert looser.allow("a") and looser.allow("a") and not looser.allow("a")


def test_network_limit_catches_a_spread_out_client() -> None:
    now = [0.0]
    limits = ClientLimits(clock=lambda: now[0])
    per_ip, per_net = RateLimit(count=2, seconds=10), RateLimit(count=3, seconds=10)
    results = [limits.allow("c", f"192.0.2.{n}", per_ip, per_net) for n in range(5)]
    assert results == [True, True, True, False, False]
    assert limits.allow("c", "198.51.100.1", per_ip, per_net)
    assert limits.allow("c", "192.0.2.1", None, None)  # both limits off


def _hammer(table: BucketTable, start: multiprocessing.synchronize.Event, queue: object) -> None:
    limiter = RateLimiter(RateLimit(count=3000, seconds=1e9), table=table)
    start.wait()
    allowed = sum(limiter.allow("one client") for _ in range(2000))
    queue.put(allowed)  # type: ignore[attr-defined]


def _race(target: Callable[..., None], tables: list[object]) -> list[int]:
    """Fork one process per entry of `tables`, start them at once, and collect what each of
    them puts on the queue."""
    context = multiprocessing.get_context("fork")
    start, queue = context.Event(), context.Queue()
    workers = [context.Process(target=target, args=(table, start, queue)) for table in tables]
    for worker in workers:
        worker.start()
    start.set()
    counts = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    return counts


def test_processes_forked_after_the_table_share_one_limit_exactly() -> None:
    """Four processes race for one bucket of 3,000 tokens with 8,000 attempts: exactly 3,000
    win (the stripe lock loses no update), however the attempts interleave."""
    table = BucketTable(slots=1024)
    counts = _race(_hammer, [table] * 4)
    assert sum(counts) == 3000, counts
    assert len([c for c in counts if c]) >= 2  # at most 2,000 each: they shared the bucket
    # The parent sees what its children spent.
    assert not RateLimiter(RateLimit(count=3000, seconds=1e9), table=table).allow("one client")


def test_open_connections_are_limited_over_all_workers_and_a_dead_worker_is_forgotten() -> None:
    table = ConnectionTable(workers=2, slots=64)
    first, second = table.worker(0), table.worker(1)
    assert first.acquire("smtp|192.0.2.1", 3) and second.acquire("smtp|192.0.2.1", 3)
    assert first.acquire("smtp|192.0.2.1", 3)
    assert not second.acquire("smtp|192.0.2.1", 3)
    assert second.acquire("smtp|192.0.2.2", 3)  # keys are independent
    second.release("smtp|192.0.2.1")
    assert table.open_connections("smtp|192.0.2.1") == 2
    assert second.acquire("smtp|192.0.2.1", 3)
    table.clear_worker(0)  # the first worker died with its two connections
    assert table.open_connections("smtp|192.0.2.1") == 1
    assert first.acquire("smtp|192.0.2.1", 3) and first.acquire("smtp|192.0.2.1", 3)
    assert not first.acquire("smtp|192.0.2.1", 3)
    assert first.acquire("smtp|192.0.2.1", None)  # no limit: counted anyway
    assert table.open_connections("smtp|192.0.2.1") == 4


def test_a_full_window_lets_a_new_client_in_uncounted_and_counts_never_go_negative() -> None:
    table = ConnectionTable(workers=1, slots=8)  # one window of 8 slots for every key
    counter = table.worker(0)
    for n in range(8):
        assert counter.acquire(f"k{n}", 1)
    assert counter.acquire("new", 1) and counter.acquire("new", 1)  # no slot: not counted
    assert table.open_connections("new") == 0
    counter.release("new")
    counter.release("k0")
    counter.release("k0")  # a release too many leaves the count at 0
    assert table.open_connections("k0") == 0
    assert counter.acquire("new", 1)  # k0's slot is free again
    assert not counter.acquire("new", 1)


def _hold(
    counter: ConnectionCounter, start: multiprocessing.synchronize.Event, queue: object
) -> None:
    start.wait()
    admitted = sum(counter.acquire("one client", 50) for _ in range(40))
    queue.put(admitted)  # type: ignore[attr-defined]


def test_forked_workers_share_one_connection_limit_exactly() -> None:
    table = ConnectionTable(workers=3, slots=1024)
    counts = _race(_hold, [table.worker(index) for index in range(3)])
    assert sum(counts) == 50, counts
    assert table.open_connections("one client") == 50
    assert not table.worker(0).acquire("one client", 50)
