"""Maildir++ storage: the delivery target for local mailboxes.

Mailbox `alice@example.com` is the Maildir `<mail_root>/example.com/alice/` (its INBOX); folders
are Maildir++ subdirectories, `Junk` → `.Junk/`, `Archive.2024` → `.Archive.2024/`. RFC 5321 lets
local parts be case-sensitive, but nobody expects `Alice@` and `alice@` to be two people, so the
directory names are lower-cased (domain and local part alike).

Delivery follows the Maildir protocol: `body()` writes and fsyncs one file per recipient in tmp/,
`commit()` renames them into new/ and fsyncs each new/ directory, so once `commit()` returns every
copy survives a crash (and a power loss, on storage that honours fsync). `deliver()` does both
in one trip to the thread pool. Readers (IMAP) only look at new/ and cur/: a file in tmp/ is
never seen, so an unacknowledged message is never delivered.

File names are `<time>.M<usec>P<pid>Q<counter>.<host>,S=<size>`; `,S=` is the Maildir++ size, so
quota is computed from a directory listing without a stat per file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import itertools
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TypeVar

from mailpod.errors import SmtpError, internal_error
from mailpod.pipeline import Envelope, LocalRecipient, Message

log = logging.getLogger(__name__)

_T = TypeVar("_T")

DIR_MODE = 0o700
FILE_MODE = 0o600
TMP_MAX_AGE = 36 * 3600.0
"""The Maildir convention: a tmp/ file this old was abandoned, whoever wrote it."""
USAGE_MAX_AGE = 30.0
"""How long a cached mailbox size is trusted; other processes' changes show up within it."""

_SIZE = re.compile(r",S=(\d+)")
_NAME = re.compile(r"^\d+\.M\d+P(\d+)Q\d+\.([^,:]+)")  # groups: pid, host
_ARRIVAL = re.compile(r"^(\d+)\.(?:M(\d+)P\d+Q(\d+)\.)?")  # seconds, microseconds, counter
_IOV_MAX = 64  # well under any system's IOV_MAX; a message has a handful of chunks

# Process-wide, not per storage: two MaildirStorage objects in one process share the pid that
# makes names unique, and recover() must not take another instance's files for debris.
_counter = itertools.count(1)
_in_flight: set[str] = set()
"""Names of tmp/ files this process has written and not yet published or discarded."""


def arrival_order(base: str) -> tuple[int, int, int, str]:
    """A sort key putting Maildir names in delivery order.

    Names sort wrongly as text: the microseconds are not zero-padded (as in Dovecot's names), so
    ".M99999" sorts after ".M100000" in the same second. Names from other tools keep their
    leading seconds and otherwise fall back to the text."""
    match = _ARRIVAL.match(base)
    if match is None:
        return (0, 0, 0, base)
    return (int(match[1]), int(match[2] or 0), int(match[3] or 0), base)


@functools.lru_cache(maxsize=4096)
def mailbox_dir(mail_root: Path, mailbox: str) -> Path:
    """The mailbox's own directory (its INBOX Maildir), lower-cased.

    Addresses are validated upstream; this still refuses any name that could step outside
    mail_root or pass for a Maildir++ folder (empty, leading dot, "/", NUL). Raises ValueError.
    Cached: it runs for every recipient of every message, and Path joins are not cheap."""
    local, at, domain = mailbox.rpartition("@")
    if not at:
        raise ValueError(f"not an address: {mailbox!r}")
    return mail_root / _path_part(domain.lower()) / _path_part(local.lower())


def maildir_path(mail_root: Path, mailbox: str, folder: str = "") -> Path:
    """The Maildir of `mailbox`'s `folder` ("" or INBOX: the mailbox's own directory).

    A folder name is Maildir++ style, "." separating levels, and is used as-is on disk.
    Raises ValueError for a name that cannot be used safely."""
    path = mailbox_dir(mail_root, mailbox)
    subdir = _folder_dir(folder)
    return path / subdir if subdir else path


def _path_part(name: str) -> str:
    if not name or name.startswith(".") or "/" in name or "\0" in name:
        raise ValueError(f"unusable mailbox path component {name!r}")
    return name


def _folder_dir(folder: str) -> str:
    if not folder or folder.upper() == "INBOX":
        return ""
    # An empty level ("a..b", ".a", "a.") would make ".." or a name another folder maps to.
    if "/" in folder or "\0" in folder or not all(folder.split(".")):
        raise ValueError(f"unusable folder name {folder!r}")
    return "." + folder


def _escape_host(hostname: str) -> str:
    # The Maildir spec escapes "/" and ":"; "," too, since ",S=" follows the host.
    return hostname.replace("/", r"\057").replace(":", r"\072").replace(",", r"\054")


def _header_value(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"control character in {value!r}")
    return value


def _size_from_name(name: str) -> int | None:
    match = _SIZE.search(name.partition(":")[0])  # flags (":2,S") follow the unique part
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class _Copy:
    """One recipient's copy: written to maildir/tmp/name, published as maildir/new/name."""

    mailbox: Path  # the mailbox's own directory, for the usage cache
    maildir: Path
    name: str
    header: bytes
    size: int

    @property
    def tmp(self) -> Path:
        return self.maildir / "tmp" / self.name

    @property
    def new(self) -> Path:
        return self.maildir / "new" / self.name


class _Withdrawn(Exception):
    """deliver() was cancelled before its copies were published: they were removed instead."""


class _State(Enum):
    OPEN = "open"
    WRITTEN = "written"
    FAILED = "failed"  # body(), commit() or deliver() raised or was cancelled: only abort() left
    COMMITTED = "committed"
    ABORTED = "aborted"


class MaildirDelivery:
    """One SMTP transaction's delivery into local Maildirs (see the module docstring)."""

    def __init__(self, storage: MaildirStorage, envelope: Envelope) -> None:
        self._storage = storage
        self._return_path = f"Return-Path: <{envelope.mail_from}>\r\n".encode()
        self._recipients: dict[Path, tuple[Path, LocalRecipient]] = {}
        self._copies: list[_Copy] = []
        self._state = _State.OPEN
        self._writing: concurrent.futures.Future[None] | None = None
        self._publishing: concurrent.futures.Future[None] | None = None

    async def add_rcpt(self, recipient: LocalRecipient) -> None:
        self._expect(_State.OPEN, "add_rcpt")
        try:
            mailbox = mailbox_dir(self._storage.mail_root, recipient.mailbox)
            _header_value(recipient.rcpt)
        except ValueError as error:
            raise SmtpError(553, "5.1.3", "Bad recipient address syntax", str(error)) from None
        try:
            subdir = _folder_dir(recipient.folder)
        except ValueError as error:
            raise internal_error(str(error)) from None  # our configuration's fault: retry later
        maildir = mailbox / subdir if subdir else mailbox
        # One copy per Maildir, as Postfix and Dovecot do when aliases lead to one mailbox twice.
        self._recipients.setdefault(maildir, (mailbox, recipient))

    async def body(self, message: Message) -> None:
        """Write and fsync every recipient's copy into tmp/ (invisible to readers)."""
        self._expect(_State.OPEN, "body")
        if not self._plan(message):
            return
        write = functools.partial(
            self._storage._write_copies, self._copies, message.header_prefix, message.data
        )
        try:
            self._writing = self._storage._submit(write)
            await _io(self._writing)
        except BaseException:
            self._state = _State.FAILED
            raise

    async def commit(self) -> None:
        """Publish every copy into new/; when this returns, all of them are durable."""
        self._expect(_State.WRITTEN, "commit")
        if self._copies:
            publish = functools.partial(self._storage._publish_copies, self._copies)
            try:
                self._publishing = self._storage._submit(publish)
                await _io(self._publishing)
            except BaseException:
                self._state = _State.FAILED
                raise
        self._committed()

    async def deliver(self, message: Message) -> None:
        """body() then commit() as one task on the thread pool instead of two (one thread hop per
        message, not two): the same writes, fsyncs and renames in the same order. When it
        returns, every copy is durable in new/; if it raises or is cancelled, abort() is left,
        as after a failed body() or commit()."""
        self._expect(_State.OPEN, "deliver")
        if self._plan(message):
            work = functools.partial(
                self._storage._deliver_copies,
                self._copies,
                message.header_prefix,
                message.data,
                # Cancelled while writing (the client went away): publish nothing, as body()
                # then commit() would not have.
                lambda: self._state is _State.WRITTEN,
            )
            try:
                # Both the write and the publication: abort() waits for it, and takes it as
                # published if it succeeded.
                self._writing = self._publishing = self._storage._submit(work)
                await _io(self._publishing)
            except BaseException:
                self._state = _State.FAILED
                raise
        self._committed()

    def _plan(self, message: Message) -> bool:
        """Name every recipient's copy; False if there is none to write."""
        self._state = _State.WRITTEN
        size = message.size()
        for maildir, (mailbox, recipient) in self._recipients.items():
            header = self._return_path + f"Delivered-To: {recipient.rcpt}\r\n".encode()
            name = self._storage._new_name(len(header) + size)
            self._copies.append(_Copy(mailbox, maildir, name, header, len(header) + size))
        if not self._copies:
            return False
        _in_flight.update(copy.name for copy in self._copies)
        return True

    async def abort(self) -> None:
        """Drop the unpublished copies. A no-op after commit() (and safe to call twice).

        Never raises for I/O: it runs on error paths, and a file it fails to remove stays in
        tmp/, where no reader looks and recover() finds it."""
        if self._state in (_State.COMMITTED, _State.ABORTED):
            return
        self._state = _State.ABORTED
        # A cancelled body()/commit()/deliver() leaves its thread running: wait for it first.
        running = [op for op in {self._writing, self._publishing} if op is not None]
        if running:
            waiting = [asyncio.wrap_future(op) for op in running]
            await asyncio.wait(waiting)
            for done in waiting:  # their errors were reported, or are moot: no "never retrieved"
                if not done.cancelled():
                    done.exception()
        published = self._publishing
        if published is not None and not published.cancelled() and published.exception() is None:
            # commit() was cancelled after its renames went through: the copies are delivered,
            # and taking them back is unsafe now that a reader may have seen them.
            self._committed()
            return
        if self._copies:
            try:
                await asyncio.wrap_future(
                    self._storage._submit(functools.partial(_discard, self._copies))
                )
            except OSError as error:
                log.warning("could not remove an aborted delivery's tmp files: %s", error)
        _in_flight.difference_update(copy.name for copy in self._copies)

    def _committed(self) -> None:
        self._state = _State.COMMITTED
        _in_flight.difference_update(copy.name for copy in self._copies)
        self._storage._account(self._copies)

    def _expect(self, state: _State, step: str) -> None:
        if self._state is not state:
            raise RuntimeError(f"{step}() called in the {self._state.value} state")


async def _io(operation: concurrent.futures.Future[_T]) -> _T:
    try:
        return await asyncio.wrap_future(operation)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise SmtpError(452, "4.3.1", "Insufficient system storage", str(error)) from error
        raise internal_error(f"maildir: {error}") from error


@dataclass
class _Usage:
    size: int
    scanned_at: float  # time.monotonic()


class MaildirStorage:
    """The `DeliveryTarget` for local mailboxes, plus their quota usage and crash recovery.

    Blocking file I/O runs on a private thread pool (one task per body(), commit() or deliver(),
    not per file), sized for fsync latency rather than CPU; a private pool also keeps other
    to_thread users (password hashing) from delaying deliveries. Call `close()` when done."""

    def __init__(
        self,
        mail_root: Path,
        *,
        hostname: str | None = None,
        max_workers: int = 16,
        usage_max_age: float = USAGE_MAX_AGE,
    ) -> None:
        self.mail_root = mail_root
        self._host = _escape_host(hostname or socket.gethostname())
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers, thread_name_prefix="maildir"
        )
        self._usage_max_age = usage_max_age
        self._usage: dict[Path, _Usage] = {}
        self._scans: dict[Path, asyncio.Future[int]] = {}
        self._ready: set[Path] = set()  # Maildirs known to exist, to skip the stat calls

    async def start(self, envelope: Envelope) -> MaildirDelivery:
        try:
            _header_value(envelope.mail_from)
        except ValueError as error:
            raise SmtpError(553, "5.1.7", "Bad sender address syntax", str(error)) from None
        return MaildirDelivery(self, envelope)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # Quota

    async def usage_bytes(self, mailbox: str) -> int:
        """Bytes in the mailbox's cur/ and new/, all folders included.

        Cached: deliveries by this process update the figure at once, and it is recomputed from
        the file names when older than `usage_max_age`, so changes made by another process (an
        IMAP expunge) are reflected within that window. Raises ValueError for a bad address."""
        root = mailbox_dir(self.mail_root, mailbox)
        cached = self._usage.get(root)
        if cached is not None and time.monotonic() - cached.scanned_at < self._usage_max_age:
            return cached.size
        scan = self._scans.get(root)
        if scan is None:  # one scan per mailbox however many RCPTs are waiting for it
            scan = asyncio.ensure_future(self._rescan(root))
            self._scans[root] = scan
            scan.add_done_callback(lambda _: self._scans.pop(root, None))
        return await asyncio.shield(scan)

    async def over_quota(self, mailbox: str, quota_bytes: int, incoming_size: int = 0) -> bool:
        """Whether a message of `incoming_size` (0: unknown) would exceed the quota (0: none)."""
        if quota_bytes <= 0:
            return False
        # A message has at least one byte, so a mailbox that is exactly full takes no more.
        return await self.usage_bytes(mailbox) + max(incoming_size, 1) > quota_bytes

    async def _rescan(self, root: Path) -> int:
        started = time.monotonic()
        size = await asyncio.wrap_future(self._submit(functools.partial(_scan_usage, root)))
        self._usage[root] = _Usage(size, started)
        return size

    def _account(self, copies: Iterable[_Copy]) -> None:
        for copy in copies:
            cached = self._usage.get(copy.mailbox)
            if cached is not None:
                cached.size += copy.size

    # Crash recovery

    def recover(self, max_age: float = TMP_MAX_AGE) -> int:
        """Delete abandoned tmp/ files; returns how many. Call at start-up, before serving (it
        blocks, and walks every Maildir; starting no threads, it is safe to fork after it).

        A tmp/ file never got its 250 (the reply waits for commit()), so deleting it loses
        nothing once its writer is gone: it is abandoned when older than `max_age`, or when its
        name carries our host name and the pid of a process that is no longer running. Our own
        pid counts as gone for files this process is not writing, because a restarted container
        often gets the same pid as its predecessor. Pids are only judged for our host name, so
        processes sharing a volume must share a pid namespace or use distinct host names."""
        now = time.time()
        alive: dict[int, bool] = {}
        removed = 0
        for maildir in _maildirs(self.mail_root):
            try:
                entries = list(os.scandir(maildir / "tmp"))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    old = now - entry.stat(follow_symlinks=False).st_mtime > max_age
                    if old or self._writer_gone(entry.name, alive):
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # published or discarded meanwhile
        if removed:
            log.info("maildir recovery removed %d abandoned tmp files", removed)
        return removed

    def _writer_gone(self, name: str, alive: dict[int, bool]) -> bool:
        match = _NAME.match(name)
        if match is None or match.group(2) != self._host:
            return False  # not ours to judge: another host's pids mean nothing here
        pid = int(match.group(1))
        if pid == os.getpid():
            return name not in _in_flight
        if pid not in alive:
            alive[pid] = _pid_alive(pid)
        return not alive[pid]

    # Thread-side work (called on the pool)

    def _submit(self, work: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        return self._pool.submit(work)

    def _new_name(self, size: int) -> str:
        seconds, usec = divmod(time.time_ns() // 1000, 1_000_000)
        return f"{seconds}.M{usec}P{os.getpid()}Q{next(_counter)}.{self._host},S={size}"

    def _write_copies(self, copies: Sequence[_Copy], prefix: Sequence[bytes], data: bytes) -> None:
        created: list[_Copy] = []
        try:
            for copy in copies:
                self._write(copy, [copy.header, *prefix, data])
                created.append(copy)
        except BaseException:
            _discard(created)
            raise

    def _write(self, copy: _Copy, chunks: list[bytes]) -> None:
        if copy.maildir not in self._ready:
            self._make_maildir(copy.maildir)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(copy.tmp, flags, FILE_MODE)
        except FileNotFoundError:
            # The Maildir was removed behind our back (mailbox deleted and re-created): remake it.
            self._ready.discard(copy.maildir)
            self._make_maildir(copy.maildir)
            fd = os.open(copy.tmp, flags, FILE_MODE)
        try:
            _write_all(fd, chunks)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _discard([copy])
            raise
        os.close(fd)

    def _make_maildir(self, maildir: Path) -> None:
        folder = maildir.name.startswith(".")
        if folder and maildir.parent not in self._ready:
            self._make_maildir(maildir.parent)  # a folder without its INBOX confuses readers
        for sub in ("cur", "new", "tmp"):
            _make_dirs(maildir / sub)
        if folder:
            # Maildir++ marks folders so that readers do not take them for mailboxes.
            os.close(os.open(maildir / "maildirfolder", os.O_WRONLY | os.O_CREAT, FILE_MODE))
        self._ready.add(maildir)

    def _deliver_copies(
        self,
        copies: Sequence[_Copy],
        prefix: Sequence[bytes],
        data: bytes,
        wanted: Callable[[], bool],
    ) -> None:
        self._write_copies(copies, prefix, data)
        if not wanted():
            _discard(copies)
            raise _Withdrawn
        self._publish_copies(copies)

    @staticmethod
    def _publish_copies(copies: Sequence[_Copy]) -> None:
        # rename(), not the spec's link() + unlink(): names are unique (pid, counter, time), and
        # link() would not catch a clash with a file already moved to cur/ anyway (Dovecot's
        # reasoning too). rename() is atomic: after a crash the file is in tmp/ or new/, whole.
        published: list[_Copy] = []
        try:
            for copy in copies:
                os.rename(copy.tmp, copy.new)
                published.append(copy)
            for new in dict.fromkeys(copy.maildir / "new" for copy in copies):
                _fsync_dir(new)
        except BaseException:
            # No 250 will be sent, so the client retries: take back what was published, or the
            # retry would deliver it twice (best effort: a reader may have moved it to cur/).
            for copy in published:
                try:
                    os.unlink(copy.new)
                except OSError as error:
                    log.warning("could not take back %s after a failed commit: %s", copy.new, error)
            _discard([copy for copy in copies if copy not in published])
            raise


def _write_all(fd: int, chunks: list[bytes]) -> None:
    views = [memoryview(chunk) for chunk in chunks if chunk]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        while written:  # drop what went out; a short write resumes mid-chunk
            if written >= len(views[0]):
                written -= len(views.pop(0))
            else:
                views[0] = views[0][written:]
                written = 0


def _discard(copies: Iterable[_Copy]) -> None:
    for copy in copies:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(copy.tmp)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """`mkdir -p` giving every level mode 0700 (os.makedirs leaves intermediate levels at the
    umask default) and fsyncing each parent, so that a delivered message's directory entries are
    as durable as the message itself."""
    if path.is_dir():
        return
    _make_dirs(path.parent)
    # Made by another thread or process? Its parent fsync may still be to come: do ours anyway.
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=DIR_MODE)
    _fsync_dir(path.parent)


def _maildirs(mail_root: Path) -> list[Path]:
    """Every Maildir under mail_root: each mailbox's own directory and its folders."""
    found: list[Path] = []
    for domain in _subdirs(mail_root):
        for mailbox in _subdirs(domain):
            found.append(mailbox)
            found.extend(_subdirs(mailbox, folders=True))
    return found


def _subdirs(path: Path, *, folders: bool = False) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return [
                Path(entry.path)
                for entry in entries
                if entry.name.startswith(".") == folders
                and entry.name not in (".", "..")
                and entry.is_dir(follow_symlinks=False)
            ]
    except FileNotFoundError:
        return []


def _scan_usage(mailbox: Path) -> int:
    total = 0
    for maildir in [mailbox, *_subdirs(mailbox, folders=True)]:
        for sub in ("cur", "new"):
            try:
                entries = list(os.scandir(maildir / sub))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # not a message: Maildir readers skip dot files
                size = _size_from_name(entry.name)
                if size is None:
                    try:
                        size = entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue  # expunged, or moved new/ → cur/ while we looked
                total += size
    return total


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` may still publish its tmp/ files.

    A zombie, an exiting process or one with a SIGKILL pending never runs its own code again,
    so it counts as gone: recovery right after a kill -9 must not spare the files of a writer
    that is still dying (stuck in fsync, or not yet reaped)."""
    if pid <= 0:
        return False  # not a pid we wrote; kill(0) would mean our own process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return not _dying(pid)


_PF_EXITING = 0x4  # task flag in /proc/<pid>/stat, set as soon as the process starts exiting
_SIGKILL_PENDING = 1 << (signal.SIGKILL - 1)


def _dying(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False  # no /proc (or it just went): we cannot tell, so it is not known to die
    # The command name in parentheses may hold spaces: the fields after it are fixed.
    fields = stat.rpartition(")")[2].split()
    state, flags = fields[0], int(fields[6])
    if state in ("Z", "X", "x") or flags & _PF_EXITING:
        return True
    pending = 0
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("SigPnd", "ShdPnd"):
            pending |= int(value, 16)
    return bool(pending & _SIGKILL_PENDING)
