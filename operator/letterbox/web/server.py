"""The HTTP server: one aiohttp application that routes by Host header and path.

    mta-sts.<domain>       GET  /.well-known/mta-sts.txt                  the MTA-STS policy
    autoconfig.<domain>    GET  /mail/config-v1.1.xml                      Thunderbird autoconfig
    <domain>               GET  /.well-known/autoconfig/mail/config-v1.1.xml  (the same)
    autodiscover.<domain>  POST /autodiscover/autodiscover.xml             Outlook autodiscover
    <domain>               POST /autodiscover/autodiscover.xml             (the same)
    any host               GET  /healthz

HEAD works wherever GET does; an unknown host or path is 404, a wrong method 405. Its state is a
`Sites` snapshot replaced as a whole by `set_domains`, so a request sees one consistent set of
domains and is never blocked by a change.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from letterbox.api.maildomain import MailDomainSpec
from letterbox.render.autoconfig import (
    AUTODISCOVER_PATH,
    THUNDERBIRD_PATH,
    THUNDERBIRD_WELL_KNOWN_PATH,
    autodiscover_response,
)
from letterbox.render.mtasts import POLICY_PATH
from letterbox.web.sites import EMPTY, Role, Site, Sites
from letterbox.web.tls import ReloadingTlsContext

log = logging.getLogger("letterbox.web")

HEALTH_PATH = "/healthz"
# Autodiscover requests are a few hundred bytes; nothing else has a body.
MAX_BODY = 16 * 1024
MAX_LINE = 4096
MAX_HEADER_FIELD = 4096
MAX_HEADERS = 64
# Policies change rarely and senders cache them for max_age anyway; a short cache lifetime lets
# an intermediate cache pick up a change long before the new id is published in DNS.
CACHE_SECONDS = 300
XML = "application/xml"
# Loose on purpose: the answer only echoes the address, and its domain must be ours.
_ADDRESS = re.compile(r"^[^\s@<>\"]{1,64}@[A-Za-z0-9.-]{1,253}$")

Handler = Callable[[web.Request, Site], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    handler: Handler


class BadRequest(ValueError):
    pass


def autodiscover_address(body: bytes) -> str:
    """The EMailAddress of an autodiscover request (any namespace, as clients differ)."""
    # No DTDs at all: entity expansion is the classic XML attack, and no client sends one.
    if b"<!" in body:
        raise BadRequest("DTDs and declarations are not accepted")
    try:
        root = ET.fromstring(body)  # noqa: S314 (no DTD can reach the parser, see above)
    except ET.ParseError as error:
        raise BadRequest(f"not XML: {error}") from error
    for element in root.iter():
        if element.tag.rpartition("}")[2] == "EMailAddress":
            address = (element.text or "").strip()
            if _ADDRESS.match(address):
                return address
            raise BadRequest("EMailAddress is not an email address")
    raise BadRequest("no EMailAddress in the request")


def _text(body: str, content_type: str) -> web.Response:
    response = web.Response(text=body, content_type=content_type, charset="utf-8")
    response.headers["Cache-Control"] = f"max-age={CACHE_SECONDS}"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def _policy(_: web.Request, site: Site) -> web.StreamResponse:
    return _text(site.policy.text, "text/plain")


async def _autoconfig(request: web.Request, site: Site) -> web.StreamResponse:
    # Thunderbird adds ?emailaddress=...; the document names the %EMAILADDRESS% placeholder
    # instead of echoing it, so one cached answer serves every address.
    if site.autoconfig is None:
        raise web.HTTPNotFound()
    return _text(site.autoconfig, XML)


async def _autodiscover(request: web.Request, site: Site) -> web.StreamResponse:
    if not site.spec.autoconfig:
        raise web.HTTPNotFound()
    body = await request.read()  # at most MAX_BODY: aiohttp answers 413 beyond
    try:
        address = autodiscover_address(body)
    except BadRequest as error:
        raise web.HTTPBadRequest(text=f"{error}\n") from error
    if address.rpartition("@")[2].lower() != site.spec.domain.lower():
        raise web.HTTPNotFound(text="not an address of this domain\n")
    return _text(autodiscover_response(site.spec, address), XML)


GET = frozenset({"GET", "HEAD"})
POST = frozenset({"POST"})
ROUTES: dict[tuple[Role, str], Route] = {
    (Role.MTA_STS, POLICY_PATH): Route(GET, _policy),
    (Role.AUTOCONFIG, THUNDERBIRD_PATH): Route(GET, _autoconfig),
    (Role.AUTOCONFIG, THUNDERBIRD_WELL_KNOWN_PATH): Route(GET, _autoconfig),
    (Role.APEX, THUNDERBIRD_WELL_KNOWN_PATH): Route(GET, _autoconfig),
    (Role.AUTODISCOVER, AUTODISCOVER_PATH): Route(POST, _autodiscover),
    (Role.APEX, AUTODISCOVER_PATH): Route(POST, _autodiscover),
}


class WebServer:
    """Serves the documents of the domains last given to `set_domains`."""

    def __init__(self, *, tls: ReloadingTlsContext | None = None) -> None:
        self.tls = tls
        self._sites = EMPTY
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # --- state --------------------------------------------------------------------------------

    def set_domains(self, specs: Iterable[MailDomainSpec]) -> None:
        """Serve exactly these domains from the next request on (one atomic swap)."""
        self._sites = Sites.of(specs, previous=self._sites)

    def served_policy_ids(self) -> dict[str, str]:
        """domain -> id of the MTA-STS policy served right now. The `_mta-sts` TXT record may
        announce an id only once it is served (RFC 8461 §3.1: senders fetch the policy when they
        see a new id), so whoever publishes DNS checks `serves` first."""
        return self._sites.policy_ids()

    def serves(self, domain: str, policy_id: str) -> bool:
        return self.served_policy_ids().get(domain.lower()) == policy_id

    # --- HTTP ---------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        sites = self._sites  # one snapshot for the whole request
        path = request.path.lower()  # Outlook capitalises /Autodiscover/Autodiscover.xml
        if path == HEALTH_PATH:
            if request.method not in GET:
                raise web.HTTPMethodNotAllowed(request.method, sorted(GET))
            return web.Response(text="ok\n")
        hit = sites.lookup(request.host)
        route = ROUTES.get((hit[0], path)) if hit else None
        if hit is None or route is None:
            raise web.HTTPNotFound()
        if request.method not in route.methods:
            raise web.HTTPMethodNotAllowed(request.method, sorted(route.methods))
        return await route.handler(request, hit[1])

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def start(self, host: str | None, port: int) -> int:
        """Listen on host:port (port 0 picks one); returns the bound port."""
        runner = web.AppRunner(
            self.application(),
            access_log=None,
            max_line_size=MAX_LINE,
            max_field_size=MAX_HEADER_FIELD,
            max_headers=MAX_HEADERS,
            auto_decompress=False,
            keepalive_timeout=75,
            shutdown_timeout=5.0,
        )
        await runner.setup()
        site = web.TCPSite(
            runner,
            host,
            port,
            ssl_context=self.tls.context if self.tls else None,
        )
        await site.start()
        self._runner = runner
        sockets = runner.addresses
        self.port = int(sockets[0][1]) if sockets else port
        log.info(
            "web server listening on %s:%s (%s)",
            host or "*",
            self.port,
            "TLS" if self.tls else "plain HTTP",
        )
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
