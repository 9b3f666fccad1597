"""The ops endpoint over real loopback sockets, queried with real curl and with httpx."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mailpod import metrics, ops
from mailpod.metrics import (
    DELIVERY_SECONDS,
    MESSAGES,
    Result,
    init_listener,
    mark_process_dead,
    render_metrics,
)
from tests.conftest import REPO

pytestmark = pytest.mark.integration

METRIC_NAMES = (
    "mailpod_connections_total",
    "mailpod_connections_open",
    "mailpod_messages_total",
    "mailpod_recipients_total",
    "mailpod_auth_failures_total",
    "mailpod_received_bytes_total",
    "mailpod_delivery_duration_seconds",
    "mailpod_config_reloads_total",
    "mailpod_config_generation",
    "mailpod_config_last_reload_timestamp_seconds",
)


@dataclass
class Readiness:
    ready: bool = True
    reason: str = ""

    def __call__(self) -> tuple[bool, str]:
        return self.ready, self.reason


@dataclass
class Ops:
    url: str
    port: int
    readiness: Readiness


@pytest.fixture
async def ops_server() -> AsyncIterator[Ops]:
    readiness = Readiness()
    server = await ops.start_ops_server("127.0.0.1", 0, readiness)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Ops(f"http://127.0.0.1:{port}", port, readiness)
    finally:
        server.close()
        await server.wait_closed()


async def curl(*args: str) -> tuple[int, str]:
    """Status and output of real curl; async, as the server runs on this very event loop."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    body, _, code = out.decode().rpartition("\n")
    return int(code), body


async def raw(port: int, request: bytes) -> bytes:
    """Send bytes as they are and read the whole answer, up to the server's close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def test_healthz(ops_server: Ops) -> None:
    assert await curl(f"{ops_server.url}/healthz") == (200, "ok\n")
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{ops_server.url}/healthz")
    assert (response.status_code, response.text) == (200, "ok\n")
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["connection"] == "close"


async def test_readyz_follows_the_callback(ops_server: Ops) -> None:
    assert await curl(f"{ops_server.url}/readyz") == (200, "ready\n")
    ops_server.readiness.ready, ops_server.readiness.reason = False, "config not loaded\nyet"
    assert await curl(f"{ops_server.url}/readyz") == (503, "config not loaded yet\n")
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{ops_server.url}/readyz")
        assert (response.status_code, response.text) == (503, "config not loaded yet\n")
        ops_server.readiness.ready, ops_server.readiness.reason = True, ""
        response = await client.get(f"{ops_server.url}/readyz")
        assert (response.status_code, response.text) == (200, "ready\n")


async def test_readyz_is_503_when_the_callback_fails() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    server = await ops.start_ops_server("127.0.0.1", 0, broken)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await curl(f"http://127.0.0.1:{port}/readyz") == (503, "readiness check failed\n")
        assert await curl(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    finally:
        server.close()
        await server.wait_closed()


async def test_metrics(ops_server: Ops) -> None:
    init_listener("submission")
    MESSAGES.labels(listener="smtp", result=Result.ACCEPTED).inc(2)
    DELIVERY_SECONDS.labels(target="storage").observe(0.004)
    code, body = await curl(f"{ops_server.url}/metrics")
    assert code == 200
    for name in METRIC_NAMES:  # label-less series and labelled ones without samples yet
        assert f"# TYPE {name} " in body, name
    # Counters only grow, and other tests may have counted too.
    [line] = [
        line
        for line in body.splitlines()
        if line.startswith('mailpod_messages_total{listener="smtp",result="accepted"}')
    ]
    assert float(line.split()[-1]) >= 2
    # init_listener made the series exist before any event.
    assert 'mailpod_messages_total{listener="submission",result="tempfail"} 0.0' in body
    assert 'mailpod_delivery_duration_seconds_bucket{le="0.005",target="storage"}' in body
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{ops_server.url}/metrics?name=ignored")
    assert response.status_code == 200
    assert response.headers["content-type"] == render_metrics()[1]
    assert "mailpod_messages_total" in response.text


async def test_head_has_headers_only(ops_server: Ops) -> None:
    code, out = await curl("--head", f"{ops_server.url}/healthz")
    assert code == 200
    assert "content-length: 3" in out.lower()
    assert not out.rstrip().endswith("ok")
    head = await raw(ops_server.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert head.endswith(b"\r\n\r\n")  # no body


async def test_unknown_path_and_method(ops_server: Ops) -> None:
    assert await curl(f"{ops_server.url}/nope") == (404, "not found\n")
    assert await curl(f"{ops_server.url}/healthz/extra") == (404, "not found\n")
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{ops_server.url}/healthz", content=b"x" * 100)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)), b"400"),  # TLS
        (b"GET /healthz\r\n\r\n", b"400"),  # HTTP/0.9
        (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", b"400"),
        (b"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
        (b"GET /healthz HTTP/1.1\r\n\r\n", b"400"),  # HTTP/1.1 needs Host
        (b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", b"400"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", b"400"),
        (b"GET /healthz HTTP/1.1\r\nno colon\r\n\r\n", b"400"),
        (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 10_000 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"\r\n", b"431"),
        (b"GET /healthz HTTP/1.1\r\nHost: x", b"400"),  # the client closes mid-request
    ],
)
async def test_malformed_requests_get_an_error_and_the_server_keeps_serving(
    ops_server: Ops, request_bytes: bytes, status: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", ops_server.port)
    writer.write(request_bytes)
    writer.write_eof()
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer
    assert b"Connection: close\r\n" in answer
    assert await curl(f"{ops_server.url}/healthz") == (200, "ok\n")


async def test_lenient_but_valid_forms_are_accepted(ops_server: Ops) -> None:
    for request in (
        b"GET /healthz HTTP/1.0\r\n\r\n",  # no Host needed in 1.0
        b"GET /healthz HTTP/1.1\nHost: x\n\n",  # bare LF line ends
        b"GET http://x/healthz HTTP/1.1\r\nHost: x\r\n\r\n",  # absolute-form
    ):
        answer = await raw(ops_server.port, request)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), request
        assert answer.endswith(b"\r\n\r\nok\n")


async def test_slowloris_is_cut_off(ops_server: Ops, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "HEAD_TIMEOUT", 0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", ops_server.port)

    async def trickle() -> None:
        # A byte at a time: each line arrives well within any per-line timeout.
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.03)

    loop = asyncio.get_running_loop()
    started = loop.time()
    trickling = asyncio.create_task(trickle())
    try:
        await asyncio.sleep(0.1)
        # The server keeps serving others meanwhile.
        assert await curl(f"{ops_server.url}/healthz") == (200, "ok\n")
        async with asyncio.timeout(5):
            status = await reader.readuntil(b"\r\n")
    finally:
        trickling.cancel()
    assert status.startswith(b"HTTP/1.1 408 "), status
    assert loop.time() - started < 3
    async with asyncio.timeout(5):
        await reader.read()  # and then it closes the connection
    writer.close()


async def test_connection_limit(ops_server: Ops, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "MAX_CONNECTIONS", 2)
    idle = [await asyncio.open_connection("127.0.0.1", ops_server.port) for _ in range(2)]
    await asyncio.sleep(0.1)  # let the server accept them
    assert await curl(f"{ops_server.url}/healthz") == (503, "busy\n")
    for _, writer in idle:
        writer.close()
    await asyncio.sleep(0.1)
    assert await curl(f"{ops_server.url}/healthz") == (200, "ok\n")


async def test_clients_vanishing_do_not_hurt(ops_server: Ops) -> None:
    for request in (b"", b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"):
        _, writer = await asyncio.open_connection("127.0.0.1", ops_server.port)
        writer.write(request)
        writer.transport.abort()  # RST, without reading the answer
    await asyncio.sleep(0.1)
    assert await curl(f"{ops_server.url}/healthz") == (200, "ok\n")


CHILD = """
import sys
from mailpod.metrics import CONNECTIONS_OPEN, MESSAGES
MESSAGES.labels(listener="smtp", result="accepted").inc(int(sys.argv[1]))
CONNECTIONS_OPEN.labels(listener="smtp").inc()
print(__import__("os").getpid())
"""


def run_worker(count: int) -> int:
    """A separate process (as a worker would be) counting `count` messages; returns its pid."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "operator")])}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(count)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(done.stdout)


async def test_multiprocess_mode_aggregates_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    first = run_worker(3)
    run_worker(4)
    body = render_metrics()[0].decode()
    assert 'mailpod_messages_total{listener="smtp",result="accepted"} 7.0' in body
    assert 'mailpod_connections_open{listener="smtp"} 2.0' in body
    # A dead worker's live gauge stops counting; its counters stay in the totals.
    mark_process_dead(first)
    body = render_metrics()[0].decode()
    assert 'mailpod_connections_open{listener="smtp"} 1.0' in body
    assert 'mailpod_messages_total{listener="smtp",result="accepted"} 7.0' in body
    # And the same aggregate over HTTP.
    server = await ops.start_ops_server("127.0.0.1", 0, lambda: (True, ""))
    port = server.sockets[0].getsockname()[1]
    try:
        code, body = await curl(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.close()
        await server.wait_closed()
    assert code == 200
    assert 'mailpod_messages_total{listener="smtp",result="accepted"} 7.0' in body


async def test_serves_on_a_given_socket() -> None:
    # Workers share one pre-bound SO_REUSEPORT socket; the server must accept it as it is.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = await ops.start_ops_server(sock=sock)
        port = sock.getsockname()[1]
        try:
            assert await curl(f"http://127.0.0.1:{port}/readyz") == (200, "ready\n")
        finally:
            server.close()
            await server.wait_closed()
    with pytest.raises(ValueError, match="either host and port, or sock"):
        await ops.start_ops_server()
