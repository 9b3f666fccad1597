"""MTA-STS, STARTTLS and smarthost delivery against real servers: aiosmtpd MXs with STARTTLS
and trustme certificates (one valid for the MX names, one for the wrong name), an HTTPS policy
server with a trustme certificate (and one the client must not trust), PowerDNS for MX, A and
the _mta-sts TXT records, and an aiosmtpd relay requiring STARTTLS and AUTH."""

from __future__ import annotations

import contextlib
import http.server
import ssl
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from mailpod.config import OutboundConfig, RelayHost, ResolverConfig
from mailpod.dns import CachingResolver
from mailpod.metrics import REGISTRY
from mailpod.queue.store import RcptStatus
from tests.harness.ports import free_port
from tests.harness.powerdns import PowerDns
from tests.integration.queue_harness import Runner, running_queue

pytestmark = pytest.mark.integration

ZONE = "sts.test"
MX_PORT = free_port()
HTTPS_PORT = free_port()
GOOD_MX, BAD_MX, PLAIN_MX, RELAY = "127.0.0.30", "127.0.0.31", "127.0.0.32", "127.0.0.33"
GOOD_HTTPS, BAD_HTTPS = "127.0.0.40", "127.0.0.41"

# domain: (MX address, policy server address or None, policy text or None)
ENFORCE = f"enforce.{ZONE}"
MISMATCH = f"mismatch.{ZONE}"
BADCERT = f"badcert.{ZONE}"
TESTING = f"testing.{ZONE}"
NONE = f"none.{ZONE}"
UNTRUSTED = f"untrusted.{ZONE}"
PLAIN = f"plain.{ZONE}"
ENFORCE_PLAIN = f"enforceplain.{ZONE}"


def _policy(mode: str, *mx: str) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), "max_age: 86400"]
    return "\r\n".join(lines) + "\r\n"


SETUP: dict[str, tuple[str, str | None, str | None]] = {
    ENFORCE: (GOOD_MX, GOOD_HTTPS, _policy("enforce", f"*.{ENFORCE}")),
    MISMATCH: (GOOD_MX, GOOD_HTTPS, _policy("enforce", "mx.elsewhere.example")),
    BADCERT: (BAD_MX, GOOD_HTTPS, _policy("enforce", f"mx.{BADCERT}")),
    TESTING: (BAD_MX, GOOD_HTTPS, _policy("testing", f"mx.{TESTING}")),
    NONE: (PLAIN_MX, GOOD_HTTPS, _policy("none")),
    UNTRUSTED: (PLAIN_MX, BAD_HTTPS, _policy("enforce", "nothing.example")),
    PLAIN: (PLAIN_MX, None, None),
    ENFORCE_PLAIN: (PLAIN_MX, GOOD_HTTPS, _policy("enforce", f"mx.{ENFORCE_PLAIN}")),
}


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    tls: bool
    user: str | None = None


@dataclass
class Recorder:
    received: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        user = session.auth_data.login.decode() if session.auth_data else None
        self.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), session.ssl is not None, user)
        )
        return "250 2.0.0 OK"


class PolicyHandler(http.server.BaseHTTPRequestHandler):
    policies: ClassVar[dict[str, str]] = {}

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").split(":")[0]
        policy = self.policies.get(host.removeprefix("mta-sts."))
        if self.path != "/.well-known/mta-sts.txt" or policy is None:
            self.send_error(404)
            return
        body = policy.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Peers:
    ca: trustme.CA
    ca_file: Path
    good: Recorder
    bad: Recorder
    plain: Recorder
    relay: Recorder
    password_file: Path


def _https(address: str, context: ssl.SSLContext) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer((address, HTTPS_PORT), PolicyHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _tls(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@pytest.fixture(scope="module")
def peers(powerdns: PowerDns) -> Iterator[Peers]:
    workdir = Path(tempfile.mkdtemp(prefix="sts-"))
    ca, rogue = trustme.CA(), trustme.CA()
    ca_file = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    rrsets: list[tuple[str, str, int, list[str]]] = [
        (f"relay.{ZONE}", "A", 60, [RELAY]),
    ]
    for domain, (mx, https, policy) in SETUP.items():
        rrsets.append((domain, "MX", 60, [f"10 mx.{domain}."]))
        rrsets.append((f"mx.{domain}", "A", 60, [mx]))
        if https is not None and policy is not None:
            rrsets.append((f"_mta-sts.{domain}", "TXT", 60, ['"v=STSv1; id=20260101"']))
            rrsets.append((f"mta-sts.{domain}", "A", 60, [https]))
            PolicyHandler.policies[domain] = policy
    powerdns.create_zone(ZONE, rrsets)
    good_cert = ca.issue_cert(*(f"mx.{d}" for d in SETUP), f"relay.{ZONE}")
    bad_cert = ca.issue_cert("wrong.example")
    https_cert = ca.issue_cert(*(f"mta-sts.{d}" for d in SETUP))
    rogue_cert = rogue.issue_cert(*(f"mta-sts.{d}" for d in SETUP))
    recorders = [Recorder() for _ in range(4)]
    password_file = workdir / "relay-password"
    password_file.write_text("relay-secret\n")

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
        ok = isinstance(auth, LoginPassword) and auth.password == b"relay-secret"
        return AuthResult(success=ok, auth_data=auth if ok else None)

    controllers = [
        Controller(recorders[0], hostname=GOOD_MX, port=MX_PORT,
                   tls_context=_tls(good_cert)),
        Controller(recorders[1], hostname=BAD_MX, port=MX_PORT,
                   tls_context=_tls(bad_cert)),
        Controller(recorders[2], hostname=PLAIN_MX, port=MX_PORT),
        Controller(
            recorders[3],
            hostname=RELAY,
            port=MX_PORT,
            authenticator=authenticate,
            tls_context=_tls(good_cert), require_starttls=True,
        ),
    ]  # fmt: skip
    for controller in controllers:
        controller.start()
    servers = [_https(GOOD_HTTPS, _tls(https_cert)), _https(BAD_HTTPS, _tls(rogue_cert))]
    try:
        good, bad, plain, relay = recorders
        yield Peers(ca, ca_file, good, bad, plain, relay, password_file)
    finally:
        for server in servers:
            server.shutdown()
        for controller in controllers:
            controller.stop()


@contextlib.asynccontextmanager
async def _runner(
    powerdns: PowerDns, peers: Peers, tmp_path: Path, **settings: Any
) -> AsyncIterator[Runner]:
    config = OutboundConfig.model_validate(
        {
            "smtp_port": MX_PORT,
            "mta_sts_port": HTTPS_PORT,
            "ca_file": str(peers.ca_file),
            "connect_timeout_seconds": 3.0,
            "command_timeout_seconds": 5.0,
            **settings,
        }
    )
    resolver = CachingResolver(ResolverConfig(nameservers=(powerdns.nameserver,)))
    async with running_queue(config, resolver, tmp_path / "queue") as runner:
        yield runner


@pytest.fixture
async def mx(powerdns: PowerDns, peers: Peers, tmp_path: Path) -> AsyncIterator[Runner]:
    async with _runner(powerdns, peers, tmp_path) as runner:
        yield runner


def _delivered(recorder: Recorder, rcpt: str) -> list[Received]:
    return [r for r in recorder.received if rcpt in r.rcpts]


def _tls_sessions(policy: str, result: str) -> float:
    labels = {"policy": policy, "result": result}
    return REGISTRY.get_sample_value("mailpod_outbound_tls_sessions_total", labels) or 0.0


async def test_enforce_delivers_over_verified_tls_to_a_wildcard_mx(
    mx: Runner, peers: Peers
) -> None:
    before = _tls_sessions("sts", "success")
    mx.enqueue(f"a@{ENFORCE}")
    await mx.settle()
    [received] = _delivered(peers.good, f"a@{ENFORCE}")
    assert received.tls
    assert mx.outcomes(ENFORCE) == [("sts", "success")]
    assert _tls_sessions("sts", "success") == before + 1  # counted for monitoring too


async def test_enforce_with_an_mx_the_policy_does_not_list_waits(mx: Runner, peers: Peers) -> None:
    queue_id = mx.enqueue(f"a@{MISMATCH}")
    await mx.settle()
    assert _delivered(peers.good, f"a@{MISMATCH}") == []
    assert mx.status(queue_id) is RcptStatus.DEFERRED
    assert ("sts", "certificate-host-mismatch") in mx.outcomes(MISMATCH)


async def test_enforce_with_a_wrong_certificate_waits(mx: Runner, peers: Peers) -> None:
    queue_id = mx.enqueue(f"a@{BADCERT}")
    await mx.settle()
    assert _delivered(peers.bad, f"a@{BADCERT}") == []
    assert mx.status(queue_id) is RcptStatus.DEFERRED
    [(policy, result)] = mx.outcomes(BADCERT)
    assert policy == "sts"
    assert result in ("certificate-host-mismatch", "certificate-not-trusted", "validation-failure")


async def test_enforce_without_starttls_waits(mx: Runner, peers: Peers) -> None:
    before = _tls_sessions("sts", "starttls-not-supported")
    queue_id = mx.enqueue(f"a@{ENFORCE_PLAIN}")
    await mx.settle()
    assert _delivered(peers.plain, f"a@{ENFORCE_PLAIN}") == []
    assert mx.status(queue_id) is RcptStatus.DEFERRED
    assert mx.outcomes(ENFORCE_PLAIN) == [("sts", "starttls-not-supported")]
    assert _tls_sessions("sts", "starttls-not-supported") == before + 1


async def test_testing_mode_logs_the_failure_and_delivers(mx: Runner, peers: Peers) -> None:
    mx.enqueue(f"a@{TESTING}")
    await mx.settle()
    [received] = _delivered(peers.bad, f"a@{TESTING}")
    assert received.tls  # still encrypted, just not authenticated
    assert mx.outcomes(TESTING)[0][0] == "sts"
    assert mx.outcomes(TESTING)[0][1] != "success"


async def test_mode_none_and_no_policy_deliver_opportunistically(mx: Runner, peers: Peers) -> None:
    mx.enqueue(f"a@{NONE}")
    mx.enqueue(f"a@{PLAIN}")
    await mx.settle()
    assert len(_delivered(peers.plain, f"a@{NONE}")) == 1
    assert len(_delivered(peers.plain, f"a@{PLAIN}")) == 1
    assert mx.outcomes(PLAIN) == [("no-policy-found", "starttls-not-supported")]


async def test_a_policy_served_with_an_untrusted_certificate_is_ignored(
    mx: Runner, peers: Peers
) -> None:
    # The "enforce" policy behind the rogue certificate would forbid this MX; it must not count.
    mx.enqueue(f"a@{UNTRUSTED}")
    await mx.settle()
    assert len(_delivered(peers.plain, f"a@{UNTRUSTED}")) == 1


async def test_policies_are_cached_by_id(mx: Runner, peers: Peers) -> None:
    first = await mx.connector.mta_sts.policy(ENFORCE)
    PolicyHandler.policies[ENFORCE] = _policy("testing", "changed.example")
    try:
        second = await mx.connector.mta_sts.policy(ENFORCE)  # same TXT id: no refetch
    finally:
        PolicyHandler.policies[ENFORCE] = SETUP[ENFORCE][2] or ""
    assert first is second
    assert first is not None and first.mode == "enforce"


@pytest.fixture
async def relayed(powerdns: PowerDns, peers: Peers, tmp_path: Path) -> AsyncIterator[Runner]:
    relay = RelayHost(
        host=f"relay.{ZONE}",
        port=MX_PORT,
        username="mailpod",
        password_file=peers.password_file,
        domains=(f"far.{ZONE}",),
    )
    async with _runner(powerdns, peers, tmp_path, relays=[relay.model_dump()]) as runner:
        yield runner


async def test_a_smarthost_gets_the_domains_routed_to_it_over_tls_with_auth(
    relayed: Runner, peers: Peers
) -> None:
    relayed.enqueue(f"x@far.{ZONE}")  # no MX at all: only the relay can take it
    relayed.enqueue(f"y@{PLAIN}")  # not routed: direct to its MX
    await relayed.settle()
    [received] = _delivered(peers.relay, f"x@far.{ZONE}")
    assert received.tls
    assert received.user == "mailpod"
    assert len(_delivered(peers.plain, f"y@{PLAIN}")) == 1


async def test_a_smarthost_refusing_our_password_defers_the_mail(
    relayed: Runner, peers: Peers
) -> None:
    peers.password_file.write_text("wrong\n")
    try:
        queue_id = relayed.enqueue(f"z@far.{ZONE}")
        await relayed.settle()
    finally:
        peers.password_file.write_text("relay-secret\n")
    assert _delivered(peers.relay, f"z@far.{ZONE}") == []
    assert relayed.status(queue_id) is RcptStatus.DEFERRED
