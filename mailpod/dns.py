"""The pod's one DNS resolver: async (never blocks the event loop), with timeouts, a bounded shared
cache honouring TTLs (negative answers included) and coalescing of identical concurrent queries.

SPF, DKIM, DMARC, DNSBL checks and outbound MX/MTA-STS/DANE lookups all go through the `Resolver`
Protocol, so a slow or dead DNS server costs each waiting session its timeout and nothing more.
Answers distinguish what the RFCs need: records, NXDOMAIN, no data (both count as "void" for SPF),
and temporary failure (SERVFAIL, timeout, refused), which raises `DnsTemporaryError`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from mailpod.config import ResolverConfig

DEFAULT_PORT: Final = 53
# A cached answer is kept at most this long whatever its TTL says, and negative/temporary answers
# at least briefly so a hammering client does not turn into a query storm.
MAX_CACHE_SECONDS: Final = 3600.0
MIN_NEGATIVE_SECONDS: Final = 5.0
TEMPFAIL_CACHE_SECONDS: Final = 2.0


class DnsTemporaryError(Exception):
    """SERVFAIL, REFUSED, a timeout or no reachable server: try again later (SPF temperror,
    SMTP 4xx, delivery retry)."""


class Status(StrEnum):
    FOUND = "found"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"


@dataclass(frozen=True)
class Answer:
    """The records of one name and type, as text in zone-file syntax (TXT strings joined, without
    quotes, as RFC 7208 §3.3 and RFC 6376 §3.6.2.2 read them)."""

    name: str
    rtype: str
    status: Status
    records: tuple[str, ...] = ()
    ttl: float = 0.0
    authenticated: bool = False
    """The server set AD (DNSSEC-validated); only meaningful with a validating resolver."""

    @property
    def void(self) -> bool:
        return self.status is not Status.FOUND


class Resolver(Protocol):
    async def query(self, name: str, rtype: str) -> Answer:
        """Raises DnsTemporaryError on temporary failure."""


def _nameservers(config: ResolverConfig) -> list[dns.nameserver.Nameserver]:
    servers: list[dns.nameserver.Nameserver] = []
    for entry in config.nameservers:
        host, port = entry, DEFAULT_PORT
        if entry.startswith("["):  # [v6]:port
            host, _, rest = entry[1:].partition("]")
            port = int(rest.removeprefix(":") or DEFAULT_PORT)
        elif entry.count(":") == 1:
            host, port_text = entry.split(":")
            port = int(port_text)
        servers.append(dns.nameserver.Do53Nameserver(host, port))
    return servers


def _record_text(rdata: object, rtype: str) -> str:
    if rtype == "TXT":
        strings: tuple[bytes, ...] = rdata.strings  # type: ignore[attr-defined]
        return b"".join(strings).decode("utf-8", "replace")
    return rdata.to_text()  # type: ignore[attr-defined, no-any-return]


class CachingResolver:
    """`Resolver` over dnspython's async stub resolver."""

    def __init__(self, config: ResolverConfig, clock: Callable[[], float] = time.monotonic) -> None:
        if config.nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = _nameservers(config)
        else:
            self._resolver = dns.asyncresolver.Resolver()
        # One overall deadline per query, retries across servers included.
        self._resolver.lifetime = config.timeout_seconds
        self._resolver.timeout = config.timeout_seconds
        # Ask for DNSSEC so a validating upstream reports AD (DANE needs it); answers stay small.
        self._resolver.use_edns(0, dns.flags.DO, 1232)
        self._resolver.cache = None
        self._capacity = config.cache_entries
        self._cache: OrderedDict[tuple[str, str], tuple[float, Answer | DnsTemporaryError]] = (
            OrderedDict()
        )
        self._inflight: dict[tuple[str, str], asyncio.Future[Answer]] = {}
        self._clock = clock
        self.queries_sent = 0

    async def query(self, name: str, rtype: str) -> Answer:
        key = (name.lower().rstrip("."), rtype.upper())
        cached = self._cache.get(key)
        if cached is not None:
            expires, value = cached
            if expires > self._clock():
                self._cache.move_to_end(key)
                if isinstance(value, DnsTemporaryError):
                    raise DnsTemporaryError(str(value))
                return value
            del self._cache[key]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            answer = await self._lookup(*key)
        except DnsTemporaryError as error:
            self._store(key, error, TEMPFAIL_CACHE_SECONDS)
            future.set_exception(error)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        except BaseException as error:
            future.set_exception(DnsTemporaryError(f"{key[0]} {key[1]}: {error!r}"))
            future.exception()
            raise
        finally:
            del self._inflight[key]
        ttl = answer.ttl if answer.status is Status.FOUND else max(answer.ttl, MIN_NEGATIVE_SECONDS)
        self._store(key, answer, min(ttl, MAX_CACHE_SECONDS))
        future.set_result(answer)
        return answer

    def _store(self, key: tuple[str, str], value: Answer | DnsTemporaryError, ttl: float) -> None:
        if self._capacity == 0 or ttl <= 0:
            return
        self._cache[key] = (self._clock() + ttl, value)
        self._cache.move_to_end(key)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    async def _lookup(self, name: str, rtype: str) -> Answer:
        self.queries_sent += 1
        try:
            result = await self._resolver.resolve(
                dns.name.from_text(name), dns.rdatatype.from_text(rtype), search=False
            )
        except dns.resolver.NXDOMAIN as error:
            return Answer(name, rtype, Status.NXDOMAIN, ttl=_negative_ttl(error))
        except dns.resolver.NoAnswer as error:
            response = error.response()  # type: ignore[no-untyped-call]
            return Answer(name, rtype, Status.NODATA, ttl=_soa_minimum(response))
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as error:
            raise DnsTemporaryError(f"{name} {rtype}: {error}") from None
        except dns.exception.DNSException as error:
            raise DnsTemporaryError(f"{name} {rtype}: {error}") from None
        response = result.response
        return Answer(
            name,
            rtype,
            Status.FOUND,
            tuple(_record_text(rdata, rtype.upper()) for rdata in result),
            ttl=float(result.rrset.ttl if result.rrset is not None else 0),
            authenticated=bool(response.flags & dns.flags.AD),
        )


def _soa_minimum(response: object) -> float:
    """RFC 2308: a negative answer is cached for min(SOA TTL, SOA MINIMUM)."""
    for rrset in getattr(response, "authority", ()):
        if rrset.rdtype == dns.rdatatype.SOA:
            return float(min(rrset.ttl, rrset[0].minimum))
    return 0.0


def _negative_ttl(error: dns.resolver.NXDOMAIN) -> float:
    for response in error.responses().values():  # type: ignore[no-untyped-call]
        return _soa_minimum(response)
    return 0.0
