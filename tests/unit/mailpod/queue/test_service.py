"""What the queue records at enqueue: bounces only for authenticated local senders, SRS for
forwarded external senders, RFC 3461 RET/ENVID/NOTIFY, and the switch that turns it off."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import pytest

from mailpod.config import MailpodConfig
from mailpod.errors import SmtpError
from mailpod.pipeline import Envelope
from mailpod.queue.service import OutboundService
from mailpod.queue.store import Notify, RemoteRecipient


def _service(tmp_path: Path, **outbound: Any) -> OutboundService:
    key = tmp_path / "srs.key"
    key.write_text("key-one\n")
    config = MailpodConfig.model_validate(
        {
            "hostname": "mail.example.com",
            "listeners": [{"kind": "smtp", "port": 25}],
            "domains": ["example.com"],
            "storage": {"mail_root": str(tmp_path / "mail"), "queue_dir": str(tmp_path / "q")},
            "outbound": {
                "srs_domain": "example.com",
                "srs_secret_files": [str(key)],
                **outbound,
            },
        }
    )
    return OutboundService(lambda: config, concurrent.futures.ThreadPoolExecutor(1))


def _envelope(sender: str, user: str | None) -> Envelope:
    return Envelope("s1", "192.0.2.9", "client.example", sender, authenticated_user=user)


REMOTE = [RemoteRecipient("x@remote.example", "team@example.com", frozenset({Notify.SUCCESS}))]


def test_an_authenticated_local_sender_gets_bounces_and_keeps_its_address(
    tmp_path: Path,
) -> None:
    queued = _service(tmp_path).build(
        _envelope("alice@example.com", "alice@example.com"),
        REMOTE,
        {"RET": "HDRS", "ENVID": "QQ1"},
    )
    assert queued.sender == "alice@example.com"
    assert queued.bounce_to == "alice@example.com"
    assert (queued.ret, queued.envid) == ("HDRS", "QQ1")
    [recipient] = queued.recipients
    assert (recipient.address, recipient.orcpt, recipient.notify) == (
        "x@remote.example",
        "team@example.com",
        ("SUCCESS",),
    )


def test_forwarded_external_mail_is_srs_rewritten_and_never_bounced(tmp_path: Path) -> None:
    queued = _service(tmp_path).build(_envelope("someone@elsewhere.example", None), REMOTE, None)
    assert queued.sender.startswith("SRS0=")
    assert queued.sender.endswith("@example.com")
    assert queued.bounce_to == ""
    assert queued.ret == "FULL"


def test_unauthenticated_mail_claiming_a_local_sender_gets_no_bounce(tmp_path: Path) -> None:
    queued = _service(tmp_path).build(_envelope("alice@example.com", None), REMOTE, None)
    assert queued.bounce_to == ""


def test_the_queue_can_be_switched_off(tmp_path: Path) -> None:
    _service(tmp_path).check_accepted("x@remote.example")
    with pytest.raises(SmtpError) as error:
        _service(tmp_path, enabled=False).check_accepted("x@remote.example")
    assert error.value.reply().startswith("451 4.4.3")


def test_an_srs_key_not_mounted_yet_forwards_unrewritten_until_it_appears(tmp_path: Path) -> None:
    service = _service(tmp_path, srs_secret_files=[str(tmp_path / "later.key")])
    forwarded = _envelope("someone@elsewhere.example", None)
    assert service.build(forwarded, REMOTE, None).sender == "someone@elsewhere.example"
    assert service.reverse_srs("SRS0=abcd=XX=elsewhere.example=someone@example.com") is None
    (tmp_path / "later.key").write_text("key-two\n")  # the kubelet catches up
    rewritten = service.build(forwarded, REMOTE, None).sender
    assert rewritten.startswith("SRS0=") and rewritten.endswith("@example.com")
    assert service.reverse_srs(rewritten) == "someone@elsewhere.example"
