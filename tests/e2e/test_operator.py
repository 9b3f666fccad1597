"""The operator end to end on the real control plane: kopf handlers and the namespace reconcile
running in-process as a ServiceAccount bound to exactly `RECONCILE_RULES`, `kubectl apply` of
examples/, and what a user then sees (objects, conditions, events, password changes)."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from letterbox.api.settings import OperatorSettings
from letterbox.kube import Kube, NotFound
from letterbox.material import password_matches
from letterbox.render.workload import RESTART_CHECKSUM_ANNOTATION
from tests.conftest import EXAMPLES
from tests.e2e.operator_harness import (
    RECONCILE_RULES,
    grant_operator,
    operator_in_process,
    wait_for,
)
from tests.e2e.test_kube_rbac import role
from tests.harness.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

# The operator's namespace Role, read from the Helm chart (charts/letterbox/templates/rbac.yaml
# is the single source of truth; tests/e2e/test_chart.py proves every rule is needed, and
# tests/e2e/test_kube_rbac.py covers the kube/ calls one by one).
APPLY = ("create", "patch")  # server-side apply: patch, and create when the object is missing
NAMESPACE = "mail"


def ready(obj: dict[str, Any]) -> tuple[str, str] | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition["type"] == "Ready":
            return condition["status"], condition["reason"]
    return None


@contextlib.contextmanager
def running_operator(
    crds: ControlPlane,
    namespace: str,
    directory: Path,
    rules: tuple[tuple[str, str, tuple[str, ...]], ...] = RECONCILE_RULES,
) -> Iterator[Kube]:
    """The operator running in-process for `namespace` as a ServiceAccount bound to `rules`;
    yields an admin client."""
    admin = Kube.connect(crds.kubeconfig)
    kubeconfig = grant_operator(crds, admin, namespace, directory / "kubeconfig", rules)
    try:
        with operator_in_process(kubeconfig, OperatorSettings(namespace=namespace)):
            yield admin
    finally:
        admin.close()


@pytest.fixture(scope="module")
def operator(crds: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """The operator running for namespace `mail`; yields an admin client."""
    with running_operator(crds, NAMESPACE, tmp_path_factory.mktemp("operator")) as admin:
        yield admin


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

    # Becoming Ready is no Event (the condition records it; 10,000 new Mailboxes would be
    # 10,000 Events); failures and recoveries are (test_refused_objects_...).
    events = admin.list("events.k8s.io/v1", "Event", NAMESPACE)
    assert not any(e["regarding"]["name"] == "alice" for e in events)


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


def _domain(name: str, domain: str) -> dict[str, Any]:
    return {
        "apiVersion": "letterbox.dev/v1alpha1",
        "kind": "MailDomain",
        "metadata": {"name": name},
        "spec": {"domain": domain},
    }


# (apiVersion, kind, name) of the workload the operator renders with default settings.
WORKLOAD = (
    ("apps/v1", "StatefulSet", "mailpod"),
    ("v1", "Service", "mailpod"),
    ("v1", "Service", "mailpod-headless"),
    ("policy/v1", "PodDisruptionBudget", "mailpod"),
    ("networking.k8s.io/v1", "NetworkPolicy", "mailpod"),
    ("v1", "Secret", "mailpod-config"),
    ("v1", "Secret", "mailpod-config-shard-0"),
    ("v1", "Secret", "mailpod-dkim"),
    ("v1", "ServiceAccount", "mailpod"),
    ("rbac.authorization.k8s.io/v1", "Role", "mailpod-config-reader"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", "mailpod-config-reader"),
)


def test_the_workload_lives_as_long_as_a_domain(crds: ControlPlane, tmp_path: Path) -> None:
    """ownerReferences to every MailDomain: deleting one of two keeps the workload, deleting
    the last lets the garbage collector (kube-controller-manager) remove all of it."""
    namespace = "mail-owners"
    with running_operator(crds, namespace, tmp_path) as admin:
        for name, domain in (("one", "one.example"), ("two", "two.example")):
            crds.kubectl(
                "apply", "-n", namespace, "-f", "-", input=json.dumps(_domain(name, domain))
            )
        crds.kubectl(
            "wait", "-n", namespace, "--for=condition=Ready", "--timeout=20s",
            "maildomains", "--all",
        )  # fmt: skip
        uids = {
            name: admin.get("letterbox.dev/v1alpha1", "MailDomain", name, namespace)["metadata"][
                "uid"
            ]
            for name in ("one", "two")
        }

        def owners(api_version: str, kind: str, name: str) -> set[str]:
            metadata = admin.get(api_version, kind, name, namespace)["metadata"]
            return {ref["uid"] for ref in metadata.get("ownerReferences") or []}

        def owned_by(expected: set[str]) -> bool:
            return all(owners(*identity) == expected for identity in WORKLOAD)

        wait_for("owners: both domains", lambda: owned_by(set(uids.values())))

        admin.delete("letterbox.dev/v1alpha1", "MailDomain", "one", namespace)
        wait_for("owners: the remaining domain", lambda: owned_by({uids["two"]}))
        time.sleep(2)  # the garbage collector had time to act on the deleted owner
        assert owned_by({uids["two"]}), "the workload must outlive one of several domains"

        admin.delete("letterbox.dev/v1alpha1", "MailDomain", "two", namespace)

        def collected() -> bool:
            left = []
            for identity in WORKLOAD:
                try:
                    admin.get(identity[0], identity[1], identity[2], namespace)
                except NotFound:
                    continue
                left.append(identity)
            return not left

        wait_for("the garbage collector to remove the workload", collected, 60)
        time.sleep(2)  # and the operator does not bring it back without a domain
        assert collected()


def test_refused_objects_make_their_resources_not_ready_until_fixed(
    crds: ControlPlane, tmp_path: Path
) -> None:
    """The operator's Role lacks roles (the pod's config reader, first in the config chain)
    and networkpolicies: the Mailboxes the pods cannot have yet and the MailDomain get
    Ready=False ApplyFailed naming the missing rule, with a Warning Event; granting the rules
    brings everything to Ready without a restart (the retries back off on their own)."""
    namespace = "mail-refused"
    denied = {"roles", "networkpolicies"}
    rules = tuple(rule for rule in RECONCILE_RULES if rule[1] not in denied)
    with running_operator(crds, namespace, tmp_path, rules) as admin:
        crds.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))

        def apply_failed(kind: str, name: str) -> str:
            """The Ready=False message when its reason is ApplyFailed, else ""."""
            obj = admin.get("letterbox.dev/v1alpha1", kind, name, namespace)
            for condition in (obj.get("status") or {}).get("conditions") or []:
                if condition["type"] == "Ready" and condition["reason"] == "ApplyFailed":
                    assert condition["status"] == "False"
                    return str(condition["message"])
            return ""

        for kind, name in (("MailDomain", "example-com"), ("Mailbox", "alice")):
            message = wait_for(f"{kind} {name} ApplyFailed", partial(apply_failed, kind, name))
            assert "needs RBAC verb 'patch' on resource 'roles'" in message, message
        assert "networkpolicies" in apply_failed("MailDomain", "example-com")
        events = admin.list("events.k8s.io/v1", "Event", namespace)
        assert any(
            e["regarding"]["name"] == "alice"
            and e["reason"] == "ApplyFailed"
            and e["type"] == "Warning"
            for e in events
        )
        with pytest.raises(NotFound):
            admin.get("v1", "Secret", "mailpod-config", namespace)  # no index without its Role

        admin.apply(role(namespace, RECONCILE_RULES))
        crds.kubectl(
            "wait", "-n", namespace, "--for=condition=Ready", "--timeout=60s",
            "maildomains,mailboxes,aliases", "--all",
        )  # fmt: skip
        assert admin.get("v1", "Secret", "mailpod-config", namespace)
        events = admin.list("events.k8s.io/v1", "Event", namespace)
        assert any(
            e["regarding"]["name"] == "alice"
            and e["reason"] == "Reconciled"
            and e["type"] == "Normal"
            for e in events
        ), "a recovery is an Event"
