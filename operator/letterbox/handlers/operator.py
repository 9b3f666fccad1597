"""The kopf side of the operator: thin handlers that ask for a namespace reconcile.

Every handler of the four kinds asks `NamespaceReconciler` for a pass (one mail pod config per
namespace, so one object's change is a namespace change) and reports the object's own outcome
to kopf: a pass that failed, or an object waiting for a Secret, is a TemporaryError, so kopf
retries with a delay; everything else, invalid specs included, is written to status by the pass
and the handler returns nothing.

kopf is configured to be a good neighbour from the start: its progress and diff-base
annotations and its finalizer use our `letterbox.dev` prefix, it runs standalone unless a
peering name is configured, and it posts no events of its own (ours go through letterbox.kube:
events.k8s.io/v1 with series de-duplication).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import kopf

from letterbox.api.mailbox import DeletionPolicy
from letterbox.api.meta import GROUP, VERSION
from letterbox.api.settings import OperatorSettings
from letterbox.kube.errors import KubeError
from letterbox.kube.events import EventType
from letterbox.reconcile.namespace import NamespaceReconciler
from letterbox.reconcile.ports import ClusterApi
from letterbox.reconcile.snapshot import Kind, ObjectKey

log = logging.getLogger("letterbox.handlers")

PLURALS: dict[Kind, str] = {
    Kind.MAIL_DOMAIN: "maildomains",
    Kind.MAILBOX: "mailboxes",
    Kind.ALIAS: "aliases",
    Kind.DKIM_KEY: "dkimkeys",
}
# A full pass now and then even without watch events: catches anything a missed event (or a
# change kopf does not report, such as a Secret we do not know to watch) left behind. The
# timer sits on MailDomains only, a handful per namespace, not on 10,000 Mailboxes.
RESYNC_SECONDS = 300.0
PASS_FAILED_DELAY = 5.0
WAITING_DELAY = 30.0


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
    # Default 60 s backoffs would make a transient API error cost a minute of readiness.
    kopf_settings.execution.default_backoff = PASS_FAILED_DELAY


@dataclass
class OperatorRuntime:
    """What the handlers share: the reconciler and its loop task."""

    kube: ClusterApi
    settings: OperatorSettings
    reconciler: NamespaceReconciler | None = None
    task: asyncio.Task[None] | None = None
    started: threading.Event = field(default_factory=threading.Event)

    def require(self) -> NamespaceReconciler:
        if self.reconciler is None:
            raise kopf.TemporaryError("the operator is still starting", delay=1)
        return self.reconciler


def _connection(kube: ClusterApi) -> kopf.ConnectionInfo:
    """kopf's connection from the same kubeconfig (or in-cluster account) as letterbox.kube,
    so both act as one identity under one set of RBAC rules."""
    configuration: Any = kube.sync.api_client.configuration
    # The client keeps the token under "BearerToken" or "authorization" depending on its version;
    # asking as it does itself also runs its refresh hook (rotating in-cluster tokens).
    authorization = (
        configuration.get_api_key_with_prefix("BearerToken", alias="authorization") or ""
    )
    scheme, _, token = authorization.partition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def build_registry(runtime: OperatorRuntime) -> kopf.OperatorRegistry:
    """The handlers, in a registry of their own (not kopf's global one), so tests can run an
    operator in-process more than once."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return _connection(runtime.kube)

    @kopf.on.startup(registry=registry)
    async def startup(**_: Any) -> None:
        runtime.reconciler = NamespaceReconciler(runtime.kube, runtime.settings)
        runtime.task = asyncio.create_task(runtime.reconciler.run(), name="letterbox-reconcile")
        runtime.reconciler.nudge()  # a first pass even in an empty namespace
        runtime.started.set()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if runtime.task is not None:
            runtime.task.cancel()

    async def reconcile(kind: Kind, namespace: str | None, name: str | None) -> None:
        reconciler = runtime.require()
        try:
            result = await reconciler.request()
        except (KubeError, ValueError) as error:
            raise kopf.TemporaryError(
                f"reconcile failed: {error}", delay=PASS_FAILED_DELAY
            ) from error
        verdict = result.verdict(ObjectKey(kind, namespace or "", name or ""))
        if verdict is not None and verdict.temporary:
            raise kopf.TemporaryError(verdict.message, delay=WAITING_DELAY)

    for kind, plural in PLURALS.items():

        def handler(kind: Kind = kind) -> Any:
            async def on_change(namespace: str | None, name: str | None, **_: Any) -> None:
                await reconcile(kind, namespace, name)

            return on_change

        for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
            decorator(GROUP, VERSION, plural, registry=registry, id="reconcile")(handler())

        # Deletions without a finalizer: the object is gone by the time kopf sees it, so only
        # the watch event says so. The pass drops it from the config.
        @kopf.on.event(
            GROUP,
            VERSION,
            plural,
            registry=registry,
            when=lambda type, **_: type == "DELETED",
        )
        def on_deleted(**_: Any) -> None:
            if runtime.reconciler is not None:
                runtime.reconciler.nudge()

    @kopf.timer(
        GROUP,
        VERSION,
        "maildomains",
        registry=registry,
        interval=RESYNC_SECONDS,
        idle=RESYNC_SECONDS,
    )
    def resync(**_: Any) -> None:
        if runtime.reconciler is not None:
            runtime.reconciler.nudge()

    def referenced(name: str | None, **_: Any) -> bool:
        reconciler = runtime.reconciler
        return reconciler is not None and name in reconciler.referenced_secrets

    # Password Secrets (ours and the users') feed the config: a change reaches the pods within
    # one pass, without waiting for a resync.
    @kopf.on.event("v1", "secrets", registry=registry, when=referenced)
    def on_secret(**_: Any) -> None:
        if runtime.reconciler is not None:
            runtime.reconciler.nudge()

    # A finalizer only where deletion has work to do: a Mailbox whose stored mail is to be
    # deleted. The pass run here removes the mailbox from the config first, so the pods stop
    # accepting mail for it.
    # TODO(issue 8): the mail pod has no way yet to delete a mailbox's Maildir on request;
    # until it has, the mail is kept and a Warning event says so. Then this handler should
    # record the deletion request for the pod and wait for the pod to confirm it.
    @kopf.on.delete(
        GROUP,
        VERSION,
        "mailboxes",
        registry=registry,
        when=lambda spec, **_: spec.get("deletionPolicy") == DeletionPolicy.DELETE.value,
    )
    async def on_mailbox_deleted(body: kopf.Body, **_: Any) -> None:
        reconciler = runtime.require()
        try:
            await reconciler.request()
        except (KubeError, ValueError) as error:
            raise kopf.TemporaryError(
                f"reconcile failed: {error}", delay=PASS_FAILED_DELAY
            ) from error
        try:
            await runtime.kube.emit_event(
                dict(body),
                EventType.WARNING,
                "StoredMailKept",
                "deletionPolicy is Delete, but deleting stored mail is not supported yet: the "
                "mailbox's Maildir stays on the mail volume until removed by hand",
                action="Delete",
            )
        except KubeError as error:
            log.warning("could not record the deletion event: %s", error)

    return registry


async def run_operator(
    kube: ClusterApi,
    settings: OperatorSettings,
    *,
    stop_flag: threading.Event | asyncio.Event | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
    runtime: OperatorRuntime | None = None,
) -> None:
    """Run the operator for `settings.namespace` until `stop_flag` (or a signal, in the main
    thread)."""
    runtime = runtime or OperatorRuntime(kube, settings)
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
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
