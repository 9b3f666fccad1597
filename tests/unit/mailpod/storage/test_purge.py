"""Removing deleted mailboxes' stored mail: only what is listed, safely with several workers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailpod.config import MailpodConfig, PurgedMailbox, Storage
from mailpod.storage.maildir import mailbox_dir
from mailpod.storage.purge import TRASH_PREFIX, purge_mailboxes


def maildir(root: Path, address: str, messages: int = 2) -> Path:
    directory = mailbox_dir(root, address)
    for sub in ("cur", "new", "tmp", ".Archive/cur"):
        (directory / sub).mkdir(parents=True)
    for number in range(messages):
        (directory / "cur" / f"{number}.M1P1Q1.host,S=5:2,S").write_text("hello")
    (directory / "mailpod-index.sqlite").write_bytes(b"index")
    return directory


def test_only_listed_mailboxes_are_removed(tmp_path: Path) -> None:
    gone = maildir(tmp_path, "Bob@Example.com")
    kept = maildir(tmp_path, "alice@example.com")
    removed = purge_mailboxes(tmp_path, ["bob@example.com", "carol@example.com"])
    assert removed == ["bob@example.com"]
    assert not gone.exists()
    assert (kept / "cur").is_dir() and len(list((kept / "cur").iterdir())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example.com"]  # no trash left


def test_a_second_purge_finds_nothing_and_finishes_interrupted_ones(tmp_path: Path) -> None:
    maildir(tmp_path, "bob@example.com")
    leftover = tmp_path / f"{TRASH_PREFIX}crashed"
    (leftover / "cur").mkdir(parents=True)
    assert purge_mailboxes(tmp_path, ["bob@example.com"]) == ["bob@example.com"]
    assert not leftover.exists()
    assert purge_mailboxes(tmp_path, ["bob@example.com"]) == []


def test_missing_root_and_unusable_names_are_no_ops(tmp_path: Path) -> None:
    assert purge_mailboxes(tmp_path / "absent", ["bob@example.com"]) == []
    maildir(tmp_path, "bob@example.com")
    assert purge_mailboxes(tmp_path, [".hidden@example.com", "no-at-sign"]) == []
    assert mailbox_dir(tmp_path, "bob@example.com").is_dir()


def test_concurrent_workers_remove_each_maildir_once(tmp_path: Path) -> None:
    addresses = [f"user{n}@example.com" for n in range(50)]
    for address in addresses:
        maildir(tmp_path, address, messages=20)
    results: list[list[str]] = []
    start = threading.Barrier(4)

    def worker() -> None:
        start.wait()
        results.append(purge_mailboxes(tmp_path, addresses))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a for result in results for a in result) == sorted(addresses)
    assert list((tmp_path / "example.com").iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TRASH_PREFIX)]


def test_the_config_refuses_a_tombstone_for_a_live_mailbox() -> None:
    document = {
        "hostname": "mail.example.com",
        "listeners": [{"kind": "smtp", "port": 2525}],
        "domains": ["example.com"],
        "mailboxes": [{"address": "bob@example.com", "password_hash": "$argon2id$v=19$x"}],
        "storage": Storage(mail_root=Path("/m"), queue_dir=Path("/q")).model_dump(),
    }
    since = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="is a mailbox"):
        MailpodConfig.model_validate(
            {**document, "purged_mailboxes": [{"address": "BOB@example.com", "since": since}]}
        )
    config = MailpodConfig.model_validate(
        {**document, "purged_mailboxes": [{"address": "eve@example.com", "since": since}]}
    )
    assert config.purged_mailboxes == (PurgedMailbox(address="eve@example.com", since=since),)
