"""Token-bucket rate limits keyed by client IP and by its network (/24 for IPv4, /64 for IPv6):
a bot farm spread over one provider's block is limited as one client.

State lives in the worker process (no I/O per connection); with N workers the effective limit is
up to N times the configured one, since the kernel spreads connections across them."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from mailpod.config import RateLimit

MAX_KEYS: Final = 100_000  # memory bound: the least recently seen keys are forgotten first


def network_key(ip: str) -> str:
    """The client's /24 (IPv4) or /64 (IPv6), as text."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


class RateLimiter:
    """One limit over many keys: `allow(key)` takes a token if there is one."""

    def __init__(
        self,
        limit: RateLimit,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.limit = limit
        self._rate = limit.count / limit.seconds
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def allow(self, key: str) -> bool:
        now = self._clock()
        tokens, when = self._buckets.pop(key, (float(self.limit.count), now))
        tokens = min(float(self.limit.count), tokens + (now - when) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, key: str) -> float:
        """Seconds until `key` has a token again (0 if it has one)."""
        tokens, when = self._buckets.get(key, (float(self.limit.count), self._clock()))
        tokens = min(float(self.limit.count), tokens + (self._clock() - when) * self._rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate


class ClientLimits:
    """A limit per IP and one per network, kept across config reloads while unchanged."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._limiters: dict[str, RateLimiter] = {}

    def _limiter(self, name: str, limit: RateLimit) -> RateLimiter:
        limiter = self._limiters.get(name)
        if limiter is None or limiter.limit != limit:
            limiter = self._limiters[name] = RateLimiter(limit, self._clock)
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
