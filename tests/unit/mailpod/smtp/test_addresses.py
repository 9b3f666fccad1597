"""parse_path's fast path gives what the email package's parser (aiosmtpd's) gives."""

from __future__ import annotations

import random
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any

import pytest

from mailpod.smtp import addresses
from mailpod.smtp.addresses import parse_path


def slow(arg: str) -> tuple[str, str] | None:
    address: Any
    try:
        if arg.lstrip().startswith("<"):
            address, rest = get_angle_addr(arg)
        else:
            address, rest = get_addr_spec(arg)
    except HeaderParseError:
        return None
    return address.addr_spec, rest


@pytest.mark.parametrize(
    "arg",
    [
        "<alice@example.com>",
        "<alice@example.com> SIZE=10240 BODY=8BITMIME",
        "<alice@example.com>\tSMTPUTF8",
        "<alice@example.com>SIZE=1",
        "<a.b+c/d=e!f%g@x-y.z>",
        "<Alice@Example.COM>",
        "<alice@example.com> (comment) SIZE=1",
        "<alice@example.com>(comment)",
        "<>",
        "<> SIZE=1",
        "<a..b@example.com>",
        "<.a@example.com>",
        "<a@example..com>",
        "<a@[192.0.2.1]>",
        '<"a b"@example.com>',
        "<@relay.example:a@example.com>",
        "< a@example.com>",
        "<a@example.com",
        "<a>",
        "<ä@example.com>",
        "a@example.com",
        "a@example.com SIZE=1",
    ],
)
def test_same_as_the_email_parser(arg: str) -> None:
    assert parse_path(arg) == slow(arg)


def test_the_fast_path_is_taken_for_plain_addresses() -> None:
    assert addresses._SIMPLE_PATH.match("<alice@example.com> SIZE=1")
    assert not addresses._SIMPLE_PATH.match('<"a"@example.com>')


def outcome(parse: Any, arg: str) -> object:
    try:
        return parse(arg)
    except Exception as error:  # the email parser has its bugs (IndexError on "<"): the same ones
        return type(error)


@pytest.mark.parametrize("seed", range(20))
def test_random_paths_match_the_email_parser(seed: int) -> None:
    rng = random.Random(seed)
    pieces = ["a", "Z", "0", ".", "@", "<", ">", " ", "\t", "(", ")", '"', "+", "-", "%", "[", "é"]
    for _ in range(500):
        inner = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12)))
        arg = rng.choice(["<{}>", "<{}@b.c>", "<a{}@b>", "<a@b{}>", "<a@b>{}", "{}"]).format(inner)
        assert outcome(parse_path, arg) == outcome(slow, arg), arg
