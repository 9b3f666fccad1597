"""Our SRS against postsrsd (Debian `postsrsd`, the SRS daemon Postfix sites run), over its real
TCP lookup-table sockets: each side reverses what the other forwards, byte for byte the same
addresses, and key rotation works across the two."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailpod.srs import SrsError, SrsRewriter
from tests.harness.ports import free_port

pytestmark = pytest.mark.integration

DOMAIN = "srs.ours.example"
KEYS = (b"new-key-2024", b"old-key-2023")  # postsrsd: first line signs, every line verifies


@dataclass
class PostSrsd:
    forward_port: int
    reverse_port: int

    def _ask(self, port: int, address: str) -> tuple[int, str]:
        """Postfix tcp_table: "get <url-encoded key>\\n" -> "<code> <url-encoded value>\\n"."""
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"get {urllib.parse.quote(address)}\n".encode())
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(4096)
                assert chunk, "postsrsd closed the connection"
                reply += chunk
        code, _, value = reply.decode().strip().partition(" ")
        return int(code), urllib.parse.unquote(value)

    def forward(self, address: str) -> str:
        code, value = self._ask(self.forward_port, address)
        assert code == 200, (code, value)
        return value

    def reverse(self, address: str) -> tuple[int, str]:
        return self._ask(self.reverse_port, address)


@pytest.fixture(scope="module")
def postsrsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostSrsd]:
    binary = shutil.which("postsrsd") or "/usr/sbin/postsrsd"
    assert Path(binary).exists(), "postsrsd is not installed (make system-deps)"
    root = Path(tmp_path_factory.mktemp("postsrsd"))
    secrets = root / "postsrsd.secret"
    secrets.write_bytes(b"\n".join(KEYS) + b"\n")
    secrets.chmod(0o600)
    server = PostSrsd(free_port(), free_port())
    proc = subprocess.Popen(
        [
            binary,
            f"-s{secrets}",
            f"-d{DOMAIN}",
            "-l127.0.0.1",
            "-4",
            f"-f{server.forward_port}",
            f"-r{server.reverse_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
            try:
                socket.create_connection(("127.0.0.1", server.reverse_port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "postsrsd did not start"
                time.sleep(0.05)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)


OURS = SrsRewriter(DOMAIN, KEYS)


def test_both_forward_to_the_same_address_and_reverse_each_other(postsrsd: PostSrsd) -> None:
    for sender in ("alice@example.net", "Bob.Smith+tag@Sub.Example.ORG"):
        theirs = postsrsd.forward(sender)
        ours = OURS.forward(sender)
        assert theirs.startswith("SRS0=") and theirs.endswith("@" + DOMAIN)
        assert ours == theirs
        assert OURS.reverse(theirs) == sender
        assert postsrsd.reverse(ours) == (200, sender)


def test_srs1_chains_agree(postsrsd: PostSrsd) -> None:
    upstream = SrsRewriter("hop1.example", (b"someone else's key",))
    srs0 = upstream.forward("carol@example.com")
    theirs = postsrsd.forward(srs0)
    assert theirs.startswith("SRS1=")
    assert OURS.forward(srs0) == theirs
    # A bounce to the SRS1 address goes back to the first hop's SRS0 address.
    assert OURS.reverse(theirs) == srs0
    assert postsrsd.reverse(theirs) == (200, srs0)


def test_rotation_across_implementations(postsrsd: PostSrsd) -> None:
    # An address made with the previous key (first hop before the rotation) still reverses.
    before_rotation = SrsRewriter(DOMAIN, (KEYS[1],)).forward("dave@example.net")
    assert postsrsd.reverse(before_rotation) == (200, "dave@example.net")
    assert OURS.reverse(before_rotation) == "dave@example.net"
    # Once the old key is dropped neither side accepts it.
    with pytest.raises(SrsError):
        SrsRewriter(DOMAIN, (KEYS[0],)).reverse(before_rotation)


def test_both_refuse_forgeries(postsrsd: PostSrsd) -> None:
    genuine = OURS.forward("erin@example.net")
    forged = genuine.replace("=example.net=erin@", "=evil.example=erin@")
    assert postsrsd.reverse(forged)[0] != 200
    with pytest.raises(SrsError):
        OURS.reverse(forged)
    foreign = SrsRewriter(DOMAIN, (b"not our key",)).forward("erin@example.net")
    assert postsrsd.reverse(foreign)[0] != 200
    with pytest.raises(SrsError):
        OURS.reverse(foreign)
    # Case folded by some MTA on the way back: both still accept it.
    assert postsrsd.reverse(genuine.lower())[0] == 200
    assert OURS.reverse(genuine.lower()) == "erin@example.net"
