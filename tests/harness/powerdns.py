"""A real authoritative DNS server for tests: PowerDNS (Debian `pdns-server` with the sqlite3
backend) on loopback ports, with its HTTP API, RFC 2136 updates (TSIG) and plain queries.

One process answers what DNS providers, the outbound MTA, the inbound checks and ACME DNS-01 all
need, so every DNS-touching test talks to the same real server:

    with PowerDns() as pdns:
        pdns.create_zone("example.org", [("example.org.", "MX", 300, ["10 mx.example.org."])])
        answer = pdns.query("example.org", "MX")

Manual check: ``python -m tests.harness.powerdns``.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import dns.message
import dns.query
import dns.rdatatype
import httpx

from tests.harness.controlplane import _Process
from tests.harness.loopback import LoopbackServer
from tests.harness.ports import free_port

SCHEMA: Final = Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql")
BINARY: Final = "pdns_server"
API_KEY: Final = "letterbox-test-api-key"
START_TIMEOUT: Final = 20.0

# (owner name, type, ttl, [record contents in zone-file syntax])
RRset = tuple[str, str, int, Sequence[str]]


class PowerDnsError(RuntimeError):
    pass


def fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


class PowerDns(LoopbackServer):
    """A PowerDNS authoritative server on 127.0.0.1:`dns_port` (UDP and TCP) with its API on
    127.0.0.1:`api_port`. Zones are native (no AXFR); RFC 2136 updates are accepted from loopback
    for zones that allow them (see `allow_updates`)."""

    log_name = "pdns.log"

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="letterbox-pdns-"))
        self.dns_port = free_port()
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}/api/v1/servers/localhost"
        self.api_key = API_KEY
        self._process: _Process | None = None
        self._http = httpx.Client(headers={"X-API-Key": API_KEY}, timeout=10.0)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> PowerDns:
        if shutil.which(BINARY) is None or not SCHEMA.exists():
            raise PowerDnsError(
                "PowerDNS is not installed: apt-get install pdns-server pdns-backend-sqlite3"
                " (make test installs it)"
            )
        database = self.workdir / "pdns.sqlite3"
        with sqlite3.connect(database) as db:
            db.executescript(SCHEMA.read_text())
        config = self.workdir / "pdns.conf"
        config.write_text(
            "\n".join(
                [
                    "launch=gsqlite3",
                    f"gsqlite3-database={database}",
                    "local-address=127.0.0.1",
                    f"local-port={self.dns_port}",
                    "api=yes",
                    f"api-key={API_KEY}",
                    "webserver=yes",
                    "webserver-address=127.0.0.1",
                    f"webserver-port={self.api_port}",
                    "webserver-allow-from=127.0.0.0/8",
                    "dnsupdate=yes",
                    "allow-dnsupdate-from=127.0.0.0/8",
                    "guardian=no",
                    "daemon=no",
                    "disable-syslog=yes",
                    f"socket-dir={self.workdir}",
                    # Tests change records and read them back at once: no packet or query cache.
                    "cache-ttl=0",
                    "negquery-cache-ttl=0",
                    "query-cache-ttl=0",
                    "zone-cache-refresh-interval=0",
                    "loglevel=4",
                ]
            )
            + "\n"
        )
        self._process = _Process(
            "pdns_server",
            [BINARY, f"--config-dir={self.workdir}", "--config-name="],
            self.workdir / "pdns.log",
            self.workdir,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self._process.alive():
                raise PowerDnsError(f"pdns_server exited: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if self._http.get(self.api_url).status_code == 200:
                    return self
            time.sleep(0.05)
        raise PowerDnsError(f"pdns_server silent for {START_TIMEOUT}s: {self.log_tail()}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        self._http.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def nameserver(self) -> str:
        """`host:port`, the form ResolverConfig.nameservers takes."""
        return f"127.0.0.1:{self.dns_port}"

    # --- the HTTP API -------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> Any:
        response = self._http.request(method, self.api_url + path, json=body)
        if response.status_code >= 400:
            raise PowerDnsError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def create_zone(
        self,
        zone: str,
        rrsets: Iterable[RRset] = (),
        nameservers: Sequence[str] = ("ns1.invalid.",),
    ) -> None:
        """A native zone with SOA and NS, plus `rrsets`."""
        self.api(
            "POST",
            "/zones",
            {
                "name": fqdn(zone),
                "kind": "Native",
                "nameservers": list(nameservers),
                "soa_edit_api": "INCEPTION-INCREMENT",
            },
        )
        self.set_rrsets(zone, rrsets)

    def set_rrsets(self, zone: str, rrsets: Iterable[RRset]) -> None:
        """Replace whole RRsets (an empty content list deletes the RRset)."""
        changes = []
        for name, rtype, ttl, contents in rrsets:
            change: dict[str, Any] = {"name": fqdn(name), "type": rtype, "ttl": ttl}
            if contents:
                change["changetype"] = "REPLACE"
                change["records"] = [{"content": c, "disabled": False} for c in contents]
            else:
                change["changetype"] = "DELETE"
            changes.append(change)
        if changes:
            self.api("PATCH", f"/zones/{fqdn(zone)}", {"rrsets": changes})

    def delete_zone(self, zone: str) -> None:
        self.api("DELETE", f"/zones/{fqdn(zone)}")

    def allow_updates(self, zone: str, key_name: str, algorithm: str = "hmac-sha256") -> str:
        """Create a TSIG key and allow RFC 2136 updates to `zone` signed with it; returns the
        base64 secret."""
        key = self.api("POST", "/tsigkeys", {"name": key_name, "algorithm": algorithm})
        self.api(
            "PUT",
            f"/zones/{fqdn(zone)}/metadata/TSIG-ALLOW-DNSUPDATE",
            {"kind": "TSIG-ALLOW-DNSUPDATE", "metadata": [key_name]},
        )
        secret: str = key["key"]
        return secret

    # --- queries ------------------------------------------------------------------------------

    def query(self, name: str, rtype: str) -> list[str]:
        """The record contents an authoritative query returns (text form), [] for none."""
        request = dns.message.make_query(fqdn(name), dns.rdatatype.from_text(rtype))
        response = dns.query.udp(request, "127.0.0.1", port=self.dns_port, timeout=5.0)
        return sorted(
            rdata.to_text()
            for rrset in response.answer
            if rrset.rdtype == dns.rdatatype.from_text(rtype)
            for rdata in rrset
        )


def main() -> None:
    with PowerDns() as pdns:
        pdns.create_zone("example.org", [("example.org.", "MX", 300, ["10 mx.example.org."])])
        print("MX:", pdns.query("example.org", "MX"))
        dig = ["dig", "+short", "@127.0.0.1", "-p", str(pdns.dns_port), "example.org", "SOA"]
        print("SOA:", subprocess.run(dig, capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
