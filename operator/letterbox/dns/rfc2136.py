"""RFC 2136 dynamic updates signed with TSIG (RFC 8945): BIND, Knot, PowerDNS and the many
hosted services that speak it. The zone is read by AXFR signed with the same key, and each
plan goes out as one UPDATE message, which the server applies atomically.

RFC 2136 adds and deletes single RRs, which is exactly the value-level change the plan asks
for: other values in the same RRset are never rewritten.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.tsigkeyring
import dns.update
import dns.xfr
import dns.zone

from letterbox.api.dnsrecord import RecordType, txt_strings
from letterbox.dns.provider import (
    Change,
    ChangeRefused,
    DnsProviderError,
    InvalidCredentials,
    RRset,
    ZoneNotFound,
    absolute,
    normalize_value,
)

DEFAULT_TIMEOUT = 10.0
_TSIG_ERRORS = (
    dns.tsig.PeerBadKey,
    dns.tsig.PeerBadSignature,
    dns.tsig.PeerBadTime,
    dns.tsig.PeerBadTruncation,
    dns.tsig.BadSignature,
    dns.tsig.BadTime,
)


def split_host_port(server: str, default_port: int = 53) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address."""
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        return host, int(rest.removeprefix(":") or default_port)
    if server.count(":") == 1:
        host, _, port = server.partition(":")
        return host, int(port)
    return server, default_port


async def resolve_address(host: str) -> str:
    """An IP address for `host` (dnspython sends to addresses, not names)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as error:
        raise DnsProviderError(f"cannot resolve DNS server {host}: {error}") from error
    return str(infos[0][4][0])


def txt_value(rdata: dns.rdata.Rdata) -> str:
    strings: tuple[bytes, ...] = rdata.strings  # type: ignore[attr-defined]
    return b"".join(strings).decode(errors="replace")


def to_rdata(rtype: RecordType, value: str) -> dns.rdata.Rdata:
    if rtype is RecordType.TXT:
        return dns.rdtypes.ANY.TXT.TXT(
            dns.rdataclass.IN, dns.rdatatype.TXT, [s.encode() for s in txt_strings(value)]
        )
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype.value), value)


def presentation(rdata: dns.rdata.Rdata) -> str:
    if rdata.rdtype == dns.rdatatype.TXT:
        return txt_value(rdata)
    return rdata.to_text()


class Rfc2136Provider:
    """`server` is `host[:port]` of the primary; `key_name`/`secret` the TSIG key (None for an
    unsigned server, which we never recommend)."""

    def __init__(
        self,
        server: str,
        *,
        key_name: str | None = None,
        secret: str | None = None,
        algorithm: str = "hmac-sha256",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.host, self.port = split_host_port(server)
        self.key_name = key_name
        self.algorithm = dns.name.from_text(algorithm)
        self.timeout = timeout
        self._keyring: dict[dns.name.Name, dns.tsig.Key] | None = None
        if key_name is not None:
            if not secret:
                raise InvalidCredentials(f"TSIG key {key_name} has an empty secret")
            try:
                self._keyring = dns.tsigkeyring.from_text({key_name: (algorithm, secret)})
            except Exception as error:  # binascii.Error, ValueError: not base64
                raise InvalidCredentials(
                    f"the TSIG secret of key {key_name} is not valid base64"
                ) from error
        # Exact rdata as listed, so a removal deletes what the server holds even when its TXT
        # strings are split differently from how we would split them.
        self._listed: dict[tuple[str, str, str], dns.rdata.Rdata] = {}

    def _key(self) -> str:
        return f"TSIG key {self.key_name}" if self.key_name else "no TSIG key"

    async def aclose(self) -> None:
        return None

    async def records(self, zone: str) -> list[RRset]:
        origin = dns.name.from_text(absolute(zone))
        holder = dns.zone.Zone(origin, relativize=False)
        query, _ = dns.xfr.make_query(
            holder,
            keyring=self._keyring,
            keyname=dns.name.from_text(self.key_name) if self.key_name else None,
            keyalgorithm=self.algorithm,
        )
        where = await resolve_address(self.host)
        try:
            await dns.asyncquery.inbound_xfr(
                where, holder, query, port=self.port, timeout=self.timeout, lifetime=self.timeout
            )
        except dns.xfr.TransferError as error:
            rcode = dns.rcode.to_text(error.rcode)
            if error.rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH):
                raise InvalidCredentials(
                    f"{self.host}:{self.port} refused the zone transfer of {absolute(zone)} "
                    f"({rcode}) with {self._key()}: allow AXFR to the key (BIND allow-transfer, "
                    "PowerDNS TSIG-ALLOW-AXFR) and check the key name, algorithm and secret"
                ) from error
            if error.rcode == dns.rcode.NOTZONE:
                raise ZoneNotFound(
                    f"{self.host}:{self.port} does not serve {absolute(zone)}"
                ) from error
            raise DnsProviderError(
                f"zone transfer of {absolute(zone)} from {self.host}:{self.port} failed: {rcode}"
            ) from error
        except _TSIG_ERRORS as error:
            raise InvalidCredentials(
                f"{self.host}:{self.port} rejected {self._key()} for the zone transfer of "
                f"{absolute(zone)}: {type(error).__name__}"
            ) from error
        except (dns.exception.Timeout, OSError, EOFError) as error:
            raise DnsProviderError(
                f"zone transfer of {absolute(zone)} from {self.host}:{self.port} failed: "
                f"{type(error).__name__} {error}"
            ) from error
        except dns.exception.FormError as error:
            if "TSIG" in str(error):
                raise InvalidCredentials(
                    f"{self.host}:{self.port} could not verify {self._key()} on the zone "
                    f"transfer of {absolute(zone)} (unsigned answer): check the key name, "
                    "algorithm and secret"
                ) from error
            raise DnsProviderError(
                f"{self.host}:{self.port} sent a malformed zone transfer: {error}"
            ) from error
        result: list[RRset] = []
        self._listed.clear()
        for name, rdataset in holder.iterate_rdatasets():
            owner = absolute(name.to_text())
            rtype = dns.rdatatype.to_text(rdataset.rdtype)
            values = []
            for rdata in rdataset:
                value = presentation(rdata)
                values.append(value)
                self._listed[owner, rtype, normalize_value(rtype, value)] = rdata
            result.append(RRset(owner, rtype, rdataset.ttl, tuple(values)))
        return result

    async def _key_works(self, origin: dns.name.Name, where: str) -> bool:
        """Whether the server takes an empty update signed with our key: tells a refused key
        from a refused change (both answer REFUSED)."""
        probe = dns.update.UpdateMessage(
            origin,
            keyring=self._keyring,
            keyname=dns.name.from_text(self.key_name) if self.key_name else None,
            keyalgorithm=self.algorithm,
        )
        try:
            response = await dns.asyncquery.tcp(probe, where, timeout=self.timeout, port=self.port)
        except (dns.exception.DNSException, OSError, EOFError):
            return False
        return response.rcode() == dns.rcode.NOERROR

    async def apply(self, zone: str, changes: Sequence[Change]) -> None:
        if not changes:
            return
        origin = dns.name.from_text(absolute(zone))
        update = dns.update.UpdateMessage(
            origin,
            keyring=self._keyring,
            keyname=dns.name.from_text(self.key_name) if self.key_name else None,
            keyalgorithm=self.algorithm,
        )
        for change in changes:
            name = dns.name.from_text(absolute(change.name))
            rtype = change.type.value
            for value in change.remove:
                listed = self._listed.get(
                    (absolute(change.name), rtype, normalize_value(rtype, value))
                )
                update.delete(name, listed if listed is not None else to_rdata(change.type, value))
            for value in change.add:
                update.add(name, change.ttl, to_rdata(change.type, value))
        where = await resolve_address(self.host)
        try:
            response = await dns.asyncquery.tcp(update, where, timeout=self.timeout, port=self.port)
        except _TSIG_ERRORS as error:
            raise InvalidCredentials(
                f"{self.host}:{self.port} rejected {self._key()} for an update of "
                f"{absolute(zone)}: {type(error).__name__}"
            ) from error
        except dns.exception.FormError as error:
            if "TSIG" not in str(error):
                raise DnsProviderError(
                    f"{self.host}:{self.port} answered the update with a malformed message: {error}"
                ) from error
            # A server that cannot verify our signature answers unsigned (RFC 8945 §5.2).
            raise InvalidCredentials(
                f"{self.host}:{self.port} could not verify {self._key()} on an update of "
                f"{absolute(zone)} (unsigned answer): check the key name, algorithm and secret"
            ) from error
        except (dns.exception.Timeout, OSError, EOFError) as error:
            raise DnsProviderError(
                f"update of {absolute(zone)} at {self.host}:{self.port} failed: "
                f"{type(error).__name__} {error}"
            ) from error
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        text = dns.rcode.to_text(rcode)
        if (
            rcode == dns.rcode.REFUSED
            and self._keyring is not None
            and await self._key_works(origin, where)
        ):
            raise ChangeRefused(
                f"{self.host}:{self.port} accepts {self._key()} but refused the update of "
                f"{absolute(zone)} ({text}); its log says why (BIND's integrity checks refuse, "
                "for example, an MX or SRV whose in-zone target has no A/AAAA record)"
            )
        if rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH):
            raise InvalidCredentials(
                f"{self.host}:{self.port} refused the update of {absolute(zone)} ({text}) "
                f"signed with {self._key()}: check the key name, algorithm and secret, and that "
                "the server allows updates with this key (BIND allow-update / update-policy, "
                "PowerDNS TSIG-ALLOW-DNSUPDATE)"
            )
        if rcode == dns.rcode.NOTZONE:
            raise ZoneNotFound(f"{self.host}:{self.port} does not serve {absolute(zone)}")
        raise DnsProviderError(
            f"update of {absolute(zone)} at {self.host}:{self.port} failed: {text}",
            temporary=rcode == dns.rcode.SERVFAIL,
        )
