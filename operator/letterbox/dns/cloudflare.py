"""The Cloudflare API v4 (`https://api.cloudflare.com/client/v4`), with an API token.

Cloudflare stores one record per value, each with an id, which matches the plan's value-level
changes: an addition is a POST, a removal a DELETE of that value's record, a TTL change a PATCH.
Listings are paginated (`result_info.total_pages`); every response carries the envelope
`{"success", "errors": [{"code", "message"}], "messages", "result"}`, and failures are reported
from it.

Values convert between Cloudflare's fields and the plan's presentation form: MX is `priority`
plus `content`, SRV is `data` {priority, weight, port, target}; names carry no trailing dot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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

API_URL = "https://api.cloudflare.com/client/v4"
PER_PAGE = 100
DEFAULT_TIMEOUT = 15.0
# Cloudflare's authentication / authorization error codes (invalid or expired token, missing
# permission for the zone, malformed Authorization header).
_AUTH_CODES = frozenset({6003, 6111, 9103, 9106, 9109, 10000, 10001})


def _dotted(name: str) -> str:
    return name if name.endswith(".") or name == "." else name + "."


def _bare(name: str) -> str:
    return name if name == "." else name.rstrip(".")


def _unquote_txt(content: str) -> str:
    """Cloudflare returns TXT content as given: quoted strings ("a" "b") or plain text."""
    text = content.strip()
    if not (text.startswith('"') and text.endswith('"')):
        return content
    parts: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != '"':
            i += 1
            continue
        i += 1
        part: list[str] = []
        while i < len(text) and text[i] != '"':
            if text[i] == "\\" and i + 1 < len(text):
                i += 1
            part.append(text[i])
            i += 1
        parts.append("".join(part))
        i += 1
    return "".join(parts)


def record_value(record: dict[str, Any]) -> str:
    """A Cloudflare record as a plan value."""
    rtype, content = record.get("type", ""), str(record.get("content", ""))
    if rtype == "TXT":
        return _unquote_txt(content)
    if rtype == "MX":
        return f"{int(record.get('priority', 0))} {_dotted(content)}"
    if rtype == "SRV":
        data = record.get("data") or {}
        if data:
            return (
                f"{int(data.get('priority', 0))} {int(data.get('weight', 0))} "
                f"{int(data.get('port', 0))} {_dotted(str(data.get('target', '.')))}"
            )
        fields = content.split()
        if len(fields) == 3:  # content "weight port target", priority beside it
            weight, port, target = fields
            return f"{int(record.get('priority', 0))} {weight} {port} {_dotted(target)}"
        return content
    if rtype in ("CNAME", "NS"):
        return _dotted(content)
    return content


def record_body(name: str, rtype: RecordType, value: str, ttl: int) -> dict[str, Any]:
    """A plan value as a Cloudflare create request."""
    body: dict[str, Any] = {"type": rtype.value, "name": absolute(name), "ttl": ttl}
    if rtype is RecordType.TXT:
        body["content"] = " ".join(
            '"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in txt_strings(value)
        )
    elif rtype is RecordType.MX:
        priority, target = value.split()
        body |= {"priority": int(priority), "content": _bare(target)}
    elif rtype is RecordType.SRV:
        priority, weight, port, target = value.split()
        body["data"] = {
            "priority": int(priority),
            "weight": int(weight),
            "port": int(port),
            "target": _bare(target),
        }
    elif rtype is RecordType.CNAME:
        body |= {"content": _bare(value), "proxied": False}
    else:
        body["content"] = value
    return body


class CloudflareProvider:
    """`token` is an API token with Zone.DNS edit (and Zone read, to look the zone up by name
    when `zone_id` is not given)."""

    def __init__(
        self,
        token: str,
        *,
        zone_id: str | None = None,
        api_url: str = API_URL,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not token.strip():
            raise InvalidCredentials("the Cloudflare API token is empty")
        self.zone_id = zone_id
        self.api_url = api_url.rstrip("/")
        self._http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=timeout,
            transport=transport,
        )
        self._ids: dict[tuple[str, str, str], list[str]] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method, self.api_url + path, params=params, json=body
            )
        except httpx.HTTPError as error:
            raise DnsProviderError(
                f"Cloudflare API {method} {path}: {type(error).__name__} {error}"
            ) from error
        try:
            envelope: dict[str, Any] = response.json()
        except ValueError:
            envelope = {}
        if response.status_code < 400 and envelope.get("success") is True:
            return envelope
        errors = envelope.get("errors") or []
        codes = {int(e.get("code", 0)) for e in errors if isinstance(e, dict)}
        detail = (
            "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict))
            or f"HTTP {response.status_code} {response.text[:200]}"
        )
        status = response.status_code
        if status == 401 or codes & _AUTH_CODES or (status == 403 and not codes):
            raise InvalidCredentials(
                f"Cloudflare refused the API token ({detail}); it needs Zone.DNS edit rights "
                "on the zone (check credentialsSecretRef)"
            )
        raise DnsProviderError(
            f"Cloudflare API {method} {path}: {detail}",
            temporary=status >= 500 or status == 429 or status == 0,
        )

    async def _zone_id(self, zone: str) -> str:
        if self.zone_id is None:
            found = await self._call("GET", "/zones", params={"name": absolute(zone)})
            results = found.get("result") or []
            if not results:
                raise ZoneNotFound(f"Cloudflare has no zone {absolute(zone)} visible to this token")
            self.zone_id = str(results[0]["id"])
        return self.zone_id

    async def _listing(self, zone: str) -> list[dict[str, Any]]:
        zone_id = await self._zone_id(zone)
        records: list[dict[str, Any]] = []
        page = 1
        while True:
            data = await self._call(
                "GET",
                f"/zones/{zone_id}/dns_records",
                params={"page": page, "per_page": PER_PAGE},
            )
            records += data.get("result") or []
            info = data.get("result_info") or {}
            if page >= int(info.get("total_pages", 1)) or not data.get("result"):
                return records
            page += 1

    async def records(self, zone: str) -> list[RRset]:
        listing = await self._listing(zone)
        grouped: dict[tuple[str, str], list[tuple[str, int]]] = {}
        self._ids.clear()
        for record in listing:
            name, rtype = absolute(record["name"]), record["type"]
            value = record_value(record)
            grouped.setdefault((name, rtype), []).append((value, int(record.get("ttl", 1))))
            self._ids.setdefault((name, rtype, normalize_value(rtype, value)), []).append(
                str(record["id"])
            )
        # Cloudflare keeps a TTL per record (1 = automatic), so each value reports its own.
        return [
            RRset(n, t, pairs[0][1], tuple(v for v, _ in pairs), tuple(ttl for _, ttl in pairs))
            for (n, t), pairs in grouped.items()
        ]

    async def apply(self, zone: str, changes: Sequence[Change]) -> None:
        if not changes:
            return
        zone_id = await self._zone_id(zone)
        if not self._ids:
            await self.records(zone)
        base = f"/zones/{zone_id}/dns_records"
        for change in changes:
            name, rtype = absolute(change.name), change.type.value
            # Additions first: an interrupted apply leaves an extra value, never a missing one.
            for value in change.add:
                existing = self._ids.get((name, rtype, normalize_value(rtype, value)))
                if existing:
                    for record_id in existing:
                        await self._call("PATCH", f"{base}/{record_id}", body={"ttl": change.ttl})
                    continue
                created = await self._call(
                    "POST", base, body=record_body(name, change.type, value, change.ttl)
                )
                record_id = str((created.get("result") or {}).get("id", ""))
                self._ids[name, rtype, normalize_value(rtype, value)] = [record_id]
            for value in change.remove:
                for record_id in self._ids.pop((name, rtype, normalize_value(rtype, value)), []):
                    await self._call("DELETE", f"{base}/{record_id}")
