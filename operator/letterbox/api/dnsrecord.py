"""A DNS record as Letterbox wants it: shared by render/ (what a domain needs), dns/ (what
providers hold) and status."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RecordType(StrEnum):
    A = "A"
    AAAA = "AAAA"
    CNAME = "CNAME"
    MX = "MX"
    SRV = "SRV"
    TXT = "TXT"


@dataclass(frozen=True, order=True)
class DnsRecord:
    """One resource record. `name` is absolute without the trailing dot; `value` is the
    presentation form with absolute targets ending in a dot, and TXT values unquoted and unsplit
    (providers split them into 255-byte strings)."""

    name: str
    type: RecordType
    value: str
    ttl: int
    purpose: str = ""
    """What the record is for (MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, autoconfig)."""


def txt_strings(value: str) -> list[str]:
    """A TXT value split into the ≤255-byte character-strings DNS carries (RFC 1035 §3.3.14);
    readers join them back without separators (RFC 6376 §3.6.2.2, RFC 7208 §3.3)."""
    data = value.encode()
    return [data[i : i + 255].decode() for i in range(0, len(data), 255)] or [""]


def zone_line(record: DnsRecord) -> str:
    """The record as a line of a BIND zone file."""
    value = record.value
    if record.type is RecordType.TXT:
        value = " ".join(
            '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for part in txt_strings(value)
        )
    return f"{record.name}.\t{record.ttl}\tIN\t{record.type.value}\t{value}"
