"""SRS rewriting (Shevek scheme): forward, reverse, SRS1 chains, hash and age checks, rotation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mailpod.config import OutboundConfig
from mailpod.srs import SrsError, SrsRewriter

DAY = 86400
NOW = 1_700_000_000.0
OURS = SrsRewriter("srs.ours.example", (b"k1",))

# Produced independently by pysrs 1.0.3 (SRS.Guarded, secret "k1", hash length 4) at NOW: the
# same bytes from a second implementation of the scheme.
SRS0 = "SRS0=E6jU=G3=Orig.example=User.Name@srs.ours.example"
SRS1 = "SRS1=afHL=srs.ours.example==E6jU=G3=Orig.example=User.Name@srs2.example"
SRS1_AGAIN = "SRS1=afHL=srs.ours.example==E6jU=G3=Orig.example=User.Name@srs3.example"


def test_forward_matches_the_reference_implementation() -> None:
    assert OURS.forward("User.Name@Orig.example", now=NOW) == SRS0
    hop2 = SrsRewriter("srs2.example", (b"k1",))
    assert hop2.forward(SRS0, now=NOW) == SRS1
    hop3 = SrsRewriter("srs3.example", (b"k1",))
    assert hop3.forward(SRS1, now=NOW) == SRS1_AGAIN


def test_reverse_gives_the_original_sender_or_the_previous_hop() -> None:
    assert OURS.reverse(SRS0, now=NOW) == "User.Name@Orig.example"
    hop3 = SrsRewriter("srs3.example", (b"k1",))
    # An SRS1 bounce goes straight back to the first forwarder's SRS0 address.
    assert hop3.reverse(SRS1_AGAIN, now=NOW) == SRS0


def test_round_trip_and_separators() -> None:
    forwarded = OURS.forward("bob+tag@example.net", now=NOW)
    assert forwarded.startswith("SRS0=") and forwarded.endswith(
        "=example.net=bob+tag@srs.ours.example"
    )
    assert OURS.reverse(forwarded, now=NOW) == "bob+tag@example.net"
    # Mail::SRS accepts - and + after the tag as well as =.
    for sep in "-+":
        assert (
            OURS.reverse(SRS0.replace("SRS0=", f"SRS0{sep}"), now=NOW) == "User.Name@Orig.example"
        )


def test_hash_check_ignores_case() -> None:
    # Some MTAs fold the local part; the hash is compared without regard to case.
    assert OURS.reverse(SRS0.lower(), now=NOW) == "user.name@orig.example"
    assert OURS.reverse(SRS0.upper().replace("@SRS.OURS.EXAMPLE", "@srs.ours.example"), now=NOW)


@pytest.mark.parametrize(
    "address",
    [
        SRS0.replace("E6jU", "E6jV"),  # wrong hash
        SRS0.replace("=G3=", "=G4="),  # timestamp changed: the hash covers it
        SRS0.replace("Orig.example", "evil.example"),  # redirected bounce
        SRS0.replace("User.Name", "Other"),
        SRS0.replace("E6jU", "E6j"),  # hash too short
        SrsRewriter("srs.ours.example", (b"other key",)).forward("a@b.example", now=NOW),
    ],
)
def test_forged_addresses_are_refused(address: str) -> None:
    with pytest.raises(SrsError):
        OURS.reverse(address, now=NOW)


@pytest.mark.parametrize(
    "address",
    [
        "plain@srs.ours.example",
        "SRS0=E6jU=G3=Orig.example@srs.ours.example",  # a field missing
        "SRS0==G3=Orig.example=User.Name@srs.ours.example",
        "SRS1=afHL=srs.ours.example@srs.ours.example",
        SRS0.replace("srs.ours.example", "elsewhere.example"),  # not our domain
        "no-at-sign",
    ],
)
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(SrsError):
        OURS.reverse(address, now=NOW)


def test_maximum_age() -> None:
    assert OURS.reverse(SRS0, now=NOW + 21 * DAY) == "User.Name@Orig.example"
    with pytest.raises(SrsError, match="expired"):
        OURS.reverse(SRS0, now=NOW + 22 * DAY)
    # A timestamp from the future (beyond wrap-around arithmetic) is refused too.
    with pytest.raises(SrsError, match="expired"):
        OURS.reverse(SRS0, now=NOW - DAY)
    short = SrsRewriter("srs.ours.example", (b"k1",), max_age_days=3)
    with pytest.raises(SrsError, match="expired"):
        short.reverse(SRS0, now=NOW + 4 * DAY)


def test_timestamp_wraps_after_1024_days() -> None:
    # Day numbers are kept modulo 1024: a rewrite made just before the wrap still reverses after.
    day = int(NOW // DAY)
    before_wrap = (day - day % 1024 + 1023) * DAY + 3600.0
    address = OURS.forward("a@b.example", now=before_wrap)
    assert OURS.reverse(address, now=before_wrap + 2 * DAY) == "a@b.example"


def test_key_rotation_first_signs_all_verify() -> None:
    old = SrsRewriter("srs.ours.example", (b"old",))
    rotated = SrsRewriter("srs.ours.example", (b"new", b"old"))
    made_before = old.forward("a@b.example", now=NOW)
    made_after = rotated.forward("a@b.example", now=NOW)
    assert made_after != made_before
    assert rotated.reverse(made_before, now=NOW) == "a@b.example"
    assert rotated.reverse(made_after, now=NOW) == "a@b.example"
    assert SrsRewriter("srs.ours.example", (b"new",)).reverse(made_after, now=NOW)
    with pytest.raises(SrsError):
        SrsRewriter("srs.ours.example", (b"new",)).reverse(made_before, now=NOW)


def test_what_is_not_rewritten() -> None:
    assert OURS.forward("", now=NOW) == ""  # bounces keep the null sender
    assert OURS.forward("me@srs.ours.example", now=NOW) == "me@srs.ours.example"
    assert OURS.forward("me@SRS.ours.example", now=NOW) == "me@SRS.ours.example"
    with pytest.raises(SrsError):
        OURS.forward("no-domain", now=NOW)
    assert SrsRewriter.is_srs(SRS0) and SrsRewriter.is_srs(SRS1.lower())
    assert not SrsRewriter.is_srs("srs0@example.com")


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="key"):
        SrsRewriter("srs.ours.example", ())
    with pytest.raises(ValueError, match="key"):
        SrsRewriter("srs.ours.example", (b"",))
    with pytest.raises(ValueError, match="max age"):
        SrsRewriter("srs.ours.example", (b"k",), max_age_days=1024)


def test_from_config(tmp_path: Path) -> None:
    assert SrsRewriter.from_config(OutboundConfig()) is None
    new, old = tmp_path / "new", tmp_path / "old"
    new.write_text("new-secret\n")
    old.write_text("k1\n")
    config = OutboundConfig(
        srs_domain="srs.ours.example", srs_secret_files=(new, old), srs_max_age_days=10
    )
    rewriter = SrsRewriter.from_config(config)
    assert rewriter is not None
    assert rewriter.keys == (b"new-secret", b"k1") and rewriter.max_age_days == 10
    assert rewriter.reverse(SRS0, now=NOW) == "User.Name@Orig.example"
    with pytest.raises(ValidationError, match="srs_secret_files"):
        OutboundConfig(srs_domain="srs.ours.example")
    with pytest.raises(ValidationError):
        OutboundConfig(srs_domain="srs.ours.example", srs_secret_files=(new,), srs_max_age_days=0)
