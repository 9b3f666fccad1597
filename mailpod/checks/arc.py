"""ARC (RFC 8617) chain validation.

The cryptography is dkimpy's `arc_verify` (a dependency already), run in a thread; its DNS
function is fed from keys fetched beforehand through the pod's async resolver, so no blocking
DNS ever happens. Only messages that carry ARC headers cost anything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import dkim

from mailpod.dkim import DkimError, ParsedMessage, parse_tags
from mailpod.dns import DnsTemporaryError, Resolver

MAX_INSTANCES: Final = 50  # RFC 8617 §4.2.1: i= is 1..50


class ArcResult(StrEnum):
    NONE = "none"
    PASS = "pass"  # noqa: S105 (an RFC result name)
    FAIL = "fail"


@dataclass(frozen=True)
class ArcVerdict:
    result: ArcResult
    instances: int = 0
    sealer: str = ""
    """d= of the newest ARC-Seal (the last forwarder that sealed)."""
    oldest_pass_results: str = ""
    """The ARC-Authentication-Results of instance 1 (what the first sealer saw), for a trusted
    sealer's override."""
    reason: str = ""


def _tags(raw: bytes) -> dict[str, str]:
    try:
        return parse_tags(raw.partition(b":")[2].decode("ascii", "replace"))
    except DkimError:
        return {}


async def verify(message: bytes, resolver: Resolver) -> ArcVerdict:
    end = message.find(b"\r\n\r\n")
    if b"arc-" not in (message[:end] if end >= 0 else message).lower():
        return ArcVerdict(ArcResult.NONE, reason="no ARC headers")  # most mail: no parse
    parsed = ParsedMessage.parse(message)
    seals = parsed.all(b"arc-seal")
    signatures = parsed.all(b"arc-message-signature")
    if not seals and not signatures:
        return ArcVerdict(ArcResult.NONE, reason="no ARC headers")
    if len(seals) > MAX_INSTANCES:
        return ArcVerdict(ArcResult.FAIL, len(seals), reason="too many ARC sets")
    names: set[str] = set()
    newest, newest_domain = 0, ""
    for raw in (*seals, *signatures):
        tags = _tags(raw)
        selector, domain = tags.get("s", "").strip(), tags.get("d", "").strip()
        if selector and domain:
            names.add(f"{selector}._domainkey.{domain}".lower())
        if raw in seals:
            try:
                instance = int(tags.get("i", "0"))
            except ValueError:
                instance = 0
            if instance > newest:
                newest, newest_domain = instance, domain.lower()
    keys: dict[str, bytes | None] = {}

    async def fetch(name: str) -> None:
        answer = await resolver.query(name, "TXT")
        keys[name] = answer.records[0].encode() if len(answer.records) == 1 else None

    try:
        await asyncio.gather(*(fetch(name) for name in names))
    except DnsTemporaryError as error:
        # RFC 8617 has no temperror: a chain we cannot check is not a pass.
        return ArcVerdict(ArcResult.FAIL, len(seals), newest_domain, reason=str(error))

    def lookup(name: bytes | str, timeout: int = 5) -> bytes | None:
        key = (name.decode() if isinstance(name, bytes) else name).lower().rstrip(".")
        return keys.get(key)

    def run() -> tuple[object, list[dict[str, object]], str]:
        return dkim.arc_verify(message, dnsfunc=lookup)  # type: ignore[no-any-return]

    try:
        cv, _results, comment = await asyncio.to_thread(run)
    except Exception as error:  # dkimpy raises on malformed input
        return ArcVerdict(ArcResult.FAIL, len(seals), newest_domain, reason=repr(error))
    oldest = ""
    for raw in parsed.all(b"arc-authentication-results"):
        value = raw.partition(b":")[2].decode("utf-8", "replace")
        tag, _, rest = value.partition(";")
        if tag.strip().replace(" ", "") == "i=1":
            oldest = " ".join(rest.split())
    result = ArcResult.PASS if cv == dkim.CV_Pass else ArcResult.FAIL
    return ArcVerdict(result, len(seals), newest_domain, oldest, str(comment))
