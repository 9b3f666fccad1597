"""DMARC (RFC 7489): policy discovery, identifier alignment and the policy to apply.

The organisational domain comes from the Public Suffix List shipped inside the
`publicsuffixlist` package (offline; a newer list can be passed as a file). Section numbers below
are RFC 7489's.
"""

from __future__ import annotations

import email.utils
import functools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from publicsuffixlist import PublicSuffixList

from mailpod.checks.spf import SpfResult, SpfVerdict
from mailpod.dkim import DkimResult, DkimStatus
from mailpod.dns import DnsTemporaryError, Resolver


class DmarcResult(StrEnum):
    NONE = "none"
    PASS = "pass"  # noqa: S105 (an RFC result name)
    FAIL = "fail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class Policy(StrEnum):
    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


@dataclass(frozen=True)
class DmarcRecord:
    policy: Policy
    subdomain_policy: Policy
    percent: int = 100
    strict_dkim: bool = False
    strict_spf: bool = False
    rua: tuple[str, ...] = ()


@dataclass(frozen=True)
class DmarcVerdict:
    result: DmarcResult
    from_domain: str
    policy: Policy = Policy.NONE
    """The policy to apply (after sp= and pct=); NONE unless result is FAIL."""
    record: DmarcRecord | None = None
    record_domain: str = ""
    spf_aligned: bool = False
    dkim_aligned: bool = False
    sampled_out: bool = False
    """pct= excluded this message: the next less strict policy applies (§6.6.4)."""
    reason: str = ""


# "a@b", "<a@b>" or "Name <a@b>" with a plain display name: one address, its domain.
_SIMPLE_FROM = re.compile(
    r'[^<>",;:@()\\]*<[^<>",;:@()\s\\]+@(?P<bracketed>[A-Za-z0-9.-]+)>'
    r'|[^<>",;:@()\s\\]+@(?P<bare>[A-Za-z0-9.-]+)'
)


@functools.cache
def _suffix_list(source: Path | None = None) -> PublicSuffixList:
    if source is None:
        return PublicSuffixList()  # the snapshot bundled with the package; no network
    with source.open("rb") as stream:
        return PublicSuffixList(stream)


def organizational_domain(domain: str, suffix_list: Path | None = None) -> str:
    """§3.2: the public suffix plus one label (the domain itself if it is a public suffix)."""
    domain = domain.lower().rstrip(".")
    return _suffix_list(suffix_list).privatesuffix(domain) or domain


def aligned(a: str, b: str, strict: bool) -> bool:
    """§3.1: identical in strict mode, same organisational domain in relaxed mode."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b if strict else organizational_domain(a) == organizational_domain(b)


def _policy(value: str) -> Policy:
    return Policy(value.strip().lower())


@functools.lru_cache(maxsize=4096)  # pure; the same records come with every message
def parse_record(text: str) -> DmarcRecord:
    """§6.3/§6.4; ValueError for a record that cannot be used."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"malformed tag {part.strip()!r}")
        tags.setdefault(name.strip().lower(), value.strip())
    if tags.get("v") != "DMARC1":
        raise ValueError("v=DMARC1 missing")
    rua = tuple(u.strip() for u in tags.get("rua", "").split(",") if u.strip())
    try:
        policy = _policy(tags["p"])
    except KeyError:
        # §6.6.3: no p= but a valid rua= is read as p=none; otherwise there is no record.
        if not rua:
            raise ValueError("p= missing") from None
        policy = Policy.NONE
    subdomain = _policy(tags["sp"]) if "sp" in tags else policy
    try:
        percent = int(tags.get("pct", "100"))
    except ValueError as error:
        raise ValueError("pct= is not a number") from error
    adkim, aspf = tags.get("adkim", "r").lower(), tags.get("aspf", "r").lower()
    if adkim not in ("r", "s") or aspf not in ("r", "s"):
        raise ValueError("adkim/aspf must be r or s")
    return DmarcRecord(policy, subdomain, max(0, min(100, percent)), adkim == "s", aspf == "s", rua)


def from_domain(header_values: Sequence[str]) -> str | None:
    """§6.6.1: the domain of the one RFC5322.From address, else None."""
    if len(header_values) != 1:
        return None
    simple = _SIMPLE_FROM.fullmatch(header_values[0].strip())
    if simple:  # the common forms, without email.utils' full parser
        return (simple.group("bracketed") or simple.group("bare")).lower()
    addresses = email.utils.getaddresses(list(header_values))
    domains = {addr.rpartition("@")[2].lower() for _, addr in addresses if "@" in addr}
    if len(domains) != 1:
        return None
    return domains.pop()


async def discover(resolver: Resolver, domain: str) -> tuple[DmarcRecord | None, str, str]:
    """§6.6.3: the record at _dmarc.<domain>, else at the organisational domain's.
    Returns (record, where found, problem); DnsTemporaryError propagates."""
    candidates = [domain]
    organizational = organizational_domain(domain)
    if organizational != domain:
        candidates.append(organizational)
    problem = ""
    for candidate in candidates:
        answer = await resolver.query(f"_dmarc.{candidate}", "TXT")
        texts = [r for r in answer.records if r.strip().lower().startswith("v=dmarc1")]
        if len(texts) != 1:
            if len(texts) > 1:
                problem = f"{len(texts)} DMARC records at _dmarc.{candidate}"
                return None, candidate, problem  # §6.6.3: several records: none applies
            continue
        try:
            return parse_record(texts[0]), candidate, ""
        except ValueError as error:
            problem = f"_dmarc.{candidate}: {error}"
            continue
    return None, "", problem


async def evaluate(
    resolver: Resolver,
    header_from: Sequence[str],
    spf: SpfVerdict | None,
    dkim: Sequence[DkimResult],
    rng: random.Random | None = None,
) -> DmarcVerdict:
    domain = from_domain(header_from)
    if domain is None:
        return DmarcVerdict(
            DmarcResult.PERMERROR, "", reason="not exactly one From: address domain"
        )
    try:
        record, where, problem = await discover(resolver, domain)
    except DnsTemporaryError as error:
        return DmarcVerdict(DmarcResult.TEMPERROR, domain, reason=str(error))
    if record is None:
        return DmarcVerdict(DmarcResult.NONE, domain, reason=problem or "no DMARC record")
    spf_ok = (
        spf is not None
        and spf.result is SpfResult.PASS
        and aligned(spf.domain, domain, record.strict_spf)
    )
    dkim_ok = any(
        r.status is DkimStatus.PASS and aligned(r.domain, domain, record.strict_dkim) for r in dkim
    )
    if spf_ok or dkim_ok:
        return DmarcVerdict(
            DmarcResult.PASS,
            domain,
            Policy.NONE,
            record,
            where,
            spf_ok,
            dkim_ok,
            reason="aligned " + ("spf" if spf_ok else "dkim"),
        )
    policy = record.policy if where == domain else record.subdomain_policy
    sampled_out = False
    if record.percent < 100 and (rng or random).randrange(100) >= record.percent:
        sampled_out = True
        policy = {Policy.REJECT: Policy.QUARANTINE}.get(policy, Policy.NONE)
    return DmarcVerdict(
        DmarcResult.FAIL,
        domain,
        policy,
        record,
        where,
        sampled_out=sampled_out,
        reason="neither SPF nor DKIM aligned with a pass",
    )
