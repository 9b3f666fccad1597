"""PROXY protocol (v2 binary and v1 text) for asyncio streams behind a load balancer.

A load balancer that terminates the client's TCP connection prepends a header naming the real
client. That header is a claim anyone can make, so the rule is:

    read the header ONLY if the listener has `proxy_protocol` on AND the TCP peer is in
    `trusted_proxies`; otherwise the client address is the TCP peer's, whatever it sends.

Honouring headers from any peer lets an attacker claim to be 127.0.0.1 or a relay network and
send through an open relay (what happened to Mailu and docker-mailserver setups).
`client_address()` applies this rule; prefer it over calling `read_proxy_header()` directly.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "V2_SIGNATURE",
    "ProxyInfo",
    "ProxyProtocolError",
    "client_address",
    "is_trusted",
    "read_proxy_header",
]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_V1_MAX = 107  # the longest v1 line, CRLF included (spec section 2.1)
# 8 bytes are safe to read up front: the shortest header of either version ("PROXY UNKNOWN\r\n")
# is longer, so we never wait for bytes that belong to the client's own protocol.
_PEEK = 8

_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0, 1, 2, 3
_STREAM = 1
_ADDRESS_LENGTHS = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyProtocolError(Exception):
    """The PROXY header is missing, malformed, truncated or late; close the connection."""


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """The real client (source) and the address it connected to (destination)."""

    source_ip: str
    source_port: int
    destination_ip: str
    destination_port: int
    version: int


def _ip(raw: bytes | str) -> str:
    address = ipaddress.ip_address(raw)
    # An IPv4 client seen through a dual-stack proxy: report it as IPv4 so throttles, logs and
    # SPF see one form of the address.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def is_trusted(peer_ip: str, trusted: Sequence[IpNetwork]) -> bool:
    """True if the TCP peer `peer_ip` is inside one of the `trusted` proxy networks.

    Anything unparsable is untrusted. IPv4-mapped IPv6 peers (from a dual-stack socket) are
    matched as IPv4, and an IPv6 zone (`%eth0`) is ignored."""
    try:
        address = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in trusted)


# The deadline is part of this function's contract (a proxy that stalls mid-header must not hold
# a connection slot), so it takes `timeout` rather than leaving it to each caller.
async def read_proxy_header(
    reader: asyncio.StreamReader,
    timeout: float,  # noqa: ASYNC109
) -> ProxyInfo | None:
    """Consume one PROXY header (v2 or v1) from the start of `reader`, and nothing after it.

    Returns the real endpoints, or None when the proxy says to use the connection's own (a v2
    LOCAL command such as a health check, v2 UNSPEC or UNIX addresses, v1 UNKNOWN). Raises
    ProxyProtocolError if the header is absent, malformed, cut short, or not complete within
    `timeout` seconds. Call only for a trusted peer (see the module docstring)."""
    try:
        async with asyncio.timeout(timeout):
            start = await reader.readexactly(_PEEK)
            if V2_SIGNATURE.startswith(start):
                return await _read_v2(reader, start)
            if start.startswith(_V1_PREFIX):
                return await _read_v1(reader, start)
    except TimeoutError:
        raise ProxyProtocolError(f"no complete PROXY header within {timeout:g} s") from None
    except asyncio.IncompleteReadError:
        raise ProxyProtocolError("connection closed inside the PROXY header") from None
    raise ProxyProtocolError("expected a PROXY protocol header")


async def _read_v2(reader: asyncio.StreamReader, start: bytes) -> ProxyInfo | None:
    rest = await reader.readexactly(len(V2_SIGNATURE) + 4 - len(start))
    header = start + rest
    if header[:12] != V2_SIGNATURE:
        raise ProxyProtocolError("bad PROXY v2 signature")
    version_command, family_transport, length = struct.unpack("!BBH", header[12:16])
    version, command = version_command >> 4, version_command & 0x0F
    if version != 2:
        raise ProxyProtocolError(f"unsupported PROXY protocol version {version}")
    if command > 1:
        raise ProxyProtocolError(f"unknown PROXY v2 command {command}")
    # Read the whole announced block even when we ignore it: it is not the client's data.
    body = await reader.readexactly(length)
    if command == 0:  # LOCAL: the proxy's own connection (health check); use the real peer
        return None
    family, transport = family_transport >> 4, family_transport & 0x0F
    if family_transport == 0:  # UNSPEC: the proxy does not know; use the real peer
        return None
    if family not in _ADDRESS_LENGTHS or transport != _STREAM:
        raise ProxyProtocolError(f"unsupported PROXY v2 address family 0x{family_transport:02x}")
    size = _ADDRESS_LENGTHS[family]
    if length < size:
        raise ProxyProtocolError(f"PROXY v2 address block too short ({length} < {size})")
    _check_tlvs(body[size:])
    if family == _AF_UNIX:  # no IP to report
        return None
    half = 4 if family == _AF_INET else 16
    source, destination = body[:half], body[half : 2 * half]
    source_port, destination_port = struct.unpack("!HH", body[2 * half : 2 * half + 4])
    return ProxyInfo(_ip(source), source_port, _ip(destination), destination_port, version=2)


def _check_tlvs(data: bytes) -> None:
    """TLVs (ALPN, authority, SSL info, CRC…) are skipped, but must frame correctly."""
    offset = 0
    while offset < len(data):
        if offset + 3 > len(data):
            raise ProxyProtocolError("truncated PROXY v2 TLV header")
        (size,) = struct.unpack_from("!H", data, offset + 1)
        offset += 3 + size
        if offset > len(data):
            raise ProxyProtocolError("PROXY v2 TLV runs past the header")


async def _read_v1(reader: asyncio.StreamReader, start: bytes) -> ProxyInfo | None:
    line = bytearray(start)
    # Byte by byte: the client's first bytes may follow in the same segment, and they are not
    # ours to take. v1 headers are short and rare, so the cost does not matter.
    while not line.endswith(b"\r\n"):
        if len(line) >= _V1_MAX:
            raise ProxyProtocolError("PROXY v1 line too long")
        line += await reader.readexactly(1)
    try:
        text = line[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 line is not ASCII") from None
    parts = text.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":  # the rest, if any, is to be ignored
        return None
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("malformed PROXY v1 line")
    _, protocol, source, destination, source_port, destination_port = parts
    try:
        source_address = ipaddress.ip_address(source)
        destination_address = ipaddress.ip_address(destination)
    except ValueError:
        raise ProxyProtocolError("bad address in PROXY v1 line") from None
    wanted = 4 if protocol == "TCP4" else 6
    if source_address.version != wanted or destination_address.version != wanted:
        raise ProxyProtocolError(f"PROXY v1 {protocol} line with a non-IPv{wanted} address")
    return ProxyInfo(
        _ip(source),
        _port(source_port),
        _ip(destination),
        _port(destination_port),
        version=1,
    )


def _port(text: str) -> int:
    # Plain ASCII decimal 0-65535 (int() alone would also take "+1", " 1" or non-ASCII digits).
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise ProxyProtocolError("bad port in PROXY v1 line")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError("bad port in PROXY v1 line")
    return port


async def client_address(
    reader: asyncio.StreamReader,
    peer: tuple[str, int],
    *,
    proxy_protocol: bool,
    trusted: Sequence[IpNetwork],
    timeout: float,  # noqa: ASYNC109 (passed to read_proxy_header)
) -> tuple[str, int]:
    """The client's (ip, port) for a new connection from TCP peer `peer`.

    Reads a PROXY header only when the listener expects one and the peer is a trusted proxy;
    an untrusted peer keeps its own address (a header it sends is then just bad protocol input).
    Raises ProxyProtocolError if a trusted proxy's header is bad: close the connection."""
    if not proxy_protocol or not is_trusted(peer[0], trusted):
        return peer
    info = await read_proxy_header(reader, timeout)
    if info is None:
        return peer
    return info.source_ip, info.source_port


def feed_buffered(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Hand `data` to `protocol` (an SSL protocol, which asyncio runs as a BufferedProtocol) as
    if it had just arrived from the socket.

    A load balancer sends the PROXY header and the client's first TLS bytes back to back; when
    both arrive in one read, the ClientHello sits in the stream reader's buffer, which no TLS
    layer started afterwards ever sees, and the handshake would stall."""
    if not isinstance(protocol, asyncio.BufferedProtocol):
        protocol.data_received(data)  # type: ignore[attr-defined]
        return
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(len(view)))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]
