"""The outbound queue on disk: crash-safe, shared by every worker process of the pod.

One message is two files in `<queue_dir>/messages/`:
- `<id>.msg`, written once: the envelope and recipients as one line of JSON, then the message
  bytes (one file, so one fsync: fsyncs are what an enqueue costs);
- `<id>.log` an append-only journal of per-recipient outcomes and operator actions (retry, drop),
  one JSON object a line. Final outcomes (delivered, failed) are fsync'd before the scheduler
  moves on, so a restart never sends again to a recipient that already got a 250.

Enqueueing is two-phase so the SMTP session can store local copies in between: `prepare` writes
and fsyncs `<id>.tmp`, `commit` renames it to `<id>.msg` (which makes the message exist) and
fsyncs the directory; only then is the 250 sent. A worker that enqueued drops a marker in `new/`
so the process running the scheduler (whichever holds `runner.lock`) picks the message up at
once.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from mailpod.storage.maildir import _fsync_dir, _make_dirs, _write_all

log = logging.getLogger("mailpod.queue")

# Orphans (a .tmp never committed, a journal without its message) are only removed once this
# old: another worker may be between prepare and commit right now.
ORPHAN_AGE_SECONDS = 3600.0
FILE_MODE = 0o600


class RcptStatus(StrEnum):
    SCHEDULED = "scheduled"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (RcptStatus.DELIVERED, RcptStatus.FAILED)


class Notify(StrEnum):
    """RFC 3461 NOTIFY values."""

    NEVER = "NEVER"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"


@dataclass(frozen=True)
class RemoteRecipient:
    """A recipient for the queue: `address` where it goes, `orcpt` what the client gave at RCPT
    (differs for alias expansions), `notify` its RFC 3461 NOTIFY (empty: the default, failures)."""

    address: str
    orcpt: str = ""
    notify: frozenset[Notify] = frozenset()


@dataclass
class QueuedRecipient:
    address: str
    orcpt: str = ""
    notify: tuple[str, ...] = ()
    status: RcptStatus = RcptStatus.SCHEDULED
    attempts: int = 0
    next_attempt: float = 0.0
    reply: str = ""
    """The last reply (or local reason) that decided this recipient's status."""
    remote_mta: str = ""
    delay_notified: bool = False
    """The sender has had its "delayed" DSN for this recipient (one per recipient)."""

    def wants(self, kind: Notify) -> bool:
        if Notify.NEVER.value in self.notify:
            return False
        if not self.notify:  # RFC 3461 §4.1 leaves it to us: FAILURE,DELAY, as Postfix does
            return kind in (Notify.FAILURE, Notify.DELAY)
        return kind.value in self.notify


@dataclass
class QueuedMessage:
    id: str
    sender: str
    created: float
    recipients: list[QueuedRecipient]
    bounce_to: str = ""
    """Where a DSN goes: a local sender's address, or "" (external senders never get one)."""
    ret: str = "FULL"
    envid: str = ""
    smtputf8: bool = False
    size: int = 0
    dropped: bool = False
    received_from: str = ""
    """The client that submitted it (for the DSN's Received-From-MTA), e.g. "dns; [192.0.2.1]"."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pending(self) -> list[int]:
        return [i for i, r in enumerate(self.recipients) if not r.status.final]

    @property
    def done(self) -> bool:
        return self.dropped or not self.pending

    def envelope_json(self) -> bytes:
        document = asdict(self)
        for recipient in document["recipients"]:
            recipient["status"] = RcptStatus.SCHEDULED.value
            # Journal state only; left out so a pod rolled back to an older version can still
            # read the queue.
            del recipient["delay_notified"]
        return json.dumps(document, separators=(",", ":")).encode()


@dataclass
class Prepared:
    """A message written and fsync'd but not yet visible: `commit` or `abort` it."""

    message: QueuedMessage
    tmp: Path


_ID_PREFIX: tuple[int, str] = (-1, "")
_ID_COUNTER = itertools.count()


def new_id() -> str:
    """Time first so `ls` and `queue list` sort by age; then a random part drawn once per
    process (os.urandom per message showed in profiles) and a counter, so no two ids collide."""
    global _ID_PREFIX
    if _ID_PREFIX[0] != os.getpid():  # a forked worker draws its own
        _ID_PREFIX = (os.getpid(), secrets.token_hex(4))
    return f"{int(time.time() * 1000):013x}{_ID_PREFIX[1]}{next(_ID_COUNTER) & 0xFFFFF:05x}"


def _valid_id(queue_id: str) -> bool:
    return 8 <= len(queue_id) <= 64 and all(c in "0123456789abcdef" for c in queue_id)


class QueueStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.messages = root / "messages"
        self.new = root / "new"
        self.control = root / "control"
        self._ready = False

    def ensure(self) -> None:
        if not self._ready:
            for path in (self.messages, self.new, self.control):
                _make_dirs(path)
            self._ready = True

    def path(self, queue_id: str, suffix: str) -> Path:
        if not _valid_id(queue_id):
            raise ValueError(f"not a queue id: {queue_id!r}")
        return self.messages / f"{queue_id}.{suffix}"

    # --- enqueue (any worker) ------------------------------------------------------------------

    def prepare(self, message: QueuedMessage, chunks: Sequence[bytes]) -> Prepared:
        """Write and fsync the body and a temporary envelope (blocking: run it in a thread)."""
        self.ensure()
        tmp = self.path(message.id, "tmp")
        message.size = sum(map(len, chunks))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            _write_all(fd, [message.envelope_json(), b"\n", *chunks])
            os.fsync(fd)
        finally:
            os.close(fd)
        return Prepared(message, tmp)

    def commit(self, prepared: Prepared) -> None:
        """Make the message exist (durably) and tell the scheduler."""
        os.rename(prepared.tmp, self.path(prepared.message.id, "msg"))
        _fsync_dir(self.messages)
        # Only a hint: the scheduler loads every envelope at start anyway.
        with contextlib.suppress(OSError):
            (self.new / prepared.message.id).touch()

    def abort(self, prepared: Prepared) -> None:
        with contextlib.suppress(FileNotFoundError):
            prepared.tmp.unlink()

    def enqueue(self, message: QueuedMessage, chunks: Sequence[bytes]) -> None:
        self.commit(self.prepare(message, chunks))

    # --- reading -------------------------------------------------------------------------------

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.messages)
        except FileNotFoundError:
            return []
        return sorted(name[:-4] for name in names if name.endswith(".msg"))

    def load(self, queue_id: str) -> QueuedMessage | None:
        """The message with its journal replayed, or None if it is gone."""
        try:
            with self.path(queue_id, "msg").open("rb") as file:
                document = json.loads(file.readline())
        except FileNotFoundError:
            return None
        document["recipients"] = [
            QueuedRecipient(**{**r, "notify": tuple(r.get("notify", ())), "status": r["status"]})
            for r in document["recipients"]
        ]
        message = QueuedMessage(**document)
        for recipient in message.recipients:
            recipient.status = RcptStatus(recipient.status)
        for entry in self._journal(queue_id):
            _apply(message, entry)
        return message

    def _journal(self, queue_id: str) -> Iterator[dict[str, Any]]:
        try:
            lines = self.path(queue_id, "log").read_bytes().split(b"\n")
        except FileNotFoundError:
            return
        for line in lines:
            if not line:
                continue
            try:
                yield json.loads(line)
            except ValueError:
                # A torn last line from a crash mid-append: its fsync never returned, so no
                # outcome it recorded was acted on.
                continue

    def body(self, queue_id: str) -> bytes:
        data = self.path(queue_id, "msg").read_bytes()
        return data[data.index(b"\n") + 1 :]

    # --- outcomes (the scheduler; CLI actions) ---------------------------------------------

    def record_many(self, message: QueuedMessage, indexes: Sequence[int], durable: bool) -> None:
        entries = []
        for index in indexes:
            r = message.recipients[index]
            entries.append(
                {
                    "i": index,
                    "s": r.status.value,
                    "a": r.attempts,
                    "n": r.next_attempt,
                    "r": r.reply,
                    "m": r.remote_mta,
                    **({"w": 1} if r.delay_notified else {}),
                }
            )
        self._append(message.id, entries, durable)

    def _append(
        self, queue_id: str, entries: list[dict[str, Any]], durable: bool, create: bool = True
    ) -> None:
        data = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in entries)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        fd = os.open(self.path(queue_id, "log"), flags, FILE_MODE)
        try:
            _write_all(fd, [data])  # one write: appends from two processes never interleave
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def request(self, queue_id: str, operation: str) -> bool:
        """An operator action (retry, drop) from any process: journalled durably, then the
        scheduler is told through a control marker. False if there is no such message."""
        if operation not in ("retry", "drop"):
            raise ValueError(operation)
        if not self.path(queue_id, "msg").exists():
            return False
        try:
            # No O_CREAT: a message delivered meanwhile must not grow an orphan journal.
            self._append(queue_id, [{"op": operation, "at": time.time()}], True, create=False)
        except FileNotFoundError:
            if not self.path(queue_id, "msg").exists():
                return False
            self._append(queue_id, [{"op": operation, "at": time.time()}], True)
        with contextlib.suppress(OSError):
            (self.control / queue_id).touch()
        return True

    def retire(self, queue_id: str) -> None:
        """Remove a message whose every recipient is final, durably: once the directory is
        fsync'd its absence records all the outcomes at once (a restart has nothing to send),
        for less than a journal append + fsync followed by `remove`."""
        with contextlib.suppress(FileNotFoundError):
            self.path(queue_id, "msg").unlink()
        _fsync_dir(self.messages)
        with contextlib.suppress(FileNotFoundError):
            self.path(queue_id, "log").unlink()

    def remove(self, queue_id: str) -> None:
        # The message first: without it a journal is an orphan, whatever happens next.
        for suffix in ("msg", "log"):
            with contextlib.suppress(FileNotFoundError):
                self.path(queue_id, suffix).unlink()

    def take_markers(self, directory: Path) -> list[str]:
        """Ids with a marker in `directory` (new/ or control/), removing the markers."""
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        taken = []
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / name)
                if _valid_id(name):
                    taken.append(name)
        return taken

    def markers_pending(self) -> bool:
        try:
            return bool(os.listdir(self.new)) or bool(os.listdir(self.control))
        except FileNotFoundError:
            return False

    def recover(self, now: float | None = None) -> int:
        """Remove old orphans left by crashes between the writes of an enqueue."""
        now = time.time() if now is None else now
        removed = 0
        try:
            entries = list(os.scandir(self.messages))
        except FileNotFoundError:
            return 0
        messages = {e.name[:-4] for e in entries if e.name.endswith(".msg")}
        for entry in entries:
            stem = entry.name.split(".", 1)[0]
            orphan = entry.name.endswith(".tmp") or (
                entry.name.endswith(".log") and stem not in messages
            )
            if not orphan:
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - entry.stat().st_mtime > ORPHAN_AGE_SECONDS:
                    os.unlink(entry.path)
                    removed += 1
        return removed


def _apply(message: QueuedMessage, entry: dict[str, Any]) -> None:
    operation = entry.get("op")
    if operation == "drop":
        message.dropped = True
    elif operation == "retry":
        for recipient in message.recipients:
            if not recipient.status.final:
                recipient.next_attempt = 0.0
    elif operation is None:
        index = entry.get("i")
        if not isinstance(index, int) or not 0 <= index < len(message.recipients):
            return
        recipient = message.recipients[index]
        if recipient.status.final:
            return  # a final outcome is never undone
        recipient.status = RcptStatus(entry["s"])
        recipient.attempts = int(entry.get("a", recipient.attempts))
        recipient.next_attempt = float(entry.get("n", 0.0))
        recipient.reply = str(entry.get("r", ""))
        recipient.remote_mta = str(entry.get("m", ""))
        recipient.delay_notified = recipient.delay_notified or bool(entry.get("w"))


class RunnerLock:
    """Only one process of the pod runs the scheduler: whoever holds this lock. The kernel drops
    it when the holder dies (kill -9 included), and another worker takes over."""

    def __init__(self, root: Path) -> None:
        self.path = root / "runner.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        _make_dirs(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
