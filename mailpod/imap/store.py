"""Maildir++ folders of one mailbox, with a crash-safe SQLite index (blocking code).

Layout: the mailbox's Maildir (`<mail_root>/<domain>/<local>/`, see mailpod.storage.maildir) is
INBOX; folder `A.B` is the Maildir++ directory `.A.B/` (IMAP hierarchy delimiter "."). Names are
the client's modified UTF-7 form, stored as-is, as Dovecot does.

The index, `<mailbox>/mailpod-index.sqlite` (WAL, synchronous=FULL), is the authority for what
IMAP shows: per folder its UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ; per message its UID, Maildir
base name, current file name, flags and keywords, MODSEQ, INTERNALDATE and size; and tombstones
of expunged UIDs (so other sessions learn about expunges, and QRESYNC can later say VANISHED).

Why it is safe with several processes and sessions writing at once:
* every change runs in one `BEGIN IMMEDIATE` transaction, which SQLite serialises across
  processes; UIDs come from the folder row's `uidnext` inside that transaction, and each
  Maildir base name is UNIQUE per folder, so a message gets exactly one UID, forever;
* SMTP delivers into new/ without touching the index. A session "syncs" a folder: under the
  write lock it moves each unknown new/ file to cur/ (name `<base>:2,<flags>`) and records it.
  A crash between the rename and the commit leaves an unknown file in cur/, which the next full
  sync indexes; a crash can lose no message and never renumber one;
* a full sync (listing cur/) runs at SELECT when cur/ may have changed behind the index's back:
  the index keeps cur/'s (mtime, inode) as of the last full sync, and every change we make to
  cur/ under the write lock carries that stamp forward when it was current before the change.
  So a rename by another tool, a restore or a crash between rename and commit (all of which
  change cur/'s mtime without carrying the stamp) brings a full sync at the next SELECT; our
  own flag changes, appends and expunges do not. (A foreign change within the same clock tick as
  one of ours could hide behind our stamp on kernels without fine-grained directory timestamps;
  a full sync every FULL_SYNC_INTERVAL per folder and process catches that too.)
* each commit is fsynced (synchronous=FULL): a UID handed to a client is never handed out again.

Flags: the index is authoritative (keywords only live there). The five system flags are also
mirrored into the Maildir `:2,` suffix (renamed within cur/ under the same write lock), so the
Maildir stays meaningful to other tools and an index rebuilt from the files keeps them.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import itertools
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import TypeVar

from mailpod.imap.backend import (
    Changes,
    FolderInfo,
    FolderStatus,
    MailboxError,
    MessageInfo,
)
from mailpod.storage.maildir import arrival_order

__all__ = ["INDEX_NAME", "SPECIAL_USE_FOLDERS", "Change", "MaildirIndex", "validate_folder_name"]

_T = TypeVar("_T")


class Change(enum.Enum):
    NOTHING = 0
    INDEX = 1
    FILES = 2


INDEX_NAME = "mailpod-index.sqlite"
SPECIAL_USE_FOLDERS = {
    "Drafts": "\\Drafts",
    "Sent": "\\Sent",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
"""Created in every mailbox when its index is first made (a user may delete them later)."""

DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_FOLDER_NAME = 255
MAX_FOLDERS = 10_000
STAMP_SETTLE_SECONDS = 2.0
"""A directory mtime this recent is not trusted: a file added within the same clock tick as our
stat would not change it (file systems stamp with a coarse clock)."""
FULL_SYNC_INTERVAL = 300.0
"""Seconds after which SELECT lists cur/ again even though its stamp says nothing changed."""
HEADER_CACHE_BYTES = 4 * 2**20
"""Per worker process: message header sections kept for SEARCH and header FETCHes (a message's
file never changes, so an entry never goes stale; least recently used ones go first)."""
_READ_CHUNK = 8192

_LETTERS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
_FLAG_LETTERS = {flag: letter for letter, flag in _LETTERS.items()}
_SIZE = re.compile(r",S=(\d+)")
_TIME = re.compile(r"^(\d{9,11})\.")
_CHUNK = 500  # rows per "IN (...)" query: well below SQLite's variable limit
_counter = itertools.count(1)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS folders (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL,
    highestmodseq INTEGER NOT NULL,
    subscribed INTEGER NOT NULL,
    special_use TEXT
);
CREATE TABLE IF NOT EXISTS messages (
    folder INTEGER NOT NULL REFERENCES folders(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    base TEXT NOT NULL,
    filename TEXT NOT NULL,
    flags TEXT NOT NULL,
    modseq INTEGER NOT NULL,
    internaldate REAL NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (folder, uid),
    UNIQUE (folder, base)
);
CREATE INDEX IF NOT EXISTS messages_modseq ON messages (folder, modseq);
CREATE TABLE IF NOT EXISTS expunged (
    folder INTEGER NOT NULL REFERENCES folders(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    PRIMARY KEY (folder, uid)
);
CREATE INDEX IF NOT EXISTS expunged_modseq ON expunged (folder, modseq);
CREATE TABLE IF NOT EXISTS cur_stamps (
    folder INTEGER PRIMARY KEY REFERENCES folders(id) ON DELETE CASCADE,
    mtime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL
);
"""


def _folder_info(row: tuple[int, str, int, int, int, int, str | None]) -> FolderInfo:
    id_, name, uidvalidity, uidnext, highestmodseq, subscribed, special_use = row
    return FolderInfo(id_, name, uidvalidity, uidnext, highestmodseq, bool(subscribed), special_use)


def _flags_text(flags: Iterable[str]) -> str:
    return " ".join(sorted(set(flags)))


@functools.lru_cache(maxsize=4096)
def _flags_of(text: str) -> frozenset[str]:
    # Cached: a folder's messages share a handful of flag combinations.
    return frozenset(text.split())


def _letters(flags: Iterable[str]) -> str:
    return "".join(sorted(_FLAG_LETTERS[f] for f in flags if f in _FLAG_LETTERS))


def _flags_from_name(name: str) -> set[str]:
    _, sep, info = name.partition(":2,")
    return {_LETTERS[c] for c in info if c in _LETTERS} if sep else set()


def validate_folder_name(name: str) -> None:
    """Refuse names that cannot be a Maildir++ folder or would confuse LIST."""
    if name == "INBOX":
        return
    problem = None
    if not name or len(name) > MAX_FOLDER_NAME:
        problem = "empty or too long"
    elif not all(name.split(".")):
        problem = "empty hierarchy level"
    elif any(c in name for c in "/\\*%\0") or not name.isprintable():
        problem = "a character that is not allowed"
    elif name.upper() == "INBOX":
        problem = "INBOX spelled differently"
    if problem:
        raise MailboxError("CANNOT", f"Invalid mailbox name ({problem})")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_maildir(path: Path, folder: bool) -> None:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if folder:
        # Maildir++ marks folders so that readers do not take them for mailboxes.
        marker = path / "maildirfolder"
        if not marker.exists():
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    _fsync_dir(path.parent)


def _list(path: Path) -> list[str]:
    try:
        return [name for name in os.listdir(path) if not name.startswith(".")]
    except FileNotFoundError:
        return []


def _dir_stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_mtime_ns, info.st_ino


def header_end(data: bytes) -> int | None:
    """Where the header section of `data` ends (after its blank line), as
    `mailpod.imap.mime` splits it; None if `data` holds no complete header section."""
    if data.startswith(b"\r\n"):
        return 2
    if data.startswith(b"\n"):
        return 1
    ends = [i + 4 for i in (data.find(b"\r\n\r\n"),) if i >= 0]
    ends += [i + 2 for i in (data.find(b"\n\n"),) if i >= 0]
    return min(ends) if ends else None


def _read_file(path: Path, header_only: bool) -> bytes:
    """The file's bytes, or only its header section. Raises FileNotFoundError."""
    with open(path, "rb") as file:
        if not header_only:
            return file.read()
        data = file.read(_READ_CHUNK)
        while True:
            end = header_end(data)
            if end is not None:
                return data[:end]
            more = file.read(8 * _READ_CHUNK)
            if not more:
                return data  # no blank line: the whole message is header
            data += more


class _HeaderCache:
    """An LRU of header sections by (mailbox root, Maildir base name), bounded in bytes; used
    from the event loop and the pool threads alike."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._entries: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> bytes | None:
        with self._lock:
            data = self._entries.get(key)
            if data is not None:
                self._entries.move_to_end(key)
            return data

    def put(self, key: tuple[str, str], data: bytes) -> None:
        cost = len(data) + 200  # the key, the entry
        if cost > self.budget // 16:
            return  # one huge header must not push out everything else
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.used -= len(old) + 200
            self._entries[key] = data
            self.used += cost
            while self.used > self.budget:
                _, dropped = self._entries.popitem(last=False)
                self.used -= len(dropped) + 200

    def __len__(self) -> int:
        return len(self._entries)


_HEADERS = _HeaderCache(HEADER_CACHE_BYTES)


class MaildirIndex:
    """One mailbox's folders and messages. Not thread-safe: one caller at a time (a session
    runs its commands one after another); several instances, in any processes, may share a
    mailbox."""

    def __init__(self, root: Path, hostname: str | None = None) -> None:
        self.root = root
        host = hostname or socket.gethostname()
        # The Maildir spec escapes "/" and ":"; "," too, since ",S=" follows the host.
        self._host = host.replace("/", r"\057").replace(":", r"\072").replace(",", r"\054")
        self._key = str(root)
        self._db: sqlite3.Connection | None = None
        self._stamps: dict[int, tuple[int, int]] = {}
        self._full_synced: dict[int, float] = {}  # folder id -> monotonic time of the last
        # Change detection per observer (each IMAP session sharing this index): the
        # (data_version, our commits) it last saw. data_version only moves for other
        # connections' commits, so our own are counted separately.
        self._commits = 0
        self._seen: dict[object, tuple[int, int]] = {}
        # One transaction at a time on the shared connection. Re-entrant: a session may hold it
        # around a quick read it runs on the event loop (see `lock`).
        self._lock = threading.RLock()

    # --- set-up -------------------------------------------------------------------------------

    def open(self) -> None:
        _make_maildir(self.root, folder=False)
        db = sqlite3.connect(
            self.root / INDEX_NAME, timeout=30, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            # Small per-connection page cache: many sessions each hold a connection.
            db.execute("PRAGMA cache_size=-512")
        except BaseException:
            db.close()
            raise
        self._db = db
        with self._write() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            first = db.execute("SELECT value FROM meta WHERE key = 'created'").fetchone() is None
            if first:
                db.execute("INSERT INTO meta VALUES ('created', ?)", (int(time.time()),))
            if self._folder_row(db, "INBOX") is None:
                self._insert_folder(db, "INBOX", None)
            if first:
                for name, use in SPECIAL_USE_FOLDERS.items():
                    if self._folder_row(db, name) is None:
                        _make_maildir(self._path(name), folder=True)
                        self._insert_folder(db, name, use)
        self._sync_folders()

    def close(self) -> None:
        with self._lock:  # after any transaction still running for a cancelled caller
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def lock(self) -> threading.RLock:
        """Held by whoever uses the connection; a caller that gets it without waiting may run
        short reads in its own thread."""
        return self._lock

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("index is not open")
        return self._db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                with _transaction(self.db, immediate=True):
                    yield self.db
            finally:
                self._commits += 1  # makes every observer's next poll look

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _transaction(self.db, immediate=False):
            yield self.db

    def _path(self, name: str) -> Path:
        return self.root if name == "INBOX" else self.root / f".{name}"

    # --- folders ------------------------------------------------------------------------------

    def _insert_folder(self, db: sqlite3.Connection, name: str, special_use: str | None) -> int:
        # UIDVALIDITY: the time, but always above any earlier one, so a folder deleted and
        # re-created within a second still tells clients to forget their cache.
        row = db.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
        uidvalidity = max(int(time.time()), (row[0] + 1) if row else 1)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('uidvalidity', ?)", (uidvalidity,))
        cursor = db.execute(
            "INSERT INTO folders (name, uidvalidity, uidnext, highestmodseq, subscribed,"
            " special_use) VALUES (?, ?, 1, 1, 1, ?)",
            (name, uidvalidity, special_use),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    @staticmethod
    def _folder_row(db: sqlite3.Connection, name: str) -> FolderInfo | None:
        row = db.execute(
            "SELECT id, name, uidvalidity, uidnext, highestmodseq, subscribed, special_use"
            " FROM folders WHERE name = ?",
            (name,),
        ).fetchone()
        return None if row is None else _folder_info(row)

    def _sync_folders(self) -> None:
        """Adopt Maildir++ folders made behind our back (SMTP delivery to a folder, restores)."""
        on_disk = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") and name not in (".", "..") and entry.is_dir():
                    folder = name[1:]
                    with contextlib.suppress(MailboxError):
                        validate_folder_name(folder)
                        on_disk.append(folder)
        with self._read() as db:
            known = {row[0] for row in db.execute("SELECT name FROM folders")}
        missing = [name for name in on_disk if name not in known]
        if missing:
            with self._write() as db:
                for name in missing:
                    if self._folder_row(db, name) is None:
                        self._insert_folder(db, name, None)

    def folders(self) -> list[FolderInfo]:
        self._sync_folders()
        with self._read() as db:
            rows = db.execute(
                "SELECT id, name, uidvalidity, uidnext, highestmodseq, subscribed, special_use"
                " FROM folders ORDER BY name"
            ).fetchall()
        return [_folder_info(row) for row in rows]

    def folder(self, name: str) -> FolderInfo:
        with self._read() as db:
            record = self._folder_row(db, name)
        if record is None:
            self._sync_folders()
            with self._read() as db:
                record = self._folder_row(db, name)
        if record is None:
            raise MailboxError("NONEXISTENT", "No such mailbox")
        return record

    def create_folder(self, name: str, special_use: str | None = None) -> None:
        validate_folder_name(name)
        if special_use is not None and special_use not in SPECIAL_USE_FOLDERS.values():
            raise MailboxError("USEATTR", f"{special_use} is not a supported special use")
        with self._write() as db:
            if self._folder_row(db, name) is not None:
                raise MailboxError("ALREADYEXISTS", "Mailbox already exists")
            if db.execute("SELECT count(*) FROM folders").fetchone()[0] >= MAX_FOLDERS:
                raise MailboxError("LIMIT", "Too many mailboxes")
            _make_maildir(self._path(name), folder=True)
            self._insert_folder(db, name, special_use)

    def delete_folder(self, name: str) -> None:
        if name == "INBOX":
            raise MailboxError("CANNOT", "INBOX cannot be deleted")
        with self._write() as db:
            if self._folder_row(db, name) is None:
                raise MailboxError("NONEXISTENT", "No such mailbox")
            # Out of sight first (an atomic rename), so a crash never leaves half a folder that
            # would come back with some of its messages.
            path = self._path(name)
            doomed = self.root / f"mailpod-deleted-{os.getpid()}-{next(_counter)}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, doomed)
            db.execute("DELETE FROM folders WHERE name = ?", (name,))
        shutil.rmtree(doomed, ignore_errors=True)

    def rename_folder(self, old: str, new: str) -> None:
        validate_folder_name(new)
        if old == "INBOX":
            raise MailboxError("CANNOT", "Renaming INBOX is not supported")
        with self._write() as db:
            if self._folder_row(db, old) is None:
                raise MailboxError("NONEXISTENT", "No such mailbox")
            if self._folder_row(db, new) is not None:
                raise MailboxError("ALREADYEXISTS", "Mailbox already exists")
            if new.startswith(old + "."):
                raise MailboxError("CANNOT", "A mailbox cannot be moved under itself")
            # The folder and its inferiors (each its own Maildir++ directory) move together.
            rows = db.execute(
                "SELECT name FROM folders WHERE name = ? OR substr(name, 1, ?) = ?",
                (old, len(old) + 1, old + "."),
            ).fetchall()
            for (name,) in sorted(rows, key=lambda r: len(r[0])):
                renamed = new + name[len(old) :]
                if self._folder_row(db, renamed) is not None:
                    raise MailboxError("ALREADYEXISTS", f"{renamed} already exists")
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self._path(name), self._path(renamed))
                db.execute("UPDATE folders SET name = ? WHERE name = ?", (renamed, name))
            _fsync_dir(self.root)

    def set_subscribed(self, name: str, subscribed: bool) -> None:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE folders SET subscribed = ? WHERE name = ?", (int(subscribed), name)
            )
            if cursor.rowcount == 0 and subscribed:
                raise MailboxError("NONEXISTENT", "No such mailbox")

    def status(self, name: str) -> FolderStatus:
        folder = self.folder(name)
        self.sync(folder.id)
        with self._read() as db:
            row = db.execute(
                "SELECT count(*), coalesce(sum(size), 0),"
                " sum(instr(flags, '\\Seen') = 0), sum(instr(flags, '\\Deleted') > 0)"
                " FROM messages WHERE folder = ?",
                (folder.id,),
            ).fetchone()
            current = self._folder_row(db, name) or folder
        return FolderStatus(
            messages=row[0],
            unseen=row[2] or 0,
            deleted=row[3] or 0,
            size=row[1],
            uidnext=current.uidnext,
            uidvalidity=current.uidvalidity,
            highestmodseq=current.highestmodseq,
        )

    def usage_bytes(self) -> int:
        """The mailbox's size for quotas: indexed messages, plus deliveries still in new/ (not
        indexed yet). One query and a listing per folder, no per-message stat."""
        with self._read() as db:
            indexed = int(db.execute("SELECT coalesce(sum(size), 0) FROM messages").fetchone()[0])
            names = [row[0] for row in db.execute("SELECT name FROM folders")]
        pending = 0
        for name in names:
            for entry in _list(self._path(name) / "new"):
                match = _SIZE.search(entry.partition(":")[0])
                if match:
                    pending += int(match[1])
                else:
                    with contextlib.suppress(FileNotFoundError):
                        pending += os.stat(self._path(name) / "new" / entry).st_size
        return indexed + pending

    # --- syncing with the Maildir -------------------------------------------------------------

    def _folder_path(self, db: sqlite3.Connection, folder_id: int) -> Path:
        row = db.execute("SELECT name FROM folders WHERE id = ?", (folder_id,)).fetchone()
        if row is None:
            raise MailboxError("NONEXISTENT", "Mailbox has been deleted")
        return self._path(row[0])

    def _stamp(self, path: Path) -> tuple[int, int] | None:
        try:
            info = os.stat(path / "new")
        except FileNotFoundError:
            return None
        return info.st_mtime_ns, info.st_ino

    def forget(self, observer: object) -> None:
        self._seen.pop(observer, None)

    def may_have_changed(self, folder_id: int, observer: object = None) -> bool:
        """Cheap (a stat and an in-memory pragma): could a sync or `changes()` find anything
        that `observer` has not seen? True when new/ changed since the last look, or anyone
        committed since `observer`'s last `changes()`."""
        return self.what_changed(folder_id, observer) is not Change.NOTHING

    def what_changed(self, folder_id: int, observer: object = None) -> Change:
        """`may_have_changed`, told apart: FILES when new/ may hold deliveries to index (or we
        cannot tell: the index is busy), INDEX when only commits happened, which `changes()`
        alone reports. Never waits for the index."""
        if not self._lock.acquire(blocking=False):
            return Change.FILES
        try:
            version = self.db.execute("PRAGMA data_version").fetchone()[0]
            committed = (version, self._commits) != self._seen.get(observer)
            stamp = self._stamps.get(folder_id)
            row = self.db.execute("SELECT name FROM folders WHERE id = ?", (folder_id,)).fetchone()
        finally:
            self._lock.release()
        if stamp is None or row is None or self._stamp(self._path(row[0])) != stamp:
            return Change.FILES
        return Change.INDEX if committed else Change.NOTHING

    def sync(self, folder_id: int, full: bool = False, verify: bool = False) -> None:
        """Index what SMTP delivered into new/ and, when `full`, reconcile cur/ with the index
        (adopt unknown files, forget files that are gone). `verify`: full only if cur/ may have
        changed behind the index's back (see the module doc)."""
        with self._read() as db:
            path = self._folder_path(db, folder_id)
            if verify and not full:
                full = self._cur_unverified(db, folder_id, path)
        before = self._stamp(path)
        new_names = _list(path / "new")
        if before is None:
            _make_maildir(path, folder=path != self.root)
        if full:
            with self._write() as db:
                # Listed under the write lock: every change our writers make to cur/ is then
                # either in this listing or after it (and carries the stamp forward).
                cur_before = _dir_stamp(path / "cur")
                cur_names = _list(path / "cur")
                self._index_files(db, folder_id, path, new_names, cur_names, full)
                cur_after = _dir_stamp(path / "cur")
                if cur_after is not None and cur_before is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO cur_stamps VALUES (?, ?, ?)",
                        (folder_id, *cur_after),
                    )
            self._full_synced[folder_id] = time.monotonic()
        elif new_names:
            with self._write() as db, self._changing_cur(db, folder_id, path):
                self._index_files(db, folder_id, path, new_names, [], full)
        # Only a stamp old enough to be reliable lets the next poll skip listing new/.
        if before is not None and time.time() - before[0] / 1e9 > STAMP_SETTLE_SECONDS:
            self._stamps[folder_id] = before
        else:
            self._stamps.pop(folder_id, None)

    def _cur_unverified(self, db: sqlite3.Connection, folder_id: int, path: Path) -> bool:
        """Could cur/ hold changes the index does not know of?"""
        last = self._full_synced.get(folder_id)
        if last is None or time.monotonic() - last > FULL_SYNC_INTERVAL:
            return True
        row = db.execute(
            "SELECT mtime_ns, ino FROM cur_stamps WHERE folder = ?", (folder_id,)
        ).fetchone()
        return row is None or tuple(row) != _dir_stamp(path / "cur")

    @contextlib.contextmanager
    def _changing_cur(self, db: sqlite3.Connection, folder_id: int, path: Path) -> Iterator[None]:
        """Around our own change to cur/, inside a write transaction: if the index was in step
        with cur/ before it, it still is after it, so the next SELECT need not list cur/."""
        before = _dir_stamp(path / "cur")
        row = db.execute(
            "SELECT mtime_ns, ino FROM cur_stamps WHERE folder = ?", (folder_id,)
        ).fetchone()
        yield
        if before is not None and row is not None and tuple(row) == before:
            after = _dir_stamp(path / "cur")
            if after is not None and after != before:
                db.execute(
                    "UPDATE cur_stamps SET mtime_ns = ?, ino = ? WHERE folder = ?",
                    (*after, folder_id),
                )

    def select_if_synced(self, name: str) -> tuple[FolderInfo, list[MessageInfo]] | None:
        """`messages()` of folder `name` if no sync is due (nothing in new/, cur/ verified);
        None otherwise. Reads only: quick enough for the event loop."""
        with self._read() as db:
            folder = self._folder_row(db, name)
            if folder is None:
                return None
            path = self._path(name)
            if self._cur_unverified(db, folder.id, path) or _list(path / "new"):
                return None
        return self.messages(folder.id)

    def cached_headers(
        self, folder_id: int, uids: Sequence[int]
    ) -> tuple[dict[int, bytes], list[int]]:
        """The header sections the cache has (no file is read), and the UIDs it has not."""
        with self._read() as db:
            self._folder_path(db, folder_id)  # NONEXISTENT for a deleted folder
            bases: dict[int, str] = {}
            for chunk in _chunks(uids):
                for uid, base in db.execute(
                    _in("SELECT uid, base FROM messages WHERE folder = ? AND uid IN", chunk),
                    (folder_id, *chunk),
                ):
                    bases[uid] = base
        found: dict[int, bytes] = {}
        missing: list[int] = []
        for uid in uids:
            base = bases.get(uid)
            if base is None:
                continue  # expunged
            data = _HEADERS.get((self._key, base))
            if data is None:
                missing.append(uid)
            else:
                found[uid] = data
        return found, missing

    def _index_files(
        self,
        db: sqlite3.Connection,
        folder_id: int,
        path: Path,
        new_names: list[str],
        cur_names: list[str],
        full: bool,
    ) -> None:
        known: dict[str, tuple[int, str]] = {}
        if full:
            for uid, base, filename in db.execute(
                "SELECT uid, base, filename FROM messages WHERE folder = ?", (folder_id,)
            ):
                known[base] = (uid, filename)
        else:
            bases = [name.partition(":")[0] for name in new_names]
            for chunk in _chunks(bases):
                for uid, base, filename in db.execute(
                    _in(
                        "SELECT uid, base, filename FROM messages WHERE folder = ? AND base IN",
                        chunk,
                    ),
                    (folder_id, *chunk),
                ):
                    known[base] = (uid, filename)
        adopt: list[tuple[str, str, set[str]]] = []  # (base, current relative name, flags)
        for name in new_names:
            base = name.partition(":")[0]
            if base not in known:
                adopt.append((base, f"new/{name}", _flags_from_name(name)))
        seen_in_cur: set[str] = set()
        for name in cur_names:
            base = name.partition(":")[0]
            seen_in_cur.add(base)
            if base in known:
                uid, filename = known[base]
                if filename != f"cur/{name}" and not (path / filename).exists():
                    # Renamed by another tool (say, mutt changing flags): follow the file.
                    db.execute(
                        "UPDATE messages SET filename = ? WHERE folder = ? AND uid = ?",
                        (f"cur/{name}", folder_id, uid),
                    )
            elif (path / "cur" / name).exists():  # not expunged since we listed it
                adopt.append((base, f"cur/{name}", _flags_from_name(name)))
        gone: list[int] = []
        if full:
            for base, (uid, filename) in known.items():
                if base not in seen_in_cur and not (path / filename).exists():
                    gone.append(uid)
        if not adopt and not gone:
            return
        modseq = self._bump(db, folder_id)
        if gone:
            self._tombstone(db, folder_id, gone, modseq)
        # Deliveries get UIDs in arrival order (the base name starts with the delivery time).
        adopt.sort(key=lambda item: arrival_order(item[0]))
        moved_any = False
        for base, relative, flags in adopt:
            source = path / relative
            target = f"cur/{base}:2,{_letters(flags)}"
            if relative != target:
                try:
                    os.rename(source, path / target)
                    moved_any = True
                except FileNotFoundError:
                    continue  # taken by another process between our listing and the lock
            try:
                info = os.stat(path / target)
            except FileNotFoundError:
                continue
            size_match = _SIZE.search(base)
            size = int(size_match[1]) if size_match else info.st_size
            time_match = _TIME.match(base)
            internaldate = float(time_match[1]) if time_match else info.st_mtime
            self._insert_message(db, folder_id, base, target, flags, modseq, internaldate, size)
        if moved_any:
            _fsync_dir(path / "cur")

    def _bump(self, db: sqlite3.Connection, folder_id: int) -> int:
        row = db.execute(
            "UPDATE folders SET highestmodseq = highestmodseq + 1 WHERE id = ?"
            " RETURNING highestmodseq",
            (folder_id,),
        ).fetchone()
        if row is None:
            raise MailboxError("NONEXISTENT", "Mailbox has been deleted")
        return int(row[0])

    @staticmethod
    def _insert_message(
        db: sqlite3.Connection,
        folder_id: int,
        base: str,
        filename: str,
        flags: Iterable[str],
        modseq: int,
        internaldate: float,
        size: int,
    ) -> int:
        uid = int(
            db.execute(
                "UPDATE folders SET uidnext = uidnext + 1 WHERE id = ? RETURNING uidnext - 1",
                (folder_id,),
            ).fetchone()[0]
        )
        db.execute(
            "INSERT INTO messages (folder, uid, base, filename, flags, modseq, internaldate,"
            " size) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (folder_id, uid, base, filename, _flags_text(flags), modseq, internaldate, size),
        )
        return uid

    @staticmethod
    def _tombstone(db: sqlite3.Connection, folder_id: int, uids: list[int], modseq: int) -> None:
        for chunk in _chunks(uids):
            db.execute(
                _in("DELETE FROM messages WHERE folder = ? AND uid IN", chunk),
                (folder_id, *chunk),
            )
        db.executemany(
            "INSERT OR REPLACE INTO expunged (folder, uid, modseq) VALUES (?, ?, ?)",
            [(folder_id, uid, modseq) for uid in uids],
        )

    # --- reading ------------------------------------------------------------------------------

    def messages(self, folder_id: int) -> tuple[FolderInfo, list[MessageInfo]]:
        """The folder's current state and all its messages in UID order (one consistent read)."""
        with self._read() as db:
            row = db.execute(
                "SELECT id, name, uidvalidity, uidnext, highestmodseq, subscribed, special_use"
                " FROM folders WHERE id = ?",
                (folder_id,),
            ).fetchone()
            if row is None:
                raise MailboxError("NONEXISTENT", "Mailbox has been deleted")
            records = [
                MessageInfo(uid, _flags_of(flags), modseq, internaldate, size)
                for uid, flags, modseq, internaldate, size in db.execute(
                    "SELECT uid, flags, modseq, internaldate, size FROM messages"
                    " WHERE folder = ? ORDER BY uid",
                    (folder_id,),
                )
            ]
        return _folder_info(row), records

    def records(self, folder_id: int, uids: Sequence[int]) -> dict[int, MessageInfo]:
        found: dict[int, MessageInfo] = {}
        with self._read() as db:
            if len(uids) > _CHUNK:  # most of the folder, as SEARCH asks: one scan, no IN (…)
                wanted = set(uids)
                for uid, flags, modseq, internaldate, size in db.execute(
                    "SELECT uid, flags, modseq, internaldate, size FROM messages WHERE folder = ?",
                    (folder_id,),
                ):
                    if uid in wanted:
                        found[uid] = MessageInfo(uid, _flags_of(flags), modseq, internaldate, size)
                return found
            for chunk in _chunks(uids):
                for uid, flags, modseq, internaldate, size in db.execute(
                    _in(
                        "SELECT uid, flags, modseq, internaldate, size FROM messages"
                        " WHERE folder = ? AND uid IN",
                        chunk,
                    ),
                    (folder_id, *chunk),
                ):
                    found[uid] = MessageInfo(uid, _flags_of(flags), modseq, internaldate, size)
        return found

    def changes(self, folder_id: int, since: int, observer: object = None) -> Changes:
        with self._read() as db:
            # Read first: a commit after this shows up in our queries or in the next poll.
            token = (db.execute("PRAGMA data_version").fetchone()[0], self._commits)
            row = db.execute(
                "SELECT highestmodseq FROM folders WHERE id = ?", (folder_id,)
            ).fetchone()
            if row is None:
                raise MailboxError("NONEXISTENT", "Mailbox has been deleted")
            updated = [
                MessageInfo(uid, _flags_of(flags), modseq, internaldate, size)
                for uid, flags, modseq, internaldate, size in db.execute(
                    "SELECT uid, flags, modseq, internaldate, size FROM messages"
                    " WHERE folder = ? AND modseq > ? ORDER BY uid",
                    (folder_id, since),
                )
            ]
            expunged = [
                uid
                for (uid,) in db.execute(
                    "SELECT uid FROM expunged WHERE folder = ? AND modseq > ? ORDER BY uid",
                    (folder_id, since),
                )
            ]
        self._seen[observer] = token
        return Changes(int(row[0]), updated, expunged)

    def read(self, folder_id: int, uid: int) -> bytes | None:
        """The message's bytes; None if it is gone (expunged by another session)."""
        for _ in range(3):  # its file may be renamed (a flag change elsewhere) while we look
            with self._read() as db:
                path = self._folder_path(db, folder_id)
                row = db.execute(
                    "SELECT filename FROM messages WHERE folder = ? AND uid = ?",
                    (folder_id, uid),
                ).fetchone()
            if row is None:
                return None
            try:
                with open(path / row[0], "rb") as file:
                    return file.read()
            except FileNotFoundError:
                continue
        return None

    def read_many(
        self, folder_id: int, uids: Sequence[int], header_only: bool = False
    ) -> dict[int, bytes]:
        """The bytes (or header sections) of the messages still there: one query for all their
        file names, header sections from the cache when it has them."""
        with self._read() as db:
            path = self._folder_path(db, folder_id)
            rows: dict[int, tuple[str, str]] = {}
            for chunk in _chunks(uids):
                for uid, base, filename in db.execute(
                    _in(
                        "SELECT uid, base, filename FROM messages WHERE folder = ? AND uid IN",
                        chunk,
                    ),
                    (folder_id, *chunk),
                ):
                    rows[uid] = (base, filename)
        found: dict[int, bytes] = {}
        for uid in uids:
            row = rows.get(uid)
            if row is None:
                continue
            base, filename = row
            key = (self._key, base)
            data = _HEADERS.get(key) if header_only else None
            if data is None:
                try:
                    data = _read_file(path / filename, header_only)
                except FileNotFoundError:  # renamed by a flag change elsewhere, or expunged
                    data = self.read(folder_id, uid)
                    if data is not None and header_only:
                        data = data[: header_end(data) or len(data)]
                if data is not None and header_only:
                    _HEADERS.put(key, data)
            if data is not None:
                found[uid] = data
        return found

    # --- changing -----------------------------------------------------------------------------

    def store(
        self,
        folder_id: int,
        uids: Sequence[int],
        mode: str,
        flags: Collection[str],
        unchangedsince: int | None = None,
    ) -> tuple[list[MessageInfo], list[int]]:
        """Add ("+"), remove ("-") or replace ("") flags. Returns the records that changed and
        the UIDs refused because they changed after `unchangedsince` (CONDSTORE)."""
        changed: list[MessageInfo] = []
        refused: list[int] = []
        wanted = frozenset(flags)
        with self._write() as db:
            path = self._folder_path(db, folder_id)
            rows = []
            for chunk in _chunks(uids):
                rows += db.execute(
                    _in(
                        "SELECT uid, flags, modseq, internaldate, size, base, filename"
                        " FROM messages WHERE folder = ? AND uid IN",
                        chunk,
                    ),
                    (folder_id, *chunk),
                ).fetchall()
            modseq = 0
            with self._changing_cur(db, folder_id, path):
                for uid, text, old_modseq, internaldate, size, base, filename in sorted(rows):
                    if unchangedsince is not None and old_modseq > unchangedsince:
                        refused.append(uid)
                        continue
                    old = _flags_of(text)
                    new = old | wanted if mode == "+" else old - wanted if mode == "-" else wanted
                    if new == old:
                        continue
                    modseq = modseq or self._bump(db, folder_id)
                    target = filename
                    if _letters(new) != _letters(old):
                        target = f"cur/{base}:2,{_letters(new)}"
                        try:
                            os.rename(path / filename, path / target)
                        except FileNotFoundError:
                            target = filename  # gone from disk: the next full sync forgets it
                    db.execute(
                        "UPDATE messages SET flags = ?, modseq = ?, filename = ?"
                        " WHERE folder = ? AND uid = ?",
                        (_flags_text(new), modseq, target, folder_id, uid),
                    )
                    changed.append(MessageInfo(uid, new, modseq, internaldate, size))
        return changed, refused

    def _new_base(self, size: int) -> str:
        seconds, usec = divmod(time.time_ns() // 1000, 1_000_000)
        # "I" (not the SMTP side's "Q") keeps names unique against deliveries by this process.
        return f"{seconds}.M{usec}P{os.getpid()}I{next(_counter)}.{self._host},S={size}"

    def append(
        self, name: str, data: bytes, flags: Collection[str], internaldate: float | None
    ) -> tuple[int, int]:
        """Store a message durably; returns (UIDVALIDITY, UID)."""
        folder = self.folder(name)
        path = self._path(name)
        base = self._new_base(len(data))
        tmp = path / "tmp" / base
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileNotFoundError:
            _make_maildir(path, folder=name != "INBOX")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        when = time.time() if internaldate is None else internaldate
        try:
            os.utime(tmp, (when, when))
            target = f"cur/{base}:2,{_letters(flags)}"
            with self._write() as db, self._changing_cur(db, folder.id, path):
                os.rename(tmp, path / target)
                _fsync_dir(path / "cur")
                modseq = self._bump(db, folder.id)
                uid = self._insert_message(
                    db, folder.id, base, target, flags, modseq, when, len(data)
                )
        except BaseException:
            # Not acknowledged, so the client will retry: take back what we published.
            for leftover in (tmp, path / f"cur/{base}:2,{_letters(flags)}"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
            raise
        return folder.uidvalidity, uid

    def copy(
        self, folder_id: int, uids: Sequence[int], target: str, move: bool = False
    ) -> tuple[int, list[int], list[int]]:
        """Copy (or move) messages into folder `target`: (its UIDVALIDITY, source UIDs, new
        UIDs), in the same order. Copies are hard links (message files never change)."""
        destination = self.folder(target)
        if move and destination.id == folder_id:
            raise MailboxError("CANNOT", "Source and destination are the same mailbox")
        source_uids: list[int] = []
        new_uids: list[int] = []
        created: list[Path] = []
        try:
            with self._write() as db, contextlib.ExitStack() as stack:
                source_path = self._folder_path(db, folder_id)
                target_path = self._folder_path(db, destination.id)
                rows = []
                for chunk in _chunks(uids):
                    rows += db.execute(
                        _in(
                            "SELECT uid, flags, internaldate, size, filename FROM messages"
                            " WHERE folder = ? AND uid IN",
                            chunk,
                        ),
                        (folder_id, *chunk),
                    ).fetchall()
                rows.sort()
                if not rows:
                    return destination.uidvalidity, [], []
                stack.enter_context(self._changing_cur(db, destination.id, target_path))
                if move:
                    stack.enter_context(self._changing_cur(db, folder_id, source_path))
                modseq = self._bump(db, destination.id)
                for uid, text, internaldate, size, filename in rows:
                    flags = _flags_of(text)
                    base = self._new_base(size)
                    name = f"cur/{base}:2,{_letters(flags)}"
                    source = source_path / filename
                    try:
                        if move:
                            os.rename(source, target_path / name)
                        else:
                            _link_or_copy(source, target_path / name)
                    except FileNotFoundError:
                        continue  # expunged meanwhile (by a tool outside IMAP)
                    created.append(target_path / name)
                    new_uids.append(
                        self._insert_message(
                            db, destination.id, base, name, flags, modseq, internaldate, size
                        )
                    )
                    source_uids.append(uid)
                _fsync_dir(target_path / "cur")
                if move and source_uids:
                    self._tombstone(db, folder_id, source_uids, self._bump(db, folder_id))
                    _fsync_dir(source_path / "cur")
        except BaseException:
            if not move:  # moved files are back in no index; the next full sync adopts them
                for path in created:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            raise
        return destination.uidvalidity, source_uids, new_uids

    def expunge(self, folder_id: int, uids: Collection[int] | None = None) -> list[int]:
        """Remove the messages flagged \\Deleted (only those in `uids` when given)."""
        with self._write() as db:
            path = self._folder_path(db, folder_id)
            rows = db.execute(
                "SELECT uid, filename FROM messages WHERE folder = ?"
                " AND instr(flags, '\\Deleted') > 0 ORDER BY uid",
                (folder_id,),
            ).fetchall()
            if uids is not None:
                allowed = set(uids)
                rows = [row for row in rows if row[0] in allowed]
            if not rows:
                return []
            # Files go before the commit: a crash in between leaves index entries without
            # files, which the next full sync forgets; never files without entries, which it
            # would bring back.
            with self._changing_cur(db, folder_id, path):
                for _, filename in rows:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path / filename)
            removed = [uid for uid, _ in rows]
            self._tombstone(db, folder_id, removed, self._bump(db, folder_id))
        return removed


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise  # hard links unavailable here: fall back to a real copy
        tmp = target.parent.parent / "tmp" / target.name.partition(":")[0]
        shutil.copyfile(source, tmp)
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)


def _in(sql: str, values: Sized) -> str:
    """`sql`, ending in IN, completed with one placeholder per value (values stay parameters)."""
    return f"{sql} ({','.join('?' * len(values))})"


def _chunks(values: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, immediate: bool = True) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
