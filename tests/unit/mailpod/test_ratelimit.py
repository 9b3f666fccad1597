"""Token buckets per IP and per /24 (/64)."""

from __future__ import annotations

from mailpod.config import RateLimit
from mailpod.ratelimit import ClientLimits, RateLimiter, network_key


def test_network_keys() -> None:
    assert network_key("192.0.2.77") == "192.0.2.0/24"
    assert network_key("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert network_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"


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


def test_bounded_memory() -> None:
    limiter = RateLimiter(RateLimit(count=1, seconds=60), max_keys=2)
    for key in ("a", "b", "c"):
        assert limiter.allow(key)
    assert limiter.allow("a")  # forgotten, so a full bucket again


def test_network_limit_catches_a_spread_out_client() -> None:
    now = [0.0]
    limits = ClientLimits(clock=lambda: now[0])
    per_ip, per_net = RateLimit(count=2, seconds=10), RateLimit(count=3, seconds=10)
    results = [limits.allow("c", f"192.0.2.{n}", per_ip, per_net) for n in range(5)]
    assert results == [True, True, True, False, False]
    assert limits.allow("c", "198.51.100.1", per_ip, per_net)
    assert limits.allow("c", "192.0.2.1", None, None)  # both limits off
