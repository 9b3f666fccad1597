"""The queue's files: two-phase enqueue, journal replay (torn lines, final outcomes never undone),
operator requests, orphan recovery and the runner lock."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mailpod.queue.store import (
    ORPHAN_AGE_SECONDS,
    Notify,
    QueuedMessage,
    QueuedRecipient,
    QueueStore,
    RcptStatus,
    RunnerLock,
    new_id,
)


def _message(*recipients: str) -> QueuedMessage:
    return QueuedMessage(
        new_id(), "alice@example.com", time.time(), [QueuedRecipient(r) for r in recipients]
    )


def test_a_prepared_message_only_exists_once_committed(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    message = _message("a@remote.example")
    prepared = store.prepare(message, [b"Received: x\r\n", b"Subject: s\r\n\r\nbody\r\n"])
    assert store.ids() == []
    assert store.load(message.id) is None
    store.commit(prepared)
    assert store.ids() == [message.id]
    assert store.body(message.id) == b"Received: x\r\nSubject: s\r\n\r\nbody\r\n"
    loaded = store.load(message.id)
    assert loaded is not None
    assert loaded.size == len(store.body(message.id))
    assert store.take_markers(store.new) == [message.id]


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    prepared = store.prepare(_message("a@remote.example"), [b"x"])
    store.abort(prepared)
    assert os.listdir(store.messages) == []


def test_the_journal_replays_outcomes_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    message = _message("a@remote.example", "b@remote.example")
    store.enqueue(message, [b"x"])
    message.recipients[0].status = RcptStatus.DELIVERED
    message.recipients[0].reply = "250 2.0.0 ok"
    message.recipients[1].status = RcptStatus.DEFERRED
    message.recipients[1].attempts = 1
    message.recipients[1].next_attempt = 1234.5
    store.record_many(message, [0, 1], durable=True)
    with store.path(message.id, "log").open("ab") as journal:
        journal.write(b'{"i":1,"s":"deliv')  # a crash mid-append
    loaded = store.load(message.id)
    assert loaded is not None
    first, second = loaded.recipients
    assert (first.status, first.reply) == (RcptStatus.DELIVERED, "250 2.0.0 ok")
    assert (second.status, second.attempts, second.next_attempt) == (
        RcptStatus.DEFERRED,
        1,
        1234.5,
    )
    assert loaded.pending == [1]


def test_a_delay_warning_once_sent_stays_sent(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    message = _message("a@remote.example")
    store.enqueue(message, [b"x"])
    message.recipients[0].status = RcptStatus.DEFERRED
    message.recipients[0].delay_notified = True
    store.record_many(message, [0], durable=True)
    message.recipients[0].delay_notified = False  # a later deferral written by an older pod
    store.record_many(message, [0], durable=False)
    loaded = store.load(message.id)
    assert loaded is not None
    assert loaded.recipients[0].delay_notified
    # Journal state only: the message file stays readable by an older pod after a rollback.
    assert b"delay_notified" not in store.path(message.id, "msg").read_bytes()


def test_a_final_outcome_is_never_undone(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    message = _message("a@remote.example")
    store.enqueue(message, [b"x"])
    message.recipients[0].status = RcptStatus.DELIVERED
    store.record_many(message, [0], durable=True)
    message.recipients[0].status = RcptStatus.DEFERRED
    store.record_many(message, [0], durable=False)
    loaded = store.load(message.id)
    assert loaded is not None
    assert loaded.recipients[0].status is RcptStatus.DELIVERED
    assert loaded.done


def test_retry_and_drop_requests(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    store.ensure()
    message = _message("a@remote.example")
    store.enqueue(message, [b"x"])
    message.recipients[0].status = RcptStatus.DEFERRED
    message.recipients[0].next_attempt = time.time() + 3600
    store.record_many(message, [0], durable=False)
    assert store.request(message.id, "retry")
    loaded = store.load(message.id)
    assert loaded is not None
    assert loaded.recipients[0].next_attempt == 0.0
    assert store.take_markers(store.control) == [message.id]
    assert store.request(message.id, "drop")
    loaded = store.load(message.id)
    assert loaded is not None and loaded.dropped and loaded.done
    store.remove(message.id)
    assert not store.request(message.id, "retry")
    assert not store.path(message.id, "log").exists()
    with pytest.raises(ValueError):
        store.request(message.id, "explode")


def test_ids_must_be_hex_so_no_path_can_escape(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    for bad in ("../../etc/passwd", "abc", "ABCDEF0123", "0123456789/x"):
        with pytest.raises(ValueError):
            store.path(bad, "msg")


def test_recover_removes_only_old_orphans(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    kept = _message("a@remote.example")
    store.enqueue(kept, [b"x"])
    fresh = store.prepare(_message("b@remote.example"), [b"y"])  # another worker, mid-enqueue
    old = store.prepare(_message("c@remote.example"), [b"z"])  # a crash long ago
    long_ago = time.time() - ORPHAN_AGE_SECONDS - 10
    os.utime(old.tmp, (long_ago, long_ago))
    journal = store.path(new_id(), "log")  # a journal whose message was removed
    journal.write_bytes(b"{}\n")
    os.utime(journal, (long_ago, long_ago))
    assert store.recover() == 2
    assert fresh.tmp.exists()
    assert not old.tmp.exists() and not journal.exists()
    assert store.ids() == [kept.id]


def test_notify_defaults_to_failures_and_delays() -> None:
    default = QueuedRecipient("a@x.example")
    assert default.wants(Notify.FAILURE) and not default.wants(Notify.SUCCESS)
    assert default.wants(Notify.DELAY)
    never = QueuedRecipient("a@x.example", notify=("NEVER",))
    assert not never.wants(Notify.FAILURE)
    both = QueuedRecipient("a@x.example", notify=("FAILURE", "SUCCESS"))
    assert both.wants(Notify.SUCCESS) and not both.wants(Notify.DELAY)


def test_one_runner_at_a_time(tmp_path: Path) -> None:
    first, second = RunnerLock(tmp_path), RunnerLock(tmp_path)
    assert first.acquire()
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()


def test_retire_removes_a_finished_message_and_its_journal(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    message = _message("a@remote.example")
    store.enqueue(message, [b"x"])
    message.recipients[0].status = RcptStatus.DEFERRED
    store.record_many(message, [0], durable=False)
    store.retire(message.id)
    assert store.ids() == []
    assert store.load(message.id) is None
    assert not store.path(message.id, "log").exists()
    store.retire(message.id)  # already gone: nothing to do, no error
