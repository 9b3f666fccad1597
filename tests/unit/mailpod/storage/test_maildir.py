"""MaildirStorage: layout, file contents, dedupe, abort, quota and crash recovery."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from mailpod.errors import SmtpError
from mailpod.pipeline import Envelope, LocalRecipient, Message
from mailpod.storage import MaildirStorage, maildir_path
from mailpod.storage import maildir as maildir_module
from mailpod.storage.maildir import MaildirDelivery, arrival_order

HOST = "mx.example.test"
NAME = re.compile(r"^(\d+)\.M(\d+)P(\d+)Q(\d+)\.mx\.example\.test,S=(\d+)$")
DATA = b"Subject: hi\r\nFrom: <s@example.org>\r\n\r\nHello.\r\n"


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[MaildirStorage]:
    store = MaildirStorage(tmp_path / "mail", hostname=HOST)
    yield store
    store.close()


def envelope(mail_from: str = "s@example.org") -> Envelope:
    return Envelope(session_id="s1", client_ip="192.0.2.1", helo="client", mail_from=mail_from)


def rcpt(address: str, mailbox: str | None = None, folder: str = "") -> LocalRecipient:
    return LocalRecipient(rcpt=address, mailbox=mailbox or address, folder=folder)


async def deliver(
    storage: MaildirStorage,
    recipients: Sequence[LocalRecipient],
    message: Message | None = None,
    mail_from: str = "s@example.org",
) -> None:
    delivery = await storage.start(envelope(mail_from))
    for recipient in recipients:
        await delivery.add_rcpt(recipient)
    await delivery.body(message or Message(data=DATA))
    await delivery.commit()


def files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir()) if directory.is_dir() else []


def mail(storage: MaildirStorage, mailbox: str, folder: str = "", sub: str = "new") -> list[Path]:
    return files(maildir_path(storage.mail_root, mailbox, folder) / sub)


def all_tmp(root: Path) -> list[Path]:
    return sorted(root.rglob("tmp/*"))


# Delivery


async def test_one_copy_per_recipient_with_exact_contents(storage: MaildirStorage) -> None:
    message = Message(header_prefix=[b"X-Spam: no\r\n"], data=DATA)
    message.prepend("Received: from client")
    await deliver(storage, [rcpt("alice@example.com"), rcpt("bob@example.com")], message)

    for address in ("alice@example.com", "bob@example.com"):
        (path,) = mail(storage, address)
        assert path.read_bytes() == (
            b"Return-Path: <s@example.org>\r\n"
            + f"Delivered-To: {address}\r\n".encode()
            + b"Received: from client\r\nX-Spam: no\r\n"
            + DATA
        )
    assert all_tmp(storage.mail_root) == []


async def test_file_name_is_unique_and_carries_the_size(storage: MaildirStorage) -> None:
    for _ in range(3):
        await deliver(storage, [rcpt("alice@example.com")])
    paths = mail(storage, "alice@example.com")
    assert len(paths) == 3
    for path in paths:
        match = NAME.match(path.name)
        assert match, path.name
        assert int(match.group(3)) == os.getpid()
        assert int(match.group(5)) == path.stat().st_size


async def test_null_sender_and_utf8_recipient(storage: MaildirStorage) -> None:
    await deliver(storage, [rcpt("jörg@example.com")], mail_from="")
    (path,) = mail(storage, "jörg@example.com")
    assert path.read_bytes().startswith(
        b"Return-Path: <>\r\nDelivered-To: j\xc3\xb6rg@example.com\r\n"
    )


async def test_layout_is_lower_cased_with_private_modes(storage: MaildirStorage) -> None:
    await deliver(storage, [rcpt("Alice@Example.COM")])
    mailbox = storage.mail_root / "example.com" / "alice"
    assert sorted(p.name for p in mailbox.iterdir()) == ["cur", "new", "tmp"]
    for directory in (mailbox.parent, mailbox, mailbox / "new"):
        assert directory.stat().st_mode & 0o777 == 0o700
    (path,) = files(mailbox / "new")
    assert path.stat().st_mode & 0o777 == 0o600
    assert b"Delivered-To: Alice@Example.COM\r\n" in path.read_bytes()  # as given


async def test_the_same_mailbox_gets_one_copy_per_folder(storage: MaildirStorage) -> None:
    await deliver(
        storage,
        [
            rcpt("alice@example.com"),
            rcpt("postmaster@example.com", "alice@example.com"),  # an alias
            rcpt("ALICE@example.com"),
            rcpt("alice@example.com", folder="Junk"),
            rcpt("alice@example.com", folder="INBOX"),
        ],
    )
    (inbox,) = mail(storage, "alice@example.com")
    assert b"Delivered-To: alice@example.com\r\n" in inbox.read_bytes()  # the first one
    assert len(mail(storage, "alice@example.com", "Junk")) == 1


async def test_folders_are_maildir_plus_plus(storage: MaildirStorage) -> None:
    await deliver(storage, [rcpt("bob@example.com", folder="Archive.2024")])
    mailbox = storage.mail_root / "example.com" / "bob"
    folder = mailbox / ".Archive.2024"
    assert len(files(folder / "new")) == 1
    assert (folder / "maildirfolder").is_file()
    assert (folder / "cur").is_dir() and (folder / "tmp").is_dir()
    assert all((mailbox / sub).is_dir() for sub in ("cur", "new", "tmp"))  # INBOX made too


async def test_a_maildir_removed_meanwhile_is_made_again(storage: MaildirStorage) -> None:
    await deliver(storage, [rcpt("alice@example.com")])
    mailbox = maildir_path(storage.mail_root, "alice@example.com")
    for path in files(mailbox / "new"):
        path.unlink()
    for sub in ("cur", "new", "tmp"):
        (mailbox / sub).rmdir()
    await deliver(storage, [rcpt("alice@example.com")])
    assert len(mail(storage, "alice@example.com")) == 1


async def test_no_recipients_is_a_no_op(storage: MaildirStorage) -> None:
    await deliver(storage, [])
    assert not storage.mail_root.exists()


# Path tricks and bad input


@pytest.mark.parametrize(
    "mailbox",
    [
        "../x@example.com",
        "a/b@example.com",
        "..@example.com",
        ".hidden@example.com",
        "a\0b@example.com",
        "a@..",
        "a@exa/mple.com",
        "@example.com",
        "a@",
        "no-at-sign",
    ],
)
async def test_unusable_mailboxes_are_refused(storage: MaildirStorage, mailbox: str) -> None:
    with pytest.raises(ValueError, match=r"unusable|not an address"):
        maildir_path(storage.mail_root, mailbox)
    delivery = await storage.start(envelope())
    with pytest.raises(SmtpError) as caught:
        await delivery.add_rcpt(rcpt("x@example.com", mailbox))
    assert caught.value.code == 553


@pytest.mark.parametrize("folder", ["../x", "a/b", ".Junk", "a..b", "Junk.", "a\0b", ".."])
async def test_unusable_folders_are_a_temporary_failure(
    storage: MaildirStorage, folder: str
) -> None:
    with pytest.raises(ValueError, match="unusable folder"):
        maildir_path(storage.mail_root, "alice@example.com", folder)
    delivery = await storage.start(envelope())
    with pytest.raises(SmtpError) as caught:
        await delivery.add_rcpt(rcpt("alice@example.com", folder=folder))
    assert caught.value.code == 451  # our configuration's fault, not the sender's


async def test_header_injection_is_refused(storage: MaildirStorage) -> None:
    with pytest.raises(SmtpError):
        await storage.start(envelope("a@example.org>\r\nX-Evil: 1"))
    delivery = await storage.start(envelope())
    with pytest.raises(SmtpError):
        await delivery.add_rcpt(rcpt("alice@example.com\r\nX-Evil: 1", "alice@example.com"))


async def test_steps_out_of_order_are_refused(storage: MaildirStorage) -> None:
    delivery = await storage.start(envelope())
    with pytest.raises(RuntimeError):
        await delivery.commit()
    await delivery.add_rcpt(rcpt("alice@example.com"))
    await delivery.body(Message(data=DATA))
    with pytest.raises(RuntimeError):
        await delivery.body(Message(data=DATA))
    with pytest.raises(RuntimeError):
        await delivery.add_rcpt(rcpt("bob@example.com"))


# Abort and failures


async def test_abort_leaves_nothing(storage: MaildirStorage) -> None:
    delivery = await storage.start(envelope())
    await delivery.add_rcpt(rcpt("alice@example.com"))
    await delivery.add_rcpt(rcpt("bob@example.com", folder="Junk"))
    await delivery.body(Message(data=DATA))
    assert len(all_tmp(storage.mail_root)) == 2
    await delivery.abort()
    await delivery.abort()
    assert all_tmp(storage.mail_root) == []
    assert list(storage.mail_root.rglob("new/*")) == []
    with pytest.raises(RuntimeError):
        await delivery.commit()


async def test_abort_after_commit_keeps_the_message(storage: MaildirStorage) -> None:
    delivery = await storage.start(envelope())
    await delivery.add_rcpt(rcpt("alice@example.com"))
    await delivery.body(Message(data=DATA))
    await delivery.commit()
    await delivery.abort()
    assert len(mail(storage, "alice@example.com")) == 1


async def test_disk_full_is_452_and_leaves_nothing(
    storage: MaildirStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    delivery = await storage.start(envelope())
    await delivery.add_rcpt(rcpt("alice@example.com"))
    await delivery.add_rcpt(rcpt("bob@example.com"))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SmtpError) as caught:
        await delivery.body(Message(data=DATA))
    assert (caught.value.code, caught.value.enhanced) == (452, "4.3.1")
    await delivery.abort()
    assert all_tmp(storage.mail_root) == []


async def test_a_failed_commit_takes_back_what_it_published(
    storage: MaildirStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    delivery = await storage.start(envelope())
    await delivery.add_rcpt(rcpt("alice@example.com"))
    await delivery.add_rcpt(rcpt("bob@example.com"))
    await delivery.body(Message(data=DATA))
    rename = os.rename
    calls = 0

    def second_fails(source: Path, target: Path) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(errno.EIO, "I/O error")
        rename(source, target)

    monkeypatch.setattr(os, "rename", second_fails)
    with pytest.raises(SmtpError) as caught:
        await delivery.commit()
    assert caught.value.code == 451
    await delivery.abort()
    assert all_tmp(storage.mail_root) == []
    assert list(storage.mail_root.rglob("new/*")) == []


async def test_abort_waits_for_a_cancelled_body(
    storage: MaildirStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    write = storage._write_copies

    def slow_write(*args: object, **kwargs: object) -> None:
        release.wait(5)
        write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "_write_copies", slow_write)
    delivery = await storage.start(envelope())
    await delivery.add_rcpt(rcpt("alice@example.com"))
    body = asyncio.create_task(delivery.body(Message(data=DATA)))
    await asyncio.sleep(0.05)
    body.cancel()
    with pytest.raises(asyncio.CancelledError):
        await body
    aborting = asyncio.create_task(delivery.abort())
    await asyncio.sleep(0.05)
    assert not aborting.done()  # the writer thread is still going
    release.set()
    await aborting
    assert all_tmp(storage.mail_root) == []


async def start_two(storage: MaildirStorage) -> MaildirDelivery:
    delivery = await storage.start(envelope())
    await delivery.add_rcpt(rcpt("alice@example.com"))
    await delivery.add_rcpt(rcpt("bob@example.com", folder="Junk"))
    return delivery


async def test_deliver_is_body_and_commit_in_one_pool_task(
    storage: MaildirStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted = []
    submit = storage._submit

    def counting(work: Callable[[], object]) -> object:
        submitted.append(work)
        return submit(work)

    monkeypatch.setattr(storage, "_submit", counting)
    delivery = await start_two(storage)
    message = Message(data=DATA)
    message.prepend("Received: from client")
    await delivery.deliver(message)
    assert len(submitted) == 1
    for address, folder in (("alice@example.com", ""), ("bob@example.com", "Junk")):
        (path,) = mail(storage, address, folder)
        assert path.read_bytes() == (
            b"Return-Path: <s@example.org>\r\n"
            + f"Delivered-To: {address}\r\n".encode()
            + b"Received: from client\r\n"
            + DATA
        )
    assert all_tmp(storage.mail_root) == []
    await delivery.abort()  # a no-op once delivered
    assert len(mail(storage, "alice@example.com")) == 1
    for step in (delivery.body(message), delivery.commit(), delivery.deliver(message)):
        with pytest.raises(RuntimeError):
            await step


async def test_deliver_without_recipients_is_a_no_op(storage: MaildirStorage) -> None:
    delivery = await storage.start(envelope())
    await delivery.deliver(Message(data=DATA))
    assert list(storage.mail_root.rglob("*/*")) == []


@pytest.mark.parametrize("failing", ["fsync", "second rename"])
async def test_a_failed_deliver_leaves_nothing(
    storage: MaildirStorage, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    rename = os.rename
    renames = 0

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def second_fails(source: Path, target: Path) -> None:
        nonlocal renames
        renames += 1
        if renames == 2:
            raise OSError(errno.EIO, "I/O error")
        rename(source, target)

    delivery = await start_two(storage)
    if failing == "fsync":
        monkeypatch.setattr(os, "fsync", full)
    else:
        monkeypatch.setattr(os, "rename", second_fails)
    with pytest.raises(SmtpError) as caught:
        await delivery.deliver(Message(data=DATA))
    assert caught.value.code == (452 if failing == "fsync" else 451)
    await delivery.abort()
    assert all_tmp(storage.mail_root) == []
    assert list(storage.mail_root.rglob("new/*")) == []


@pytest.mark.parametrize("cancelled_while", ["writing", "publishing"])
async def test_a_cancelled_deliver_publishes_only_if_it_got_that_far(
    storage: MaildirStorage, monkeypatch: pytest.MonkeyPatch, cancelled_while: str
) -> None:
    reached, release = threading.Event(), threading.Event()
    step = "_write_copies" if cancelled_while == "writing" else "_publish_copies"
    original = getattr(storage, step)

    def slow(*args: object) -> None:
        original(*args)
        reached.set()
        release.wait(5)  # done, but the caller is cancelled before it hears so

    monkeypatch.setattr(storage, step, slow)
    delivery = await start_two(storage)
    delivering = asyncio.create_task(delivery.deliver(Message(data=DATA)))
    assert await asyncio.to_thread(reached.wait, 5)
    delivering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await delivering
    aborting = asyncio.create_task(delivery.abort())
    await asyncio.sleep(0.05)
    assert not aborting.done()  # the thread is still going
    release.set()
    await aborting
    assert all_tmp(storage.mail_root) == []
    published = list(storage.mail_root.rglob("new/*"))
    # Cancelled before the renames: nothing is delivered (the client, which got no 250, sends
    # it again). After them: the copies stay, as after a cancelled commit().
    assert len(published) == (0 if cancelled_while == "writing" else 2)


# Quota


def size_of(paths: Sequence[Path]) -> int:
    return sum(path.stat().st_size for path in paths)


async def test_usage_counts_every_folder_and_follows_deliveries(storage: MaildirStorage) -> None:
    assert await storage.usage_bytes("alice@example.com") == 0
    await deliver(storage, [rcpt("alice@example.com"), rcpt("alice@example.com", folder="Junk")])
    await deliver(storage, [rcpt("bob@example.com")])
    expected = size_of(list(storage.mail_root.glob("example.com/alice/**/new/*")))
    assert expected > 0
    assert await storage.usage_bytes("Alice@example.com") == expected
    await deliver(storage, [rcpt("alice@example.com")])  # counted without a rescan
    assert await storage.usage_bytes("alice@example.com") == size_of(
        list(storage.mail_root.glob("example.com/alice/**/new/*"))
    )


async def test_other_processes_changes_show_after_max_age(tmp_path: Path) -> None:
    store = MaildirStorage(tmp_path, hostname=HOST, usage_max_age=3600)
    fresh = MaildirStorage(tmp_path, hostname=HOST, usage_max_age=0)
    try:
        await deliver(store, [rcpt("alice@example.com")])
        before = await store.usage_bytes("alice@example.com")
        cur = maildir_path(tmp_path, "alice@example.com") / "cur"
        (cur / "1.M1P1Q1.other,S=1000:2,S").write_bytes(b"x" * 10)  # the name's size counts
        (cur / "2.M1P1Q1.other:2,").write_bytes(b"x" * 7)  # no size in the name: stat
        (cur / ".hidden").write_bytes(b"x" * 99)  # not a message
        assert await store.usage_bytes("alice@example.com") == before  # cached
        assert await fresh.usage_bytes("alice@example.com") == before + 1007
    finally:
        store.close()
        fresh.close()


async def test_concurrent_checks_share_one_scan(
    storage: MaildirStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans = 0
    scan = maildir_module._scan_usage

    def counting(mailbox: Path) -> int:
        nonlocal scans
        scans += 1
        time.sleep(0.05)
        return scan(mailbox)

    monkeypatch.setattr(maildir_module, "_scan_usage", counting)
    results = await asyncio.gather(*(storage.usage_bytes("a@example.com") for _ in range(10)))
    assert results == [0] * 10
    assert scans == 1


async def test_over_quota(storage: MaildirStorage) -> None:
    await deliver(storage, [rcpt("alice@example.com")])
    used = await storage.usage_bytes("alice@example.com")
    assert not await storage.over_quota("alice@example.com", 0, 10**12)  # 0 is unlimited
    assert not await storage.over_quota("alice@example.com", used + 100)
    assert not await storage.over_quota("alice@example.com", used + 100, 100)
    assert await storage.over_quota("alice@example.com", used + 100, 101)
    assert await storage.over_quota("alice@example.com", used)  # exactly full: nothing fits
    assert not await storage.over_quota("nobody@example.com", 1)


# Crash recovery


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def debris(root: Path, name: str, age: float = 0) -> Path:
    tmp = root / "example.com" / "alice" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / name
    path.write_bytes(b"partial")
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_recover_removes_what_dead_writers_left(storage: MaildirStorage) -> None:
    root = storage.mail_root
    dead = dead_pid()
    gone = [
        debris(root, f"1.M1P{dead}Q1.{HOST},S=10"),
        debris(root, f"1.M1P{os.getpid()}Q99999.{HOST},S=10"),  # a predecessor with our pid
        debris(root, f"1.M1P{dead}Q2.other.host,S=10", age=37 * 3600),
        debris(root, "old-garbage", age=37 * 3600),
    ]
    folder_debris = root / "example.com" / "alice" / ".Junk" / "tmp" / f"1.M1P{dead}Q2.{HOST}"
    folder_debris.parent.mkdir(parents=True)
    folder_debris.write_bytes(b"partial")
    kept = [
        debris(root, f"1.M1P{os.getppid()}Q1.{HOST},S=10"),  # a live writer
        debris(root, f"1.M1P{dead}Q1.other.host,S=10"),  # another host's pid: only age counts
        debris(root, "garbage"),
    ]
    assert storage.recover() == len(gone) + 1
    assert not any(path.exists() for path in [*gone, folder_debris])
    assert all(path.exists() for path in kept)


async def test_recover_spares_deliveries_in_progress(storage: MaildirStorage) -> None:
    delivery = await storage.start(envelope())
    await delivery.add_rcpt(rcpt("alice@example.com"))
    await delivery.body(Message(data=DATA))
    assert storage.recover() == 0
    await delivery.commit()
    assert len(mail(storage, "alice@example.com")) == 1
    assert storage.recover() == 0


def test_recover_on_an_empty_root(tmp_path: Path) -> None:
    store = MaildirStorage(tmp_path / "absent", hostname=HOST)
    try:
        assert store.recover() == 0
    finally:
        store.close()


def test_names_differ_across_storages_in_one_process(tmp_path: Path) -> None:
    stores = [MaildirStorage(tmp_path, hostname=HOST) for _ in range(2)]
    try:
        assert len({store._new_name(1) for store in stores for _ in range(100)}) == 200
    finally:
        for store in stores:
            store.close()


def test_zombies_and_killed_processes_count_as_gone() -> None:
    assert maildir_module._pid_alive(os.getppid())
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as sleeper:
        assert maildir_module._pid_alive(sleeper.pid)
        os.kill(sleeper.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while maildir_module._pid_alive(sleeper.pid):  # exiting, then a zombie: not reaped yet
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert Path(f"/proc/{sleeper.pid}").exists()  # still there, yet counted as gone


def test_arrival_order_reads_the_unpadded_microseconds_as_numbers() -> None:
    # Same second, across a digit boundary: text order would put the later delivery first.
    earlier = "1763800000.M99999P7Q1.host,S=10"
    later = "1763800000.M100000P7Q2.host,S=10"
    assert sorted([later, earlier]) == [later, earlier]
    assert sorted([later, earlier], key=arrival_order) == [earlier, later]
    assert sorted(["2.x", "10.y", "mutt-name"], key=arrival_order) == ["mutt-name", "2.x", "10.y"]
