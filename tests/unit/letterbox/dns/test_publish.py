"""Back-off on provider errors, and how each failure becomes the DNSPublished condition."""

from __future__ import annotations

from typing import Any

import pytest

from letterbox.api.dnsrecord import DnsRecord, RecordType
from letterbox.api.maildomain import DnsSpec
from letterbox.api.meta import ConditionStatus
from letterbox.dns.cloudflare import CloudflareProvider
from letterbox.dns.powerdns import PowerDnsProvider
from letterbox.dns.provider import DnsProviderError, InvalidCredentials
from letterbox.dns.publish import (
    DnsOutcome,
    DnsPublisher,
    provider_for,
    publish_domain,
    retrying,
)
from letterbox.dns.rfc2136 import Rfc2136Provider


async def test_temporary_errors_are_retried_with_growing_delays() -> None:
    slept: list[float] = []
    calls = 0

    async def sleep(delay: float) -> None:
        slept.append(delay)

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise DnsProviderError("503 from the API")
        return "ok"

    assert await retrying(flaky, delays=(0.5, 1.0, 2.0), sleep=sleep) == "ok"
    assert slept == [0.5, 1.0]


async def test_retries_end_and_the_last_error_is_raised() -> None:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    async def down() -> None:
        raise DnsProviderError("timeout")

    with pytest.raises(DnsProviderError, match="timeout"):
        await retrying(down, delays=(1.0, 2.0), sleep=sleep)
    assert slept == [1.0, 2.0]


async def test_bad_credentials_are_not_retried() -> None:
    async def sleep(delay: float) -> None:
        raise AssertionError("no retry expected")

    async def refused() -> None:
        raise InvalidCredentials("the API key was refused")

    with pytest.raises(InvalidCredentials):
        await retrying(refused, sleep=sleep)


def spec(data: dict[str, object]) -> DnsSpec:
    return DnsSpec.model_validate(data)


REF = {"credentialsSecretRef": {"name": "dns", "key": "token"}}


async def test_providers_from_the_spec() -> None:
    assert provider_for(spec({}), None) is None
    assert provider_for(spec({"provider": "externalDNS"}), None) is None
    rfc = provider_for(
        spec(
            {
                "provider": "rfc2136",
                "rfc2136": {"server": "127.0.0.1:5300", "tsigKeyName": "letterbox.key"},
                **REF,
            }
        ),
        "c2VjcmV0c2VjcmV0c2VjcmV0",
    )
    assert isinstance(rfc, Rfc2136Provider) and rfc.port == 5300
    pdns = provider_for(
        spec({"provider": "powerdns", "powerdns": {"url": "http://pdns:8081"}, **REF}), "key\n"
    )
    assert isinstance(pdns, PowerDnsProvider)
    assert pdns.base == "http://pdns:8081/api/v1/servers/localhost"
    await pdns.aclose()
    cloudflare = provider_for(spec({"provider": "cloudflare", **REF}), "token")
    assert isinstance(cloudflare, CloudflareProvider)
    await cloudflare.aclose()


@pytest.mark.parametrize(
    ("data", "credential", "match"),
    [
        ({"provider": "cloudflare", **REF}, "", "Secret dns key token"),
        (
            {
                "provider": "rfc2136",
                "rfc2136": {"server": "ns1", "tsigKeyName": "letterbox.key"},
                **REF,
            },
            "not base64!",
            "not valid base64",
        ),
    ],
)
async def test_unusable_credentials_are_invalid_credentials(
    data: dict[str, object], credential: str, match: str
) -> None:
    with pytest.raises(InvalidCredentials, match=match):
        provider_for(spec(data), credential)
    outcome = await publish_domain(
        spec(data), [], zone="example.com", owner="a/b", credential=credential
    )
    assert (outcome.status, outcome.reason) == (ConditionStatus.FALSE, "InvalidCredentials")
    assert not outcome.temporary
    assert outcome.condition[0] == "DNSPublished"


async def test_manual_and_external_dns_need_no_calls() -> None:
    manual = await publish_domain(spec({}), [], zone="example.com", owner="a/b", credential=None)
    assert (manual.status, manual.reason) == (ConditionStatus.UNKNOWN, "Manual")
    handed = await publish_domain(
        spec({"provider": "externalDNS"}), [], zone="example.com", owner="a/b", credential=None
    )
    assert (handed.status, handed.reason) == (ConditionStatus.TRUE, "HandedToExternalDNS")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingPublish:
    """Stands in for publish_domain (whose real runs are in tests/integration) to count when
    the publisher decides a provider round trip is due."""

    def __init__(self, *outcomes: DnsOutcome) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, spec: DnsSpec, records: Any, **kwargs: Any) -> DnsOutcome:
        self.calls.append(kwargs)
        return self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]


OK = DnsOutcome(ConditionStatus.TRUE, "Published", "ok")
DOWN = DnsOutcome(ConditionStatus.FALSE, "ProviderError", "503", temporary=True)
PDNS: dict[str, object] = {
    "provider": "powerdns",
    "powerdns": {"url": "http://pdns:8081"},
    "credentialsSecretRef": {"name": "pdns", "key": "k"},
}
RECORDS = [DnsRecord("example.com", RecordType.MX, "10 mail.example.com.", 300)]


async def test_the_publisher_calls_the_provider_only_when_something_is_due() -> None:
    clock, fake = Clock(), CountingPublish(OK)
    publisher = DnsPublisher(
        resync_seconds=300, clock=clock, publish_fn=fake, authoritative=lambda z: [f"ns.{z}:53"]
    )

    async def run(records: list[DnsRecord] = RECORDS, credential: str = "key") -> DnsOutcome:
        return await publisher.publish(
            "d", spec(PDNS), records, zone="example.com", owner="a/b", credential=credential
        )

    assert await run() is OK
    assert fake.calls[0]["authoritative"] == ["ns.example.com:53"]
    await run()
    assert len(fake.calls) == 1  # nothing changed, resync not due
    assert publisher.due_in() == 300
    await run(credential="rotated")
    assert len(fake.calls) == 2  # a new credential is worth a try at once
    await run([*RECORDS, DnsRecord("example.com", RecordType.TXT, "v=spf1 mx ~all", 300)])
    assert len(fake.calls) == 3
    clock.now += 301
    await run([*RECORDS, DnsRecord("example.com", RecordType.TXT, "v=spf1 mx ~all", 300)])
    assert len(fake.calls) == 4  # the resync: drift is found on the timer


async def test_temporary_failures_are_retried_with_growing_delays() -> None:
    clock, fake = Clock(), CountingPublish(DOWN, DOWN, OK)
    publisher = DnsPublisher(retry_seconds=(5, 10), clock=clock, publish_fn=fake)

    async def run() -> DnsOutcome:
        return await publisher.publish(
            "d", spec(PDNS), RECORDS, zone="example.com", owner="a/b", credential="key"
        )

    assert (await run()).temporary
    assert publisher.due_in() == 5
    clock.now += 5
    assert (await run()).temporary
    assert publisher.due_in() == 10
    clock.now += 10
    assert await run() is OK
    assert len(fake.calls) == 3
    publisher.forget([])
    assert publisher.due_in() is None
