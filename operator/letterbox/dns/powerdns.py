"""The PowerDNS Authoritative HTTP API (`/api/v1/servers/<id>/zones/<zone>`).

PowerDNS changes whole RRsets (`changetype: REPLACE`), and an RRset may hold values that are
not ours (the apex TXT holds other people's verification strings beside our SPF). So each apply
reads the RRsets it touches again and writes back exactly what was there minus our removals plus
our additions, in one PATCH (PowerDNS applies a PATCH atomically). Another writer changing the
same RRset between our GET and PATCH would lose that change: the API has no conditional write,
and the window is one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import httpx

from letterbox.api.dnsrecord import RecordType, txt_strings
from letterbox.dns.provider import (
    Change,
    DnsProviderError,
    InvalidCredentials,
    RRset,
    ZoneNotFound,
    absolute,
    normalize_value,
)

DEFAULT_TIMEOUT = 15.0


def txt_content(value: str) -> str:
    """A TXT value as PowerDNS content: quoted ≤255-byte strings."""
    return " ".join(
        '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"' for part in txt_strings(value)
    )


def content_value(rtype: str, content: str) -> str:
    """PowerDNS content as a plan value (TXT strings unquoted and joined)."""
    if rtype != RecordType.TXT:
        return content
    try:
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, content)
    except dns.exception.DNSException:
        return content.strip('"')
    strings: tuple[bytes, ...] = rdata.strings  # type: ignore[attr-defined]
    return b"".join(strings).decode(errors="replace")


class PowerDnsProvider:
    """`url` is the API base (e.g. http://pdns.dns.svc:8081); `api_key` the X-API-Key."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        server_id: str = "localhost",
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        base = url.rstrip("/")
        if not base.endswith("/api/v1"):
            base += "/api/v1"
        self.base = f"{base}/servers/{server_id}"
        self._http = httpx.AsyncClient(
            headers={"X-API-Key": api_key, "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = await self._http.request(method, self.base + path, json=body)
        except httpx.HTTPError as error:
            raise DnsProviderError(
                f"PowerDNS API {method} {path}: {type(error).__name__} {error}"
            ) from error
        if response.status_code < 400:
            return response.json() if response.content else None
        try:
            detail = str(response.json().get("error", response.text))
        except ValueError:
            detail = response.text[:200]
        status = response.status_code
        if status in (401, 403):
            raise InvalidCredentials(
                f"the PowerDNS API refused the API key ({status} {detail}); check the "
                "credentialsSecretRef and the server's api-key"
            )
        if status == 404 or (status == 422 and "not found" in detail.lower()):
            raise ZoneNotFound(f"PowerDNS API {method} {path}: {status} {detail}")
        raise DnsProviderError(
            f"PowerDNS API {method} {path}: {status} {detail}",
            temporary=status >= 500 or status == 429,
        )

    async def _zone(self, zone: str) -> dict[str, Any]:
        data: dict[str, Any] = await self._call("GET", f"/zones/{absolute(zone)}.")
        return data

    async def records(self, zone: str) -> list[RRset]:
        data = await self._zone(zone)
        return [
            RRset(
                absolute(rrset["name"]),
                rrset["type"],
                int(rrset.get("ttl", 0)),
                tuple(
                    content_value(rrset["type"], record["content"])
                    for record in rrset.get("records", [])
                    if not record.get("disabled")
                ),
            )
            for rrset in data.get("rrsets", [])
        ]

    async def apply(self, zone: str, changes: Sequence[Change]) -> None:
        if not changes:
            return
        data = await self._zone(zone)
        live = {(absolute(r["name"]), r["type"]): r for r in data.get("rrsets", [])}
        patch: list[dict[str, Any]] = []
        for change in _merged(changes):
            rtype = change.type.value
            current = live.get((absolute(change.name), rtype), {})
            drop = {normalize_value(rtype, v) for v in change.remove}
            # Disabled records and other people's values are carried over untouched.
            kept = [
                {"content": r["content"], "disabled": bool(r.get("disabled"))}
                for r in current.get("records", [])
                if normalize_value(rtype, content_value(rtype, r["content"])) not in drop
            ]
            have = {normalize_value(rtype, content_value(rtype, r["content"])) for r in kept}
            for value in change.add:
                if normalize_value(rtype, value) not in have:
                    content = txt_content(value) if change.type is RecordType.TXT else value
                    kept.append({"content": content, "disabled": False})
                    have.add(normalize_value(rtype, value))
            entry: dict[str, Any] = {"name": f"{absolute(change.name)}.", "type": rtype}
            if kept:
                entry |= {"changetype": "REPLACE", "ttl": change.ttl, "records": kept}
            else:
                entry["changetype"] = "DELETE"
            patch.append(entry)
        await self._call("PATCH", f"/zones/{absolute(zone)}.", {"rrsets": patch})


def _merged(changes: Sequence[Change]) -> list[Change]:
    """One change per RRset: a PATCH may name each RRset once."""
    merged: dict[tuple[str, RecordType], Change] = {}
    for change in changes:
        key = (absolute(change.name), change.type)
        if key in merged:
            old = merged[key]
            change = Change(
                change.name,
                change.type,
                change.ttl,
                old.add + change.add,
                old.remove + change.remove,
            )
        merged[key] = change
    return list(merged.values())
