"""`MaildirMailboxSession`: the MailboxSession on Maildir++ with its SQLite index
(mailpod.imap.store).

Sessions of one user in one worker share one `MaildirIndex` (one SQLite connection): a mail
client keeps several connections open, and 1,000 IDLE connections must not mean 1,000 SQLite
connections with their caches. The index serialises their transactions; each session keeps its
own view of what it has seen (`observer=self`).

The index's blocking work (SQLite with fsync, file renames) runs on a thread pool shared by the
worker's sessions, so the event loop never waits for a disk. Short reads of the index run
inline instead, when the index is free at that moment (else on the pool, like the rest): the
poll's first check (a stat of new/, an in-memory SQLite pragma), which IDLE clients make every
half second; the poll itself when only commits happened; SELECT when no sync is due; message
records; cached header sections. The index's pages are in memory and the work is all CPU,
which a pool thread would do under the same GIL, after two thread switches.

When a user's last session ends, the index stays open for INDEX_LINGER_SECONDS (at most
MAX_LINGERING of them per worker): clients that log in, do one thing and log out again (mobile
mail, scripts, the benchmark) then skip re-opening SQLite and re-listing cur/ every time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from mailpod.imap.backend import Changes, FolderInfo, FolderStatus, MailboxError, MessageInfo
from mailpod.imap.store import Change, MaildirIndex
from mailpod.storage.maildir import mailbox_dir

__all__ = ["MaildirMailboxSession", "close_idle_indexes"]

_T = TypeVar("_T")


class _Busy(Exception):
    """The index is in use: the work goes to the pool."""


INDEX_LINGER_SECONDS = 60.0
MAX_LINGERING = 64


class _Shared:
    def __init__(self, index: MaildirIndex, executor: concurrent.futures.Executor) -> None:
        self.index = index
        self.executor = executor
        self.users = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.linger: asyncio.TimerHandle | None = None


# Per worker process (one event loop): the open index of each mailbox directory, and those of
# them no session uses any more, oldest first.
_OPEN: dict[Path, _Shared] = {}
_LINGERING: OrderedDict[Path, _Shared] = OrderedDict()


def _close_index(root: Path, shared: _Shared) -> None:
    if _OPEN.get(root) is not shared or shared.users:
        return
    del _OPEN[root]
    _LINGERING.pop(root, None)
    if shared.linger is not None:
        shared.linger.cancel()
    # On the pool: the index's lock makes it wait for a transaction still running.
    with contextlib.suppress(RuntimeError):  # the pool is shut down: the process is ending
        shared.executor.submit(shared.index.close)


def close_idle_indexes() -> None:
    """Close now the indexes no session uses (they would linger a while)."""
    for root, shared in list(_LINGERING.items()):
        _close_index(root, shared)


class MaildirMailboxSession:
    def __init__(
        self, index: MaildirIndex, user: str, executor: concurrent.futures.Executor
    ) -> None:
        self.user = user
        self._index = index
        self._executor = executor
        self._selected: int | None = None
        self._running: concurrent.futures.Future[object] | None = None

    @classmethod
    async def open(
        cls,
        mail_root: Path,
        user: str,
        executor: concurrent.futures.Executor,
        hostname: str | None = None,
    ) -> MaildirMailboxSession:
        root = mailbox_dir(mail_root, user)
        shared = _OPEN.get(root)
        if shared is not None and shared.linger is not None:
            shared.linger.cancel()
            shared.linger = None
            _LINGERING.pop(root, None)
        if shared is None:
            shared = _OPEN[root] = _Shared(MaildirIndex(root, hostname), executor)
            shared.users += 1
            try:
                await asyncio.wrap_future(executor.submit(shared.index.open))
            except BaseException as error:
                del _OPEN[root]
                shared.ready.set_exception(error)
                shared.ready.exception()  # retrieved: waiters get it through their own await
                raise
            shared.ready.set_result(None)
        else:
            shared.users += 1
            try:
                await asyncio.shield(shared.ready)
            except BaseException:
                shared.users -= 1
                raise
        return cls(shared.index, user, executor)

    async def _run(self, work: Callable[..., _T], *args: object) -> _T:
        if self._running is not None and not self._running.done():
            # A call whose caller was cancelled may still be running: the index is not
            # thread-safe, so wait for it.
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self._running)
        future = self._executor.submit(functools.partial(work, *args))
        self._running = future  # type: ignore[assignment]
        return await asyncio.wrap_future(future)

    def _inline(self, work: Callable[..., _T], *args: object) -> _T:
        """Run quick read-only `work` on the event loop, if the index is free right now."""
        if self._running is not None and not self._running.done():
            raise _Busy
        lock = self._index.lock
        if not lock.acquire(blocking=False):
            raise _Busy
        try:
            return work(*args)
        finally:
            lock.release()

    async def _quick(self, work: Callable[..., _T], *args: object) -> _T:
        try:
            return self._inline(work, *args)
        except _Busy:
            return await self._run(work, *args)

    def _folder(self) -> int:
        if self._selected is None:
            raise MailboxError("CLIENTBUG", "No mailbox selected")
        return self._selected

    async def list_folders(self) -> list[FolderInfo]:
        return await self._run(self._index.folders)

    async def create_folder(self, name: str, special_use: str | None = None) -> None:
        await self._run(self._index.create_folder, name, special_use)

    async def delete_folder(self, name: str) -> None:
        await self._run(self._index.delete_folder, name)

    async def rename_folder(self, old: str, new: str) -> None:
        await self._run(self._index.rename_folder, old, new)

    async def subscribe(self, name: str, subscribed: bool) -> None:
        await self._run(self._index.set_subscribed, name, subscribed)

    async def status(self, name: str) -> FolderStatus:
        return await self._run(self._index.status, name)

    async def append(
        self, name: str, data: bytes, flags: Collection[str], internaldate: datetime | None
    ) -> tuple[int, int]:
        when = internaldate.timestamp() if internaldate is not None else None
        return await self._run(self._index.append, name, data, frozenset(flags), when)

    def _select(self, name: str) -> tuple[FolderInfo, list[MessageInfo]]:
        folder = self._index.folder(name)
        self._index.sync(folder.id, verify=True)
        return self._index.messages(folder.id)

    async def select(self, name: str) -> tuple[FolderInfo, list[MessageInfo]]:
        self._selected = None
        selected: tuple[FolderInfo, list[MessageInfo]] | None = None
        with contextlib.suppress(_Busy):
            selected = self._inline(self._index.select_if_synced, name)
        if selected is None:
            selected = await self._run(self._select, name)
        folder, messages = selected
        self._selected = folder.id
        return folder, messages

    def unselect(self) -> None:
        self._selected = None

    def _poll(self, folder_id: int, since: int) -> Changes:
        self._index.sync(folder_id)
        return self._index.changes(folder_id, since, observer=self)

    async def poll(self, since_modseq: int) -> Changes | None:
        folder_id = self._folder()
        if self._running is not None and not self._running.done():
            await self._run(lambda: None)  # let the running call finish before looking
        change = self._index.what_changed(folder_id, observer=self)
        if change is Change.NOTHING:
            return None
        if change is Change.INDEX:
            return await self._quick(self._index.changes, folder_id, since_modseq, self)
        return await self._run(self._poll, folder_id, since_modseq)

    async def changes(self, since_modseq: int) -> Changes:
        return await self._run(self._poll, self._folder(), since_modseq)

    async def usage(self) -> int:
        return await self._run(self._index.usage_bytes)

    async def records(self, uids: Sequence[int]) -> dict[int, MessageInfo]:
        return await self._quick(self._index.records, self._folder(), uids)

    async def read(self, uids: Sequence[int]) -> dict[int, bytes]:
        return await self._run(self._index.read_many, self._folder(), uids)

    async def read_headers(self, uids: Sequence[int]) -> dict[int, bytes]:
        folder_id = self._folder()
        try:
            found, missing = self._inline(self._index.cached_headers, folder_id, uids)
        except _Busy:
            found, missing = {}, list(uids)
        if missing:
            found.update(await self._run(self._index.read_many, folder_id, missing, True))
        return found

    async def store(
        self, uids: Sequence[int], mode: str, flags: Collection[str], unchangedsince: int | None
    ) -> tuple[list[MessageInfo], list[int]]:
        return await self._run(
            self._index.store, self._folder(), uids, mode, frozenset(flags), unchangedsince
        )

    async def copy(
        self, uids: Sequence[int], target: str, move: bool
    ) -> tuple[int, list[int], list[int]]:
        return await self._run(self._index.copy, self._folder(), uids, target, move)

    async def expunge(self, uids: Collection[int] | None) -> list[int]:
        return await self._run(self._index.expunge, self._folder(), uids)

    async def close(self) -> None:
        self._selected = None
        self._index.forget(self)
        root = self._index.root
        shared = _OPEN.get(root)
        if shared is None or shared.index is not self._index:
            return
        shared.users -= 1
        if shared.users == 0:
            await self._settle()
            if shared.users:  # a new session came meanwhile
                return
            _LINGERING[root] = shared
            shared.linger = asyncio.get_running_loop().call_later(
                INDEX_LINGER_SECONDS, _close_index, root, shared
            )
            while len(_LINGERING) > MAX_LINGERING:
                oldest, first = next(iter(_LINGERING.items()))
                _close_index(oldest, first)

    async def _settle(self) -> None:
        """Wait for this session's call still running on the pool (its caller was cancelled)."""
        if self._running is not None and not self._running.done():
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self._running)
