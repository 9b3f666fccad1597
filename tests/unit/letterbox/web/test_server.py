"""Parsing autodiscover requests (the only untrusted body the web server reads)."""

from __future__ import annotations

import pytest

from letterbox.render.autoconfig import OUTLOOK_REQUEST_NS
from letterbox.web.server import BadRequest, autodiscover_address


def test_outlook_request() -> None:
    body = (
        f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{OUTLOOK_REQUEST_NS}">'
        "<Request><EMailAddress> alice@example.org </EMailAddress></Request></Autodiscover>"
    ).encode()
    assert autodiscover_address(body) == "alice@example.org"


def test_no_namespace_is_fine() -> None:
    assert autodiscover_address(b"<a><EMailAddress>b@example.org</EMailAddress></a>") == (
        "b@example.org"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<a>",
        b"<a><Other>x@example.org</Other></a>",
        b"<a><EMailAddress>no-at-sign</EMailAddress></a>",
        b"<a><EMailAddress>two words@example.org</EMailAddress></a>",
        b'<!DOCTYPE a [<!ENTITY e "x">]><a><EMailAddress>&e;@example.org</EMailAddress></a>',
        b"<a><![CDATA[x]]><EMailAddress>x@example.org</EMailAddress></a>",
    ],
)
def test_rejected(body: bytes) -> None:
    with pytest.raises(BadRequest):
        autodiscover_address(body)
