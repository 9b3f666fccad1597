"""SPF (RFC 7208): check_host() over the pod's async Resolver, for MAIL FROM and HELO.

Every DNS question goes through `mailpod.dns.Resolver` (cached, coalesced, with timeouts), so an
SPF evaluation never blocks the event loop. The record is parsed completely before evaluation
(§4.6: a syntax error anywhere is a permerror), DNS-querying terms are limited to 10 and void
lookups to 2 (§4.6.4), and DNS failures become temperror (§2.6.6). Section numbers below are RFC
7208's.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from mailpod.dns import Answer, DnsTemporaryError, Resolver

LOOKUP_LIMIT: Final = 10  # §4.6.4: include, a, mx, ptr, exists, redirect
VOID_LIMIT: Final = 2  # §4.6.4: the third void lookup is a permerror
MX_ADDRESS_LIMIT: Final = 10  # §4.6.4: address lookups per mx mechanism
PTR_NAME_LIMIT: Final = 10  # §4.6.4: names used from one PTR answer
MAX_DOMAIN: Final = 253

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SpfResult(StrEnum):
    NONE = "none"
    NEUTRAL = "neutral"
    PASS = "pass"  # noqa: S105 (an RFC result name, not a password)
    FAIL = "fail"
    SOFTFAIL = "softfail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True)
class SpfVerdict:
    """The outcome for one identity ("mailfrom" or "helo") of one transaction."""

    result: SpfResult
    identity: str
    domain: str
    """The domain checked ("" when there was none to check)."""
    explanation: str = ""
    """For fail: the domain's exp= text, else empty."""
    reason: str = ""
    """Why, for logs and the Authentication-Results comment."""


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


_QUALIFIERS: Final = {
    "+": SpfResult.PASS,
    "-": SpfResult.FAIL,
    "~": SpfResult.SOFTFAIL,
    "?": SpfResult.NEUTRAL,
}
_MECHANISMS: Final = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_DNS_MECHANISMS: Final = frozenset({"include", "a", "mx", "ptr", "exists"})
_MODIFIER: Final = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]*)=(.*)$", re.DOTALL)
_MECHANISM: Final = re.compile(r"^([+\-~?]?)([A-Za-z][A-Za-z0-9_.-]*)(.*)$", re.DOTALL)
# §7.1 macro-expand / macro-literal (visible ASCII but "%"); checked on the unexpanded text.
_MACRO_STRING: Final = re.compile(r"^(?:%\{[A-Za-z][0-9]*r?[.\-+,/_=]*\}|%%|%_|%-|[!-$&-~])*$")
_MACRO: Final = re.compile(r"%\{([A-Za-z])([0-9]*)(r?)([.\-+,/_=]*)\}|%%|%_|%-|%")
_MACRO_LETTER: Final = re.compile(r"%\{([A-Za-z])")
# §7.1 domain-end: "." toplabel ["."] or a macro-expand.
_TOPLABEL_END: Final = re.compile(
    r"\.(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])\.?$"
)
_CIDR: Final = re.compile(r"^(.*?)(?:/(0|[1-9][0-9]{0,2}))?(?://(0|[1-9][0-9]{0,2}))?$", re.DOTALL)


@dataclass(frozen=True)
class _Term:
    qualifier: SpfResult
    name: str
    domain_spec: str | None = None
    cidr4: int = 32
    cidr6: int = 128
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


@dataclass(frozen=True)
class _Record:
    terms: tuple[_Term, ...]
    redirect: str | None
    exp: str | None


def _check_domain_spec(spec: str) -> str:
    if not spec or not _MACRO_STRING.match(spec):
        raise _PermError(f"invalid domain-spec {spec!r}")
    for letter in _MACRO_LETTER.findall(spec):
        if letter.lower() not in "slodipvh":  # §7.1: c, r and t only in explanation text
            raise _PermError(f"macro %{{{letter}}} is not allowed in a domain-spec")
    if not spec.endswith("}") and not _TOPLABEL_END.search(spec):
        raise _PermError(f"domain-spec {spec!r} does not end in a top label")
    return spec


@functools.lru_cache(maxsize=4096)  # records repeat across messages; parsing is pure
def _parse(text: str) -> _Record:
    """§4.6 / §12: the whole record, or _PermError."""
    if not text.isascii():
        raise _PermError("non-ASCII SPF record")  # §3.1: 7-bit ASCII only
    terms: list[_Term] = []
    redirect: str | None = None
    exp: str | None = None
    for word in text.split(" ")[1:]:
        if not word:
            continue  # §4.6.1: terms are separated by one or more spaces
        if not word.isprintable():
            raise _PermError(f"control character in term {word!r}")
        modifier = _MODIFIER.match(word)
        if modifier:
            name, value = modifier.group(1).lower(), modifier.group(2)
            if name in ("redirect", "exp"):
                _check_domain_spec(value)
                if (redirect if name == "redirect" else exp) is not None:
                    raise _PermError(f"{name}= given twice")  # §6
                if name == "redirect":
                    redirect = value
                else:
                    exp = value
            elif not _MACRO_STRING.match(value):
                raise _PermError(f"unknown modifier {name} has an invalid value")
            continue
        terms.append(_parse_mechanism(word))
    return _Record(tuple(terms), redirect, exp)


def _parse_mechanism(word: str) -> _Term:
    match = _MECHANISM.match(word)
    if not match:
        raise _PermError(f"unknown term {word!r}")
    qualifier, name, rest = (
        _QUALIFIERS.get(match.group(1), SpfResult.PASS),
        match.group(2),
        match.group(3),
    )
    name = name.lower()
    if name not in _MECHANISMS:
        raise _PermError(f"unknown mechanism {name!r}")
    if name == "all":
        if rest:
            raise _PermError("all takes no argument")
        return _Term(qualifier, name)
    if name in ("ip4", "ip6"):
        if not rest.startswith(":"):
            raise _PermError(f"{name} needs an address")
        address, _, length = rest[1:].partition("/")
        try:
            if name == "ip4":
                if length and not re.fullmatch(r"0|[1-9][0-9]?", length):
                    raise ValueError(length)
                network: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network(
                    f"{ipaddress.IPv4Address(address)}/{length or 32}", strict=False
                )
            else:
                if length and not re.fullmatch(r"0|[1-9][0-9]{0,2}", length):
                    raise ValueError(length)
                network = ipaddress.IPv6Network(
                    f"{ipaddress.IPv6Address(address)}/{length or 128}", strict=False
                )
        except ValueError as error:
            raise _PermError(f"invalid {name} network {rest[1:]!r}") from error
        return _Term(qualifier, name, network=network)
    spec_text, cidr4, cidr6 = rest, 32, 128
    if name in ("a", "mx"):
        cidr = _CIDR.match(rest)
        assert cidr is not None  # every string matches
        spec_text = cidr.group(1)
        if cidr.group(2) is not None:
            cidr4 = int(cidr.group(2))
        if cidr.group(3) is not None:
            cidr6 = int(cidr.group(3))
        if cidr4 > 32 or cidr6 > 128:
            raise _PermError(f"invalid CIDR length in {word!r}")
    domain_spec: str | None = None
    if spec_text:
        if not spec_text.startswith(":"):
            raise _PermError(f"invalid mechanism {word!r}")
        domain_spec = _check_domain_spec(spec_text[1:])
    elif name in ("include", "exists"):
        raise _PermError(f"{name} needs a domain")
    return _Term(qualifier, name, domain_spec, cidr4, cidr6)


def _valid_domain(domain: str) -> bool:
    """§4.3: a multi-label name with no empty or over-long labels."""
    labels = domain.rstrip(".").split(".")
    return (
        len(labels) > 1
        and all(0 < len(label) <= 63 for label in labels)
        and len(domain.rstrip(".")) <= MAX_DOMAIN
    )


def _truncate(domain: str) -> str:
    """§7.3: drop labels from the left until the name fits."""
    domain = domain.rstrip(".")
    while len(domain) > MAX_DOMAIN and "." in domain:
        domain = domain.split(".", 1)[1]
    return domain


def _reverse_name(ip: IpAddress) -> str:
    if isinstance(ip, ipaddress.IPv4Address):
        return ".".join(reversed(str(ip).split("."))) + ".in-addr.arpa"
    return ".".join(reversed(ip.exploded.replace(":", ""))) + ".ip6.arpa"


@dataclass
class _Evaluation:
    resolver: Resolver
    ip: IpAddress
    sender: str
    helo: str
    receiver: str
    lookups: int = 0
    voids: int = 0
    validated_name: str | None = field(default=None)

    # --- DNS with the §4.6.4 counters -----------------------------------------------------

    async def query(self, name: str, rtype: str, *, count_void: bool = True) -> Answer:
        try:
            answer = await self.resolver.query(name, rtype)
        except DnsTemporaryError as error:
            raise _TempError(str(error)) from None
        if answer.void and count_void:
            self.voids += 1
            if self.voids > VOID_LIMIT:
                raise _PermError(f"more than {VOID_LIMIT} void lookups")
        return answer

    def count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > LOOKUP_LIMIT:
            raise _PermError(f"more than {LOOKUP_LIMIT} DNS-querying terms")

    async def addresses(self, name: str, *, count_void: bool = True) -> list[IpAddress]:
        rtype = "A" if isinstance(self.ip, ipaddress.IPv4Address) else "AAAA"
        answer = await self.query(name, rtype, count_void=count_void)
        found: list[IpAddress] = []
        for record in answer.records:
            try:
                found.append(ipaddress.ip_address(record))
            except ValueError:
                continue
        return found

    # --- §4 check_host() ---------------------------------------------------------------------

    async def check_host(self, domain: str) -> tuple[SpfResult, str, str]:
        """(result, explanation, reason)."""
        domain = domain.rstrip(".")
        if not _valid_domain(domain):
            return SpfResult.NONE, "", f"{domain!r} is not a usable domain name"
        try:
            answer = await self.query(domain, "TXT", count_void=False)
        except _TempError as error:
            return SpfResult.TEMPERROR, "", str(error)
        records = [
            r for r in answer.records if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")
        ]
        if not records:
            return SpfResult.NONE, "", f"no SPF record at {domain}"
        if len(records) > 1:
            return SpfResult.PERMERROR, "", f"{len(records)} SPF records at {domain}"  # §4.5
        try:
            record = _parse(records[0])
        except _PermError as error:
            return SpfResult.PERMERROR, "", f"{domain}: {error}"
        try:
            return await self._evaluate(domain, record)
        except _PermError as error:
            return SpfResult.PERMERROR, "", f"{domain}: {error}"
        except _TempError as error:
            return SpfResult.TEMPERROR, "", f"{domain}: {error}"

    async def _evaluate(self, domain: str, record: _Record) -> tuple[SpfResult, str, str]:
        for term in record.terms:
            if term.name in _DNS_MECHANISMS:
                self.count_lookup()
            if await self._matches(term, domain):
                explanation = ""
                if term.qualifier is SpfResult.FAIL and record.exp is not None:
                    explanation = await self._explanation(record.exp, domain)
                return term.qualifier, explanation, f"{domain}: matched {term.name}"
        # §6.1: redirect only applies when nothing matched; "all" would always have matched.
        if record.redirect is not None:
            self.count_lookup()
            target = _truncate(await self.expand(record.redirect, domain))
            result, explanation, reason = await self.check_host(target)
            if result is SpfResult.NONE:
                return SpfResult.PERMERROR, "", f"{domain}: redirect to {target} without SPF"
            return result, explanation, reason
        return SpfResult.NEUTRAL, "", f"{domain}: no mechanism matched"  # §4.7

    async def _target(self, term: _Term, domain: str) -> str:
        if term.domain_spec is None:
            return domain
        return _truncate(await self.expand(term.domain_spec, domain))

    async def _matches(self, term: _Term, domain: str) -> bool:
        name = term.name
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            assert term.network is not None
            return self.ip.version == term.network.version and self.ip in term.network
        target = await self._target(term, domain)
        if name == "include":
            result, _, reason = await self.check_host(target)
            if result is SpfResult.PASS:
                return True
            if result is SpfResult.TEMPERROR:
                raise _TempError(f"include:{target}: {reason}")
            if result in (SpfResult.PERMERROR, SpfResult.NONE):  # §5.2 table
                raise _PermError(f"include:{target}: {result}: {reason}")
            return False
        if not _valid_domain(target):
            # A name that cannot exist cannot match; it still counts as a void lookup.
            return False
        if name == "a":
            return self._in(await self.addresses(target), term)
        if name == "mx":
            answer = await self.query(target, "MX")
            hosts = [r.split()[-1].rstrip(".") for r in answer.records if r.split()]
            if len(hosts) > MX_ADDRESS_LIMIT:
                raise _PermError(f"mx:{target} has more than {MX_ADDRESS_LIMIT} MX records")
            for host in hosts:
                if host and self._in(await self.addresses(host, count_void=False), term):
                    return True
            return False
        if name == "exists":
            return bool((await self.query(target, "A")).records)  # §5.7: always A
        if name == "ptr":
            return await self._ptr_matches(target)
        raise _PermError(f"unknown mechanism {name}")  # unreachable: the parser refuses it

    def _in(self, addresses: list[IpAddress], term: _Term) -> bool:
        length = term.cidr4 if isinstance(self.ip, ipaddress.IPv4Address) else term.cidr6
        for address in addresses:
            if address.version == self.ip.version:
                network = ipaddress.ip_network(f"{address}/{length}", strict=False)
                if self.ip in network:
                    return True
        return False

    async def _validated_names(self) -> list[str]:
        """§5.5: PTR names whose own addresses include the client IP."""
        try:
            answer = await self.query(_reverse_name(self.ip), "PTR", count_void=False)
        except _TempError:
            return []  # §5.5: a DNS error while doing the PTR lookup does not match
        names = []
        for record in answer.records[:PTR_NAME_LIMIT]:
            name = record.rstrip(".")
            try:
                if _valid_domain(name) and self.ip in await self.addresses(name, count_void=False):
                    names.append(name)
            except _TempError:
                continue
        return names

    async def _ptr_matches(self, target: str) -> bool:
        target = target.lower()
        for name in await self._validated_names():
            lowered = name.lower()
            if lowered == target or lowered.endswith("." + target):
                return True
        return False

    async def _explanation(self, exp_spec: str, domain: str) -> str:
        """§6.2: any failure to build it just means no explanation."""
        try:
            target = _truncate(await self.expand(exp_spec, domain))
            if not _valid_domain(target):
                return ""
            answer = await self.resolver.query(target, "TXT")
            if len(answer.records) != 1:
                return ""
            text = answer.records[0]
            if not text.isascii() or not _MACRO_STRING.match(text.replace(" ", "!")):
                return ""
            return await self.expand(text, domain, explanation=True)
        except (DnsTemporaryError, _PermError, _TempError):
            return ""

    # --- §7 macros -------------------------------------------------------------------------

    async def expand(self, text: str, domain: str, *, explanation: bool = False) -> str:
        out: list[str] = []
        position = 0
        for match in _MACRO.finditer(text):
            out.append(text[position : match.start()])
            position = match.end()
            macro = match.group(0)
            if macro == "%%":
                out.append("%")
            elif macro == "%_":
                out.append(" ")
            elif macro == "%-":
                out.append("%20")
            elif macro == "%":
                raise _PermError(f"lone % in {text!r}")
            else:
                out.append(await self._macro(match, domain, explanation))
        out.append(text[position:])
        return "".join(out)

    async def _macro(self, match: re.Match[str], domain: str, explanation: bool) -> str:
        letter, digits, reverse, delimiters = match.groups()
        lower = letter.lower()
        local, _, sender_domain = self.sender.rpartition("@")
        v4 = isinstance(self.ip, ipaddress.IPv4Address)
        if lower == "s":
            value = self.sender
        elif lower == "l":
            value = local
        elif lower == "o":
            value = sender_domain
        elif lower == "d":
            value = domain
        elif lower == "i":
            value = str(self.ip) if v4 else ".".join(self.ip.exploded.replace(":", ""))
        elif lower == "p":
            value = await self._p_macro(domain)
        elif lower == "v":
            value = "in-addr" if v4 else "ip6"
        elif lower == "h":
            value = self.helo
        elif lower in ("c", "r", "t") and explanation:  # §7.2: only in exp= text
            value = {"c": str(self.ip), "r": self.receiver or "unknown"}.get(
                lower, str(int(time.time()))
            )
        else:
            raise _PermError(f"unknown macro letter %{{{letter}}}")
        if digits == "0":
            raise _PermError("macro transformer 0")
        parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
        if reverse:
            parts.reverse()
        if digits:
            parts = parts[-int(digits) :]
        value = ".".join(parts)
        if letter.isupper():  # §7.3: uppercase means URL-escaped
            value = urllib.parse.quote(value, safe="-._~")
        return value

    async def _p_macro(self, domain: str) -> str:
        """§7.3: a validated name, preferably within `domain`; discouraged but defined."""
        if self.validated_name is None:
            names = await self._validated_names()
            preferred = [
                n for n in names if n.lower() == domain.lower() or n.lower().endswith("." + domain)
            ]
            self.validated_name = (preferred or names or ["unknown"])[0]
        return self.validated_name


def _ip(text: str) -> IpAddress:
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # an IPv4 client on a dual-stack socket
    return ip


async def check_host(
    resolver: Resolver,
    ip: str,
    domain: str,
    sender: str,
    helo: str = "",
    receiver: str = "",
    identity: str = "mailfrom",
) -> SpfVerdict:
    """§4 check_host(<ip>, <domain>, <sender>)."""
    evaluation = _Evaluation(resolver, _ip(ip), sender, helo, receiver)
    result, explanation, reason = await evaluation.check_host(domain)
    return SpfVerdict(result, identity, domain, explanation, reason)


async def check_mail_from(
    resolver: Resolver, ip: str, mail_from: str, helo: str, receiver: str = ""
) -> SpfVerdict:
    """§2.4: the MAIL FROM identity; the null sender is checked as postmaster@HELO."""
    if not mail_from:
        return await check_helo(resolver, ip, helo, receiver, identity="mailfrom")
    local, _, domain = mail_from.rpartition("@")
    if not domain or domain.startswith("["):
        return SpfVerdict(SpfResult.NONE, "mailfrom", domain, reason="no domain to check")
    sender = f"{local or 'postmaster'}@{domain}"  # §4.3: a missing local part is postmaster
    return await check_host(resolver, ip, domain, sender, helo, receiver)


async def check_helo(
    resolver: Resolver, ip: str, helo: str, receiver: str = "", identity: str = "helo"
) -> SpfVerdict:
    """§2.3: the HELO identity, as postmaster@<helo>; literals and bare names give none."""
    if not helo or helo.startswith("[") or not _valid_domain(helo):
        return SpfVerdict(SpfResult.NONE, identity, helo, reason="HELO is not a domain name")
    return await check_host(resolver, ip, helo, f"postmaster@{helo}", helo, receiver, identity)


__all__ = [
    "SpfResult",
    "SpfVerdict",
    "check_helo",
    "check_host",
    "check_mail_from",
]
