"""A real ACME CA for tests: Pebble (Debian `pebble`) on loopback, validating DNS-01 challenges
against a DNS server we choose (normally the PowerDNS harness), so an order goes through the
same steps as against Let's Encrypt:

    with PowerDns() as pdns, Pebble(dns_server=pdns.nameserver) as ca:
        ca.directory_url, ca.ca_bundle  # what an ACME client needs

Pebble's sample config points at certificate files the package does not ship, so the listener
certificate comes from a throwaway `trustme` CA; `ca_bundle` is that CA's PEM for the client.
`PEBBLE_VA_NOSLEEP=1` skips the random validation delay and `PEBBLE_WFE_NONCEREJECT=0` stops it
rejecting 5% of good nonces on purpose, and `PEBBLE_AUTHZREUSE=0` makes every order validate
its challenges afresh, so runs are quick and deterministic.

Manual check: ``python -m tests.harness.pebble``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import tempfile
import time
from pathlib import Path
from typing import Final

import httpx
import trustme

from tests.harness.controlplane import _Process
from tests.harness.loopback import LoopbackServer
from tests.harness.ports import free_port

BINARY: Final = "pebble"
START_TIMEOUT: Final = 20.0


class PebbleError(RuntimeError):
    pass


class Pebble(LoopbackServer):
    """Pebble's ACME API on https://127.0.0.1:`port`/dir and its management API (roots,
    intermediates) on `management_port`. `validity_seconds` sets the lifetime of issued
    certificates, so renewal can be tested with certificates that live seconds."""

    log_name = "pebble.log"

    def __init__(self, dns_server: str, *, validity_seconds: int | None = None) -> None:
        self.dns_server = dns_server
        self.validity_seconds = validity_seconds
        self.workdir = Path(tempfile.mkdtemp(prefix="letterbox-pebble-"))
        self.port = free_port()
        self.management_port = free_port()
        self._listener_ca = trustme.CA()
        self.ca_bundle = self.workdir / "listener-ca.pem"
        self._process: _Process | None = None

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> Pebble:
        if shutil.which(BINARY) is None:
            raise PebbleError("Pebble is not installed: apt-get install pebble (make test does)")
        leaf = self._listener_ca.issue_cert("127.0.0.1", "localhost")
        cert, key = self.workdir / "cert.pem", self.workdir / "key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        self._listener_ca.cert_pem.write_to_path(str(self.ca_bundle))
        settings: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(cert),
            "privateKey": str(key),
            # HTTP-01 / TLS-ALPN-01 ports: unused (DNS-01 only) but Pebble wants them set.
            "httpPort": free_port(),
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity_seconds is not None:
            settings["certificateValidityPeriod"] = self.validity_seconds
        config = self.workdir / "pebble.json"
        config.write_text(json.dumps({"pebble": settings}))
        self._process = _Process(
            "pebble",
            [
                "env",
                "PEBBLE_VA_NOSLEEP=1",
                "PEBBLE_WFE_NONCEREJECT=0",
                # Pebble reuses a valid authorization for half the orders by default; a test
                # that needs every order to publish its challenges must not depend on chance.
                "PEBBLE_AUTHZREUSE=0",
                BINARY,
                "-config",
                str(config),
                "-dnsserver",
                self.dns_server,
            ],
            self.workdir / "pebble.log",
            self.workdir,
        )
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(verify=context, timeout=5.0) as http:
            while time.monotonic() < deadline:
                if not self._process.alive():
                    raise PebbleError(f"pebble exited: {self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(self.directory_url).status_code == 200:
                        return self
                time.sleep(0.05)
        raise PebbleError(f"pebble silent for {START_TIMEOUT}s: {self.log_tail()}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def root_pem(self) -> str:
        """The root that issued certificates chain to (generated afresh at each start)."""
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with httpx.Client(verify=context, timeout=5.0) as http:
            response = http.get(url)
            response.raise_for_status()
            return response.text


def main() -> None:
    from tests.harness.powerdns import PowerDns

    with PowerDns() as pdns, Pebble(pdns.nameserver) as ca:
        print("directory:", ca.directory_url)
        print("root:", ca.root_pem().splitlines()[0])


if __name__ == "__main__":
    main()
