"""The operator's web server over real sockets: the MTA-STS policy fetched over HTTPS by httpx
and by an independent implementation (postfix-mta-sts-resolver, asking a real PowerDNS for the
`_mta-sts` TXT record), autoconfig fetched the way Thunderbird fetches it, Outlook's autodiscover,
the routing rules and limits, and a renewed certificate picked up without a restart."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509

from letterbox.api.maildomain import MailDomainSpec
from letterbox.render.autoconfig import OUTLOOK_REQUEST_NS, OUTLOOK_RESPONSE_NS
from letterbox.render.dnsrecords import domain_records
from letterbox.render.mtasts import render_mta_sts
from letterbox.web.server import MAX_BODY, WebServer
from letterbox.web.tls import ReloadingTlsContext
from tests.harness.ports import free_port
from tests.harness.powerdns import PowerDns

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "example.org"
HOSTS = (f"mta-sts.{DOMAIN}", f"autoconfig.{DOMAIN}", f"autodiscover.{DOMAIN}", DOMAIN)
SPEC = MailDomainSpec.model_validate({"domain": DOMAIN})
NO_AUTOCONFIG = MailDomainSpec.model_validate({"domain": "example.net", "autoconfig": False})
THUNDERBIRD_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"


@dataclass
class Pki:
    ca: trustme.CA
    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "tls.crt"

    @property
    def key(self) -> Path:
        return self.directory / "tls.key"

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    def issue(self) -> int:
        """A fresh certificate for every host, swapped in the way kubelet updates a mounted
        Secret: written beside and renamed over the old files. Returns its serial."""
        leaf = self.ca.issue_cert(*HOSTS)
        for target, pem in ((self.cert, leaf.cert_chain_pems[0]), (self.key, leaf.private_key_pem)):
            staging = target.with_suffix(".new")
            pem.write_to_path(str(staging))
            staging.replace(target)
        return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = Pki(trustme.CA(), tmp_path)
    pki.ca.cert_pem.write_to_path(str(pki.ca_file))
    pki.issue()
    return pki


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[WebServer]:
    server = WebServer(tls=ReloadingTlsContext(pki.cert, pki.key))
    server.set_domains([SPEC, NO_AUTOCONFIG])
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def server() -> AsyncIterator[WebServer]:
    server = WebServer()
    server.set_domains([SPEC, NO_AUTOCONFIG])
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


def _https(pki: Pki, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=ssl.create_default_context(cafile=pki.ca_file), timeout=10.0, **kwargs
    )


async def _get(
    client: httpx.AsyncClient, server: WebServer, host: str, path: str, **kwargs: Any
) -> httpx.Response:
    """GET https://<host><path> from the server on 127.0.0.1, verifying the certificate for
    `host` (SNI and Host header as a client that resolved `host` would send)."""
    return await client.get(
        f"https://127.0.0.1:{server.port}{path}",
        headers={"Host": host, **kwargs.pop("headers", {})},
        extensions={"sni_hostname": host},
        **kwargs,
    )


def _peer_serial(response: httpx.Response) -> int:
    ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


# --- MTA-STS ------------------------------------------------------------------------------------


async def test_policy_over_https(tls_server: WebServer, pki: Pki) -> None:
    policy = render_mta_sts(SPEC)
    async with _https(pki) as client:
        response = await _get(client, tls_server, f"mta-sts.{DOMAIN}", "/.well-known/mta-sts.txt")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.content == policy.text.encode()
    assert response.content.count(b"\r\n") == 4
    assert tls_server.served_policy_ids() == {
        DOMAIN: policy.id,
        "example.net": render_mta_sts(NO_AUTOCONFIG).id,
    }
    assert tls_server.serves(DOMAIN, policy.id)


class ConnectProxy:
    """A minimal HTTP CONNECT proxy that sends every tunnel for our hosts to the web server: it
    stands in for the DNS A record and port 443 of mta-sts.<domain>, which a test cannot own.
    The client still does TLS end to end with the server, verifying the name."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.tunnels: list[str] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        host = target.rpartition(":")[0]
        if method != "CONNECT" or host not in HOSTS:
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        self.tunnels.append(target)
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(
            pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True
        )


@pytest.fixture(scope="module")
def pdns() -> Iterator[PowerDns]:
    with PowerDns() as server:
        server.create_zone(DOMAIN)
        yield server


def _publish_mta_sts_record(pdns: PowerDns, spec: MailDomainSpec) -> str:
    """Publish the `_mta-sts` TXT record exactly as the operator renders it."""
    (record,) = [r for r in domain_records(spec) if r.name == f"_mta-sts.{DOMAIN}"]
    pdns.set_rrsets(DOMAIN, [(record.name, "TXT", 60, [f'"{record.value}"'])])
    return record.value


async def _sts_resolver(
    pdns: PowerDns, pki: Pki, proxy_port: int, known_id: str | None = None
) -> dict[str, Any]:
    env = {
        **os.environ,
        "SSL_CERT_FILE": str(pki.ca_file),
        "HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}",
        "NO_PROXY": "",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.mta_sts_resolver_client",
        DOMAIN,
        pdns.nameserver,
        *([known_id] if known_id else []),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


async def test_postfix_mta_sts_resolver_fetches_our_policy(
    tls_server: WebServer, pki: Pki, pdns: PowerDns
) -> None:
    assert tls_server.port is not None
    proxy = ConnectProxy(tls_server.port)
    proxy_port = await proxy.start()
    try:
        txt = _publish_mta_sts_record(pdns, SPEC)
        first = await _sts_resolver(pdns, pki, proxy_port)
        assert first == {
            "status": "VALID",
            "id": render_mta_sts(SPEC).id,
            "policy": {
                "version": "STSv1",
                "mode": "testing",
                "mx": [f"mail.{DOMAIN}"],
                "max_age": 7 * 86400,
            },
        }
        assert txt == f"v=STSv1; id={first['id']}"
        assert proxy.tunnels == [f"mta-sts.{DOMAIN}:443"]

        # A policy change, in the order the operator must keep: serve first, then publish.
        changed = MailDomainSpec.model_validate(
            {"domain": DOMAIN, "mailHost": "mx.example.org", "mtaSts": {"mode": "enforce"}}
        )
        tls_server.set_domains([changed])
        unchanged_id = await _sts_resolver(pdns, pki, proxy_port, known_id=first["id"])
        assert unchanged_id["status"] == "NOT_CHANGED"  # the old id is still in DNS
        _publish_mta_sts_record(pdns, changed)
        second = await _sts_resolver(pdns, pki, proxy_port, known_id=first["id"])
        assert second["status"] == "VALID"
        assert second["id"] == render_mta_sts(changed).id != first["id"]
        assert second["policy"]["mode"] == "enforce"
        assert second["policy"]["mx"] == ["mx.example.org"]

        # A domain the server does not serve: the policy fetch fails (404), as it must.
        tls_server.set_domains([])
        assert (await _sts_resolver(pdns, pki, proxy_port))["status"] == "FETCH_ERROR"
    finally:
        await proxy.stop()


# --- client autoconfiguration -------------------------------------------------------------------


def _check_thunderbird_document(text: bytes) -> None:
    """What Thunderbird's readFromXML (accountConfig parsing) insists on."""
    root = ET.fromstring(text)
    assert root.tag == "clientConfig"
    provider = root.find("emailProvider")
    assert provider is not None
    assert DOMAIN in [d.text for d in provider.findall("domain")]
    incoming = provider.findall("incomingServer")
    outgoing = provider.findall("outgoingServer")
    assert incoming and outgoing
    for server in (*incoming, *outgoing):
        assert server.get("type") in ("imap", "smtp")
        assert server.findtext("hostname") == f"mail.{DOMAIN}"
        assert 1 <= int(server.findtext("port") or "0") <= 65535
        assert server.findtext("socketType") in ("plain", "SSL", "STARTTLS")
        assert server.findtext("authentication") == "password-cleartext"
        assert server.findtext("username") == "%EMAILADDRESS%"
    assert [(s.findtext("port"), s.findtext("socketType")) for s in incoming] == [
        ("993", "SSL"),
        ("143", "STARTTLS"),
    ]
    assert [(s.findtext("port"), s.findtext("socketType")) for s in outgoing] == [
        ("465", "SSL"),
        ("587", "STARTTLS"),
    ]


async def test_thunderbird_autoconfig(tls_server: WebServer, pki: Pki) -> None:
    """Thunderbird asks autoconfig.<domain> with the address, then the domain's well-known
    path."""
    headers = {"User-Agent": THUNDERBIRD_UA, "Accept": "*/*"}
    async with _https(pki) as client:
        first = await _get(
            client,
            tls_server,
            f"autoconfig.{DOMAIN}",
            "/mail/config-v1.1.xml",
            params={"emailaddress": f"alice@{DOMAIN}"},
            headers=headers,
        )
        well_known = await _get(
            client,
            tls_server,
            DOMAIN,
            "/.well-known/autoconfig/mail/config-v1.1.xml",
            params={"emailaddress": f"alice@{DOMAIN}"},
            headers=headers,
        )
    for response in (first, well_known):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/xml")
        _check_thunderbird_document(response.content)
    assert first.content == well_known.content


async def test_outlook_autodiscover(tls_server: WebServer, pki: Pki) -> None:
    request = (
        f'<?xml version="1.0" encoding="utf-8"?>\n<Autodiscover xmlns="{OUTLOOK_REQUEST_NS}">'
        f"<Request><EMailAddress>Alice@{DOMAIN}</EMailAddress><AcceptableResponseSchema>"
        f"{OUTLOOK_RESPONSE_NS}</AcceptableResponseSchema></Request></Autodiscover>"
    )
    async with _https(pki) as client:
        for host, path in (
            (f"autodiscover.{DOMAIN}", "/autodiscover/autodiscover.xml"),
            (DOMAIN, "/Autodiscover/Autodiscover.xml"),
        ):
            response = await client.post(
                f"https://127.0.0.1:{tls_server.port}{path}",
                content=request,
                headers={"Host": host, "Content-Type": "text/xml"},
                extensions={"sni_hostname": host},
            )
            assert response.status_code == 200, response.text
            ns = {"r": OUTLOOK_RESPONSE_NS}
            account = ET.fromstring(response.content).find("r:Response/r:Account", ns)
            assert account is not None
            imap = account.find("r:Protocol", ns)
            assert imap is not None
            assert imap.findtext("r:Type", namespaces=ns) == "IMAP"
            assert imap.findtext("r:Server", namespaces=ns) == f"mail.{DOMAIN}"
            assert imap.findtext("r:LoginName", namespaces=ns) == f"Alice@{DOMAIN}"


# --- routing and limits (plain HTTP, as behind an Ingress) ----------------------------------


async def test_routing_methods_and_limits(server: WebServer) -> None:
    base = f"http://127.0.0.1:{server.port}"
    policy_path = "/.well-known/mta-sts.txt"
    async with httpx.AsyncClient(timeout=10.0) as client:

        async def call(method: str, host: str, path: str, **kwargs: Any) -> httpx.Response:
            headers = {"Host": host, **kwargs.pop("headers", {})}
            return await client.request(method, base + path, headers=headers, **kwargs)

        ok = await call("GET", f"MTA-STS.{DOMAIN}.:443", policy_path)
        assert ok.status_code == 200
        head = await call("HEAD", f"mta-sts.{DOMAIN}", policy_path)
        assert head.status_code == 200
        assert head.content == b""
        assert int(head.headers["content-length"]) == len(ok.content)

        assert (await call("GET", "mta-sts.example.com", policy_path)).status_code == 404
        assert (await call("GET", f"mta-sts.{DOMAIN}", "/other")).status_code == 404
        assert (await call("GET", f"autoconfig.{DOMAIN}", policy_path)).status_code == 404
        # No autoconfig for a domain that does not publish it, on any of its names.
        assert (
            await call("GET", "autoconfig.example.net", "/mail/config-v1.1.xml")
        ).status_code == 404
        assert (
            await call("GET", "example.net", "/.well-known/autoconfig/mail/config-v1.1.xml")
        ).status_code == 404

        wrong = await call("POST", f"mta-sts.{DOMAIN}", policy_path, content=b"x")
        assert wrong.status_code == 405
        assert set(wrong.headers["allow"].split(",")) == {"GET", "HEAD"}
        wrong = await call("GET", f"autodiscover.{DOMAIN}", "/autodiscover/autodiscover.xml")
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "POST"

        health = await call("GET", "anything", "/healthz")
        assert (health.status_code, health.text) == (200, "ok\n")

        autodiscover = "/autodiscover/autodiscover.xml"
        host = f"autodiscover.{DOMAIN}"
        too_big = await call("POST", host, autodiscover, content=b"<a>" + b"x" * MAX_BODY)
        assert too_big.status_code == 413
        bomb = (
            b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "bbbbbbbbbb">]>'
            b"<a><EMailAddress>&b;@example.org</EMailAddress></a>"
        )
        assert (await call("POST", host, autodiscover, content=bomb)).status_code == 400
        assert (await call("POST", host, autodiscover, content=b"<a>")).status_code == 400
        nobody = b"<a><EMailAddress>not an address</EMailAddress></a>"
        assert (await call("POST", host, autodiscover, content=nobody)).status_code == 400
        other = b"<a><EMailAddress>bob@example.com</EMailAddress></a>"
        assert (await call("POST", host, autodiscover, content=other)).status_code == 404

        huge_header = await call(
            "GET", f"mta-sts.{DOMAIN}", policy_path, headers={"X-Big": "y" * 8000}
        )
        assert huge_header.status_code in (400, 431)


async def test_set_domains_swaps_what_is_served(server: WebServer) -> None:
    url = f"http://127.0.0.1:{server.port}/.well-known/mta-sts.txt"
    async with httpx.AsyncClient(timeout=10.0) as client:
        other = MailDomainSpec.model_validate({"domain": "example.com"})
        server.set_domains([other])
        assert (await client.get(url, headers={"Host": "mta-sts.example.com"})).status_code == 200
        assert (await client.get(url, headers={"Host": f"mta-sts.{DOMAIN}"})).status_code == 404
        assert server.served_policy_ids() == {"example.com": render_mta_sts(other).id}


# --- certificate renewal without a restart ---------------------------------------------------


async def test_renewed_certificate_on_new_connections_open_ones_keep_working(
    tls_server: WebServer, pki: Pki
) -> None:
    assert tls_server.tls is not None
    host, path = f"mta-sts.{DOMAIN}", "/.well-known/mta-sts.txt"
    async with _https(pki) as kept, _https(pki) as fresh:
        before = await _get(kept, tls_server, host, path)
        old_serial = _peer_serial(before)
        old_stream = before.extensions["network_stream"]

        new_serial = pki.issue()
        assert new_serial != old_serial

        after = await _get(fresh, tls_server, host, path)
        assert after.status_code == 200
        assert _peer_serial(after) == new_serial
        assert tls_server.tls.reloads == 1

        # The keep-alive connection opened before the renewal is the same one and still works.
        again = await _get(kept, tls_server, host, path)
        assert again.status_code == 200
        assert again.extensions["network_stream"] is old_stream
        assert _peer_serial(again) == old_serial


# --- the `letterbox web` command ----------------------------------------------------------------


async def test_letterbox_web_command_serves_manifests(pki: Pki, tmp_path: Path) -> None:
    manifest = tmp_path / "domain.yaml"
    manifest.write_text(
        "apiVersion: letterbox.dev/v1alpha1\nkind: MailDomain\n"
        f"metadata: {{name: example-org}}\nspec: {{domain: {DOMAIN}, mtaSts: {{mode: enforce}}}}\n"
    )
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "letterbox",
        "web",
        str(manifest),
        "--listen",
        f"127.0.0.1:{port}",
        "--tls-cert",
        str(pki.cert),
        "--tls-key",
        str(pki.key),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        expected = MailDomainSpec.model_validate({"domain": DOMAIN, "mtaSts": {"mode": "enforce"}})
        assert line.decode().strip() == (
            f"serving {DOMAIN}: MTA-STS policy id {render_mta_sts(expected).id} on port {port}"
        )
        async with _https(pki) as client:
            response = await client.get(
                f"https://127.0.0.1:{port}/.well-known/mta-sts.txt",
                headers={"Host": f"mta-sts.{DOMAIN}"},
                extensions={"sni_hostname": f"mta-sts.{DOMAIN}"},
            )
        assert response.content == render_mta_sts(expected).text.encode()
    finally:
        process.terminate()
        await process.wait()
