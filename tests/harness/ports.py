"""Loopback ports for the servers the tests start.

Asking the kernel for port 0 and releasing it is racy twice over: the kernel may hand the same
port to the next caller (two listeners of one mail pod got the same port and the pod failed to
bind), and any outgoing connection may take it as its source port before our server binds it.
Ports below the kernel's ephemeral range avoid both: nothing takes them implicitly, and this
process never hands one out twice."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = _EPHEMERAL_RANGE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _candidates() -> list[int]:
    low, high = _ephemeral_range()
    ports = [*range(_LOWEST, low), *range(high + 1, 65536)]
    return [port for port in ports if port not in _handed_out]


def _bindable(port: int) -> bool:
    """Free for both TCP and UDP (DNS servers take both)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A loopback port that is free now, that no outgoing connection will take, and that this
    test process has not handed out before."""
    candidates = _candidates()
    for port in random.sample(candidates, min(len(candidates), 2000)):
        if _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port outside the ephemeral range")
