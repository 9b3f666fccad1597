"""IMAP against a real mailpod process: imaplib, raw transcripts, SMTP → IDLE, two sessions,
restart persistence, and real clients (mbsync, curl) when installed."""

from __future__ import annotations

import imaplib
import re
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mailpod_harness import PASSWORDS, MailpodProcess, fast_hash

pytestmark = pytest.mark.integration

USERS = {f"imap{n}@example.com": f"imap-secret-{n}" for n in range(1, 13)}


def _config_with_users(server: MailpodProcess) -> dict[str, object]:
    config = server.config()
    config["mailboxes"] = [
        *config["mailboxes"],
        *({"address": user, "password_hash": fast_hash(pw)} for user, pw in USERS.items()),
    ]
    return config


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailpodProcess]:
    """A mail pod (2 workers, so sessions of one user land in different processes) whose
    IMAP tests each use their own mailbox."""
    server = MailpodProcess(Path(tmp_path_factory.mktemp("imap")))
    server.write_config(_config_with_users(server))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def imaps(pod: MailpodProcess, user: str | None = None) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL("127.0.0.1", pod.ports["imaps"], ssl_context=pod.client_context())
    if user is not None:
        client.login(user, USERS[user])
    return client


def send(pod: MailpodProcess, to: str, subject: str, body: bytes = b"hello\r\n") -> None:
    message = (
        f"From: Sender <sender@remote.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        "Message-ID: <" + subject.replace(" ", ".") + "@remote.test>\r\n\r\n"
    ).encode() + body
    with smtplib.SMTP("127.0.0.1", pod.ports["smtp"], timeout=10) as client:
        client.sendmail("sender@remote.test", [to], message)


def ok(result: tuple[str, Any]) -> Any:
    """The data of an imaplib reply that must be OK (imaplib's data is loosely typed)."""
    status, data = result
    assert status == "OK", data
    return data


class Raw:
    """A byte-level client: send lines, read until the tagged reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")
        self.greeting = self.file.readline()
        self.counter = 0

    @classmethod
    def tls(cls, pod: MailpodProcess) -> Raw:
        raw = socket.create_connection(("127.0.0.1", pod.ports["imaps"]), timeout=10)
        return cls(pod.client_context().wrap_socket(raw, server_hostname="mail.example.com"))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.file.readline()

    def command(self, text: bytes) -> tuple[list[bytes], bytes]:
        self.counter += 1
        tag = b"t%d" % self.counter
        self.send(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def until(self, tag: bytes) -> tuple[list[bytes], bytes]:
        lines: list[bytes] = []
        while True:
            line = self.line()
            if not line:
                raise ConnectionError(f"closed; got {lines}")
            if line.startswith(tag + b" "):
                return lines, line
            lines.append(line)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_starttls_port_refuses_login_until_tls(pod: MailpodProcess) -> None:
    client = imaplib.IMAP4("127.0.0.1", pod.ports["imap"])
    assert {"STARTTLS", "LOGINDISABLED"} <= set(client.capabilities)
    user = "imap1@example.com"
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        client.login(user, USERS[user])
    client.starttls(ssl_context=pod.client_context())
    assert "LOGINDISABLED" not in client.capabilities
    assert "AUTH=PLAIN" in client.capabilities
    ok(client.login(user, USERS[user]))
    client.logout()


def test_starttls_with_pipelined_plaintext_is_refused(pod: MailpodProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", pod.ports["imap"]), timeout=10)
    raw = Raw(sock)
    raw.send(b"a STARTTLS\r\nb LOGIN imap1@example.com x\r\n")
    assert raw.line().startswith(b"* BYE")
    raw.close()


def test_login_list_shows_special_use_folders(pod: MailpodProcess) -> None:
    client = imaps(pod, "imap2@example.com")
    listing = [line.decode() for line in ok(client.list()) if isinstance(line, bytes)]
    attributes = {line.rsplit(" ", 1)[1]: line for line in listing}
    assert set(attributes) == {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
    for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert f"\\{name}" in attributes[name]
    client.logout()
    raw = Raw.tls(pod)
    raw.command(b"LOGIN imap2@example.com " + USERS["imap2@example.com"].encode())
    untagged, _ = raw.command(b'LIST (SPECIAL-USE) "" * RETURN (STATUS (MESSAGES UNSEEN))')
    assert untagged[:2] == [
        b'* LIST (\\HasNoChildren \\Archive) "." Archive\r\n',
        b"* STATUS Archive (MESSAGES 0 UNSEEN 0)\r\n",
    ]
    assert len(untagged) == 10  # five folders, each with its STATUS
    raw.close()


def test_wrong_password_and_plain_sasl_ir(pod: MailpodProcess) -> None:
    client = imaps(pod)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login("imap3@example.com", "wrong")
    client.logout()
    raw = Raw.tls(pod)
    import base64

    token = base64.b64encode(b"\0imap3@example.com\0" + USERS["imap3@example.com"].encode())
    _, tagged = raw.command(b"AUTHENTICATE PLAIN " + token)
    assert b"OK" in tagged
    raw.close()
    # And without SASL-IR, through imaplib's continuation handling.
    client = imaps(pod)
    secret = USERS["imap3@example.com"].encode()
    ok(client.authenticate("PLAIN", lambda _: b"\0imap3@example.com\0" + secret))
    client.logout()


def test_bad_on_garbage_and_the_connection_lives(pod: MailpodProcess) -> None:
    raw = Raw.tls(pod)
    for garbage in (b"GARBAGE", b"x FETCH", b"x SELECT", b'x LOGIN "a', b"x UID NOOP"):
        raw.send(garbage + b"\r\n")
        assert b" BAD " in raw.line()
    raw.send(b"x" * 70_000 + b"\r\n")
    assert raw.line().startswith(b"* BAD")
    _, tagged = raw.command(b"LOGIN {100000}")  # only APPEND takes big literals
    assert b"NO [TOOBIG]" in tagged
    raw.send(b'y ID ("name" {1}\r\n')
    assert raw.line().startswith(b"+ ")
    raw.send(b'x "version" {2+}\r\nbc)\r\n')
    assert raw.line().startswith(b"* ID ")
    assert raw.line() == b"y OK ID completed\r\n"
    _, tagged = raw.command(b"NOOP")
    assert b"OK" in tagged
    _, tagged = raw.command(b"APPEND INBOX {999999999}")
    assert b"NO [TOOBIG]" in tagged
    _, tagged = raw.command(b"NOOP")
    assert b"OK" in tagged
    raw.close()


def test_smtp_delivery_reaches_idle_within_a_second(pod: MailpodProcess) -> None:
    user = "imap4@example.com"
    raw = Raw.tls(pod)
    raw.command(f"LOGIN {user} {USERS[user]}".encode())
    untagged, tagged = raw.command(b"SELECT INBOX")
    assert b"* 0 EXISTS\r\n" in untagged
    raw.send(b"i1 IDLE\r\n")
    assert raw.line().startswith(b"+ ")
    started = time.monotonic()
    send(pod, user, "idle test")
    assert raw.line() == b"* 1 EXISTS\r\n"
    elapsed = time.monotonic() - started
    raw.send(b"DONE\r\n")
    _, tagged = raw.until(b"i1")
    assert b"OK" in tagged
    assert elapsed < 1.5  # SMTP included; the IDLE poll itself runs every 0.5 s
    untagged, _ = raw.command(b"FETCH 1 (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert untagged[0].startswith(b"* 1 FETCH (UID 1 FLAGS () BODY[HEADER.FIELDS (SUBJECT)]")
    assert untagged[1] == b"Subject: idle test\r\n"
    raw.close()


def test_noop_sees_delivery_and_other_sessions_changes(pod: MailpodProcess) -> None:
    user = "imap5@example.com"
    send(pod, user, "first")
    one, two = imaps(pod, user), imaps(pod, user)
    ok(one.select("INBOX"))
    ok(two.select("INBOX"))
    send(pod, user, "second")
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        ok(one.noop())
        if b"2" in one.untagged_responses.get("EXISTS", []):
            break
        time.sleep(0.1)
    assert b"2" in one.untagged_responses.get("EXISTS", [])
    # Flags set by one session reach the other; so do expunges.
    ok(two.noop())
    ok(two.store("1", "+FLAGS", "(\\Seen \\Deleted)"))
    ok(two.expunge())
    ok(one.noop())
    assert one.untagged_responses.get("EXPUNGE") == [b"1"]
    data = ok(one.fetch("1", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    assert b"Subject: second" in data[0][1]
    one.logout()
    two.logout()


MULTIPART = (
    b"From: =?utf-8?q?J=C3=B6rg?= <jorg@remote.test>\r\n"
    b"To: imap6@example.com, Team <team@example.com>\r\n"
    b"Subject: structure\r\n"
    b"Date: Tue, 05 Mar 2024 10:11:12 +0000\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Gr=C3=BC=C3=9Fe aus K=C3=B6ln\r\n"
    b"--b1\r\n"
    b'Content-Type: application/pdf; name="a.pdf"\r\n'
    b'Content-Disposition: attachment; filename="a.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"JVBERi0xLjQK\r\n"
    b"--b1--\r\n"
)


def test_fetch_body_envelope_and_bodystructure(pod: MailpodProcess) -> None:
    user = "imap6@example.com"
    client = imaps(pod, user)
    typ, data = client.append("INBOX", None, None, MULTIPART)
    assert typ == "OK" and b"APPENDUID" in data[0]
    ok(client.select("INBOX"))
    data = ok(client.fetch("1", "(RFC822.SIZE ENVELOPE BODYSTRUCTURE FLAGS)"))
    response = data[0]
    assert isinstance(response, bytes)
    assert f"RFC822.SIZE {len(MULTIPART)}".encode() in response
    assert b'"structure"' in response
    assert b'(("=?utf-8?q?J=C3=B6rg?=" NIL "jorg" "remote.test"))' in response
    assert b'((NIL NIL "imap6" "example.com") ("Team" NIL "team" "example.com"))' in response
    assert (
        b'BODYSTRUCTURE (("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 29 1'
        in response
    )
    assert b'("APPLICATION" "PDF" ("NAME" "a.pdf") NIL NIL "BASE64" 12 NIL' in response
    assert b'("ATTACHMENT" ("FILENAME" "a.pdf"))' in response
    assert b'"MIXED" ("BOUNDARY" "b1")' in response
    assert b"FLAGS ()" in response  # nothing fetched the body yet
    data = ok(client.fetch("1", "(BODY.PEEK[] BODY[1] BODY.PEEK[2]<0.4> BODY[TEXT])"))
    parts = data[0]
    assert isinstance(parts, tuple)
    assert parts[1] == MULTIPART
    data = ok(client.fetch("1", "(BODY.PEEK[1])"))
    assert data[0][1] == b"Gr=C3=BC=C3=9Fe aus K=C3=B6ln"
    data = ok(client.fetch("1", "(BODY.PEEK[2]<0.4>)"))
    assert data[0][1] == b"JVBE"
    # BODY[1] above (no PEEK) set \Seen.
    data = ok(client.fetch("1", "(FLAGS)"))
    assert b"\\Seen" in data[0]
    client.logout()


def test_store_flags_persist_across_reconnect(pod: MailpodProcess) -> None:
    user = "imap7@example.com"
    send(pod, user, "keep my flags")
    client = imaps(pod, user)
    ok(client.select("INBOX"))
    data = ok(client.store("1", "+FLAGS", "(\\Flagged \\Answered $Important)"))
    assert b"$Important" in data[0]
    client.logout()
    again = imaps(pod, user)
    ok(again.select("INBOX"))
    data = ok(again.fetch("1", "(FLAGS)"))
    found = re.search(rb"FLAGS \(([^)]*)\)", data[0])
    assert found is not None
    flags = found[1].split()
    assert set(flags) == {b"\\Flagged", b"\\Answered", b"$Important"}
    again.logout()


def test_copy_move_with_copyuid_and_expunge(pod: MailpodProcess) -> None:
    user = "imap8@example.com"
    for n in range(3):
        send(pod, user, f"message {n}")
    client = imaps(pod, user)
    ok(client.select("INBOX"))
    ok(client.uid("COPY", "1:2", "Archive"))
    raw = Raw.tls(pod)
    raw.command(f"LOGIN {user} {USERS[user]}".encode())
    raw.command(b"SELECT INBOX")
    _, tagged = raw.command(b"UID COPY 3 Archive")
    assert re.search(rb"\[COPYUID \d+ 3 3\]", tagged)
    untagged, tagged = raw.command(b"UID MOVE 1 Trash")
    assert any(re.match(rb"\* OK \[COPYUID \d+ 1 1\]", line) for line in untagged)
    assert b"* 1 EXPUNGE\r\n" in untagged
    assert b"OK" in tagged
    raw.command(b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    untagged, tagged = raw.command(b"EXPUNGE")
    assert untagged == [b"* 1 EXPUNGE\r\n"]
    untagged, _ = raw.command(b'STATUS "Archive" (MESSAGES UIDNEXT)')
    assert untagged == [b"* STATUS Archive (MESSAGES 3 UIDNEXT 4)\r\n"]
    untagged, tagged = raw.command(b"UID MOVE 3 Nowhere")
    assert b"NO [TRYCREATE]" in tagged
    raw.close()
    client.logout()


def test_append_and_search(pod: MailpodProcess) -> None:
    user = "imap9@example.com"
    client = imaps(pod, user)
    messages = [
        b"From: alice@example.org\r\nSubject: Quarterly report\r\nDate: Mon, 01 Jan 2024 10:00:00"
        b" +0000\r\n\r\nnumbers inside\r\n",
        b"From: bob@example.net\r\nSubject: lunch?\r\nX-Tag: food\r\n\r\npizza or sushi\r\n",
        b"From: carol@example.org\r\nSubject: =?utf-8?q?R=C3=A9sum=C3=A9?=\r\n\r\n"
        + b"x" * 2000
        + b"\r\n",
    ]
    for message in messages:
        ok(client.append("INBOX", None, None, message))
    ok(client.select("INBOX"))
    ok(client.store("2", "+FLAGS", "(\\Flagged)"))

    def search(*criteria: str) -> list[int]:
        data = ok(client.search(None, *criteria))
        return [int(n) for n in data[0].split()]

    assert search("ALL") == [1, 2, 3]
    assert search("FLAGGED") == [2]
    assert search("UNFLAGGED", "FROM", "example.org") == [1, 3]
    assert search("CHARSET", "UTF-8", "SUBJECT", "REPORT") == [1]
    assert search("BODY", "sushi") == [2]
    assert search("TEXT", "quarterly") == [1]
    assert search("HEADER", "X-Tag", "food") == [2]
    assert search("LARGER", "1000") == [3]
    assert search("OR", "FLAGGED", "LARGER", "1000") == [2, 3]
    assert search("NOT", "SEEN") == [1, 2, 3]
    assert search("SENTBEFORE", "2-Jan-2024") == [1]
    assert search("SINCE", "1-Jan-2020") == [1, 2, 3]
    assert search("2:*") == [2, 3]
    data = ok(client.uid("SEARCH", "UID", "2:3"))
    assert data[0] == b"2 3"
    client.logout()


def test_esearch_and_saved_results(pod: MailpodProcess) -> None:
    user = "imap10@example.com"
    for n in range(4):
        send(pod, user, f"esearch {n}")
    raw = Raw.tls(pod)
    raw.command(f"LOGIN {user} {USERS[user]}".encode())
    raw.command(b"SELECT INBOX")
    untagged, _ = raw.command(b"UID SEARCH RETURN (MIN MAX COUNT ALL) ALL")
    assert untagged == [b'* ESEARCH (TAG "t3") UID MIN 1 MAX 4 ALL 1:4 COUNT 4\r\n']
    untagged, _ = raw.command(b"SEARCH RETURN (SAVE) 2:3")
    assert untagged == []
    untagged, _ = raw.command(b"FETCH $ (UID)")
    assert untagged == [b"* 2 FETCH (UID 2)\r\n", b"* 3 FETCH (UID 3)\r\n"]
    raw.close()


def test_flags_and_uids_survive_a_restart(tmp_path: Path) -> None:
    server = MailpodProcess(tmp_path, workers=1)
    server.start()
    user = "alice@example.com"
    try:
        send(server, user, "before restart")
        client = imaplib.IMAP4_SSL(
            "127.0.0.1", server.ports["imaps"], ssl_context=server.client_context()
        )
        ok(client.login(user, PASSWORDS[user]))
        ok(client.select("INBOX"))
        ok(client.store("1", "+FLAGS", "(\\Flagged)"))
        uidvalidity = client.untagged_responses.get("UIDVALIDITY")
        client.logout()
    finally:
        server.stop()
    server.start()
    try:
        client = imaplib.IMAP4_SSL(
            "127.0.0.1", server.ports["imaps"], ssl_context=server.client_context()
        )
        ok(client.login(user, PASSWORDS[user]))
        ok(client.select("INBOX"))
        assert client.untagged_responses.get("UIDVALIDITY") in (uidvalidity, None)
        data = ok(client.uid("FETCH", "1", "(FLAGS)"))
        assert b"\\Flagged" in data[0]
        client.logout()
    finally:
        server.stop()


def test_folders_create_rename_delete_subscribe(pod: MailpodProcess) -> None:
    user = "imap11@example.com"
    client = imaps(pod, user)
    ok(client.create("Projects"))
    ok(client.create("Projects.Alpha"))
    typ, data = client.create("Projects")
    assert typ == "NO" and b"ALREADYEXISTS" in data[0]
    ok(client.rename("Projects", "Work"))
    names = [line.rsplit(b" ", 1)[1] for line in ok(client.list()) if isinstance(line, bytes)]
    assert b"Work" in names and b"Work.Alpha" in names and b"Projects" not in names
    data = ok(client.list('""', "%"))
    assert any(b"\\HasChildren" in line and line.endswith(b"Work") for line in data)
    ok(client.unsubscribe("Work.Alpha"))
    data = ok(client.lsub('""', "*"))
    assert not any(line.endswith(b"Work.Alpha") for line in data)
    ok(client.delete("Work.Alpha"))
    typ, data = client.select("Work.Alpha")
    assert typ == "NO"
    client.logout()


def test_curl_fetches_like_users_do(pod: MailpodProcess) -> None:
    user = "imap12@example.com"
    send(pod, user, "curl me")
    base = f"imaps://127.0.0.1:{pod.ports['imaps']}"
    common = ["curl", "-sS", "--cacert", str(pod.ca_file), "-u", f"{user}:{USERS[user]}"]
    listing = subprocess.run(
        [*common, f"{base}/INBOX", "-X", "FETCH 1:10 ALL"],
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert b"FETCH" in listing.stdout and b"curl me" in listing.stdout
    message = subprocess.run(
        [*common, f"{base}/INBOX;UID=1"], capture_output=True, timeout=30, check=True
    )
    assert b"Subject: curl me" in message.stdout


def test_mbsync_two_way_sync_of_folders(pod: MailpodProcess, tmp_path: Path) -> None:
    user = "imap1@example.com"
    send(pod, user, "for mbsync")
    client = imaps(pod, user)
    ok(client.append("Sent", "(\\Seen)", None, b"Subject: sent one\r\n\r\nx\r\n"))
    client.logout()
    local = tmp_path / "local"
    local.mkdir()
    # mbsync 1.4 matches host names against the certificate's CN, which trustme leaves out;
    # a certificate listed in CertificateFile itself is trusted as it is.
    trusted = tmp_path / "trusted.pem"
    trusted.write_bytes(pod.ca_file.read_bytes() + pod.cert_file.read_bytes())
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        f"""IMAPAccount test
Host 127.0.0.1
Port {pod.ports["imaps"]}
User {user}
Pass {USERS[user]}
SSLType IMAPS
CertificateFile {trusted}

IMAPStore remote
Account test

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel all
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
"""
    )

    def mbsync() -> None:
        result = subprocess.run(
            ["mbsync", "-c", str(rc), "-a"], capture_output=True, timeout=60, text=True
        )
        assert result.returncode == 0, result.stderr + result.stdout

    mbsync()
    inbox = list((local / "INBOX" / "cur").iterdir()) + list((local / "INBOX" / "new").iterdir())
    assert any(b"for mbsync" in path.read_bytes() for path in inbox)
    assert (local / "Sent").is_dir() and (local / "Archive").is_dir()
    sent = list((local / "Sent" / "cur").iterdir())
    assert len(sent) == 1 and sent[0].name.endswith("S")
    # Local changes flow back: a new local message and a flag.
    (local / "Drafts" / "cur" / "1700000000.local1.host:2,D").write_bytes(
        b"Subject: local draft\r\n\r\ndraft\r\n"
    )
    mbsync()
    client = imaps(pod, user)
    ok(client.select("Drafts"))
    data = ok(client.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    assert b"\\Draft" in data[0][0] and b"local draft" in data[0][1]
    client.logout()
    mbsync()  # a no-op sync stays clean


def test_tls_only_handshake(pod: MailpodProcess) -> None:
    context = ssl.create_default_context(cafile=str(pod.ca_file))
    with (
        socket.create_connection(("127.0.0.1", pod.ports["imaps"]), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="mail.example.com") as tls,
    ):
        assert tls.recv(1000).startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 AUTH=PLAIN")
