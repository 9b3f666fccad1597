"""DANE (RFC 7672) with real DNSSEC: BIND signs the test zone (dnssec-policy, inline signing), a
second BIND validates it as the pod's resolver (trust anchor = the zone's key), so answers come
with the AD bit exactly as from a validating resolver in production. The MXs are aiosmtpd
servers with certificates from a CA the client does not trust: DANE-EE authenticates by the
TLSA record alone."""

from __future__ import annotations

import hashlib
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest
import trustme
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mailpod.config import OutboundConfig, ResolverConfig
from mailpod.dns import CachingResolver
from mailpod.queue.store import RcptStatus
from tests.harness.ports import free_port
from tests.integration.queue_harness import Runner, running_queue

pytestmark = pytest.mark.integration

ZONE = "dane.test"
MX_PORT = free_port()
TLS_MX, PLAIN_MX = "127.0.0.70", "127.0.0.71"
GOOD, WRONG, TA_ONLY, NO_TLS = (f"{name}.{ZONE}" for name in ("good", "wrong", "ta", "notls"))


@dataclass
class Recorder:
    received: list[tuple[list[str], bool]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((list(envelope.rcpt_tos), session.ssl is not None))
        return "250 2.0.0 OK"


def _named(workdir: Path, name: str, config: str) -> subprocess.Popen[bytes]:
    conf = workdir / f"{name}.conf"
    conf.write_text(config)
    return subprocess.Popen(
        ["named", "-g", "-c", str(conf)],
        stdout=(workdir / f"{name}.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


def _query(port: int, name: str, rtype: str) -> dns.message.Message:
    request = dns.message.make_query(name, dns.rdatatype.from_text(rtype), want_dnssec=True)
    return dns.query.udp(request, "127.0.0.1", port=port, timeout=2)


def _wait_for(check: Any, what: str, seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, dns.exception.DNSException):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def _options(workdir: Path, name: str, port: int, extra: str) -> str:
    # controls {}: no rndc channel (two nameds would fight over port 953).
    return (
        f'options {{ directory "{workdir}"; pid-file "{workdir}/{name}.pid"; '
        f"listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; {extra} }};\n"
        "controls { };\n"
    )


@dataclass
class DnssecDns:
    resolver_port: int


@pytest.fixture(scope="module")
def tls_key() -> trustme.LeafCert:
    return trustme.CA().issue_cert(f"mx.{GOOD}")  # a CA nobody trusts


@pytest.fixture(scope="module")
def dnssec(tls_key: trustme.LeafCert) -> Iterator[DnssecDns]:
    if shutil.which("named") is None:
        raise RuntimeError("BIND is not installed: apt-get install bind9 (make test installs it)")
    workdir = Path(tempfile.mkdtemp(prefix="dane-bind-"))
    (workdir / "keys").mkdir()
    certificate = x509.load_pem_x509_certificate(tls_key.cert_chain_pems[0].bytes())
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    good_hash = hashlib.sha256(spki).hexdigest()
    records = [
        "$TTL 60",
        f"@ IN SOA ns.{ZONE}. host.{ZONE}. 1 60 60 600 60",
        f"@ IN NS ns.{ZONE}.",
        "ns IN A 127.0.0.1",
    ]
    for domain, address, tlsa in (
        (GOOD, TLS_MX, f"3 1 1 {good_hash}"),
        (WRONG, TLS_MX, f"3 1 1 {'00' * 32}"),
        (TA_ONLY, TLS_MX, f"2 0 1 {'11' * 32}"),
        (NO_TLS, PLAIN_MX, f"3 1 1 {good_hash}"),
    ):
        label = domain.removesuffix(f".{ZONE}")
        records += [
            f"{label} IN MX 10 mx.{label}",
            f"mx.{label} IN A {address}",
            f"_{MX_PORT}._tcp.mx.{label} IN TLSA {tlsa}",
        ]
    (workdir / "zone.db").write_text("\n".join(records) + "\n")
    auth_port, resolver_port = free_port(), free_port()
    processes = [
        _named(
            workdir,
            "auth",
            _options(workdir, "auth", auth_port, "recursion no; dnssec-validation no;")
            + f'zone "{ZONE}" {{ type primary; file "{workdir}/zone.db"; '
            f'dnssec-policy default; inline-signing yes; key-directory "{workdir}/keys"; }};\n',
        )
    ]
    try:
        response = _wait_for(
            lambda: (r := _query(auth_port, ZONE, "DNSKEY")).answer and len(r.answer) > 1 and r,
            "the signed zone",
        )
        [key] = [
            k
            for rrset in response.answer
            if rrset.rdtype == dns.rdatatype.DNSKEY
            for k in rrset
            if k.flags == 257
        ]
        anchor = " ".join(key.to_text().split()[3:])
        processes.append(
            _named(
                workdir,
                "resolver",
                _options(
                    workdir,
                    "resolver",
                    resolver_port,
                    "recursion yes; allow-query { 127.0.0.0/8; }; dnssec-validation yes;",
                )
                + f'trust-anchors {{ "{ZONE}." static-key 257 3 13 "{anchor}"; }};\n'
                + f'zone "{ZONE}" {{ type forward; forward only; '
                f"forwarders {{ 127.0.0.1 port {auth_port}; }}; }};\n",
            )
        )
        _wait_for(lambda: _query(resolver_port, GOOD, "MX").flags & 0x20, "validated answers")
        yield DnssecDns(resolver_port)
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def servers(tls_key: trustme.LeafCert) -> Iterator[tuple[Recorder, Recorder]]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_key.configure_cert(context)
    tls, plain = Recorder(), Recorder()
    controllers = [
        Controller(tls, hostname=TLS_MX, port=MX_PORT, tls_context=context),
        Controller(plain, hostname=PLAIN_MX, port=MX_PORT),
    ]
    for controller in controllers:
        controller.start()
    try:
        yield tls, plain
    finally:
        for controller in controllers:
            controller.stop()


@pytest.fixture
async def runner(dnssec: DnssecDns, tmp_path: Path) -> AsyncIterator[Runner]:
    config = OutboundConfig(
        smtp_port=MX_PORT, connect_timeout_seconds=3.0, command_timeout_seconds=5.0
    )
    resolver = CachingResolver(ResolverConfig(nameservers=(f"127.0.0.1:{dnssec.resolver_port}",)))
    async with running_queue(config, resolver, tmp_path / "queue") as queue:
        yield queue


def _got(recorder: Recorder, rcpt: str) -> list[bool]:
    return [tls for rcpts, tls in recorder.received if rcpt in rcpts]


async def test_a_matching_tlsa_record_authenticates_an_untrusted_certificate(
    runner: Runner, servers: tuple[Recorder, Recorder]
) -> None:
    runner.enqueue(f"a@{GOOD}")
    assert await runner.runner.drain(20)
    assert _got(servers[0], f"a@{GOOD}") == [True]
    assert runner.outcomes(GOOD) == [("tlsa", "success")]


async def test_no_matching_tlsa_record_means_the_mail_waits(
    runner: Runner, servers: tuple[Recorder, Recorder]
) -> None:
    queue_id = runner.enqueue(f"a@{WRONG}")
    assert await runner.runner.drain(20)
    assert _got(servers[0], f"a@{WRONG}") == []
    message = runner.store.load(queue_id)
    assert message is not None and message.recipients[0].status is RcptStatus.DEFERRED
    assert runner.outcomes(WRONG) == [("tlsa", "tlsa-invalid")]


async def test_dane_requires_starttls(runner: Runner, servers: tuple[Recorder, Recorder]) -> None:
    queue_id = runner.enqueue(f"a@{NO_TLS}")
    assert await runner.runner.drain(20)
    assert _got(servers[1], f"a@{NO_TLS}") == []
    message = runner.store.load(queue_id)
    assert message is not None and message.recipients[0].status is RcptStatus.DEFERRED
    assert runner.outcomes(NO_TLS) == [("tlsa", "starttls-not-supported")]


async def test_only_unusable_records_still_require_tls(
    runner: Runner, servers: tuple[Recorder, Recorder]
) -> None:
    runner.enqueue(f"a@{TA_ONLY}")
    assert await runner.runner.drain(20)
    assert _got(servers[0], f"a@{TA_ONLY}") == [True]
