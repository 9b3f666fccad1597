"""The boundary between the IMAP protocol layer and storage: `MailboxSession`.

The protocol layer (mailpod.imap.server) knows folders by name and messages by UID only;
sequence numbers, untagged responses and what a client has been told are its business
(mailpod.imap.selected). Storage knows nothing of IMAP syntax. `MaildirMailboxSession`
(mailpod.imap.maildir_backend) is the implementation; tests may use any other.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol

__all__ = [
    "Changes",
    "FolderInfo",
    "FolderStatus",
    "MailboxError",
    "MailboxSession",
    "MessageInfo",
]


class MailboxError(Exception):
    """An operation the storage refuses; `code` is the IMAP response code to give
    (NONEXISTENT, ALREADYEXISTS, CANNOT, TRYCREATE, LIMIT, USEATTR…)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass(frozen=True, slots=True)
class FolderInfo:
    id: int
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    subscribed: bool
    special_use: str | None


class MessageInfo(NamedTuple):
    """One message as the index knows it. A named tuple: SELECT and SEARCH make one per
    message of a folder, and a frozen dataclass costs three times as much to build."""

    uid: int
    flags: frozenset[str]
    modseq: int
    internaldate: float  # Unix time
    size: int


@dataclass(frozen=True, slots=True)
class FolderStatus:
    messages: int
    unseen: int
    deleted: int
    size: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int


@dataclass(frozen=True, slots=True)
class Changes:
    """What happened in a folder after some MODSEQ: changed or new messages, expunged UIDs."""

    highestmodseq: int
    updated: list[MessageInfo]
    expunged: list[int]


class MailboxSession(Protocol):
    """One authenticated user's mailbox, as one IMAP connection uses it.

    Methods about messages act on the selected folder (`select`). Every method may raise
    MailboxError; the selected folder's deletion by another session surfaces as one with code
    NONEXISTENT from `poll` and the message methods."""

    user: str

    async def list_folders(self) -> list[FolderInfo]: ...

    async def create_folder(self, name: str, special_use: str | None = None) -> None: ...

    async def delete_folder(self, name: str) -> None: ...

    async def rename_folder(self, old: str, new: str) -> None: ...

    async def subscribe(self, name: str, subscribed: bool) -> None: ...

    async def status(self, name: str) -> FolderStatus: ...

    async def append(
        self, name: str, data: bytes, flags: Collection[str], internaldate: datetime | None
    ) -> tuple[int, int]:
        """Store a message durably in folder `name`: (UIDVALIDITY, UID)."""
        ...

    async def select(self, name: str) -> tuple[FolderInfo, list[MessageInfo]]:
        """Make `name` the selected folder (new deliveries indexed first); its state and
        messages in UID order."""
        ...

    def unselect(self) -> None: ...

    async def poll(self, since_modseq: int) -> Changes | None:
        """Changes in the selected folder after `since_modseq` (new deliveries included), or
        None when cheaply known that there are none. Cheap enough to call every second."""
        ...

    async def changes(self, since_modseq: int) -> Changes:
        """Everything that changed in the selected folder after `since_modseq`, expunged UIDs
        included (for CONDSTORE/QRESYNC resynchronisation); unlike `poll`, never skipped."""
        ...

    async def usage(self) -> int:
        """Bytes stored in the whole mailbox (every folder), as quotas count them."""
        ...

    async def records(self, uids: Sequence[int]) -> dict[int, MessageInfo]: ...

    async def read(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The bytes of the selected folder's messages; missing UIDs are gone (expunged)."""
        ...

    async def read_headers(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The header sections only (up to and including the blank line that ends them, as
        `mailpod.imap.mime` splits them), for FETCH and SEARCH that need no body."""
        ...

    async def store(
        self, uids: Sequence[int], mode: str, flags: Collection[str], unchangedsince: int | None
    ) -> tuple[list[MessageInfo], list[int]]:
        """Flags "+" added, "-" removed or "" replaced: (changed messages, UIDs refused by
        UNCHANGEDSINCE)."""
        ...

    async def copy(
        self, uids: Sequence[int], target: str, move: bool
    ) -> tuple[int, list[int], list[int]]:
        """(target UIDVALIDITY, source UIDs, new UIDs) in matching order."""
        ...

    async def expunge(self, uids: Collection[int] | None) -> list[int]:
        """Remove \\Deleted messages (within `uids` if given); the UIDs removed."""
        ...

    async def close(self) -> None: ...
