"""Built-in ACME against a real CA: Pebble validating DNS-01 through a real PowerDNS.

The challenge TXT records are published through PowerDNS's HTTP API by a `TxtPublisher` that
reads, edits and replaces the RRset (the domain's DnsProvider takes this place in the operator).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from letterbox.acme.issuer import AcmeIssuer, generate_account_key
from letterbox.acme.policy import Backoff
from letterbox.certs.acme import (
    ISSUANCE_FAILED,
    ISSUED,
    RENEWAL_FAILING,
    AcmeCertificates,
    AcmeRequest,
)
from letterbox.certs.dns01 import ProviderTxtPublisher
from letterbox.certs.store import ACCOUNT_KEY_KEY, DirectorySecretStore
from letterbox.dns.powerdns import PowerDnsProvider
from tests.harness.pebble import Pebble
from tests.harness.powerdns import PowerDns

pytestmark = pytest.mark.integration

VALIDITY_SECONDS = 90


class Recording:
    """The operator's DNS-01 path (the domain's PowerDNS provider behind the TxtPublisher
    adapter), with a note of every call."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        zone: str,
        authoritative: Sequence[str],
        *,
        propagation_timeout: float = 30.0,
    ) -> None:
        self.provider = PowerDnsProvider(api_url, api_key)
        self.publisher = ProviderTxtPublisher(
            self.provider,
            zone,
            authoritative=authoritative,
            propagation_timeout=propagation_timeout,
        )
        self.calls: list[tuple[str, str, str]] = []
        self.waited: list[float] = []
        """Seconds each wait for the authoritative servers took."""

    async def publish(self, name: str, value: str) -> None:
        self.calls.append(("publish", name, value))
        await self.publisher.publish(name, value)

    async def wait_visible(self, records: Sequence[tuple[str, str]]) -> None:
        started = time.monotonic()
        try:
            await self.publisher.wait_visible(records)
        finally:
            self.waited.append(time.monotonic() - started)

    async def withdraw(self, name: str, value: str) -> None:
        self.calls.append(("withdraw", name, value))
        await self.publisher.withdraw(name, value)


@pytest.fixture(scope="module")
def pebble(powerdns: PowerDns) -> Iterator[Pebble]:
    with Pebble(powerdns.nameserver, validity_seconds=VALIDITY_SECONDS) as ca:
        yield ca


def _api(powerdns: PowerDns) -> str:
    return f"http://127.0.0.1:{powerdns.api_port}"


def _zone(powerdns: PowerDns, zone: str) -> Recording:
    powerdns.create_zone(zone, [(f"mail.{zone}", "A", 300, ["127.0.0.1"])])
    return Recording(_api(powerdns), powerdns.api_key, zone, [powerdns.nameserver])


def _verify_chain(pebble: Pebble, chain_pem: bytes, host: str) -> x509.Certificate:
    leaf, *intermediates = x509.load_pem_x509_certificates(chain_pem)
    root = x509.load_pem_x509_certificate(pebble.root_pem().encode())
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName(host))
    verifier.verify(leaf, intermediates)
    return leaf


class Clock:
    """Real time moved by `offset`, or pinned to `at` (a moment taken from a certificate: the
    CA's clock, not ours, decides its validity)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)
        self.at: datetime | None = None

    def __call__(self) -> datetime:
        return self.at if self.at is not None else datetime.now(UTC) + self.offset


async def test_issue_renew_and_reuse_the_account(
    powerdns: PowerDns, pebble: Pebble, tmp_path: Path
) -> None:
    zone = "acme-issue.letterbox.test"
    publisher = _zone(powerdns, zone)
    store = DirectorySecretStore(tmp_path)
    clock = Clock()
    certificates = AcmeCertificates(store, ca_bundle=str(pebble.ca_bundle), clock=clock)
    hosts = (f"mail.{zone}", f"mta-sts.{zone}", f"autoconfig.{zone}")
    request = AcmeRequest("mail-tls", hosts, pebble.directory_url, "mail-acme-account")

    started = time.monotonic()
    state = await certificates.ensure(request, publisher)
    issue_seconds = time.monotonic() - started
    assert state.ready and state.reason == ISSUED, state.message
    secret = await store.get("mail-tls")
    assert secret is not None
    leaf = _verify_chain(pebble, secret["tls.crt"], f"mta-sts.{zone}")
    assert leaf.serial_number == state.serial
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == set(hosts)
    assert state.not_after == leaf.not_valid_after_utc
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert state.renew_at == leaf.not_valid_after_utc - lifetime / 3
    # Every challenge value was published, then withdrawn: nothing left in the zone.
    published = [c for c in publisher.calls if c[0] == "publish"]
    assert {name for _, name, _ in published} == {f"_acme-challenge.{h}" for h in hosts}
    assert len([c for c in publisher.calls if c[0] == "withdraw"]) == len(published)
    for host in hosts:
        assert powerdns.query(f"_acme-challenge.{host}", "TXT") == []
    account = await store.get("mail-acme-account")
    assert account is not None and b"PRIVATE KEY" in account[ACCOUNT_KEY_KEY]

    # Not due: a second step changes nothing.
    again = await certificates.ensure(request, publisher)
    assert again.serial == state.serial and len(publisher.calls) == 2 * len(hosts)

    # Past two thirds of the lifetime: renewed, a new serial in the same Secret.
    assert state.renew_at is not None
    clock.at = state.renew_at + timedelta(seconds=1)
    started = time.monotonic()
    renewed = await certificates.ensure(request, publisher)
    renew_seconds = time.monotonic() - started
    assert renewed.ready and renewed.reason == ISSUED, renewed.message
    assert renewed.serial != state.serial
    secret = await store.get("mail-tls")
    assert secret is not None
    assert _verify_chain(pebble, secret["tls.crt"], f"mail.{zone}").serial_number == renewed.serial

    # A fresh operator with the stored account key finds the same account, no new one.
    fresh = AcmeCertificates(store, ca_bundle=str(pebble.ca_bundle))
    more = AcmeRequest("more-tls", (f"mail.{zone}",), pebble.directory_url, "mail-acme-account")
    assert (await fresh.ensure(more, publisher)).ready
    assert (await store.get("mail-acme-account")) == account
    print(f"\nACME DNS-01 issue {issue_seconds:.2f}s, renewal {renew_seconds:.2f}s")


async def test_a_new_host_gets_a_new_certificate(
    powerdns: PowerDns, pebble: Pebble, tmp_path: Path
) -> None:
    zone = "acme-hosts.letterbox.test"
    publisher = _zone(powerdns, zone)
    certificates = AcmeCertificates(DirectorySecretStore(tmp_path), ca_bundle=str(pebble.ca_bundle))
    first = AcmeRequest("tls", (f"mail.{zone}",), pebble.directory_url, "account")
    before = await certificates.ensure(first, publisher)
    wider = AcmeRequest("tls", (f"mail.{zone}", f"mta-sts.{zone}"), pebble.directory_url, "account")
    after = await certificates.ensure(wider, publisher)
    assert before.ready and after.ready and after.serial != before.serial


async def test_dns_provider_down_backs_off_then_recovers(
    powerdns: PowerDns, pebble: Pebble, tmp_path: Path
) -> None:
    zone = "acme-down.letterbox.test"
    working = _zone(powerdns, zone)
    # The provider's API is unreachable (nothing listens there).
    from tests.harness.ports import free_port

    down = Recording(f"http://127.0.0.1:{free_port()}", "k", zone, [powerdns.nameserver])
    clock = Clock()
    backoff = Backoff(base=timedelta(seconds=60), maximum=timedelta(seconds=600))
    certificates = AcmeCertificates(
        DirectorySecretStore(tmp_path),
        ca_bundle=str(pebble.ca_bundle),
        backoff=backoff,
        clock=clock,
    )
    request = AcmeRequest("tls", (f"mail.{zone}",), pebble.directory_url, "account")

    failed = await certificates.ensure(request, down)
    assert not failed.ready and failed.reason == ISSUANCE_FAILED
    assert failed.failures == 1 and "publishing TXT" in failed.message
    assert "PowerDNS API" in failed.message  # the provider's own words reach the status
    assert failed.retry_at is not None
    assert abs((failed.retry_at - clock()).total_seconds() - 60) < 5

    # Within the back-off nothing is attempted, even with DNS back.
    waiting = await certificates.ensure(request, working)
    assert waiting.failures == 1 and working.calls == []

    clock.offset = timedelta(seconds=61)
    second = await certificates.ensure(request, down)
    assert second.failures == 2 and second.retry_at is not None
    assert abs((second.retry_at - clock()).total_seconds() - 120) < 5  # doubled

    clock.offset = timedelta(seconds=61 + 121)
    recovered = await certificates.ensure(request, working)
    assert recovered.ready and recovered.reason == ISSUED and recovered.failures == 0


async def test_renewal_failing_keeps_the_certificate_and_warns_before_expiry(
    powerdns: PowerDns, pebble: Pebble, tmp_path: Path
) -> None:
    zone = "acme-warn.letterbox.test"
    publisher = _zone(powerdns, zone)
    clock = Clock()
    certificates = AcmeCertificates(
        DirectorySecretStore(tmp_path), ca_bundle=str(pebble.ca_bundle), clock=clock
    )
    request = AcmeRequest("tls", (f"mail.{zone}",), pebble.directory_url, "account")
    issued = await certificates.ensure(request, publisher)
    assert issued.ready and not issued.expiry_warning
    # Renewal due, and the zone is gone from the DNS server.
    powerdns.delete_zone(zone)
    assert issued.renew_at is not None and issued.not_after is not None
    clock.at = issued.renew_at + timedelta(seconds=1)
    failing = await certificates.ensure(request, publisher)
    assert failing.ready and failing.reason == RENEWAL_FAILING, failing.message
    assert failing.serial == issued.serial
    # 90-second certificates are always within a week of expiry: the warning is due.
    assert failing.expiry_warning
    clock.at = issued.not_after + timedelta(seconds=1)
    expired = await certificates.ensure(request, publisher)
    assert not expired.ready and expired.reason == ISSUANCE_FAILED


async def test_the_ca_rejects_a_challenge_it_cannot_see(pebble: Pebble, tmp_path: Path) -> None:
    # The TXT goes to a DNS server the CA does not ask (a second PowerDNS).
    with PowerDns() as elsewhere:
        zone = "acme-unseen.letterbox.test"
        publisher = _zone(elsewhere, zone)
        issuer = AcmeIssuer(
            pebble.directory_url, generate_account_key(), ca_bundle=str(pebble.ca_bundle)
        )
        from letterbox.acme.issuer import AcmeError

        with pytest.raises(AcmeError, match="could not validate DNS-01"):
            await issuer.issue((f"mail.{zone}",), publisher)
        # Withdrawn even though the order failed.
        assert elsewhere.query(f"_acme-challenge.mail.{zone}", "TXT") == []


# --- propagation: the CA is told to look only once every authoritative server answers --------

LAG_SECONDS = 2.0


@pytest.fixture(scope="module")
def secondary() -> Iterator[PowerDns]:
    """A second authoritative server of the same zones, filled by the test (a secondary that
    has not caught up yet, or never does). Pebble does not ask it."""
    with PowerDns() as server:
        yield server


def _two_servers(powerdns: PowerDns, secondary: PowerDns, zone: str, timeout: float) -> Recording:
    for server in (powerdns, secondary):
        server.create_zone(zone, [(f"mail.{zone}", "A", 300, ["127.0.0.1"])])
    return Recording(
        _api(powerdns),
        powerdns.api_key,
        zone,
        [powerdns.nameserver, secondary.nameserver],
        propagation_timeout=timeout,
    )


async def test_challenges_wait_for_a_lagging_authoritative_server(
    powerdns: PowerDns, pebble: Pebble, secondary: PowerDns
) -> None:
    zone = "acme-lag.letterbox.test"
    publisher = _two_servers(powerdns, secondary, zone, 30.0)
    name = f"_acme-challenge.mail.{zone}"
    answered: list[float] = []

    async def catch_up_late() -> None:
        # The secondary gets the value LAG_SECONDS after the primary has it (a zone transfer).
        values: list[str] = []
        for _ in range(600):
            if values := powerdns.query(name, "TXT"):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(LAG_SECONDS)
        await asyncio.to_thread(secondary.set_rrsets, zone, [(name, "TXT", 60, values)])
        answered.append(time.monotonic())

    catching_up = asyncio.create_task(catch_up_late())
    issuer = AcmeIssuer(
        pebble.directory_url, generate_account_key(), ca_bundle=str(pebble.ca_bundle)
    )
    issued = await issuer.issue((f"mail.{zone}",), publisher)
    await catching_up
    assert issued.hosts == (f"mail.{zone}",)
    assert len(publisher.waited) == 1 and publisher.waited[0] >= LAG_SECONDS
    print(f"\nwaited {publisher.waited[0]:.2f}s for a secondary {LAG_SECONDS}s behind")


async def test_a_server_that_never_serves_the_challenge_fails_the_attempt(
    powerdns: PowerDns, pebble: Pebble, secondary: PowerDns
) -> None:
    zone = "acme-stale.letterbox.test"
    publisher = _two_servers(powerdns, secondary, zone, 1.5)
    issuer = AcmeIssuer(
        pebble.directory_url, generate_account_key(), ca_bundle=str(pebble.ca_bundle)
    )
    from letterbox.acme.issuer import AcmeError

    with pytest.raises(
        AcmeError, match=r"not served by every authoritative server within 1\.5s"
    ) as e:
        await issuer.issue((f"mail.{zone}",), publisher)
    assert secondary.nameserver in str(e.value)
    assert 1.5 <= publisher.waited[0] < 5.0
    # Withdrawn at the primary again.
    assert powerdns.query(f"_acme-challenge.mail.{zone}", "TXT") == []


# --- back-off across restarts ------------------------------------------------------------------


async def test_back_off_survives_a_restart(
    powerdns: PowerDns, pebble: Pebble, tmp_path: Path
) -> None:
    zone = "acme-restart.letterbox.test"
    working = _zone(powerdns, zone)
    from tests.harness.ports import free_port

    down = Recording(f"http://127.0.0.1:{free_port()}", "k", zone, [powerdns.nameserver])
    store = DirectorySecretStore(tmp_path)
    clock = Clock()
    backoff = Backoff(base=timedelta(seconds=60), maximum=timedelta(seconds=600))

    def operator() -> AcmeCertificates:
        """A freshly started operator: nothing in memory, the same Secrets."""
        return AcmeCertificates(
            store, ca_bundle=str(pebble.ca_bundle), backoff=backoff, clock=clock
        )

    request = AcmeRequest(
        "tls", (f"mail.{zone}",), pebble.directory_url, "account", state_secret="acme-state"
    )
    failed = await operator().ensure(request, down)
    assert failed.failures == 1 and failed.retry_at is not None
    stored = await store.get("acme-state")
    assert stored is not None and json.loads(stored["tls"])["failures"] == 1

    # Restarted within the back-off: nothing is attempted, the same retry time is reported.
    waiting = await operator().ensure(request, working)
    assert not waiting.ready and waiting.reason == ISSUANCE_FAILED
    assert waiting.failures == 1 and waiting.retry_at == failed.retry_at
    assert "PowerDNS API" in waiting.message and working.calls == []

    # Due: fails again, and the doubled delay is what the next start sees.
    clock.offset = timedelta(seconds=61)
    again = await operator().ensure(request, down)
    assert again.failures == 2 and again.retry_at is not None
    restarted = await operator().ensure(request, working)
    assert restarted.failures == 2 and restarted.retry_at == again.retry_at
    assert working.calls == []

    # A changed request (a new host) is not held back by the old one's failures; success
    # clears the stored state.
    wider = AcmeRequest(
        "tls",
        (f"mail.{zone}", f"mta-sts.{zone}"),
        pebble.directory_url,
        "account",
        state_secret="acme-state",
    )
    issued = await operator().ensure(wider, working)
    assert issued.ready and issued.reason == ISSUED, issued.message
    assert await store.get("acme-state") == {}
