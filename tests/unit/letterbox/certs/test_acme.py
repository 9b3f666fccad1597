"""The back-off record the built-in ACME keeps in its state Secret across restarts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from letterbox.certs.acme import MAX_STORED_ERROR, _Failures
from letterbox.certs.store import DirectorySecretStore

RETRY = datetime(2026, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)


def test_failures_round_trip_exactly() -> None:
    failures = _Failures(3, RETRY, "publishing TXT failed", ("https://ca/dir", "mail.example.org"))
    restored = _Failures.from_json(failures.to_json())
    assert restored == failures
    stored = json.loads(failures.to_json())
    assert stored["retryAt"] == "2026-03-01T12:30:15.250000+00:00"


def test_a_long_error_is_cut_to_fit_a_secret() -> None:
    failures = _Failures(1, RETRY, "x" * 10_000, ("d", "h"))
    restored = _Failures.from_json(failures.to_json())
    assert restored is not None and len(restored.error) == MAX_STORED_ERROR


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"failures": "x", "retryAt": "2026-01-01T00:00:00Z", "error": "", "attempted": []}',
        b'{"failures": 1, "retryAt": "yesterday", "error": "", "attempted": []}',
    ],
)
def test_unreadable_state_counts_as_none(raw: bytes) -> None:
    assert _Failures.from_json(raw) is None


async def test_directory_store_replaces_the_whole_secret(tmp_path: Path) -> None:
    """`put` writes exactly `data`, as replacing a Secret does: a key left out is gone."""
    store = DirectorySecretStore(tmp_path)
    await store.put("state", {"a": b"1", "b": b"2"}, tls=False)
    await store.put("state", {"b": b"3"}, tls=False)
    assert await store.get("state") == {"b": b"3"}
    await store.put("state", {}, tls=False)
    assert await store.get("state") == {}
