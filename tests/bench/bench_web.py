"""The operator's web server: policy requests per second over keep-alive connections, new TLS
connections per second (each one checks the certificate files for a renewal), and the cost of
`set_domains` for many domains.

Run: .venv/bin/python -m tests.bench.bench_web   (prints figures; no timed assertions)
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import time
from pathlib import Path

import aiohttp
import trustme

from letterbox.api.maildomain import MailDomainSpec
from letterbox.web.server import WebServer
from letterbox.web.tls import ReloadingTlsContext

HOST = "mta-sts.example.org"
PATH = "/.well-known/mta-sts.txt"


async def _keep_alive(port: int, scheme: str, context: ssl.SSLContext | bool, total: int) -> float:
    connector = aiohttp.TCPConnector(limit=10, ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(count: int) -> None:
            for _ in range(count):
                async with session.get(
                    f"{scheme}://127.0.0.1:{port}{PATH}",
                    headers={"Host": HOST},
                    server_hostname=HOST if scheme == "https" else None,
                ) as response:
                    assert response.status == 200
                    await response.read()

        start = time.perf_counter()
        await asyncio.gather(*(worker(total // 10) for _ in range(10)))
        return total / (time.perf_counter() - start)


async def _handshakes(port: int, context: ssl.SSLContext, total: int) -> float:
    start = time.perf_counter()
    for _ in range(total):
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=HOST
        )
        writer.close()
        await writer.wait_closed()
    return total / (time.perf_counter() - start)


async def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="letterbox-bench-web-"))
    ca = trustme.CA()
    leaf = ca.issue_cert(HOST)
    leaf.cert_chain_pems[0].write_to_path(str(directory / "tls.crt"))
    leaf.private_key_pem.write_to_path(str(directory / "tls.key"))
    client = ssl.create_default_context()
    ca.configure_trust(client)

    domains = [MailDomainSpec.model_validate({"domain": f"d{i}.example.org"}) for i in range(5000)]
    server = WebServer()
    for label in ("first", "unchanged"):
        start = time.perf_counter()
        server.set_domains(domains)
        print(f"set_domains, 5000 domains, {label}: {(time.perf_counter() - start) * 1000:.0f} ms")

    spec = MailDomainSpec.model_validate({"domain": "example.org"})
    plain, tls = (
        WebServer(),
        WebServer(tls=ReloadingTlsContext(directory / "tls.crt", directory / "tls.key")),
    )
    for server in (plain, tls):
        server.set_domains([spec])
        await server.start("127.0.0.1", 0)
    try:
        assert plain.port is not None and tls.port is not None
        http_rate = await _keep_alive(plain.port, "http", False, 5000)
        print(f"policy GETs, plain HTTP, 10 keep-alive connections: {http_rate:.0f}/s")
        https_rate = await _keep_alive(tls.port, "https", client, 5000)
        print(f"policy GETs, HTTPS, 10 keep-alive connections: {https_rate:.0f}/s")
        print(
            f"new TLS connections (handshake + renewal check): "
            f"{await _handshakes(tls.port, client, 500):.0f}/s"
        )
    finally:
        await plain.stop()
        await tls.stop()


if __name__ == "__main__":
    asyncio.run(main())
