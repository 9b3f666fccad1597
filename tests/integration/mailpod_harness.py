"""Start a real `mailpod run` process on free loopback ports for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
import yaml
from argon2 import PasswordHasher

from mailpod.storage.maildir import arrival_order
from tests.conftest import REPO
from tests.harness.ports import free_port

# Cheap parameters keep the suite fast; production hashes use the argon2 defaults.
_FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

PASSWORDS = {"alice@example.com": "alice-secret-1", "bob@example.com": "bob-secret-2"}
MAIL_HOST = "mail.example.com"


def fast_hash(password: str) -> str:
    return _FAST_HASHER.hash(password)


@dataclass
class MailpodProcess:
    root: Path
    workers: int = 2
    overrides: dict[str, Any] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert(MAIL_HOST, "localhost", "127.0.0.1")
        self.cert_file = self.root / "tls.crt"
        self.key_file = self.root / "tls.key"
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        cert.private_key_pem.write_to_path(str(self.key_file))
        self.ca_file = self.root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.mail_root = self.root / "mail"
        self.config_file = self.root / "config.yaml"
        self.log_file = self.root / "mailpod.log"
        self.ports = {
            kind: free_port()
            for kind in ("smtp", "submission", "submissions", "imap", "imaps", "http")
        }
        self.write_config()

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "hostname": MAIL_HOST,
            "listeners": [
                {"kind": kind, "address": "127.0.0.1", "port": port}
                for kind, port in self.ports.items()
            ],
            "tls": {"cert_file": str(self.cert_file), "key_file": str(self.key_file)},
            "domains": ["example.com", "example.org"],
            "mailboxes": [
                {
                    "address": "alice@example.com",
                    "password_hash": fast_hash(PASSWORDS["alice@example.com"]),
                    "send_as": ["sales@example.com"],
                },
                {
                    "address": "bob@example.com",
                    "password_hash": fast_hash(PASSWORDS["bob@example.com"]),
                    "quota_bytes": 20000,
                },
            ],
            "aliases": [
                {
                    "address": "team@example.com",
                    "destinations": ["alice@example.com", "bob@example.com"],
                },
                {"address": "sales@example.com", "destinations": ["alice@example.com"]},
                {"address": "@example.org", "destinations": ["alice@example.com"]},
            ],
            "storage": {"mail_root": str(self.mail_root), "queue_dir": str(self.root / "queue")},
            # Every test client shares 127.0.0.1: allow the 100-session test through.
            "limits": {"max_message_bytes": 200_000, "max_connections_per_ip": 200},
        }
        config.update(self.overrides)
        return config

    def expect_proxy(
        self, kind: str, trusted: Sequence[str], config: dict[str, Any] | None = None
    ) -> MailpodProcess:
        """Write the config (`config`, else the default) with the `kind` listener expecting a
        PROXY v2 header, honoured from the `trusted` networks."""
        config = config or self.config()
        for listener in config["listeners"]:
            if listener["kind"] == kind:
                listener["proxy_protocol"] = True
        config["trusted_proxies"] = list(trusted)
        self.write_config(config)
        return self

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config or self.config()))
        os.replace(tmp, self.config_file)

    def _banner(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.ports["smtp"]), timeout=1) as sock:
            return sock.recv(100).startswith(b"220")

    def start(self, probe: Callable[[], bool] | None = None) -> MailpodProcess:
        """Start and wait until `probe` (default: an SMTP banner on the smtp port) succeeds."""
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'operator'}:{REPO}"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailpod",
                "run",
                "--config",
                str(self.config_file),
                "--workers",
                str(self.workers),
                "--log-format",
                "json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log_file.open("ab"),
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mailpod exited {self.proc.returncode}:\n{self.log()}")
            try:
                if (probe or self._banner)():
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"mailpod did not start:\n{self.log()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def maildir(self, address: str, folder: str = "") -> Path:
        local, domain = address.split("@")
        base = self.mail_root / domain / local
        return base / f".{folder}" if folder else base

    def messages(self, address: str) -> list[bytes]:
        new = self.maildir(address) / "new"
        cur = self.maildir(address) / "cur"
        files = [*(new.iterdir() if new.exists() else []), *(cur.iterdir() if cur.exists() else [])]
        return [f.read_bytes() for f in sorted(files, key=lambda f: arrival_order(f.name))]


def proxy_v2_header(source: str, source_port: int = 40000, destination_port: int = 25) -> bytes:
    """A PROXY protocol v2 header for a TCP/IPv4 client `source` reaching 127.0.0.1, as a load
    balancer sends it."""
    addresses = socket.inet_aton(source) + socket.inet_aton("127.0.0.1")
    addresses += struct.pack("!HH", source_port, destination_port)
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    return signature + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


class TlsAfterProxy:
    """A client of an implicit-TLS listener behind a PROXY-protocol load balancer, over memory
    BIOs so the test decides what goes into each write: the PROXY header alone, or the header
    and the ClientHello together (as from a busy balancer, most likely read in one go)."""

    def __init__(self, raw: socket.socket, context: ssl.SSLContext, header: bytes) -> None:
        self.raw = raw
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=MAIL_HOST)
        self._header = header

    def handshake(self, together: bool) -> None:
        header = self._header
        if not together:
            self.raw.sendall(header)
            header = b""
        while True:
            try:
                self.tls.do_handshake()
                self.raw.sendall(self.outgoing.read())  # the client's Finished
                return
            except ssl.SSLWantReadError:
                self.raw.sendall(header + self.outgoing.read())
                header = b""
                assert self._receive(), "connection closed during the TLS handshake"

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.raw.sendall(self.outgoing.read())

    def read_lines(self, count: int) -> list[bytes]:
        """At least `count` CRLF-terminated lines (fewer if the server closes)."""
        received = b""
        while received.count(b"\r\n") < count:
            try:
                received += self.tls.read(65536)
            except ssl.SSLWantReadError:
                if not self._receive():
                    break
        return received.split(b"\r\n")

    def _receive(self) -> bool:
        data = self.raw.recv(65536)
        self.incoming.write(data)
        return bool(data)


class SmtpLines:
    """A raw SMTP session over `sock` (its banner read first), one command at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.banner = self.reader.readline().decode()

    def command(self, line: str) -> str:
        """Send `line`; the last line of the reply."""
        self.sock.sendall(line.encode() + b"\r\n")
        while True:
            reply = self.reader.readline().decode()
            if reply[3:4] != "-":
                return reply

    def close(self) -> None:
        self.reader.close()
        self.sock.close()
