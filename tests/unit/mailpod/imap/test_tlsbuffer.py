"""TLS connections sharing one receive buffer per process (mailpod.imap.tlsbuffer)."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl

import pytest
import trustme

from mailpod.imap import tlsbuffer


async def test_connections_sharing_the_receive_buffer_keep_their_own_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(asyncio.sslproto, "SSLProtocol", asyncio.sslproto.SSLProtocol)
    tlsbuffer.install()
    ca = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    protocols: list[object] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        protocols.append(writer.transport._ssl_protocol)  # type: ignore[attr-defined]
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]

    async def client(n: int) -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname="localhost"
        )
        for i in range(50):
            line = f"{n}:{i}:".encode() + bytes([65 + n]) * (1000 * (i % 40)) + b"\n"
            writer.write(line)
            assert await reader.readline() == line
        writer.close()
        await writer.wait_closed()

    async with server:
        await asyncio.gather(*(client(n) for n in range(8)))
    assert len(protocols) == 8
    assert all(isinstance(p, tlsbuffer.SharedBufferSSLProtocol) for p in protocols)
    assert all(p._ssl_buffer is protocols[0]._ssl_buffer for p in protocols)  # type: ignore[attr-defined]
