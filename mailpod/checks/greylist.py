"""Greylisting: the first delivery attempt of an unknown (client /24, sender, recipient) triplet
is refused with 451; a retry after the delay (within the window) passes, and the triplet is then
known for `pass_seconds`. Spamware rarely retries; real MTAs always do.

The table is SQLite under the inbound state directory, shared by every worker process (a retry
lands on any of them), and is read and written in a thread."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mailpod.config import Greylisting
from mailpod.ratelimit import network_key

_SCHEMA = """
create table if not exists triplets (
    key text primary key,
    first_seen real not null,
    passed_until real not null default 0
)
"""


class Greylist:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
            db.execute("pragma journal_mode=wal")
            # A power cut may forget recent triplets (they get greylisted once more); an fsync
            # per message would cost more than the whole check.
            db.execute("pragma synchronous=normal")
            db.execute(_SCHEMA)
            self._local.db = db
        return db

    @staticmethod
    def key(ip: str, sender: str, recipient: str) -> str:
        text = f"{network_key(ip)}\0{sender.lower()}\0{recipient.lower()}"
        return hashlib.sha256(text.encode()).hexdigest()  # no addresses at rest

    def _check(self, key: str, policy: Greylisting) -> float:
        now = self._clock()
        db = self._db()
        with db:
            db.execute("begin immediate")
            row = db.execute(
                "select first_seen, passed_until from triplets where key = ?", (key,)
            ).fetchone()
            if row is not None and row[1] > now:
                if row[1] - now < policy.pass_seconds / 2:  # refreshed now and then, not always
                    db.execute(
                        "update triplets set passed_until = ? where key = ?",
                        (now + policy.pass_seconds, key),
                    )
                return 0.0
            if row is not None:
                first_seen = float(row[0])
                waited = now - first_seen
                if (
                    policy.delay_seconds
                    <= waited
                    <= policy.delay_seconds + (policy.retry_window_seconds)
                ):
                    db.execute(
                        "update triplets set passed_until = ? where key = ?",
                        (now + policy.pass_seconds, key),
                    )
                    return 0.0
                if waited < policy.delay_seconds:
                    return policy.delay_seconds - waited
            db.execute(
                "insert or replace into triplets (key, first_seen, passed_until) values (?, ?, 0)",
                (key, now),
            )
            return policy.delay_seconds

    async def check(self, ip: str, sender: str, recipient: str, policy: Greylisting) -> float:
        """0 when the triplet may pass, else the seconds still to wait."""
        if policy.delay_seconds == 0:
            return 0.0
        return await asyncio.to_thread(self._check, self.key(ip, sender, recipient), policy)
