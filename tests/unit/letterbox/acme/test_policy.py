"""Renewal timing, back-off and directory names of the built-in ACME client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from letterbox.acme.challenge import challenge_name
from letterbox.acme.policy import (
    LETS_ENCRYPT_PRODUCTION,
    LETS_ENCRYPT_STAGING,
    Backoff,
    directory_url,
    expiry_warning_due,
    renewal_time,
)

START = datetime(2026, 1, 1, tzinfo=UTC)


def test_renewal_when_a_third_of_the_lifetime_is_left() -> None:
    assert renewal_time(START, START + timedelta(days=90)) == START + timedelta(days=60)
    assert renewal_time(START, START + timedelta(seconds=90)) == START + timedelta(seconds=60)


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base=timedelta(minutes=5), maximum=timedelta(hours=12))
    delays = [backoff.delay(n) for n in range(0, 12)]
    assert delays[:5] == [timedelta(0), *(timedelta(minutes=5 * 2**k) for k in range(4))]
    assert delays[-1] == timedelta(hours=12)
    assert backoff.delay(10_000) == timedelta(hours=12)  # no overflow on long outages


def test_expiry_warning_from_a_week_before() -> None:
    not_after = START + timedelta(days=30)
    assert not expiry_warning_due(not_after, not_after - timedelta(days=7, seconds=1))
    assert expiry_warning_due(not_after, not_after - timedelta(days=7))
    assert expiry_warning_due(not_after, not_after + timedelta(days=1))


def test_directory_names_and_challenge_names() -> None:
    assert directory_url("production") == LETS_ENCRYPT_PRODUCTION
    assert directory_url("staging") == LETS_ENCRYPT_STAGING
    assert directory_url("https://ca.example/dir") == "https://ca.example/dir"
    assert challenge_name("mail.example.com") == "_acme-challenge.mail.example.com"
    assert challenge_name("*.example.com") == "_acme-challenge.example.com"
