from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest

from mailpod.proxy import (
    V2_SIGNATURE,
    ProxyInfo,
    ProxyProtocolError,
    client_address,
    is_trusted,
    read_proxy_header,
)

CLIENT_DATA = b"EHLO client.example\r\n"
LB = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


def v2(command: int = 1, family: int = 0x11, body: bytes = b"", version: int = 2) -> bytes:
    return (
        V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", len(body)) + body
    )


def inet4(src: str, sport: int, dst: str, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str, sport: int, dst: str, dport: int) -> bytes:
    return (
        socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + struct.pack("!HH", sport, dport)
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


V2_TCP4 = v2(body=inet4("203.0.113.7", 54321, "10.1.2.3", 25))
INFO_TCP4 = ProxyInfo("203.0.113.7", 54321, "10.1.2.3", 25, version=2)


async def over_tcp(
    chunks: list[bytes], deadline: float = 2.0, close: bool = True
) -> tuple[ProxyInfo | None, bytes]:
    """Send `chunks` as separate TCP segments to a real loopback server that reads the header;
    return what it parsed and every byte left after the header."""
    result: asyncio.Future[tuple[ProxyInfo | None, bytes]] = (
        asyncio.get_running_loop().create_future()
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            info = await read_proxy_header(reader, deadline)
            result.set_result((info, await reader.read()))
        except ProxyProtocolError as error:
            result.set_exception(error)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        # No Nagle, and a pause between writes, so each chunk leaves as its own segment.
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0.02)
            if close:
                writer.write_eof()
        except OSError:
            pass  # the server gave up and closed first: its verdict is in `result`
        try:
            return await result
        finally:
            writer.close()


async def from_bytes(data: bytes, deadline: float = 1.0) -> ProxyInfo | None:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await read_proxy_header(reader, deadline)


# --- over a real loopback socket ---------------------------------------------------------------


async def test_v2_ipv4_then_client_data_untouched() -> None:
    # Header and the client's first bytes in one segment: we must not eat the client's bytes.
    assert await over_tcp([V2_TCP4 + CLIENT_DATA]) == (INFO_TCP4, CLIENT_DATA)


async def test_v2_ipv6_with_tlvs() -> None:
    body = inet6("2001:db8::1", 443, "2001:db8::2", 993)
    body += tlv(0x01, b"imap") + tlv(0x02, b"mail.example.com") + tlv(0x04, b"\0" * 5)
    info, rest = await over_tcp([v2(family=0x21, body=body), CLIENT_DATA])
    assert info == ProxyInfo("2001:db8::1", 443, "2001:db8::2", 993, version=2)
    assert rest == CLIENT_DATA


async def test_v2_split_byte_by_byte() -> None:
    data = V2_TCP4 + CLIENT_DATA
    split = [data[i : i + 1] for i in range(len(V2_TCP4))] + [CLIENT_DATA]
    assert await over_tcp(split) == (INFO_TCP4, CLIENT_DATA)


async def test_v2_local_is_none_and_body_is_consumed() -> None:
    header = v2(command=0, body=inet4("10.0.0.1", 1, "10.0.0.2", 2))
    assert await over_tcp([header[:10], header[10:] + CLIENT_DATA]) == (None, CLIENT_DATA)


async def test_v1_tcp4_split_over_segments() -> None:
    line = b"PROXY TCP4 198.51.100.22 10.1.2.3 35646 587\r\n"
    info, rest = await over_tcp([line[:3], line[3:20], line[20:], CLIENT_DATA])
    assert info == ProxyInfo("198.51.100.22", 35646, "10.1.2.3", 587, version=1)
    assert rest == CLIENT_DATA


async def test_v1_line_and_client_data_in_one_segment() -> None:
    line = b"PROXY TCP6 2001:db8::5 ::1 1024 143\r\n"
    info, rest = await over_tcp([line + CLIENT_DATA])
    assert info == ProxyInfo("2001:db8::5", 1024, "::1", 143, version=1)
    assert rest == CLIENT_DATA


async def test_header_cut_short_by_close() -> None:
    with pytest.raises(ProxyProtocolError, match="closed"):
        await over_tcp([V2_TCP4[:20]])


async def test_stalled_header_times_out() -> None:
    with pytest.raises(ProxyProtocolError, match="within"):
        await over_tcp([V2_TCP4[:20]], deadline=0.2, close=False)


async def test_client_speaking_smtp_directly_is_rejected() -> None:
    with pytest.raises(ProxyProtocolError, match="expected a PROXY"):
        await over_tcp([CLIENT_DATA])


# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(V2_TCP4, INFO_TCP4, id="v2-tcp4"),
        pytest.param(
            v2(family=0x21, body=inet6("::ffff:192.0.2.1", 1, "::ffff:10.0.0.1", 25)),
            ProxyInfo("192.0.2.1", 1, "10.0.0.1", 25, version=2),
            id="v2-ipv4-mapped-reported-as-ipv4",
        ),
        pytest.param(v2(family=0x00), None, id="v2-unspec"),
        pytest.param(v2(command=0), None, id="v2-local-empty"),
        pytest.param(v2(family=0x31, body=b"\0" * 216), None, id="v2-unix"),
        pytest.param(
            v2(body=inet4("192.0.2.9", 1, "10.0.0.1", 2) + tlv(0x20, b"\x01" + b"\0" * 4)),
            ProxyInfo("192.0.2.9", 1, "10.0.0.1", 2, version=2),
            id="v2-ssl-tlv",
        ),
        pytest.param(b"PROXY UNKNOWN\r\n", None, id="v1-unknown"),
        pytest.param(b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n", None, id="v1-unknown-with-rest"),
        pytest.param(
            b"PROXY TCP4 192.0.2.1 10.0.0.1 0 65535\r\n",
            ProxyInfo("192.0.2.1", 0, "10.0.0.1", 65535, version=1),
            id="v1-port-bounds",
        ),
    ],
)
async def test_valid_headers(data: bytes, expected: ProxyInfo | None) -> None:
    assert await from_bytes(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\r\n\r\n\x00\r\nQUIX\n!\x11\x00\x0c" + b"\0" * 12, id="v2-bad-signature"),
        pytest.param(v2(version=1, body=inet4("1.2.3.4", 1, "5.6.7.8", 2)), id="v2-version-1"),
        pytest.param(v2(command=2), id="v2-unknown-command"),
        pytest.param(v2(family=0x12, body=inet4("1.2.3.4", 1, "5.6.7.8", 2)), id="v2-udp"),
        pytest.param(v2(family=0x41, body=b"\0" * 12), id="v2-unknown-family"),
        pytest.param(v2(family=0x10, body=b"\0" * 12), id="v2-inet-unspec-transport"),
        pytest.param(v2(body=b"\0" * 11), id="v2-address-block-too-short"),
        pytest.param(v2(family=0x21, body=b"\0" * 12), id="v2-ipv6-block-too-short"),
        pytest.param(v2(body=inet4("1.2.3.4", 1, "5.6.7.8", 2) + b"\x01\x00"), id="tlv-truncated"),
        pytest.param(
            v2(body=inet4("1.2.3.4", 1, "5.6.7.8", 2) + b"\x01\x00\x09abc"), id="tlv-overrun"
        ),
        pytest.param(V2_TCP4[:-1], id="v2-short-body"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", id="v1-lf-only"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", id="v1-missing-port"),
        pytest.param(b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", id="v1-double-space"),
        pytest.param(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", id="v1-bad-protocol"),
        pytest.param(b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", id="v1-tcp4-with-ipv6"),
        pytest.param(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", id="v1-tcp6-with-ipv4"),
        pytest.param(b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", id="v1-bad-address"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", id="v1-port-too-big"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", id="v1-port-sign"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", id="v1-port-negative"),
        pytest.param("PROXY TCP4 1.2.3.4 5.6.7.8 \u0661 2\r\n".encode(), id="v1-non-ascii"),
        pytest.param(b"PROXY TCP4 " + b"1" * 200 + b"\r\n", id="v1-too-long"),
        pytest.param(b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", id="v1-lowercase"),
        pytest.param(b"GET / HTTP/1.1\r\n", id="http"),
    ],
)
async def test_malformed_headers(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        await from_bytes(data)


async def test_v1_too_long_stops_reading_at_the_limit() -> None:
    # Without a CRLF we must give up after 107 bytes, not wait for the stream's 64 KiB limit.
    reader = asyncio.StreamReader()
    reader.feed_data(b"PROXY TCP4 " + b"1" * 500)  # no EOF: an unbounded read would hang
    with pytest.raises(ProxyProtocolError, match="too long"):
        await read_proxy_header(reader, timeout=1.0)


# --- trust ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),  # from a dual-stack listening socket
        ("fd12::1", True),
        ("fd12::1%eth0", True),
        ("11.0.0.1", False),
        ("127.0.0.1", False),
        ("2001:db8::1", False),
        ("::ffff:11.0.0.1", False),
        ("", False),
        ("not-an-ip", False),
    ],
)
def test_is_trusted(peer: str, trusted: bool) -> None:
    assert is_trusted(peer, LB) is trusted


def test_nothing_is_trusted_by_default() -> None:
    assert not is_trusted("127.0.0.1", ())


async def test_client_address_from_trusted_proxy() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(V2_TCP4 + CLIENT_DATA)
    address = await client_address(
        reader, ("10.9.9.9", 40000), proxy_protocol=True, trusted=LB, timeout=1.0
    )
    assert address == ("203.0.113.7", 54321)
    assert await reader.readexactly(len(CLIENT_DATA)) == CLIENT_DATA


async def test_client_address_local_command_keeps_peer() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(v2(command=0))
    address = await client_address(
        reader, ("10.9.9.9", 40000), proxy_protocol=True, trusted=LB, timeout=1.0
    )
    assert address == ("10.9.9.9", 40000)


@pytest.mark.parametrize(
    ("peer", "proxy_protocol"),
    [(("198.51.100.66", 40000), True), (("10.9.9.9", 40000), False)],
    ids=["untrusted-peer", "listener-without-proxy-protocol"],
)
async def test_untrusted_header_never_sets_the_client_ip(
    peer: tuple[str, int], proxy_protocol: bool
) -> None:
    # The open-relay trap: a header claiming 127.0.0.1 from a peer we do not trust is not read,
    # so it stays in the stream as (bad) protocol input and the client is the TCP peer.
    spoof = b"PROXY TCP4 127.0.0.1 127.0.0.1 25 25\r\n"
    reader = asyncio.StreamReader()
    reader.feed_data(spoof)
    address = await client_address(
        reader, peer, proxy_protocol=proxy_protocol, trusted=LB, timeout=1.0
    )
    assert address == peer
    assert await reader.readexactly(len(spoof)) == spoof
