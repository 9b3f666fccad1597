"""The kopf side of the operator: thin handlers that ask for a namespace reconcile.

All four kinds end up in one mail pod config per namespace, so one object's change is a
namespace change, and `NamespaceReconciler` runs level-triggered passes over the whole
namespace: it writes every object's status (invalid specs included), retries what failed or
waits for a Secret by itself, and coalesces requests that arrive during a pass. Its store is
fed by its own watches of the four kinds and of the namespace's Secrets (`reconcile.store.
follow`, started here), which ask for a pass when something changed: an event that is not the
echo of our own status write, a referenced password Secret; a kopf timer adds a periodic resync.

Why not kopf's handlers for the objects: create/update/resume handlers keep per-object state in
the object itself (a diff-base annotation, progress annotations), which costs a PATCH per
object and per change, and they hold a worker per object until the pass it waits for is over.
Even plain event handlers cost a kopf memory record, and a worker task and queue per object
with events in flight: with 10,000 Mailboxes applied at once, tens of MB of the operator's peak
for nothing the namespace pass needs. A deletion handler would also make kopf build a
diff-base (a deep copy) of every event's object. So the one finalizer, on Mailboxes whose
stored mail is deleted with them, is the pass's own (`reconcile.purge`), and kopf runs the
start-up, the timer, the login and the health endpoint.

kopf is configured to be a good neighbour from the start: its progress and diff-base
annotations and its finalizer use our `letterbox.dev` prefix, it runs standalone unless a
peering name is configured, it posts no events of its own (ours go through letterbox.kube:
events.k8s.io/v1 with series de-duplication), and its HTTP client has a bounded connection pool.
Every handler is a coroutine: kopf runs plain functions in a thread pool, and the reconciler's
asyncio primitives must only be touched from the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from letterbox.api.meta import GROUP, VERSION
from letterbox.api.settings import OperatorSettings
from letterbox.dns.publish import DnsPublisher
from letterbox.kube.connection import EXPIRY_MARGIN, ApiServer
from letterbox.reconcile.dkim import MOUNT_SECONDS
from letterbox.reconcile.namespace import NamespaceReconciler
from letterbox.reconcile.ports import ClusterApi
from letterbox.reconcile.store import WatchApi, follow
from letterbox.web.server import WebServer

log = logging.getLogger("letterbox.handlers")

# A full pass now and then even without watch events: catches anything a missed event (or a
# change kopf does not report, such as a Secret we do not know to watch) left behind. The
# timer sits on MailDomains only, a handful per namespace, not on 10,000 Mailboxes.
RESYNC_SECONDS = 300.0
PASS_FAILED_DELAY = 5.0
# kopf's own HTTP client has no connection limit (TCPConnector(limit=0)): 10,000 objects
# handled at once opened thousands of TLS connections to the API server, each holding ~130 KiB
# of buffers in the operator, and the peak RSS grew with the object count. A bounded pool
# queues the requests instead. (kopf now watches only MailDomains, for the resync timer; the
# store's watches use letterbox.kube.)
KOPF_CONNECTIONS = 24
# How long kopf keeps a token read from a file the kubelet rotates (client-go re-reads it every
# minute; kopf's watches only need it at each reconnect).
TOKEN_REFRESH_SECONDS = 600.0
KOPF_LIST_CHUNK = 500


def configure_kopf(kopf_settings: kopf.OperatorSettings, settings: OperatorSettings) -> None:
    ours = settings.kopf
    kopf_settings.persistence.finalizer = ours.finalizer
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ours.annotation_prefix
    )
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ours.annotation_prefix, key="last-handled-configuration"
    )
    kopf_settings.posting.enabled = False
    # The operator serves one namespace with a namespaced Role: no cluster-wide watching of
    # Namespaces and CRDs (kopf would retry those forbidden calls for minutes before falling
    # back). The CRDs are installed before the operator starts (the chart does that).
    kopf_settings.scanning.disabled = True
    if ours.peering:
        kopf_settings.peering.name = ours.peering
    # The initial listing in pages: unpaged, kopf holds all 10,000 Mailboxes of a namespace as
    # one parsed list (tens of MB) for as long as it watches.
    kopf_settings.watching.chunk_size = KOPF_LIST_CHUNK
    # Default 60 s backoffs would make a transient API error cost a minute of readiness.
    kopf_settings.execution.default_backoff = PASS_FAILED_DELAY
    # kopf logs every handler call at INFO: a line per watch event, 22,000 lines (and 4 s of
    # the event loop) for 11,000 objects applied at once. Its warnings and errors still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)


@dataclass
class OperatorRuntime:
    """What the handlers share: the reconciler and its loop task."""

    kube: ClusterApi
    settings: OperatorSettings
    reconciler: NamespaceReconciler | None = None
    task: asyncio.Task[None] | None = None
    watches: asyncio.Task[None] | None = None
    started: threading.Event = field(default_factory=threading.Event)
    web: WebServer | None = None
    """The MTA-STS/autoconfig server the reconciler tells the domains (settings.web)."""
    dns: DnsPublisher | None = None
    """How domains' records are published; None: the default (zones' own NS are asked)."""
    dkim_mount_seconds: float = MOUNT_SECONDS
    """How long a new DKIM key sits in the mounted Secret before the pods sign with it."""


def _session(kube: ClusterApi) -> kopf.AiohttpSession:
    """kopf's session with the same API server and identity as letterbox.kube, so both act as
    one identity under one set of RBAC rules. A token that can change (a rotated ServiceAccount
    token, an exec plugin's) is taken afresh: kopf logs in again when this one expires (or on
    a 401)."""
    api_server: ApiServer = kube.sync.transport.api_server
    credential = api_server.credential()
    authorization = api_server.authorization(credential)
    expires = credential.expires  # an exec plugin's token always has one
    if expires is None and api_server.token_file is not None:
        expires = time.time() + TOKEN_REFRESH_SECONDS
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=KOPF_CONNECTIONS, ssl=api_server.ssl_context()),
        headers={"Authorization": authorization} if authorization else {},
        trust_env=False,
    )
    return kopf.AiohttpSession(
        server=api_server.server,
        default_namespace=api_server.namespace,
        aiohttp_session=session,
        expiration=datetime.fromtimestamp(expires - EXPIRY_MARGIN, UTC) if expires else None,
    )


def build_registry(runtime: OperatorRuntime) -> kopf.OperatorRegistry:
    """The handlers, in a registry of their own (not kopf's global one), so tests can run an
    operator in-process more than once."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.AiohttpSession:
        # Async: the session belongs to kopf's event loop (kopf closes it on re-login).
        return _session(runtime.kube)

    @kopf.on.startup(registry=registry)
    async def startup(**_: Any) -> None:
        if runtime.web is not None:  # listening before the first pass hands it the domains
            web = runtime.settings.web
            await runtime.web.start(web.bind_address, web.port)
        runtime.reconciler = NamespaceReconciler(
            runtime.kube,
            runtime.settings,
            on_domains=runtime.web.set_domains if runtime.web is not None else None,
            mta_sts_served=runtime.web.serves if runtime.web is not None else None,
            dns=runtime.dns,
            dkim_mount_seconds=runtime.dkim_mount_seconds,
            watched=isinstance(runtime.kube, WatchApi),  # the store's own watches feed it
        )
        reconciler = runtime.reconciler
        runtime.task = asyncio.create_task(reconciler.run(), name="letterbox-reconcile")
        if isinstance(runtime.kube, WatchApi):
            # Every event goes into the store (the echoes of our own writes too, so the next
            # pass compares against what is stored now); only changes ask for a pass.
            runtime.watches = asyncio.create_task(
                follow(
                    runtime.kube,
                    reconciler.store,
                    runtime.settings.namespace,
                    nudge=reconciler.nudge,
                    secret_matters=lambda name: name in reconciler.referenced_secrets,
                ),
                name="letterbox-watch",
            )
        runtime.reconciler.nudge()  # a first pass even in an empty namespace
        runtime.started.set()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in (runtime.task, runtime.watches):
            if task is not None:
                task.cancel()
        if runtime.web is not None:
            await runtime.web.stop()

    @kopf.timer(
        GROUP,
        VERSION,
        "maildomains",
        registry=registry,
        interval=RESYNC_SECONDS,
        idle=RESYNC_SECONDS,
    )
    async def resync(**_: Any) -> None:
        if runtime.reconciler is not None:
            runtime.reconciler.nudge()

    return registry


async def run_operator(
    kube: ClusterApi,
    settings: OperatorSettings,
    *,
    stop_flag: threading.Event | asyncio.Event | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
    runtime: OperatorRuntime | None = None,
    liveness_endpoint: str | None = None,
) -> None:
    """Run the operator for `settings.namespace` until `stop_flag` (or a signal, in the main
    thread). `liveness_endpoint` (e.g. http://0.0.0.0:8080/healthz) is kopf's health server,
    which the chart's probes ask."""
    web = WebServer() if settings.web.enabled else None
    runtime = runtime or OperatorRuntime(kube, settings, web=web)
    registry = build_registry(runtime)
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings, settings)
    peering = settings.kopf.peering
    await kopf.operator(
        registry=registry,
        settings=kopf_settings,
        namespaces=[settings.namespace],
        standalone=peering is None,
        peering_name=peering,
        liveness_endpoint=liveness_endpoint,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
