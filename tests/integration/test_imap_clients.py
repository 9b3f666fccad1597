"""IMAP against a real mailpod process, as real clients use it: imapclient replaying
Thunderbird's start-up (CAPABILITY, ID, LIST-STATUS, SELECT (CONDSTORE), UID FETCH CHANGEDSINCE,
IDLE woken by an SMTP delivery), and the IMAP listener behind a PROXY protocol v2 balancer."""

from __future__ import annotations

import json
import re
import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient
from imapclient.response_parser import parse_fetch_response

from tests.integration.mailpod_harness import (
    PASSWORDS,
    MailpodProcess,
    TlsAfterProxy,
    proxy_v2_header,
)

pytestmark = pytest.mark.integration

USER = "alice@example.com"


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailpodProcess]:
    server = MailpodProcess(Path(tmp_path_factory.mktemp("imap-clients")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def deliver(pod: MailpodProcess, subject: str) -> None:
    message = f"From: <x@remote.test>\r\nTo: {USER}\r\nSubject: {subject}\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", pod.ports["smtp"], timeout=10) as client:
        client.sendmail("x@remote.test", [USER], message.encode())


def changed_since(client: IMAPClient, modseq: int) -> dict[int, dict[bytes, Any]]:
    """UID FETCH 1:* (FLAGS) (CHANGEDSINCE n), verbatim (imapclient's fetch() cannot send
    "1:*")."""
    status, data = client._imap.uid("FETCH", "1:*", f"(FLAGS) (CHANGEDSINCE {modseq})")
    assert status == "OK"
    if data == [None]:
        return {}
    parsed: dict[int, dict[bytes, Any]] = parse_fetch_response(data, True, True)
    return parsed


def test_thunderbird_startup_with_imapclient(pod: MailpodProcess) -> None:
    for n in range(3):
        deliver(pod, f"before {n}")
    client = IMAPClient(
        "127.0.0.1", port=pod.ports["imaps"], ssl=True, ssl_context=pod.client_context()
    )
    try:
        capabilities = set(client.capabilities())
        assert {b"IMAP4REV1", b"IMAP4REV2", b"IDLE", b"CONDSTORE", b"LIST-STATUS"} <= capabilities
        assert client.id_({"name": "Thunderbird", "version": "128.0"}) == ((b"name", b"mailpod"),)
        client.login(USER, PASSWORDS[USER])
        # LIST-STATUS, as Thunderbird sends it (imapclient has no helper for RETURN options).
        imap = client._imap
        status, _ = imap.xatom(
            "LIST",
            '""',
            '"*"',
            "RETURN (SPECIAL-USE STATUS (MESSAGES UNSEEN UIDNEXT HIGHESTMODSEQ))",
        )
        assert status == "OK"
        listed = [line.decode() for line in imap.untagged_responses.pop("LIST")]
        assert '(\\HasNoChildren \\Sent) "." Sent' in listed
        statuses = {line.split(b" ", 1)[0]: line for line in imap.untagged_responses.pop("STATUS")}
        inbox = statuses[b"INBOX"].decode()
        assert re.search(r"MESSAGES 3 UNSEEN 3 UIDNEXT 4 HIGHESTMODSEQ \d+", inbox), inbox
        # SELECT "INBOX" (CONDSTORE): imaplib sends the argument as given.
        status, _ = imap.select("INBOX (CONDSTORE)")
        assert status == "OK"
        highest = int(imap.untagged_responses["OK"][-1].split()[1].rstrip(b"]"))
        selected = client._process_select_response(imap.untagged_responses)
        assert selected[b"HIGHESTMODSEQ"] == highest
        assert selected[b"EXISTS"] == 3
        # Nothing changed since HIGHESTMODSEQ; then a flag change shows up with its MODSEQ.
        assert changed_since(client, highest) == {}
        client.add_flags([2], [b"\\Flagged"])
        changed = changed_since(client, highest)
        assert list(changed) == [2]
        assert changed[2][b"MODSEQ"][0] > highest
        assert b"\\Flagged" in changed[2][b"FLAGS"]
        # IDLE until a delivery arrives.
        client.idle()
        deliver(pod, "during idle")
        events = client.idle_check(timeout=5)
        client.idle_done()
        assert (4, b"EXISTS") in events
        client.logout()
    finally:
        client.shutdown() if client._imap.state != "LOGOUT" else None


def test_qresync_resync_with_imapclient(pod: MailpodProcess) -> None:
    client = IMAPClient(
        "127.0.0.1", port=pod.ports["imaps"], ssl=True, ssl_context=pod.client_context()
    )
    client.login(USER, PASSWORDS[USER])
    assert client.enable("QRESYNC") == [b"QRESYNC"]
    selected = client.select_folder("INBOX")
    uidvalidity, highest = selected[b"UIDVALIDITY"], selected[b"HIGHESTMODSEQ"]
    uids = client.search("ALL")
    client.delete_messages(uids[:1])
    client.expunge()
    client.close_folder()
    status, _ = client._imap.select(f"INBOX (QRESYNC ({uidvalidity} {highest}))")
    assert status == "OK"
    vanished = client._imap.untagged_responses.get("VANISHED", [])
    assert vanished == [b"(EARLIER) %d" % uids[0]]
    client.logout()


# --- PROXY protocol v2 --------------------------------------------------------------------------


def _proxied_pod(tmp_path: Path, trusted: list[str]) -> MailpodProcess:
    return MailpodProcess(tmp_path, workers=1).expect_proxy("imap", trusted)


def _login_through_proxy(pod: MailpodProcess, header: bytes) -> list[bytes]:
    """PROXY header, greeting, STARTTLS, LOGIN: the lines the server sent back."""
    with socket.create_connection(("127.0.0.1", pod.ports["imap"]), timeout=10) as raw:
        # The CRLF ends the header's binary tail should the server take it for a command line.
        raw.sendall(header + b"\r\n")
        reader = raw.makefile("rb")
        greeting = reader.readline()
        if not greeting:
            return []
        raw.sendall(b"s STARTTLS\r\n")
        lines = [greeting]
        while not (line := reader.readline()).startswith(b"s "):
            if not line:
                return lines
            lines.append(line)
        if not line.startswith(b"s OK"):
            return [*lines, line]
        context = pod.client_context()
        with context.wrap_socket(raw, server_hostname="mail.example.com") as tls:
            tls_reader = tls.makefile("rb")
            tls.sendall(f"l LOGIN {USER} {PASSWORDS[USER]}\r\n".encode())
            lines.append(tls_reader.readline())
            tls.sendall(b"o LOGOUT\r\n")
            lines += [tls_reader.readline(), tls_reader.readline()]
        return lines


def _login_peers(pod: MailpodProcess) -> list[str]:
    peers = []
    for line in pod.log().splitlines():
        with_json = line[line.find("{") :]
        try:
            record = json.loads(with_json)
        except ValueError:
            continue
        if record.get("msg") == "imap login":
            peers.append(record.get("peer"))
    return peers


def test_imap_behind_a_trusted_proxy_sees_the_client(tmp_path: Path) -> None:
    pod = _proxied_pod(tmp_path, ["127.0.0.0/8"])
    header = proxy_v2_header("198.51.100.9", 40001, pod.ports["imap"])
    pod.start(probe=lambda: bool(_login_through_proxy(pod, header)))
    try:
        lines = _login_through_proxy(pod, header)
        assert lines[0].startswith(b"* OK [CAPABILITY ")
        assert any(line.startswith(b"l OK ") for line in lines), lines
        assert "198.51.100.9" in _login_peers(pod)
    finally:
        pod.stop()


def test_imap_proxy_header_from_an_untrusted_peer_is_not_believed(tmp_path: Path) -> None:
    pod = _proxied_pod(tmp_path, ["192.0.2.0/24"])  # loopback is not trusted
    pod.start()
    try:
        lines = _login_through_proxy(pod, proxy_v2_header("198.51.100.9", 40001, pod.ports["imap"]))
        # The header is not read as one: its bytes are a bad command, nobody logs in as it.
        assert any(b"BAD" in line for line in lines), lines
        assert "198.51.100.9" not in _login_peers(pod)
    finally:
        pod.stop()


def _tls_after_proxy(raw: socket.socket, pod: MailpodProcess, together: bool) -> list[bytes]:
    """PROXY v2 header, then TLS, then LOGIN."""
    client = TlsAfterProxy(
        raw, pod.client_context(), proxy_v2_header("203.0.113.5", 40002, pod.ports["imaps"])
    )
    client.handshake(together)
    client.send(f"l LOGIN {USER} {PASSWORDS[USER]}\r\n".encode())
    return client.read_lines(2)


def test_imaps_proxy_header_precedes_the_tls_handshake(tmp_path: Path) -> None:
    """Implicit TLS behind a balancer: the PROXY header comes in clear, then the handshake."""
    pod = MailpodProcess(tmp_path, workers=1).expect_proxy("imaps", ["127.0.0.0/8"])
    pod.start()
    try:
        for together in (False, True):
            with socket.create_connection(("127.0.0.1", pod.ports["imaps"]), timeout=10) as raw:
                lines = _tls_after_proxy(raw, pod, together)
                assert lines[0].startswith(b"* OK [CAPABILITY ")
                assert lines[1].startswith(b"l OK ")
        assert "203.0.113.5" in _login_peers(pod)
    finally:
        pod.stop()
