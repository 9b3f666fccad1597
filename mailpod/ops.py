"""The mail pod's operations endpoint: /healthz, /readyz and /metrics over plain HTTP/1.1.

A deliberately tiny server on asyncio streams (no web framework for three fixed GETs): one request
per connection, answered with `Connection: close`. That is valid HTTP/1.1, what kubelet probes
ask for anyway, and it leaves no idle keep-alive connections to manage. It faces kubelet and
Prometheus, but may be reachable by anything in the cluster, so every step is bounded: the
request head by size and by a total deadline (a slowloris client cannot hold a connection by
trickling bytes), the write by a deadline, and the number of connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Callable
from http import HTTPStatus

from mailpod.metrics import render_metrics

__all__ = ["start_ops_server"]

log = logging.getLogger("mailpod.ops")

MAX_LINE = 8 * 1024  # one request or header line
MAX_HEAD = 32 * 1024  # the whole request head
MAX_HEADERS = 64
HEAD_TIMEOUT = 5.0  # seconds to send the whole head, not per line
WRITE_TIMEOUT = 10.0  # seconds for a client to take the response
LINGER_TIMEOUT = 1.0  # seconds to wait for the client's close after our response
MAX_CONNECTIONS = 64

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VERSION = re.compile(r"^HTTP/1\.[01]$")


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


async def _read_line(reader: asyncio.StreamReader, too_long: HTTPStatus) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise _BadRequest(too_long, "line too long") from None
    except asyncio.IncompleteReadError:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "connection closed mid-request") from None
    # RFC 9112 §2.2 lets a server accept a bare LF as the line terminator.
    return line.removesuffix(b"\n").removesuffix(b"\r")


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, str, dict[str, str]]:
    """Method, path, version and headers (lower-case names) of one request."""
    line = await _read_line(reader, HTTPStatus.REQUEST_URI_TOO_LONG)
    total = len(line)
    try:
        method, target, version = line.decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed request line") from None
    if not _TOKEN.match(method) or not _VERSION.match(version) or not target:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed request line")
    headers: dict[str, str] = {}
    for count in range(MAX_HEADERS + 1):
        line = await _read_line(reader, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        if not line:
            break
        total += len(line)
        if total > MAX_HEAD or count == MAX_HEADERS:
            raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
        try:
            name, value = line.decode("latin-1").split(":", 1)
        except ValueError:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed header line") from None
        # No whitespace before the colon, no obsolete line folding (RFC 9112 §5.1, §5.2).
        if not _TOKEN.match(name):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed header line")
        headers[name.lower()] = value.strip(" \t")
    if version == "HTTP/1.1" and "host" not in headers:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "missing Host header")  # RFC 9112 §3.2
    if target.startswith("/"):
        path = target
    elif target.startswith(("http://", "https://")):  # absolute-form
        path = "/" + target.split("://", 1)[1].partition("/")[2]
    else:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "unsupported request target")
    return method, path.split("?", 1)[0], version, headers


def _response(status: HTTPStatus, body: bytes, content_type: str, *, head: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if status == HTTPStatus.METHOD_NOT_ALLOWED:
        lines.append("Allow: GET, HEAD")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (b"" if head else body)


def _text(status: HTTPStatus, text: str, *, head: bool = False) -> bytes:
    # One line of text: a reason from `ready` must not be able to break the response.
    line = " ".join(text.split())
    return _response(status, line.encode() + b"\n", "text/plain; charset=utf-8", head=head)


def _serving() -> tuple[bool, str]:
    return True, "ready"


class _OpsServer:
    def __init__(self, ready: Callable[[], tuple[bool, str]]) -> None:
        self._ready = ready
        self._connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        try:
            if self._connections > MAX_CONNECTIONS:
                # Refuse without parsing; the linger still drains the request (see _linger).
                await self._send(writer, _text(HTTPStatus.SERVICE_UNAVAILABLE, "busy"))
            else:
                await self._send(writer, await self._respond(reader))
            await self._linger(reader, writer)
        except (ConnectionError, TimeoutError) as error:  # the client went away or stalled
            log.debug("ops: connection dropped: %r", error)
        except Exception:
            # The last line of defence: one broken connection must never stop the server.
            log.exception("ops connection failed")
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> bytes:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                method, path, _, _ = await _read_head(reader)
        except TimeoutError:
            return _text(HTTPStatus.REQUEST_TIMEOUT, "request timeout")
        except _BadRequest as error:
            log.debug("ops: bad request: %s", error)
            return _text(error.status, error.status.phrase)
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return _text(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")
        if path == "/healthz":
            # Answering at all proves the event loop is running.
            return _text(HTTPStatus.OK, "ok", head=head)
        if path == "/readyz":
            try:
                ready, reason = self._ready()
            except Exception:
                log.exception("readiness check failed")
                ready, reason = False, "readiness check failed"
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            return _text(status, reason or ("ready" if ready else "not ready"), head=head)
        if path == "/metrics":
            try:
                # In multi-process mode this reads every worker's files: keep it off the loop.
                body, content_type = await asyncio.to_thread(render_metrics)
            except Exception:
                log.exception("rendering metrics failed")
                return _text(HTTPStatus.INTERNAL_SERVER_ERROR, "metrics unavailable", head=head)
            return _response(HTTPStatus.OK, body, content_type, head=head)
        return _text(HTTPStatus.NOT_FOUND, "not found", head=head)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, response: bytes) -> None:
        writer.write(response)
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then wait briefly for the client to close: closing with unread input
        makes the kernel send RST, which can destroy the response before the client reads it."""
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(LINGER_TIMEOUT):
                drained = 0
                while drained < MAX_HEAD and (chunk := await reader.read(4096)):
                    drained += len(chunk)


async def start_ops_server(
    host: str | None = None,
    port: int | None = None,
    ready: Callable[[], tuple[bool, str]] | None = None,
    *,
    sock: socket.socket | None = None,
) -> asyncio.Server:
    """Serve GET/HEAD /healthz, /readyz (200 or 503 with `ready()`'s reason) and /metrics.

    Listen on `host`/`port` (port 0 picks a free one: read it from `server.sockets`), or on an
    already bound `sock` (workers sharing one SO_REUSEPORT socket). `ready` is called on the
    event loop for each probe, so it must be quick; without it the pod is ready while serving.
    The caller closes the server."""
    if (sock is None) == (host is None or port is None):
        raise ValueError("start_ops_server needs either host and port, or sock")
    server = _OpsServer(ready or _serving)
    # limit bounds readuntil(): a longer line raises LimitOverrunError instead of buffering.
    if sock is not None:
        return await asyncio.start_server(server.handle, sock=sock, limit=MAX_LINE)
    return await asyncio.start_server(server.handle, host, port, limit=MAX_LINE)
