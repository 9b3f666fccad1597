"""A `Resolver` answering from zone data written as the OpenSPF test suite writes it (one mapping
of owner name to a list of `{TYPE: value}` records, `TIMEOUT` for a server that never answers).

This is the suite's own test data, served the way a recursive resolver would: a name with no
records is NXDOMAIN, a name without records of the asked type is NODATA, a CNAME is followed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mailpod.dns import Answer, DnsTemporaryError, Status


def _text(rtype: str, value: Any) -> list[str]:
    if rtype in ("TXT", "SPF"):
        strings = [value] if isinstance(value, str) else list(value)
        if strings == ["NONE"]:
            return []
        return ["".join(strings)]
    if rtype == "MX":
        priority, host = value
        return [f"{priority} {host}"]
    return [str(value)]


class ZoneResolver:
    def __init__(self, zonedata: Mapping[str, Sequence[Any]]) -> None:
        self.records: dict[str, list[tuple[str, str]]] = {}
        self.timeouts: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        for owner, entries in zonedata.items():
            name = owner.lower().rstrip(".")
            records = self.records.setdefault(name, [])
            has_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
            for entry in entries:
                if entry == "TIMEOUT":
                    self.timeouts.add(name)
                    continue
                for rtype, value in entry.items():
                    if value == "TIMEOUT":
                        self.timeouts.add(name)
                        continue
                    # The suite's drivers copy SPF-type records to TXT unless TXT is given
                    # (its header comment); RFC 7208 only ever queries TXT.
                    if rtype == "SPF":
                        if has_txt:
                            continue
                        rtype = "TXT"
                    records += [(rtype, text) for text in _text(rtype, value)]

    async def query(self, name: str, rtype: str, hops: int = 0) -> Answer:
        key, rtype = name.lower().rstrip("."), rtype.upper()
        if hops > 8:
            # A recursive resolver reports a CNAME loop as a server failure (RFC 1034 §3.6.2).
            raise DnsTemporaryError(f"{name} {rtype}: CNAME loop")
        if not hops:
            self.queries.append((key, rtype))
        records = self.records.get(key, [])
        found = tuple(text for t, text in records if t == rtype)
        if not found:
            cname = [text for t, text in records if t == "CNAME"]
            if cname:
                return await self.query(cname[0], rtype, hops + 1)
            if key in self.timeouts:
                raise DnsTemporaryError(f"{name} {rtype}: timeout")
        if found:
            return Answer(key, rtype, Status.FOUND, found, ttl=300)
        if key in self.records or key in self.timeouts:
            return Answer(key, rtype, Status.NODATA)
        return Answer(key, rtype, Status.NXDOMAIN)
