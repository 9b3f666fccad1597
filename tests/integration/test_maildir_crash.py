"""SIGKILL a process delivering into Maildirs: every acknowledged message is there exactly once
and whole, and recover() leaves no tmp/ debris."""

from __future__ import annotations

import hashlib
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mailpod.storage import MaildirStorage, maildir_path

WRITER = Path(__file__).with_name("maildir_crash_writer.py")
REPO = Path(__file__).resolve().parents[2]
ROUNDS = 8
HEAD = re.compile(rb"Message-Id: <([^>]+)>\r\nX-Length: (\d+)\r\nX-Sha256: ([0-9a-f]+)\r\n\r\n")

pytestmark = pytest.mark.integration


def run_and_kill(root: Path, prefix: str, rng: random.Random) -> list[str]:
    """Start the writer, SIGKILL it at a random moment; the ids it acknowledged."""
    command = [sys.executable, str(WRITER), str(root), prefix]
    with subprocess.Popen(command, stdout=subprocess.PIPE, cwd=REPO) as writer:
        assert writer.stdout is not None
        first = writer.stdout.readline()  # running and delivering: now pick the moment
        time.sleep(rng.uniform(0.0, 0.4))
        writer.send_signal(signal.SIGKILL)
        rest = writer.stdout.read()
    # Reaped on leaving the block, so its pid reads as dead to recover().
    assert writer.returncode == -signal.SIGKILL
    # A line cut short by the kill was not acknowledged in full: only count whole lines.
    lines = (first + rest).split(b"\n")[:-1]
    assert lines, "the writer acknowledged nothing"
    return [line.decode() for line in lines]


def check_messages(new: Path) -> Counter[str]:
    """Every file in new/ is whole (length and checksum match); how often each id occurs."""
    seen: Counter[str] = Counter()
    for path in new.iterdir():
        data = path.read_bytes()
        assert int(path.name.rpartition(",S=")[2]) == len(data), path.name
        match = HEAD.search(data)
        assert match, f"{path.name}: headers missing"
        payload = data[match.end() :]
        assert len(payload) == int(match.group(2)), f"{path.name}: truncated"
        assert hashlib.sha256(payload).hexdigest() == match.group(3).decode(), path.name
        seen[match.group(1).decode()] += 1
    return seen


def test_killed_writer_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    rng = random.Random()
    acknowledged: list[str] = []
    debris_removed = 0
    for round_ in range(ROUNDS):
        acknowledged += run_and_kill(tmp_path, f"r{round_}", rng)
        storage = MaildirStorage(tmp_path)
        try:
            debris_removed += storage.recover()
        finally:
            storage.close()
        assert list(tmp_path.rglob("tmp/*")) == []

        for mailbox, folder in (("alice@example.com", ""), ("bob@example.com", "Junk")):
            seen = check_messages(maildir_path(tmp_path, mailbox, folder) / "new")
            # Acknowledged: exactly once (alice is reached twice, as herself and postmaster).
            missing = [i for i in acknowledged if seen[i] != 1]
            assert not missing, f"{mailbox}: {len(missing)} acknowledged ids not there once"
            # Committed but killed before the ack: fine, but still never twice.
            assert max(seen.values()) == 1
    print(f"{ROUNDS} rounds, {len(acknowledged)} acknowledged, {debris_removed} tmp files removed")
