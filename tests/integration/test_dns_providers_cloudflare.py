"""The Cloudflare provider over real HTTP against a fake of the Cloudflare API v4 (there is no
local Cloudflare): the fake reproduces the documented request and response shapes, namely the
envelope {success, errors: [{code, message}], messages, result, result_info}, page/per_page
pagination of /zones/{id}/dns_records, MX `priority` and SRV `data` fields, Bearer-token
authentication and its error codes, and 429 rate limiting."""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from letterbox.api.dkimkey import DkimAlgorithm
from letterbox.api.dnsrecord import DnsRecord
from letterbox.api.maildomain import DnsSpec, MailDomainSpec
from letterbox.api.meta import ConditionStatus
from letterbox.dns.cloudflare import CloudflareProvider
from letterbox.dns.plan import ActionKind
from letterbox.dns.provider import DnsProviderError, InvalidCredentials, ZoneNotFound
from letterbox.dns.publish import publish, publish_domain, withdraw
from letterbox.material import generate_dkim_key
from letterbox.render.dkim import DkimKeyMaterial
from letterbox.render.dnsrecords import domain_records
from tests.harness.ports import free_port

ZONE = "example.com"
ZONE_ID = "023e105f4ecef8ad9ca31a8372d0c353"
TOKEN = "cf-test-token-0123456789"
TOKEN_FORMAT = re.compile(r"^Bearer [A-Za-z0-9_-]+$")
MAX_PER_PAGE = 5000
FOREIGN = 230  # other people's records: more than two pages of 100


class FakeCloudflare:
    """The parts of api.cloudflare.com/client/v4 a DNS provider uses."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.ids = (f"{n:032x}" for n in itertools.count(1))
        self.requests: list[tuple[str, str]] = []
        self.fail_next: list[tuple[int, int, str]] = []
        """(HTTP status, error code, message) answered before the next requests."""
        self.app = web.Application(middlewares=[self.middleware])
        self.app.router.add_get("/client/v4/zones", self.zones)
        self.app.router.add_get("/client/v4/zones/{zone}/dns_records", self.list_records)
        self.app.router.add_post("/client/v4/zones/{zone}/dns_records", self.create)
        self.app.router.add_patch("/client/v4/zones/{zone}/dns_records/{id}", self.patch)
        self.app.router.add_delete("/client/v4/zones/{zone}/dns_records/{id}", self.delete)

    @staticmethod
    def envelope(result: Any, status: int = 200, **extra: Any) -> web.Response:
        body = {"success": True, "errors": [], "messages": [], "result": result, **extra}
        return web.json_response(body, status=status)

    @staticmethod
    def error(status: int, code: int, message: str, **extra: Any) -> web.Response:
        body = {
            "success": False,
            "errors": [{"code": code, "message": message, **extra}],
            "messages": [],
            "result": None,
        }
        return web.json_response(body, status=status)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        authorization = request.headers.get("Authorization", "")
        if not TOKEN_FORMAT.match(authorization):
            return self.error(
                400,
                6003,
                "Invalid request headers",
                error_chain=[{"code": 6111, "message": "Invalid format for Authorization header"}],
            )
        if authorization != f"Bearer {TOKEN}":
            return self.error(403, 10000, "Authentication error")
        if self.fail_next:
            status, code, message = self.fail_next.pop(0)
            return self.error(status, code, message)
        zone = request.match_info.get("zone")
        if zone is not None and zone != ZONE_ID:
            return self.error(
                404,
                7003,
                "Could not route to /zones/..., perhaps your object identifier is invalid?",
            )
        response: web.StreamResponse = await handler(request)
        return response

    async def zones(self, request: web.Request) -> web.Response:
        name = request.query.get("name")
        found = [{"id": ZONE_ID, "name": ZONE, "status": "active"}] if name in (None, ZONE) else []
        info = {
            "page": 1,
            "per_page": 20,
            "count": len(found),
            "total_count": len(found),
            "total_pages": 1,
        }
        return self.envelope(found, result_info=info)

    async def list_records(self, request: web.Request) -> web.Response:
        page = int(request.query.get("page", "1"))
        per_page = min(int(request.query.get("per_page", "100")), MAX_PER_PAGE)
        ordered = sorted(self.records.values(), key=lambda r: (r["name"], r["type"], r["id"]))
        chunk = ordered[(page - 1) * per_page : page * per_page]
        total_pages = max(1, -(-len(ordered) // per_page))
        info = {
            "page": page,
            "per_page": per_page,
            "count": len(chunk),
            "total_count": len(ordered),
            "total_pages": total_pages,
        }
        return self.envelope(chunk, result_info=info)

    def add(self, body: dict[str, Any]) -> dict[str, Any]:
        record = {
            "id": next(self.ids),
            "zone_id": ZONE_ID,
            "zone_name": ZONE,
            "name": body["name"],
            "type": body["type"],
            "ttl": body.get("ttl", 1),
            "proxied": body.get("proxied", False),
            "proxiable": body["type"] in ("A", "AAAA", "CNAME"),
            "locked": False,
            "meta": {},
            "comment": None,
            "tags": [],
            "created_on": "2026-11-22T00:00:00.000000Z",
            "modified_on": "2026-11-22T00:00:00.000000Z",
        }
        if body["type"] == "SRV":
            data = body["data"]
            record["data"] = data
            record["priority"] = data["priority"]
            record["content"] = f"{data['weight']} {data['port']} {data['target']}"
        else:
            record["content"] = body["content"]
        if body["type"] == "MX":
            record["priority"] = body["priority"]
        self.records[record["id"]] = record
        return record

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        missing = [f for f in ("type", "name") if f not in body]
        if body.get("type") == "SRV" and "data" not in body:
            missing.append("data")
        elif body.get("type") != "SRV" and "content" not in body:
            missing.append("content")
        if body.get("type") == "MX" and "priority" not in body:
            missing.append("priority")
        if missing:
            return self.error(400, 9000, f"DNS record is invalid: missing {', '.join(missing)}")
        if body["name"].endswith(".") or not (
            body["name"] == ZONE or body["name"].endswith("." + ZONE)
        ):
            return self.error(400, 9007, "Content for the name is invalid")
        for record in self.records.values():
            if (record["name"], record["type"], record.get("content"), record.get("priority")) == (
                body["name"],
                body["type"],
                body.get("content", record.get("content") if body["type"] == "SRV" else None),
                body.get("priority", record.get("priority")),
            ) and (body["type"] != "SRV" or record.get("data") == body["data"]):
                return self.error(400, 81058, "An identical record already exists.")
        return self.envelope(self.add(body))

    async def patch(self, request: web.Request) -> web.Response:
        record = self.records.get(request.match_info["id"])
        if record is None:
            return self.error(404, 81044, "Record does not exist.")
        record.update(await request.json())
        return self.envelope(record)

    async def delete(self, request: web.Request) -> web.Response:
        if self.records.pop(request.match_info["id"], None) is None:
            return self.error(404, 81044, "Record does not exist.")
        return self.envelope({"id": request.match_info["id"]})

    def values(self, name: str, rtype: str) -> list[dict[str, Any]]:
        return [r for r in self.records.values() if (r["name"], r["type"]) == (name, rtype)]


@pytest.fixture
async def cloudflare() -> AsyncIterator[tuple[FakeCloudflare, str]]:
    fake = FakeCloudflare()
    for n in range(FOREIGN):
        fake.add(
            {"type": "A", "name": f"host{n}.{ZONE}", "content": f"192.0.2.{n % 250}", "ttl": 1}
        )
    fake.add({"type": "TXT", "name": ZONE, "content": '"google-site-verification=abc"', "ttl": 1})
    fake.add(
        {"type": "MX", "name": ZONE, "content": "backup.example.net", "priority": 20, "ttl": 1}
    )
    runner = web.AppRunner(fake.app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield fake, f"http://127.0.0.1:{port}/client/v4"
    finally:
        await runner.cleanup()


@functools.cache
def rsa_pem() -> str:
    return generate_dkim_key(DkimAlgorithm.RSA_2048)


def wanted() -> list[DnsRecord]:
    spec = MailDomainSpec.model_validate({"domain": ZONE})
    key = DkimKeyMaterial(ZONE, "s1", DkimAlgorithm.RSA_2048, rsa_pem())
    return domain_records(spec, [key])


async def test_publish_paginates_coexists_repairs_and_withdraws(
    cloudflare: tuple[FakeCloudflare, str],
) -> None:
    fake, url = cloudflare
    records = wanted()
    provider = CloudflareProvider(TOKEN, api_url=url)
    try:
        # The zone is looked up by name and listed page by page (3 pages of 100).
        listing = await provider.records(ZONE)
        assert len(listing) == FOREIGN + 2
        pages = [q for m, q in fake.requests if m == "GET" and "dns_records" in q]
        assert len(pages) == 3 and "page=3" in pages[-1]

        first = await publish(provider, records, zone=ZONE, owner="mail/example", check=False)
        assert {a.kind for a in first.plan.actions} == {ActionKind.CREATE}
        mx = {(r["priority"], r["content"]) for r in fake.values(ZONE, "MX")}
        assert mx == {(20, "backup.example.net"), (10, f"mail.{ZONE}")}
        srv = fake.values(f"_imaps._tcp.{ZONE}", "SRV")
        assert [r["data"] for r in srv] == [
            {"priority": 0, "weight": 1, "port": 993, "target": f"mail.{ZONE}"}
        ]
        dkim = fake.values(f"s1._domainkey.{ZONE}", "TXT")[0]["content"]
        assert dkim.count('" "') == 1  # split into two quoted strings
        txt = sorted(r["content"] for r in fake.values(ZONE, "TXT"))
        assert txt == ['"google-site-verification=abc"', '"v=spf1 mx ~all"']

        fake.requests.clear()
        again = await publish(provider, records, zone=ZONE, owner="mail/example", check=False)
        assert again.plan.empty
        assert all(m == "GET" for m, _ in fake.requests)  # only listing

        # Drift: our SPF edited in the dashboard.
        spf = next(r for r in fake.values(ZONE, "TXT") if "spf1" in r["content"])
        spf["content"] = "v=spf1 include:evil.example -all"
        repaired = await publish(provider, records, zone=ZONE, owner="mail/example", check=False)
        assert [(a.kind, a.name) for a in repaired.plan.drift] == [(ActionKind.REPAIR, ZONE)]
        txt = sorted(r["content"] for r in fake.values(ZONE, "TXT"))
        assert txt == ['"google-site-verification=abc"', '"v=spf1 mx ~all"']

        await withdraw(provider, zone=ZONE, owner="mail/example")
    finally:
        await provider.aclose()
    assert len(fake.records) == FOREIGN + 2
    assert [r["content"] for r in fake.values(ZONE, "TXT")] == ['"google-site-verification=abc"']


async def test_rate_limits_are_retried_with_back_off(
    cloudflare: tuple[FakeCloudflare, str],
) -> None:
    fake, url = cloudflare
    fake.fail_next = [(429, 971, "Please wait and consider throttling your request speed")] * 2
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    provider = CloudflareProvider(TOKEN, api_url=url, zone_id=ZONE_ID)
    try:
        result = await publish(
            provider,
            wanted(),
            zone=ZONE,
            owner="mail/example",
            check=False,
            delays=(0.1, 0.2, 0.4),
            sleep=sleep,
        )
    finally:
        await provider.aclose()
    assert slept == [0.1, 0.2]
    assert not result.plan.empty and fake.values(f"_dmarc.{ZONE}", "TXT")


async def test_server_errors_end_as_a_temporary_provider_error(
    cloudflare: tuple[FakeCloudflare, str],
) -> None:
    fake, url = cloudflare
    fake.fail_next = [(500, 10002, "Unknown error")] * 3
    provider = CloudflareProvider(TOKEN, api_url=url, zone_id=ZONE_ID)
    try:
        with pytest.raises(DnsProviderError, match="10002: Unknown error") as caught:
            await publish(
                provider, wanted(), zone=ZONE, owner="o/p", check=False, delays=(0.0, 0.0)
            )
    finally:
        await provider.aclose()
    assert caught.value.temporary and caught.value.reason == "ProviderError"


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("not-the-token", "10000: Authentication error"),
        ("pasted with spaces", "6003: Invalid request headers"),
    ],
)
async def test_bad_tokens_are_invalid_credentials(
    cloudflare: tuple[FakeCloudflare, str], token: str, code: str
) -> None:
    fake, url = cloudflare
    provider = CloudflareProvider(token, api_url=url)
    try:
        with pytest.raises(InvalidCredentials, match=code):
            await provider.records(ZONE)
    finally:
        await provider.aclose()
    assert len(fake.records) == FOREIGN + 2


async def test_unknown_zone_and_the_condition_for_a_bad_token(
    cloudflare: tuple[FakeCloudflare, str],
) -> None:
    _, url = cloudflare
    provider = CloudflareProvider(TOKEN, api_url=url)
    try:
        with pytest.raises(ZoneNotFound, match=r"example\.org"):
            await provider.records("example.org")
    finally:
        await provider.aclose()
    # The same failure as the reconcile sees it, through the spec and the Secret's value.
    spec = DnsSpec.model_validate(
        {"provider": "cloudflare", "credentialsSecretRef": {"name": "cf", "key": "token"}}
    )

    def here(spec: DnsSpec, credential: str | None) -> CloudflareProvider:
        return CloudflareProvider(credential or "", api_url=url)

    for credential, reason in (("wrong-token", "InvalidCredentials"), ("", "InvalidCredentials")):
        outcome = await publish_domain(
            spec,
            wanted(),
            zone=ZONE,
            owner="o/p",
            credential=credential,
            delays=(),
            make_provider=here,
        )
        assert (outcome.status, outcome.reason) == (ConditionStatus.FALSE, reason)
        assert not outcome.temporary
        if credential:
            assert "Zone.DNS edit" in outcome.message
            assert credential not in outcome.message  # the token is never echoed
