"""A real BIND 9 (`named`) for tests: primary zones on a loopback port, updatable by RFC 2136
and transferable by AXFR only with the zone's TSIG key (made by `tsig-keygen`).

    with Bind({"example.org": [("example.org", "MX", 300, ["10 mx.example.org."])]}) as bind:
        bind.key_name, bind.secret        # the key that may update and transfer every zone
        bind.other_key_name, bind.other_secret  # a key named known to named but allowed nothing
        bind.query("example.org", "MX")

Manual check: ``python -m tests.harness.bind``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from tests.harness.controlplane import _Process
from tests.harness.loopback import LoopbackServer
from tests.harness.ports import free_port
from tests.harness.powerdns import RRset, fqdn

NAMED: Final = "/usr/sbin/named"
TSIG_KEYGEN: Final = "/usr/sbin/tsig-keygen"
START_TIMEOUT: Final = 20.0
_SECRET = re.compile(r'secret\s+"([^"]+)"')


class BindError(RuntimeError):
    pass


def keygen(name: str, algorithm: str = "hmac-sha256") -> str:
    """A fresh base64 TSIG secret from BIND's own tsig-keygen."""
    out = subprocess.run(
        [TSIG_KEYGEN, "-a", algorithm, name], capture_output=True, text=True, check=True
    ).stdout
    match = _SECRET.search(out)
    if match is None:
        raise BindError(f"tsig-keygen printed no secret: {out!r}")
    return match.group(1)


class Bind(LoopbackServer):
    """named on 127.0.0.1:`port` (UDP and TCP) serving `zones` as primary."""

    log_name = "named.log"

    def __init__(self, zones: Mapping[str, Sequence[RRset]], *, algorithm: str = "hmac-sha256"):
        self.zones = {zone.rstrip("."): list(rrsets) for zone, rrsets in zones.items()}
        self.workdir = Path(tempfile.mkdtemp(prefix="letterbox-bind-"))
        self.port = free_port()
        self.algorithm = algorithm
        self.key_name = "letterbox-update"
        self.other_key_name = "someone-else"
        self.secret = ""
        self.other_secret = ""
        self._process: _Process | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _zone_file(self, zone: str, rrsets: Sequence[RRset]) -> str:
        lines = [
            f"$ORIGIN {fqdn(zone)}",
            "$TTL 300",
            f"@ 300 IN SOA ns1.{fqdn(zone)} hostmaster.{fqdn(zone)} 1 3600 600 86400 300",
            f"@ 300 IN NS ns1.{fqdn(zone)}",
            "ns1 300 IN A 127.0.0.1",
        ]
        for name, rtype, ttl, contents in rrsets:
            lines += [f"{fqdn(name)} {ttl} IN {rtype} {content}" for content in contents]
        return "\n".join(lines) + "\n"

    def start(self) -> Bind:
        if shutil.which(NAMED) is None or shutil.which(TSIG_KEYGEN) is None:
            raise BindError("BIND is not installed: apt-get install bind9 bind9-utils")
        self.secret = keygen(self.key_name, self.algorithm)
        self.other_secret = keygen(self.other_key_name, self.algorithm)
        config = [
            "options {",
            f'  directory "{self.workdir}";',
            f"  listen-on port {self.port} {{ 127.0.0.1; }};",
            "  listen-on-v6 { none; };",
            f'  pid-file "{self.workdir}/named.pid";',
            f'  session-keyfile "{self.workdir}/session.key";',
            f'  managed-keys-directory "{self.workdir}";',
            "  recursion no;",
            "  dnssec-validation no;",
            "  allow-transfer { none; };",
            "  notify no;",
            "};",
            "controls { };",
            f'key "{self.key_name}" {{ algorithm {self.algorithm}; secret "{self.secret}"; }};',
            f'key "{self.other_key_name}" {{ algorithm {self.algorithm}; '
            f'secret "{self.other_secret}"; }};',
        ]
        for zone, rrsets in self.zones.items():
            path = self.workdir / f"{zone}.db"
            path.write_text(self._zone_file(zone, rrsets))
            config += [
                f'zone "{zone}" {{',
                "  type primary;",
                f'  file "{path}";',
                f'  allow-update {{ key "{self.key_name}"; }};',
                f'  allow-transfer {{ key "{self.key_name}"; }};',
                "};",
            ]
        conf = self.workdir / "named.conf"
        conf.write_text("\n".join(config) + "\n")
        # -g: foreground, log to stderr; -n 1: one worker on this shared 2-core machine.
        self._process = _Process(
            "named",
            [NAMED, "-g", "-4", "-n", "1", "-c", str(conf)],
            self.workdir / "named.log",
            self.workdir,
        )
        first = next(iter(self.zones), None)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self._process.alive():
                raise BindError(f"named exited: {self.log_tail()}")
            if first is None or self.query(first, "SOA", timeout=0.5):
                return self
            time.sleep(0.05)
        raise BindError(f"named silent for {START_TIMEOUT}s: {self.log_tail()}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def query(self, name: str, rtype: str, *, timeout: float = 5.0) -> list[str]:
        """What an authoritative query returns, in text form ([] for nothing or no answer)."""
        request = dns.message.make_query(fqdn(name), dns.rdatatype.from_text(rtype))
        try:
            response = dns.query.udp(request, "127.0.0.1", port=self.port, timeout=timeout)
        except dns.exception.Timeout:
            return []
        return sorted(
            rdata.to_text()
            for rrset in response.answer
            if rrset.rdtype == dns.rdatatype.from_text(rtype)
            for rdata in rrset
        )

    def ttl(self, name: str, rtype: str) -> int | None:
        request = dns.message.make_query(fqdn(name), dns.rdatatype.from_text(rtype))
        response = dns.query.udp(request, "127.0.0.1", port=self.port, timeout=5.0)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.from_text(rtype):
                return int(rrset.ttl)
        return None


def main() -> None:
    with Bind({"example.org": [("example.org", "MX", 300, ["10 mx.example.org."])]}) as bind:
        print("MX:", bind.query("example.org", "MX"))
        print("key:", bind.key_name, "port:", bind.port)


if __name__ == "__main__":
    main()
