"""Removing the stored mail of deleted mailboxes (a Mailbox with deletionPolicy Delete).

The operator cannot reach the mail volumes, so the pod config carries tombstones
(`purged_mailboxes`) and every pod removes the listed Maildirs from its own volume whenever it
loads a config. Nothing that is not listed is ever removed, so keeping mail (Retain) is what
happens by default, and the config refuses a tombstone for an address that is a mailbox.

Safe with several worker processes and crashes: a Maildir is first renamed to a hidden trash
name under mail_root (atomic, so exactly one process takes it; the others find nothing), then
removed. A removal cut short by a crash leaves only trash, which the next purge finishes. The
trash names start with a dot, which no domain directory can (see `maildir._path_part`), so the
Maildir scans never mistake them for mail.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from mailpod.storage.maildir import mailbox_dir

log = logging.getLogger(__name__)

TRASH_PREFIX = ".purge-"


def purge_mailboxes(mail_root: Path, addresses: Iterable[str]) -> list[str]:
    """Remove the Maildirs of `addresses` (and any trash left by an interrupted purge); the
    addresses whose Maildir this call removed."""
    removed: list[str] = []
    for address in addresses:
        try:
            directory = mailbox_dir(mail_root, address)
        except ValueError:
            continue  # not a name a Maildir can have: nothing was ever stored under it
        trash = mail_root / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
        try:
            os.rename(directory, trash)
        except FileNotFoundError:
            continue  # never received mail here, or another process was first
        except OSError as error:  # the next config load tries again
            log.warning(
                "cannot remove the stored mail of a deleted mailbox: %s",
                error,
                extra={"mailbox": address},
            )
            continue
        removed.append(address)
        log.info("stored mail of a deleted mailbox removed", extra={"mailbox": address})
    for leftover in _trash(mail_root):
        # Another worker may be removing the same trash: whatever it removed is not an error.
        shutil.rmtree(leftover, ignore_errors=True)
    return removed


def _trash(mail_root: Path) -> list[Path]:
    try:
        with os.scandir(mail_root) as entries:
            return [
                Path(entry.path)
                for entry in entries
                if entry.name.startswith(TRASH_PREFIX) and entry.is_dir(follow_symlinks=False)
            ]
    except FileNotFoundError:
        return []
