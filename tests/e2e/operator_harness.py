"""The operator as the e2e tests run it: in a thread of the test process, as a ServiceAccount
bound to a Role of given rules (the chart's by default), against the real control plane."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from letterbox.api.settings import OperatorSettings
from letterbox.dns.publish import DnsPublisher
from letterbox.handlers.operator import OperatorRuntime, run_operator
from letterbox.kube import AsyncKube, Kube
from letterbox.reconcile.publishing import publish_and_sweep
from tests.e2e.test_kube_rbac import allowed, role, role_binding
from tests.harness.controlplane import ControlPlane, service_account_kubeconfig
from tests.harness.helm import operator_rules

# The operator's Role: the chart's own rules, so these tests prove the chart grants enough.
RECONCILE_RULES = operator_rules()

Rules = Sequence[tuple[str, str, tuple[str, ...]]]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0, log: str = "") -> Any:
    """`check()`'s first truthy value, polled until `timeout`; then fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log}"
        time.sleep(0.05)


def grant_operator(
    plane: ControlPlane,
    admin: Kube,
    namespace: str,
    path: Path,
    rules: Rules = RECONCILE_RULES,
) -> Path:
    """The namespace, the operator's Role (`rules`) bound to its ServiceAccount, and a
    kubeconfig for that account at `path`, once RBAC answers for every rule."""
    admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    admin.apply(role(namespace, tuple(rules)))
    admin.apply(role_binding(namespace))
    kubeconfig = service_account_kubeconfig(plane, namespace, "letterbox", path)
    granted = [(g, r, v) for g, r, verbs in rules for v in verbs]
    wait_for("RBAC", lambda: all(allowed(plane, namespace, g, r, v) for g, r, v in granted), 20)
    return kubeconfig


def publisher_asking(nameserver: str) -> DnsPublisher:
    """Publishing whose propagation checks ask `nameserver` (the test's PowerDNS) for every
    zone, as the zone's NS names nothing resolvable here."""
    return DnsPublisher(publish_fn=publish_and_sweep, authoritative=lambda zone: [nameserver])


@contextlib.contextmanager
def operator_in_process(
    kubeconfig: Path,
    settings: OperatorSettings,
    *,
    dns: DnsPublisher | None = None,
    dkim_mount_seconds: float | None = None,
) -> Iterator[None]:
    """The operator running until the block ends; the defaults are the real operator's."""
    kube = Kube.connect(kubeconfig, field_manager=settings.kopf.field_manager)
    runtime = None
    if dns is not None or dkim_mount_seconds is not None:
        runtime = OperatorRuntime(AsyncKube(kube), settings, dns=dns)
        if dkim_mount_seconds is not None:
            runtime.dkim_mount_seconds = dkim_mount_seconds
    stop, started = threading.Event(), threading.Event()
    operator = run_operator(
        runtime.kube if runtime is not None else AsyncKube(kube),
        settings,
        stop_flag=stop,
        ready_flag=started,
        runtime=runtime,
    )
    thread = threading.Thread(target=asyncio.run, args=(operator,), name="operator", daemon=True)
    thread.start()
    assert started.wait(30), "the operator did not start"
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
        kube.close()
