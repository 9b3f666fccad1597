"""The Maildir index: UIDs that never change, flags that persist, folders, concurrent writers."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailpod.imap.backend import MailboxError
from mailpod.imap.store import INDEX_NAME, SPECIAL_USE_FOLDERS, MaildirIndex
from mailpod.pipeline import Envelope, LocalRecipient, Message
from mailpod.storage import MaildirStorage
from mailpod.storage.maildir import mailbox_dir

USER = "alice@example.com"
HOST = "mx.example.test"


def deliver(mail_root: Path, count: int = 1, folder: str = "", subject: str = "hi") -> None:
    """Deliver like the SMTP side does (tmp/ → new/), through the real MaildirStorage."""

    async def run() -> None:
        storage = MaildirStorage(mail_root, hostname=HOST)
        try:
            for n in range(count):
                envelope = Envelope("s", "192.0.2.1", "client", "s@example.org")
                delivery = await storage.start(envelope)
                await delivery.add_rcpt(LocalRecipient(USER, USER, folder))
                await delivery.body(
                    Message(data=f"Subject: {subject} {n}\r\n\r\nbody\r\n".encode())
                )
                await delivery.commit()
        finally:
            storage.close()

    asyncio.run(run())


@pytest.fixture
def mail_root(tmp_path: Path) -> Path:
    return tmp_path / "mail"


def open_index(mail_root: Path) -> MaildirIndex:
    index = MaildirIndex(mailbox_dir(mail_root, USER), HOST)
    index.open()
    return index


@pytest.fixture
def index(mail_root: Path) -> Iterator[MaildirIndex]:
    opened = open_index(mail_root)
    yield opened
    opened.close()


def inbox_uids(index: MaildirIndex, full: bool = False) -> list[int]:
    folder = index.folder("INBOX")
    index.sync(folder.id, full=full)
    return [m.uid for m in index.messages(folder.id)[1]]


def test_open_creates_inbox_and_special_use_folders(index: MaildirIndex) -> None:
    folders = {f.name: f for f in index.folders()}
    assert set(folders) == {"INBOX", *SPECIAL_USE_FOLDERS}
    for name, use in SPECIAL_USE_FOLDERS.items():
        assert folders[name].special_use == use
        assert (index.root / f".{name}" / "cur").is_dir()
        assert (index.root / f".{name}" / "maildirfolder").exists()
    journal = sqlite3.connect(index.root / INDEX_NAME).execute("PRAGMA journal_mode").fetchone()
    assert journal == ("wal",)


def test_deleted_special_folder_is_not_recreated(mail_root: Path) -> None:
    index = open_index(mail_root)
    index.delete_folder("Junk")
    index.close()
    again = open_index(mail_root)
    assert "Junk" not in {f.name for f in again.folders()}
    again.close()


def test_uids_survive_reopen_and_continue(mail_root: Path) -> None:
    deliver(mail_root, 3)
    index = open_index(mail_root)
    assert inbox_uids(index) == [1, 2, 3]
    uidvalidity = index.folder("INBOX").uidvalidity
    index.close()
    deliver(mail_root, 2)
    again = open_index(mail_root)
    assert inbox_uids(again, full=True) == [1, 2, 3, 4, 5]
    assert again.folder("INBOX").uidvalidity == uidvalidity
    # Indexed mail moved to cur/ with a Maildir info suffix; new/ is empty.
    assert not os.listdir(again.root / "new")
    assert all(name.endswith(":2,") for name in os.listdir(again.root / "cur"))
    again.close()


def test_delivery_while_selected_reaches_both_sessions_with_one_uid(mail_root: Path) -> None:
    first, second = open_index(mail_root), open_index(mail_root)
    folder = first.folder("INBOX")
    first.sync(folder.id, full=True)
    second.sync(folder.id, full=True)
    _, before = first.messages(folder.id)
    assert first.changes(folder.id, 0).updated == []
    modseq = first.folder("INBOX").highestmodseq
    deliver(mail_root, 2)
    assert first.may_have_changed(folder.id)
    first.sync(folder.id)
    changes = first.changes(folder.id, modseq)
    assert [m.uid for m in changes.updated] == [1, 2]
    # The other session sees the same UIDs (the index, not its own scan, assigned them).
    assert second.may_have_changed(folder.id)
    second.sync(folder.id)
    assert [m.uid for m in second.changes(folder.id, modseq).updated] == [1, 2]
    assert before == []
    first.close()
    second.close()


def test_may_have_changed_is_false_when_nothing_happened(index: MaildirIndex) -> None:
    folder = index.folder("INBOX")
    # Make new/ look old, so its stamp is trusted.
    os.utime(index.root / "new", (1_000_000_000, 1_000_000_000))
    index.sync(folder.id)
    index.changes(folder.id, 0)
    assert not index.may_have_changed(folder.id)


def _sync_worker(mail_root: str, rounds: int) -> None:
    index = open_index(Path(mail_root))
    folder = index.folder("INBOX")
    for _ in range(rounds):
        index.sync(folder.id)
    index.close()


def test_concurrent_syncing_processes_assign_each_message_one_uid(mail_root: Path) -> None:
    open_index(mail_root).close()
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_sync_worker, args=(str(mail_root), 40)) for _ in range(4)]
    for worker in workers:
        worker.start()
    deliver(mail_root, 60)
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    index = open_index(mail_root)
    folder = index.folder("INBOX")
    index.sync(folder.id, full=True)
    rows = index.db.execute(
        "SELECT uid, base FROM messages WHERE folder = ? ORDER BY uid", (folder.id,)
    ).fetchall()
    assert [uid for uid, _ in rows] == list(range(1, 61))
    assert len({base for _, base in rows}) == 60
    assert len(os.listdir(index.root / "cur")) == 60
    index.close()


def test_flags_and_keywords_persist_and_mirror_into_file_names(mail_root: Path) -> None:
    deliver(mail_root, 2)
    index = open_index(mail_root)
    folder = index.folder("INBOX")
    index.sync(folder.id)
    changed, refused = index.store(folder.id, [1, 2], "+", {"\\Seen", "\\Flagged", "$Work"})
    assert [m.uid for m in changed] == [1, 2] and refused == []
    index.store(folder.id, [2], "-", {"\\Flagged"})
    index.close()
    again = open_index(mail_root)
    _, messages = again.messages(folder.id)
    assert [m.flags for m in messages] == [
        frozenset({"\\Seen", "\\Flagged", "$Work"}),
        frozenset({"\\Seen", "$Work"}),
    ]
    assert sorted(name.rpartition(":2,")[2] for name in os.listdir(again.root / "cur")) == [
        "FS",
        "S",
    ]
    # Reading follows the renamed file.
    assert again.read(folder.id, 1) is not None
    again.close()


def test_store_changes_modseq_and_unchangedsince_refuses(index: MaildirIndex) -> None:
    folder = index.folder("INBOX")
    index.append("INBOX", b"Subject: a\r\n\r\nx\r\n", (), None)
    index.append("INBOX", b"Subject: b\r\n\r\nx\r\n", (), None)
    _, messages = index.messages(folder.id)
    before = messages[1].modseq  # both messages are unchanged since then
    changed, _ = index.store(folder.id, [1], "+", {"\\Answered"})
    assert changed[0].modseq > max(m.modseq for m in messages)
    # Replacing with the same flags changes nothing (and no MODSEQ).
    assert index.store(folder.id, [1], "", {"\\Answered"}) == ([], [])
    changed, refused = index.store(folder.id, [1, 2], "+", {"\\Seen"}, unchangedsince=before)
    assert refused == [1]
    assert [m.uid for m in changed] == [2]


def test_append_is_durable_with_flags_and_date(index: MaildirIndex) -> None:
    uidvalidity, uid = index.append("Sent", b"Subject: s\r\n\r\nx\r\n", {"\\Seen"}, 1_700_000_000.0)
    sent = index.folder("Sent")
    assert (uidvalidity, uid) == (sent.uidvalidity, 1)
    _, messages = index.messages(sent.id)
    assert messages[0].flags == {"\\Seen"}
    assert messages[0].internaldate == 1_700_000_000.0
    assert messages[0].size == len(b"Subject: s\r\n\r\nx\r\n")
    names = os.listdir(index.root / ".Sent" / "cur")
    assert len(names) == 1 and names[0].endswith(":2,S")
    assert not os.listdir(index.root / ".Sent" / "tmp")
    assert index.read(sent.id, 1) == b"Subject: s\r\n\r\nx\r\n"
    with pytest.raises(MailboxError) as error:
        index.append("Nope", b"x", (), None)
    assert error.value.code == "NONEXISTENT"


def test_expunge_removes_files_and_leaves_tombstones(index: MaildirIndex) -> None:
    folder = index.folder("INBOX")
    for n in range(3):
        index.append("INBOX", f"Subject: {n}\r\n\r\nx\r\n".encode(), (), None)
    modseq = index.folder("INBOX").highestmodseq
    index.store(folder.id, [1, 3], "+", {"\\Deleted"})
    assert index.expunge(folder.id, [3]) == [3]
    assert index.expunge(folder.id) == [1]
    assert [m.uid for m in index.messages(folder.id)[1]] == [2]
    assert index.changes(folder.id, modseq).expunged == [1, 3]
    assert len(os.listdir(index.root / "cur")) == 1
    # UIDs are never reused.
    assert index.append("INBOX", b"Subject: new\r\n\r\nx\r\n", (), None)[1] == 4


def test_copy_and_move_map_uids(index: MaildirIndex) -> None:
    inbox = index.folder("INBOX")
    for n in range(3):
        index.append("INBOX", f"Subject: {n}\r\n\r\nx\r\n".encode(), {"\\Flagged"}, None)
    uidvalidity, sources, copies = index.copy(inbox.id, [1, 3], "Archive")
    assert (uidvalidity, sources, copies) == (index.folder("Archive").uidvalidity, [1, 3], [1, 2])
    archive = index.folder("Archive")
    assert [m.flags for m in index.messages(archive.id)[1]] == [{"\\Flagged"}] * 2
    assert index.read(archive.id, 2) == b"Subject: 2\r\n\r\nx\r\n"
    _, sources, moved = index.copy(inbox.id, [2, 3], "Trash", move=True)
    assert (sources, moved) == ([2, 3], [1, 2])
    assert [m.uid for m in index.messages(inbox.id)[1]] == [1]
    assert len(os.listdir(index.root / ".Trash" / "cur")) == 2
    assert len(os.listdir(index.root / "cur")) == 1
    with pytest.raises(MailboxError):
        index.copy(inbox.id, [1], "Nope")


def test_full_sync_adopts_unknown_files_and_forgets_missing_ones(index: MaildirIndex) -> None:
    inbox = index.folder("INBOX")
    index.append("INBOX", b"Subject: a\r\n\r\nx\r\n", (), None)
    index.append("INBOX", b"Subject: b\r\n\r\nx\r\n", (), None)
    # A file that reached cur/ without the index (a crash before commit, or another tool)...
    (index.root / "cur" / "1700000000.M1P1Q1.other:2,S").write_bytes(b"Subject: c\r\n\r\nx\r\n")
    # ...and one that vanished behind our back.
    first = next(n for n in os.listdir(index.root / "cur") if "I" in n.split(".")[1])
    os.unlink(index.root / "cur" / first)
    modseq = index.folder("INBOX").highestmodseq
    index.sync(inbox.id, full=True)
    changes = index.changes(inbox.id, modseq)
    assert len(changes.expunged) == 1
    adopted = [m for m in changes.updated if m.uid == 3]
    assert adopted and adopted[0].flags == {"\\Seen"}
    assert len(index.messages(inbox.id)[1]) == 2


def test_deliveries_in_one_second_get_uids_in_arrival_order(index: MaildirIndex) -> None:
    # The microseconds cross a digit boundary; as text the later delivery would sort first.
    for name, subject in (
        ("1763800000.M99999P7Q1.mx", b"first"),
        ("1763800000.M100000P7Q2.mx", b"second"),
    ):
        (index.root / "new" / name).write_bytes(b"Subject: " + subject + b"\r\n\r\nx\r\n")
    inbox = index.folder("INBOX")
    index.sync(inbox.id)
    uids = [m.uid for m in index.messages(inbox.id)[1]]
    assert [index.read(inbox.id, uid) for uid in uids] == [
        b"Subject: first\r\n\r\nx\r\n",
        b"Subject: second\r\n\r\nx\r\n",
    ]


def test_folder_create_rename_delete(index: MaildirIndex) -> None:
    index.create_folder("Work")
    index.create_folder("Work.2024")
    with pytest.raises(MailboxError) as error:
        index.create_folder("Work")
    assert error.value.code == "ALREADYEXISTS"
    for bad in ("", "a..b", ".a", "a/b", "a*", "inbox"):
        with pytest.raises(MailboxError):
            index.create_folder(bad)
    index.append("Work.2024", b"Subject: w\r\n\r\nx\r\n", (), None)
    old = index.folder("Work.2024")
    index.rename_folder("Work", "Jobs")
    names = {f.name for f in index.folders()}
    assert {"Jobs", "Jobs.2024"} <= names and "Work" not in names
    moved = index.folder("Jobs.2024")
    assert (moved.id, moved.uidvalidity) == (old.id, old.uidvalidity)
    assert index.read(moved.id, 1) == b"Subject: w\r\n\r\nx\r\n"
    index.delete_folder("Jobs.2024")
    assert not (index.root / ".Jobs.2024").exists()
    index.create_folder("Jobs.2024")
    assert index.folder("Jobs.2024").uidvalidity > old.uidvalidity
    with pytest.raises(MailboxError):
        index.delete_folder("INBOX")


def test_folder_made_by_delivery_is_adopted(index: MaildirIndex, mail_root: Path) -> None:
    deliver(mail_root, 1, folder="Lists.python")
    assert "Lists.python" in {f.name for f in index.folders()}
    folder = index.folder("Lists.python")
    index.sync(folder.id)
    assert [m.uid for m in index.messages(folder.id)[1]] == [1]


def test_status_counts(index: MaildirIndex, mail_root: Path) -> None:
    deliver(mail_root, 3)
    inbox = index.folder("INBOX")
    index.sync(inbox.id)
    index.store(inbox.id, [1], "+", {"\\Seen"})
    index.store(inbox.id, [2], "+", {"\\Deleted"})
    status = index.status("INBOX")
    assert (status.messages, status.unseen, status.deleted, status.uidnext) == (3, 2, 1, 4)
    assert status.size == sum(m.size for m in index.messages(inbox.id)[1])


def test_select_lists_cur_only_when_it_changed_behind_the_index(
    index: MaildirIndex, mail_root: Path
) -> None:
    deliver(mail_root, 2)
    folder = index.folder("INBOX")
    assert index.select_if_synced("INBOX") is None  # new mail waits in new/
    index.sync(folder.id, verify=True)
    assert index.select_if_synced("INBOX") is not None
    # Our own changes to cur/ (here and through another index, as another worker) carry the
    # stamp forward: no listing of cur/ is due.
    index.store(folder.id, [1], "+", {"\\Seen"})
    index.append("INBOX", b"Subject: x\r\n\r\nx\r\n", {"\\Deleted"}, None)
    other = open_index(mail_root)
    try:
        other.store(folder.id, [2], "+", {"\\Flagged"})
    finally:
        other.close()
    assert index.expunge(folder.id) == [3]
    selected = index.select_if_synced("INBOX")
    assert selected is not None and [m.uid for m in selected[1]] == [1, 2]
    # Another tool renames a file (mutt changing flags) and drops one in: a full sync follows.
    cur = mailbox_dir(mail_root, USER) / "cur"
    name = next(n for n in os.listdir(cur) if n.endswith(":2,S"))
    os.rename(cur / name, cur / name.replace(":2,S", ":2,RS"))
    (cur / "1700000000.M1P1.elsewhere:2,").write_bytes(b"Subject: restored\r\n\r\nx\r\n")
    assert index.select_if_synced("INBOX") is None
    index.sync(folder.id, verify=True)
    selected = index.select_if_synced("INBOX")
    assert selected is not None and [m.uid for m in selected[1]] == [1, 2, 4]
    assert index.read(folder.id, 1) is not None  # the renamed file was followed


def test_header_sections_are_read_alone_and_cached(index: MaildirIndex) -> None:
    long_header = b"Subject: s\r\nX-Long: " + b"y" * 20_000 + b"\r\n\r\n"
    messages = [b"Subject: a\r\n\r\nbody\r\n\r\nmore", b"\r\nno header", long_header + b"b"]
    for data in messages:
        index.append("INBOX", data, (), None)
    folder = index.folder("INBOX")
    headers = index.read_many(folder.id, [1, 2, 3, 9], header_only=True)
    assert headers == {1: b"Subject: a\r\n\r\n", 2: b"\r\n", 3: long_header}
    assert index.read_many(folder.id, [1, 2, 3]) == dict(enumerate(messages, 1))
    found, missing = index.cached_headers(folder.id, [1, 2, 3, 9])
    assert found == headers and missing == []
