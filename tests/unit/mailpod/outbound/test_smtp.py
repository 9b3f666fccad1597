"""The SMTP client's wire rules: addresses checked, no CR/LF ever in a command, CRLF-only
dot-stuffed data, xtext."""

from __future__ import annotations

import asyncio

import pytest

from mailpod.outbound.smtp import SmtpClient, SmtpClientError, valid_address, wire_data, xtext


@pytest.mark.parametrize(
    "address",
    ["a@example.com", "first.last+tag@sub.example.org", "jörg@example.de", "x@xn--bcher-kva.de"],
)
def test_valid_addresses(address: str) -> None:
    assert valid_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "a@example.com>\r\nRCPT TO:<evil@example.com",
        "a\n@example.com",
        "a@exa\rmple.com",
        "a b@example.com",
        "<a@example.com>",
        "a@b@example.com",
        "@example.com",
        "a@localhost",
        "a@[127.0.0.1]",
        "a\x00@example.com",
        "x" * 65 + "@example.com",
    ],
)
def test_invalid_addresses(address: str) -> None:
    assert not valid_address(address)


def test_wire_data_stuffs_dots_and_fixes_bare_line_endings() -> None:
    assert wire_data(b".top\r\nmid\r\n.\r\n..two") == b"..top\r\nmid\r\n..\r\n...two\r\n.\r\n"
    assert wire_data(b"a\nb\rc\r\n") == b"a\r\nb\r\nc\r\n.\r\n"
    assert wire_data(b"") == b"\r\n.\r\n"
    out = wire_data(b"x\n.\ny")
    assert b"\r\n.\r\n" not in out[:-5]  # no early end of data, whatever the input


def test_xtext() -> None:
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext("plain@example.com") == "plain@example.com"


async def _client_against(replies: bytes) -> tuple[SmtpClient, list[bytes], asyncio.Server]:
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hello\r\n")
        writer.write(replies)
        await writer.drain()
        while line := await reader.readline():
            seen.append(line)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await SmtpClient.connect("127.0.0.1", port, connect_timeout=2, command_timeout=2)
    return client, seen, server


async def test_a_command_with_a_line_break_is_refused_before_the_wire() -> None:
    client, seen, server = await _client_against(b"")
    with pytest.raises(ValueError):
        await client.command("NOOP\r\nRSET")
    with pytest.raises(SmtpClientError):
        await client.send("a@example.com", [("b@example.com\r\nDATA", "")], b"x")
    client.abort()
    server.close()
    assert seen == []


async def test_multiline_replies_and_extensions() -> None:
    client, _, server = await _client_against(
        b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 DSN\r\n"
    )
    reply = await client.ehlo("me.example")
    assert reply.code == 250
    assert client.supports("pipelining") and client.supports("DSN")
    assert client.extensions["SIZE"] == "1000"
    client.abort()
    server.close()


async def test_a_malformed_reply_is_an_error() -> None:
    client, _, server = await _client_against(b"2x0 what\r\n")
    with pytest.raises(SmtpClientError):
        await client.command("NOOP")
    client.abort()
    server.close()


async def test_pipelining_sends_mail_rcpt_and_data_in_one_group() -> None:
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hello\r\n")
        # Not a reply until the whole group is in: a client waiting for one before DATA hangs.
        for _ in range(4):
            seen.append(await reader.readline())
        writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no\r\n354 go\r\n")
        while line := await reader.readline():
            seen.append(line)
            if line == b".\r\n":
                writer.write(b"250 2.0.0 queued\r\n")
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await SmtpClient.connect("127.0.0.1", port, connect_timeout=2, command_timeout=2)
    client.extensions = {"PIPELINING": ""}
    result = await client.send(
        "a@example.com", [("b@example.com", ""), ("c@example.com", "")], b"hi"
    )
    assert [str(r) for r in result.replies] == ["250 2.1.5 ok", "550 5.1.1 no"]
    assert str(result.data_reply) == "250 2.0.0 queued"
    client.abort()
    server.close()
    assert seen == [
        b"MAIL FROM:<a@example.com>\r\n",
        b"RCPT TO:<b@example.com>\r\n",
        b"RCPT TO:<c@example.com>\r\n",
        b"DATA\r\n",
        b"hi\r\n",
        b".\r\n",
    ]


async def test_pipelining_with_every_recipient_refused_ends_an_accepted_data_empty() -> None:
    client, seen, server = await _client_against(
        b"250 ok\r\n550 5.1.1 no\r\n354 go\r\n554 5.5.1 no valid recipients\r\n250 reset\r\n"
    )
    client.extensions = {"PIPELINING": ""}
    result = await client.send("a@example.com", [("b@example.com", "")], b"secret body")
    assert [r.code for r in result.replies] == [550]
    assert result.data_reply is None
    client.abort()
    server.close()
    await asyncio.sleep(0.05)
    assert seen == [
        b"MAIL FROM:<a@example.com>\r\n",
        b"RCPT TO:<b@example.com>\r\n",
        b"DATA\r\n",
        b".\r\n",
        b"RSET\r\n",
    ]


async def test_pipelining_a_refused_sender_consumes_every_reply() -> None:
    client, _, server = await _client_against(
        b"451 4.3.0 later\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no RCPT\r\n250 reset\r\n"
    )
    client.extensions = {"PIPELINING": ""}
    with pytest.raises(SmtpClientError) as error:
        await client.send("a@example.com", [("b@example.com", "")], b"x")
    assert error.value.code == 451
    await client.rset()  # the replies stayed in step: RSET gets its own
    client.abort()
    server.close()
