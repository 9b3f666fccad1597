from __future__ import annotations

import pytest

from mailpod.config import MailpodConfig
from mailpod.directory import Directory

HASH = "$2b$04$" + "a" * 53


def _directory() -> Directory:
    return Directory(
        MailpodConfig.model_validate(
            {
                "hostname": "mail.example.com",
                "listeners": [{"kind": "smtp", "port": 25}],
                "domains": ["example.com", "example.org"],
                "mailboxes": [
                    {
                        "address": "alice@example.com",
                        "password_hash": HASH,
                        "send_as": ["ceo@example.com"],
                    },
                    {"address": "bob@example.com", "password_hash": HASH},
                ],
                "aliases": [
                    {
                        "address": "team@example.com",
                        "destinations": ["alice@example.com", "bob@example.com"],
                    },
                    {
                        "address": "all@example.com",
                        "destinations": ["team@example.com", "friend@remote.test"],
                    },
                    {"address": "loop1@example.com", "destinations": ["loop2@example.com"]},
                    {
                        "address": "loop2@example.com",
                        "destinations": ["loop1@example.com", "bob@example.com"],
                    },
                    {"address": "@example.org", "destinations": ["alice@example.com"]},
                ],
                "storage": {"mail_root": "/tmp/m", "queue_dir": "/tmp/q"},
            }
        )
    )


@pytest.mark.parametrize(
    ("address", "local", "remote"),
    [
        ("alice@example.com", ("alice@example.com",), ()),
        ("ALICE@Example.Com", ("alice@example.com",), ()),
        ("alice+tag@example.com", ("alice@example.com",), ()),
        ("team@example.com", ("alice@example.com", "bob@example.com"), ()),
        ("all@example.com", ("alice@example.com", "bob@example.com"), ("friend@remote.test",)),
        ("loop1@example.com", ("bob@example.com",), ()),
        ("whoever@example.org", ("alice@example.com",), ()),
        ("nobody@example.com", (), ()),
        ("x@remote.test", (), ("x@remote.test",)),
    ],
)
def test_resolve(address: str, local: tuple[str, ...], remote: tuple[str, ...]) -> None:
    resolution = _directory().resolve(address)
    assert resolution.local == local
    assert resolution.remote == remote


@pytest.mark.parametrize(
    ("user", "address", "allowed"),
    [
        ("alice@example.com", "alice@example.com", True),
        ("alice@example.com", "Alice+news@example.com", True),
        ("alice@example.com", "ceo@example.com", True),
        ("alice@example.com", "team@example.com", True),
        (
            "alice@example.com",
            "all@example.com",
            False,
        ),  # only aliases that deliver to her directly
        ("alice@example.com", "bob@example.com", False),
        ("bob@example.com", "ceo@example.com", False),
        ("ghost@example.com", "ghost@example.com", False),
    ],
)
def test_may_send_as(user: str, address: str, allowed: bool) -> None:
    assert _directory().may_send_as(user, address) is allowed
