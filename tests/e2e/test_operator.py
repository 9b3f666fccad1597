"""The operator end to end on the real control plane: kopf handlers and the namespace reconcile
running in-process as a ServiceAccount bound to exactly `RECONCILE_RULES`, `kubectl apply` of
examples/, and what a user then sees (objects, conditions, events, password changes)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from letterbox.api.settings import OperatorSettings
from letterbox.handlers.operator import run_operator
from letterbox.kube import AsyncKube, Kube
from letterbox.material import password_matches
from letterbox.render.workload import RESTART_CHECKSUM_ANNOTATION
from tests.conftest import EXAMPLES
from tests.e2e.test_kube_rbac import allowed, role, role_binding
from tests.harness.controlplane import ControlPlane, service_account_kubeconfig

pytestmark = pytest.mark.e2e

KINDS = ("maildomains", "mailboxes", "aliases", "dkimkeys")
APPLY = ("create", "patch")  # server-side apply: patch, and create when the object is missing
# The operator's namespace Role: the seed of the chart's rules (tests/e2e/test_kube_rbac.py
# covers the kube/ calls one by one; this is what the whole operator needs).
RECONCILE_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # kopf lists and watches; its progress/diff-base annotations and finalizers are patches.
    *(("letterbox.dev", kind, ("get", "list", "watch", "patch")) for kind in KINDS),
    *(("letterbox.dev", f"{kind}/status", ("patch",)) for kind in KINDS),
    # gather lists them; kopf watches the password Secrets; generated credentials and DKIM keys
    # are created (and their hash keys patched); stale config shards are deleted.
    ("", "secrets", ("get", "list", "watch", "create", "patch", "delete")),
    ("", "services", APPLY),
    ("", "serviceaccounts", APPLY),
    ("apps", "statefulsets", APPLY),
    ("policy", "poddisruptionbudgets", APPLY),
    ("networking.k8s.io", "networkpolicies", APPLY),
    ("rbac.authorization.k8s.io", "roles", APPLY),
    ("rbac.authorization.k8s.io", "rolebindings", APPLY),
    ("events.k8s.io", "events", ("create", "patch")),
)
NAMESPACE = "mail"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def ready(obj: dict[str, Any]) -> tuple[str, str] | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition["type"] == "Ready":
            return condition["status"], condition["reason"]
    return None


@pytest.fixture(scope="module")
def operator(crds: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """The operator running for namespace `mail`; yields an admin client."""
    admin = Kube.connect(crds.kubeconfig)
    admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    admin.apply(role(NAMESPACE, RECONCILE_RULES))
    admin.apply(role_binding(NAMESPACE))
    kubeconfig = service_account_kubeconfig(
        crds, NAMESPACE, "letterbox", tmp_path_factory.mktemp("operator") / "kubeconfig"
    )
    granted = [(g, r, v) for g, r, verbs in RECONCILE_RULES for v in verbs]
    wait_for("RBAC", lambda: all(allowed(crds, NAMESPACE, g, r, v) for g, r, v in granted))

    kube = Kube.connect(kubeconfig)
    stop, started = threading.Event(), threading.Event()
    settings = OperatorSettings(namespace=NAMESPACE)
    thread = threading.Thread(
        target=asyncio.run,
        args=(run_operator(AsyncKube(kube), settings, stop_flag=stop, ready_flag=started),),
        name="operator",
        daemon=True,
    )
    thread.start()
    assert started.wait(30), "the operator did not start"
    try:
        yield admin
    finally:
        stop.set()
        thread.join(30)
        kube.close()
        admin.close()


def get(admin: Kube, kind: str, name: str, api_version: str = "letterbox.dev/v1alpha1") -> Any:
    return admin.get(api_version, kind, name, NAMESPACE)


def test_examples_become_ready_with_their_workload(crds: ControlPlane, operator: Kube) -> None:
    admin = operator
    began = time.monotonic()
    crds.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLES))
    crds.kubectl(
        "wait",
        "-n",
        NAMESPACE,
        "--for=condition=Ready",
        "--timeout=20s",
        "maildomains,mailboxes,aliases,dkimkeys",
        "--all",
    )
    print(f"\nexamples applied -> all Ready in {time.monotonic() - began:.2f}s")

    settings = get(admin, "Secret", "mailpod-config", "v1")
    assert settings["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "letterbox"
    index = json.loads(base64.b64decode(settings["data"]["index"]))
    shard = get(admin, "Secret", index["shards"][0]["secret"], "v1")
    mailboxes = json.loads(base64.b64decode(shard["data"][index["shards"][0]["key"]]))["mailboxes"]
    assert {m["address"] for m in mailboxes} == {"alice@example.com", "bob@example.com"}
    for kind, name, api_version in (
        ("StatefulSet", "mailpod", "apps/v1"),
        ("Service", "mailpod", "v1"),
        ("Service", "mailpod-headless", "v1"),
        ("PodDisruptionBudget", "mailpod", "policy/v1"),
    ):
        obj = get(admin, kind, name, api_version)
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "mailpod"

    credentials = get(admin, "Secret", "alice-credentials", "v1")
    password = base64.b64decode(credentials["data"]["password"]).decode()
    assert len(password) >= 20
    alice_hash = next(m["password_hash"] for m in mailboxes if m["address"] == "alice@example.com")
    assert password_matches(password, alice_hash)
    alice = get(admin, "Mailbox", "alice")
    assert credentials["metadata"]["ownerReferences"][0]["uid"] == alice["metadata"]["uid"]
    assert alice["status"]["credentialsSecret"] == "alice-credentials"
    assert [c["type"] for c in alice["status"]["conditions"]] == ["Ready", "ConfigApplied"]
    assert alice["status"]["observedGeneration"] == alice["metadata"]["generation"]

    dkim = get(admin, "DKIMKey", "example-com-rsa")
    assert dkim["status"]["publicRecord"].startswith("v=DKIM1; k=rsa; p=")
    assert get(admin, "Secret", dkim["status"]["secretName"], "v1")["metadata"]["ownerReferences"]
    domain = get(admin, "MailDomain", "example-com")
    assert any(r["name"].startswith("lb._domainkey.") for r in domain["status"]["records"])

    events = admin.list("events.k8s.io/v1", "Event", NAMESPACE)
    assert any(e["regarding"]["name"] == "alice" and e["reason"] == "Reconciled" for e in events)


def test_mailbox_for_an_undeclared_domain_breaks_nothing_else(
    crds: ControlPlane, operator: Kube
) -> None:
    admin = operator
    crds.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLES))
    admin.apply(
        {
            "apiVersion": "letterbox.dev/v1alpha1",
            "kind": "Mailbox",
            "metadata": {"name": "eve", "namespace": NAMESPACE},
            "spec": {"address": "eve@example.org"},
        }
    )
    assert wait_for("eve's status", lambda: ready(get(admin, "Mailbox", "eve"))) == (
        "False",
        "DomainNotFound",
    )
    for kind, name in (("Mailbox", "alice"), ("Mailbox", "bob"), ("Alias", "sales")):
        assert ready(get(admin, kind, name)) == ("True", "Reconciled")
    events = admin.list("events.k8s.io/v1", "Event", NAMESPACE)
    assert any(e["regarding"]["name"] == "eve" and e["type"] == "Warning" for e in events)


def test_password_change_reaches_the_config_without_a_restart(
    crds: ControlPlane, operator: Kube
) -> None:
    admin = operator
    crds.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLES))
    crds.kubectl("wait", "-n", NAMESPACE, "--for=condition=Ready", "--timeout=20s", "mailbox/bob")
    checksum = get(admin, "StatefulSet", "mailpod", "apps/v1")["spec"]["template"]["metadata"][
        "annotations"
    ][RESTART_CHECKSUM_ANNOTATION]

    def bob_hash() -> str:
        shard = get(admin, "Secret", "mailpod-config-shard-0", "v1")
        document = json.loads(base64.b64decode(shard["data"]["shard-0000.json"]))
        return str(
            next(m for m in document["mailboxes"] if m["address"] == "bob@example.com")[
                "password_hash"
            ]
        )

    assert password_matches("correct horse battery staple", bob_hash())
    began = time.monotonic()
    admin.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "bob-password", "namespace": NAMESPACE},
            "stringData": {"password": "a new passphrase for bob"},
        },
        field_manager="kubectl-client-side-apply",
    )
    wait_for("the new hash", lambda: password_matches("a new passphrase for bob", bob_hash()))
    print(f"\npassword change -> config shard in {time.monotonic() - began:.2f}s")
    statefulset = get(admin, "StatefulSet", "mailpod", "apps/v1")
    assert (
        statefulset["spec"]["template"]["metadata"]["annotations"][RESTART_CHECKSUM_ANNOTATION]
        == checksum
    )
