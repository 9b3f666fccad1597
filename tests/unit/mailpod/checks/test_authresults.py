"""Authentication-Results: forged fields claiming our authserv-id are cut out byte-exactly."""

from __future__ import annotations

from mailpod.checks.authresults import header, method, strip_ours

OURS = "mail.example.com"


def test_only_fields_claiming_our_id_are_removed() -> None:
    message = (
        b"Received: from x\r\n"
        b"Authentication-Results: mail.example.com;\r\n\tdkim=pass header.d=bank.test\r\n"
        b"authentication-results : (forged) MAIL.Example.COM ; spf=pass\r\n"
        b"Authentication-Results: mx.other.test; spf=fail\r\n"
        b"Authentication-Results: mail.example.com.evil.test; dkim=pass\r\n"
        b"Subject: hi\r\n\r\n"
        b"Authentication-Results: mail.example.com; in the body stays\r\n"
    )
    stripped, removed = strip_ours(message, OURS)
    assert removed == 2
    assert stripped == (
        b"Received: from x\r\n"
        b"Authentication-Results: mx.other.test; spf=fail\r\n"
        b"Authentication-Results: mail.example.com.evil.test; dkim=pass\r\n"
        b"Subject: hi\r\n\r\n"
        b"Authentication-Results: mail.example.com; in the body stays\r\n"
    )


def test_untouched_messages_are_the_same_object() -> None:
    message = b"Subject: x\r\n\r\nbody\r\n"
    assert strip_ours(message, OURS) == (message, 0)
    assert strip_ours(b"", OURS) == (b"", 0)


def test_header_is_folded_and_values_cannot_break_out() -> None:
    field = header(
        OURS,
        [
            method("spf", "pass", smtp_mailfrom="a@b.test"),
            method("dkim", "fail", "body hash (did) not verify", header_d="evil.test; x=y"),
        ],
    )
    assert field == (
        "Authentication-Results: mail.example.com;\r\n\tspf=pass smtp.mailfrom=a@b.test;\r\n"
        "\tdkim=fail (body hash did not verify) header.d=evil.testx=y"
    )
    assert header(OURS, []) == "Authentication-Results: mail.example.com;\r\n\tnone"
