"""What one connection has told its client about the selected folder (pure).

IMAP sequence numbers are per connection: message n is the n-th UID this client knows of, and
it changes only when the client is sent EXPUNGE. This view keeps that list, the flags last
reported, and the MODSEQ up to which storage changes have been turned into untagged responses.
Expunges that may not be announced yet (during FETCH, STORE, SEARCH) wait here.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from mailpod.imap.backend import Changes, FolderInfo, MessageInfo
from mailpod.imap.parser import SYSTEM_FLAGS, SequenceSet
from mailpod.imap.response import Atom, render_list

__all__ = ["BadSequence", "SelectedView", "flags_value"]

_SYSTEM = tuple(SYSTEM_FLAGS.values())


class BadSequence(ValueError):
    """A message sequence number beyond the mailbox: the command is BAD."""


def _ordered(flags: Iterable[str]) -> list[str]:
    return sorted(flags, key=lambda f: (not f.startswith("\\"), f))  # system flags first


def flags_value(flags: Iterable[str]) -> bytes:
    return render_list([Atom(flag) for flag in _ordered(flags)])


class SelectedView:
    def __init__(self, folder: FolderInfo, messages: list[MessageInfo], readonly: bool) -> None:
        self.folder_id = folder.id
        self.name = folder.name
        self.uidvalidity = folder.uidvalidity
        self.uidnext = folder.uidnext
        self.readonly = readonly
        self.modseq = folder.highestmodseq
        self.uids = [message.uid for message in messages]
        self.flags = {message.uid: message.flags for message in messages}
        self.keywords = {f for m in messages for f in m.flags if not f.startswith("\\")}
        self.saved: list[int] = []  # SEARCHRES "$", as UIDs
        # Set by the connection: CONDSTORE adds MODSEQ to flag updates; QRESYNC reports
        # expunges as VANISHED (UIDs) instead of EXPUNGE (sequence numbers).
        self.condstore = False
        self.qresync = False
        self._pending_expunge: set[int] = set()

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        index = bisect.bisect_left(self.uids, uid)
        return index + 1 if index < len(self.uids) and self.uids[index] == uid else None

    def resolve(self, seqset: SequenceSet, uid: bool) -> list[int]:
        """The UIDs a command's set names, ascending. Raises BadSequence for a sequence number
        beyond the mailbox."""
        if seqset.saved:
            return sorted(u for u in self.saved if u in self.flags)
        if uid:
            return seqset.select(self.uids)
        numbers = seqset.select(range(1, len(self.uids) + 1))
        # Lenient like Dovecot: "1:10" in a mailbox of 3 is messages 1 to 3 (curl users write
        # that); only a set naming no existing message at all is an error.
        if not numbers and seqset.largest_explicit() > len(self.uids):
            raise BadSequence("Invalid message sequence number")
        return [self.uids[n - 1] for n in numbers]

    def flags_lines(self) -> list[bytes]:
        known = _ordered([*_SYSTEM, *self.keywords])
        permanent = [] if self.readonly else [*known, "\\*"]
        return [
            b"* FLAGS " + flags_value(known) + b"\r\n",
            b"* OK [PERMANENTFLAGS "
            + render_list([Atom(f) for f in permanent])
            + b"] Flags permitted\r\n",
        ]

    def note_flags(self, flags: Iterable[str]) -> list[bytes]:
        """FLAGS/PERMANENTFLAGS again when a keyword appears that the client was not told of."""
        new = {f for f in flags if not f.startswith("\\")} - self.keywords
        if not new:
            return []
        self.keywords |= new
        return self.flags_lines()

    def fetch_flags_line(self, uid: int, modseq: int | None = None) -> bytes:
        seq = self.seq_of(uid)
        line = b"* %d FETCH (UID %d FLAGS %s" % (seq or 0, uid, flags_value(self.flags[uid]))
        if self.condstore and modseq is not None:
            line += b" MODSEQ (%d)" % modseq
        return line + b")\r\n"

    def remove(self, uids: Iterable[int]) -> list[bytes]:
        """Forget expunged messages now: one `* n EXPUNGE` each, numbered as they go (or, with
        QRESYNC, one `* VANISHED uids` for all)."""
        lines = []
        gone = []
        for uid in sorted(set(uids), reverse=True):  # from the end: no renumbering in between
            seq = self.seq_of(uid)
            if seq is None:
                continue
            del self.uids[seq - 1]
            del self.flags[uid]
            self._pending_expunge.discard(uid)
            gone.append(uid)
            lines.append(b"* %d EXPUNGE\r\n" % seq)
        if self.qresync and gone:
            return [b"* VANISHED %s\r\n" % str(SequenceSet.of(sorted(gone))).encode()]
        return lines

    def apply(self, changes: Changes | None, allow_expunge: bool) -> list[bytes]:
        """Untagged responses for storage changes: EXPUNGE (only if allowed now; otherwise kept
        for later), flag changes as FETCH, and EXISTS for new messages."""
        lines: list[bytes] = []
        if changes is not None:
            self._pending_expunge |= {uid for uid in changes.expunged if uid in self.flags}
        if allow_expunge and self._pending_expunge:
            lines += self.remove(self._pending_expunge)
        if changes is None:
            return lines
        last = self.uids[-1] if self.uids else 0
        added = False
        flag_lines: list[bytes] = []
        for record in changes.updated:
            if record.uid in self.flags:
                if record.flags != self.flags[record.uid]:
                    self.flags[record.uid] = record.flags
                    lines += self.note_flags(record.flags)
                    if record.uid not in self._pending_expunge:
                        flag_lines.append(self.fetch_flags_line(record.uid, record.modseq))
            elif record.uid > last:
                self.uids.append(record.uid)
                self.flags[record.uid] = record.flags
                lines += self.note_flags(record.flags)
                last = record.uid
                added = True
        lines += flag_lines
        if added:
            lines.append(b"* %d EXISTS\r\n" % len(self.uids))
            self.uidnext = max(self.uidnext, last + 1)
        self.modseq = max(self.modseq, changes.highestmodseq)
        return lines
