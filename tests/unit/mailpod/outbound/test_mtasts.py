"""MTA-STS parsing and MX matching (RFC 8461 §3.1, §3.2, §4.1)."""

from __future__ import annotations

import pytest

from mailpod.outbound.mtasts import Mode, PolicyError, parse_policy, parse_txt


def test_txt_record() -> None:
    assert parse_txt(("v=STSv1; id=20160831085700Z;",)) == "20160831085700Z"
    assert parse_txt(("v=spf1 -all", "v=STSv1; id=abc")) == "abc"
    assert parse_txt(("v=STSv1; id=a", "v=STSv1; id=b")) is None  # two: none (§3.1)
    assert parse_txt(("v=STSv1;",)) is None
    assert parse_txt(("v=STSv1; id=bad-id!",)) is None


POLICY = (
    "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
    "mx: backupmx.example.com\r\nmax_age: 604800\r\n"
)


def test_policy_and_matching() -> None:
    policy = parse_policy(POLICY, "id1")
    assert policy.mode is Mode.ENFORCE
    assert policy.max_age == 604800
    assert policy.matches("mail.example.com")
    assert policy.matches("MAIL.example.com.")
    assert policy.matches("mx1.example.net")
    # The wildcard stands for exactly one left-most label.
    assert not policy.matches("example.net")
    assert not policy.matches("a.b.example.net")
    assert not policy.matches("mail.example.com.evil.test")


def test_lf_line_endings_and_unknown_keys_are_accepted() -> None:
    policy = parse_policy(
        "version: STSv1\nmode: testing\nmx: a.example\nmax_age: 86400\nx: y\n", "i"
    )
    assert policy.mode is Mode.TESTING


def test_max_age_is_capped_at_a_year() -> None:
    text = "version: STSv1\nmode: none\nmax_age: 99999999999\n"
    with pytest.raises(PolicyError):
        parse_policy(text, "i")  # 11 digits: refused
    assert (
        parse_policy("version: STSv1\nmode: none\nmax_age: 9999999999\n", "i").max_age == 31557600
    )


@pytest.mark.parametrize(
    "text",
    [
        "mode: enforce\nmx: a.example\nmax_age: 1\n",
        "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
        "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmx: a.example\n",
        "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
        "<html>not a policy</html>",
    ],
)
def test_invalid_policies(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text, "i")
