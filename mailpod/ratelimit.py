"""Token-bucket rate limits keyed by client IP and by its network (/24 for IPv4, /64 for IPv6):
a bot farm spread over one provider's block is limited as one client.

The limits are pod-wide: the buckets live in one shared-memory table (`BucketTable`) that the
parent creates before it forks the workers, so every worker maps the same pages and the kernel
spreading connections over N workers does not multiply the limit by N. The table is a fixed
array of slots (fingerprint, tokens, last update) in stripes; a POSIX record lock on the stripe
serialises the read-modify-write of one bucket between processes. Record locks are dropped by
the kernel when a process dies, so a worker killed mid-update cannot wedge the others; the worst
it leaves is one bucket's count off. No I/O but two fcntl calls per decision.

Open connections per client are counted pod-wide the same way (`ConnectionTable`), with one
count per worker in each slot, so the supervisor can zero a dead worker's counts before it
replaces the worker.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import mmap
import os
import struct
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from mailpod.config import RateLimit

SLOTS: Final = 1 << 17  # 3 MiB shared; the memory bound replacing a per-worker LRU of keys
CONNECTION_SLOTS: Final = 1 << 14  # open connections of 16k clients at once
STRIPE_SLOTS: Final = 64  # the unit of locking; a key lives in one stripe
PROBES: Final = 8  # slots a key may occupy from its home slot on
_SLOT: Final = struct.Struct("<Qdd")  # fingerprint (0 = empty), tokens, last update


def network_key(ip: str) -> str:
    """The client's /24 (IPv4) or /64 (IPv6), as text."""
    # Peer addresses arrive as canonical text (from the socket or a parsed PROXY header): a
    # dotted quad needs no parsing, which is most of this function's cost per decision.
    if ip.count(".") == 3 and ip.replace(".", "").isdigit():
        return ip.rpartition(".")[0] + ".0/24"
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is None:
            return f"{ipaddress.IPv6Address(int(address) >> 64 << 64)}/64"
        address = address.ipv4_mapped
    return f"{ipaddress.IPv4Address(int(address) & 0xFFFFFF00)}/24"


def _shared_file(size: int) -> int:
    # memfd: no file system needed (the pod's root may be read-only); a deleted temporary file
    # elsewhere.
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("mailpod-ratelimit", os.MFD_CLOEXEC)
    else:  # pragma: no cover (not Linux)
        fd, path = tempfile.mkstemp(prefix="mailpod-ratelimit-")
        os.unlink(path)
    os.ftruncate(fd, size)
    return fd


class _StripedTable:
    """Fixed-size slots in shared memory, in stripes locked with POSIX record locks."""

    def __init__(self, slots: int, slot_size: int) -> None:
        stripe = min(STRIPE_SLOTS, slots)
        if slots % stripe:
            raise ValueError("slots must be a multiple of the stripe size")
        self._stripe = stripe
        self._stripes = slots // stripe
        self._slot_size = slot_size
        self._probes = min(PROBES, stripe)
        self._fd = _shared_file(slots * slot_size)
        self._map = mmap.mmap(self._fd, slots * slot_size)  # MAP_SHARED: stays shared on fork
        # The descriptor is what the stripe locks are taken on, so it lives as long as the table.
        weakref.finalize(self, os.close, self._fd)

    @contextmanager
    def _locked(self, stripe: int, shared: bool = False) -> Iterator[int]:
        """Hold the record lock on one stripe; yields the stripe's first byte."""
        length = self._stripe * self._slot_size
        base = stripe * length
        fcntl.lockf(self._fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, length, base)
        try:
            yield base
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, length, base)

    @contextmanager
    def _stripe_of(self, fingerprint: int, shared: bool = False) -> Iterator[list[int]]:
        """Lock the key's stripe; yields the offsets of the key's probe window, home slot
        first."""
        home = fingerprint % self._stripe
        with self._locked((fingerprint >> 32) % self._stripes, shared) as base:
            yield [
                base + (home + probe) % self._stripe * self._slot_size
                for probe in range(self._probes)
            ]


class BucketTable(_StripedTable):
    """Token buckets shared by every process forked after it was made.

    A full table forgets the least recently updated bucket of a key's probe window first; a
    forgotten bucket starts full again, which only errs towards letting a client in."""

    def __init__(self, slots: int = SLOTS) -> None:
        super().__init__(slots, _SLOT.size)

    def take(self, fingerprint: int, capacity: float, rate: float, now: float) -> bool:
        """Refill the bucket at `rate` tokens a second up to `capacity`, then take a token if
        there is one. `fingerprint` must not be 0."""
        with self._stripe_of(fingerprint) as window:
            offset, tokens = self._tokens(window, fingerprint, capacity, rate, now)
            allowed = tokens >= 1.0
            _SLOT.pack_into(
                self._map, offset, fingerprint, tokens - 1.0 if allowed else tokens, now
            )
            return allowed

    def peek(self, fingerprint: int, capacity: float, rate: float, now: float) -> float:
        """The bucket's tokens now (`capacity` for an unknown key), without taking one."""
        with self._stripe_of(fingerprint, shared=True) as window:
            return self._tokens(window, fingerprint, capacity, rate, now)[1]

    def _tokens(
        self, window: list[int], fingerprint: int, capacity: float, rate: float, now: float
    ) -> tuple[int, float]:
        """(offset of the key's slot, its tokens refilled up to now). An unknown key gets an
        empty slot or else the least recently updated one of its window, and a full bucket.
        Slots never become empty again, so the first empty one ends the search."""
        victim, oldest = -1, float("inf")
        for offset in window:
            found, tokens, when = _SLOT.unpack_from(self._map, offset)
            if found == fingerprint:
                return offset, min(capacity, tokens + max(0.0, now - when) * rate)
            if found == 0:
                return offset, capacity
            if when < oldest:
                victim, oldest = offset, when
        return victim, capacity


class ConnectionTable(_StripedTable):
    """Open connections per key, shared by every process forked after it was made: each slot
    holds the key's fingerprint and one count per worker. A slot whose counts are all zero is
    free for another key. When a key's whole probe window is taken by clients with open
    connections, the new key is let in uncounted (erring towards letting a client in)."""

    def __init__(self, workers: int, slots: int = CONNECTION_SLOTS) -> None:
        self._format = struct.Struct(f"<Q{workers}I")
        self.workers = workers
        super().__init__(slots, self._format.size)

    def worker(self, index: int) -> ConnectionCounter:
        """The counter a worker process uses: it writes only its own count in each slot."""
        if not 0 <= index < self.workers:
            raise ValueError(f"worker index {index} out of range")
        return ConnectionCounter(self, index)

    def clear_worker(self, index: int) -> None:
        """Zero a dead worker's counts (its connections died with it)."""
        for stripe in range(self._stripes):
            # Under the stripe's lock: a live worker's read-modify-write of a slot must not
            # write back the count being cleared.
            with self._locked(stripe) as base:
                for slot in range(self._stripe):
                    offset = base + slot * self._slot_size
                    found, *counts = self._format.unpack_from(self._map, offset)
                    if counts[index]:
                        counts[index] = 0
                        self._format.pack_into(self._map, offset, found, *counts)

    def acquire(self, key: str, index: int, limit: int | None) -> bool:
        """Count a connection of `key` for worker `index` unless `limit` are open pod-wide
        (None: count it whatever the number)."""
        fingerprint = _fingerprint(key)
        with self._stripe_of(fingerprint) as window:
            free = None
            for offset in window:
                found, *counts = self._format.unpack_from(self._map, offset)
                if found == fingerprint:
                    if limit is not None and sum(counts) >= limit:
                        return False
                    counts[index] += 1
                    self._format.pack_into(self._map, offset, found, *counts)
                    return True
                if free is None and not any(counts):
                    free = offset
            if free is not None:
                counts = [0] * self.workers
                counts[index] = 1
                self._format.pack_into(self._map, free, fingerprint, *counts)
            return True

    def release(self, key: str, index: int) -> None:
        """A connection `acquire` admitted for worker `index` has closed."""
        fingerprint = _fingerprint(key)
        with self._stripe_of(fingerprint) as window:
            for offset in window:
                found, *counts = self._format.unpack_from(self._map, offset)
                if found == fingerprint:
                    # Never below zero: the connection may have been let in uncounted, or its
                    # worker's counts cleared.
                    counts[index] = max(0, counts[index] - 1)
                    self._format.pack_into(self._map, offset, found, *counts)
                    return

    def open_connections(self, key: str) -> int:
        """The key's open connections in all workers (0 when uncounted)."""
        fingerprint = _fingerprint(key)
        with self._stripe_of(fingerprint, shared=True) as window:
            for offset in window:
                found, *counts = self._format.unpack_from(self._map, offset)
                if found == fingerprint:
                    return sum(counts)
        return 0


class ConnectionCounter:
    """One worker's view of a `ConnectionTable`."""

    def __init__(self, table: ConnectionTable, index: int) -> None:
        self.table = table
        self.index = index

    def acquire(self, key: str, limit: int | None) -> bool:
        """Count a new connection for `key` unless the pod already has `limit` open (None: no
        limit)."""
        return self.table.acquire(key, self.index, limit)

    def release(self, key: str) -> None:
        """A connection `acquire` admitted has closed."""
        self.table.release(key, self.index)


def _fingerprint(text: str) -> int:
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return value or 1


class RateLimiter:
    """One limit over many keys: `allow(key)` takes a token if there is one."""

    def __init__(
        self,
        limit: RateLimit,
        clock: Callable[[], float] = time.monotonic,
        table: BucketTable | None = None,
        name: str = "",
    ) -> None:
        self.limit = limit
        self._capacity = float(limit.count)
        self._rate = limit.count / limit.seconds
        self._clock = clock
        self._table = table if table is not None else BucketTable()
        # The limit is part of the key, so changing it starts fresh buckets in every worker at
        # once with no coordination; the old ones age out of the table.
        self._prefix = f"{name}|{limit.count}/{limit.seconds}|"

    def allow(self, key: str) -> bool:
        fingerprint = _fingerprint(self._prefix + key)
        return self._table.take(fingerprint, self._capacity, self._rate, self._clock())

    def retry_after(self, key: str) -> float:
        """Seconds until `key` has a token again (0 if it has one)."""
        fingerprint = _fingerprint(self._prefix + key)
        tokens = self._table.peek(fingerprint, self._capacity, self._rate, self._clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate


class ClientLimits:
    """A limit per IP and one per network, over one bucket table (pass the pod's shared table;
    without one, the limits are this process's own)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, table: BucketTable | None = None
    ) -> None:
        self._clock = clock
        self._table = table if table is not None else BucketTable()
        self._limiters: dict[str, RateLimiter] = {}

    def _limiter(self, name: str, limit: RateLimit) -> RateLimiter:
        limiter = self._limiters.get(name)
        if limiter is None or limiter.limit != limit:
            limiter = self._limiters[name] = RateLimiter(limit, self._clock, self._table, name)
        return limiter

    def allow(
        self, name: str, ip: str, per_ip: RateLimit | None, per_network: RateLimit | None
    ) -> bool:
        """Both limits must have a token; a refusal by the network limit still spends the IP's."""
        allowed = True
        if per_ip is not None:
            allowed = self._limiter(f"{name}/ip", per_ip).allow(ip)
        if per_network is not None and allowed:
            allowed = self._limiter(f"{name}/net", per_network).allow(network_key(ip))
        return allowed
