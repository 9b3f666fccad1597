"""letterbox.kube under RBAC, as the operator's ServiceAccount: no rules → Forbidden naming the
missing verb and resource; `OPERATOR_RULES` → everything works; and every verb in those rules is
needed (dropping any one makes exactly that verb fail). `OPERATOR_RULES` is the seed of the
chart's least-privilege ClusterRole."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from letterbox.api.conditions import set_condition
from letterbox.api.mailbox import Mailbox, MailboxSpec, MailboxStatus
from letterbox.api.meta import API_VERSION, ConditionStatus, ObjectMeta
from letterbox.kube import EventType, Forbidden, Kube, Object
from tests.harness.controlplane import ControlPlane, service_account_kubeconfig

pytestmark = pytest.mark.e2e

# (apiGroup, resource, verbs) and which calls need them.
OPERATOR_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # apply = patch, plus create when the object is missing; get; list; delete. The same verbs
    # apply to every kind the operator renders (secrets, statefulsets, services, ...).
    ("", "configmaps", ("get", "list", "create", "patch", "delete")),
    # ensure_secret: create; get after AlreadyExists; patch to update a mutable key.
    # read_secret_key: get.
    ("", "secrets", ("get", "create", "patch")),
    # patch_status reads the object to compare (kopf also needs list/watch to see it at all).
    ("letterbox.dev", "mailboxes", ("get",)),
    ("letterbox.dev", "mailboxes/status", ("patch",)),
    # emit_event: create; patch to extend a series.
    ("events.k8s.io", "events", ("create", "patch")),
)

_serial = itertools.count()
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def role(namespace: str, rules: tuple[tuple[str, str, tuple[str, ...]], ...]) -> Object:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "letterbox-operator", "namespace": namespace},
        "rules": [
            {"apiGroups": [group], "resources": [resource], "verbs": list(verbs)}
            for group, resource, verbs in rules
            if verbs
        ],
    }


def role_binding(namespace: str) -> Object:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "letterbox-operator", "namespace": namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "letterbox-operator",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "letterbox", "namespace": namespace}],
    }


def allowed(plane: ControlPlane, namespace: str, group: str, resource: str, verb: str) -> bool:
    plural, _, subresource = resource.partition("/")
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{namespace}:letterbox",
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "resourceAttributes": {
                "namespace": namespace,
                "verb": verb,
                "group": group,
                "resource": plural,
                "subresource": subresource,
            },
        },
    }
    response = plane.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    assert response.ok, response
    return bool(response.body["status"].get("allowed"))


def operator_kube(
    plane: ControlPlane,
    admin: Kube,
    tmp_path: Path,
    rules: tuple[tuple[str, str, tuple[str, ...]], ...] | None,
) -> tuple[Kube, str]:
    """A namespace holding Mailbox alice, and a Kube for ServiceAccount `letterbox` in it bound
    to `rules` (None: no Role at all). Waits until the RBAC cache serves the rules."""
    namespace = f"rbac-{next(_serial)}"
    admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    admin.apply(
        Mailbox(
            metadata=ObjectMeta(name="alice", namespace=namespace),
            spec=MailboxSpec(address="alice@example.com"),
        ).model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})
    )
    kubeconfig = service_account_kubeconfig(
        plane, namespace, "letterbox", tmp_path / f"{namespace}.kubeconfig"
    )
    if rules is not None:
        admin.apply(role(namespace, rules))
        admin.apply(role_binding(namespace))
        granted = [(g, r, v) for g, r, verbs in rules for v in verbs]
        deadline = time.monotonic() + 10
        while not all(allowed(plane, namespace, g, r, v) for g, r, v in granted):
            assert time.monotonic() < deadline, "RBAC rules did not take effect"
            time.sleep(0.05)
    return Kube.connect(kubeconfig), namespace


def config_map(namespace: str, value: str) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "mail", "namespace": namespace, "labels": {"app": "mail"}},
        "data": {"value": value},
    }


def every_call(kube: Kube, namespace: str) -> None:
    """Each letterbox.kube call once, in an order where each verb is first needed by one call."""
    kube.apply(config_map(namespace, "1"))  # patch, then create
    kube.apply(config_map(namespace, "2"))
    kube.get("v1", "ConfigMap", "mail", namespace)
    assert len(kube.list("v1", "ConfigMap", namespace, label_selector={"app": "mail"})) == 1

    data: dict[str, Any] = {"username": "alice@example.com", "password": "generated"}
    kube.ensure_secret("alice-credentials", namespace, data, immutable_keys={"password"})
    kube.ensure_secret("alice-credentials", namespace, data, immutable_keys={"password"})  # get
    kube.ensure_secret(
        "alice-credentials",
        namespace,
        {**data, "username": "alice@example.org"},
        immutable_keys={"password"},
    )  # patch
    assert kube.read_secret_key(namespace, "alice-credentials", "password") == b"generated"

    box = kube.get(API_VERSION, "Mailbox", "alice", namespace)
    conditions = set_condition(
        (), "Ready", ConditionStatus.TRUE, "Reconciled", "", generation=1, now=T0
    )
    write = kube.patch_status("Mailbox", namespace, "alice", MailboxStatus(conditions=conditions))
    assert write.written

    kube.emit_event(box, EventType.NORMAL, "Reconciled", "mailbox ready")  # create
    kube.emit_event(box, EventType.NORMAL, "Reconciled", "mailbox ready")  # patch (series)

    assert kube.delete("v1", "ConfigMap", "mail", namespace)


def test_without_rbac_calls_are_forbidden_with_the_missing_rule(
    crds: ControlPlane, tmp_path: Path
) -> None:
    with Kube.connect(crds.kubeconfig) as admin:
        kube, namespace = operator_kube(crds, admin, tmp_path, None)
    with kube:
        with pytest.raises(Forbidden) as forbidden:
            kube.apply(config_map(namespace, "1"))
        error = forbidden.value
        assert (error.verb, error.resource, error.group) == ("patch", "configmaps", "")
        assert not error.temporary
        assert str(error).startswith(
            f"patch ConfigMap {namespace}/mail: forbidden: needs RBAC verb 'patch' on resource "
            "'configmaps' in the core API group"
        )
        assert f"system:serviceaccount:{namespace}:letterbox" in str(error)

        # A subresource is named as a Role rule names it.
        stale = {"metadata": {"resourceVersion": "1"}, "status": {"quotaBytes": 1}}
        with pytest.raises(Forbidden) as forbidden:
            kube.patch_status("Mailbox", namespace, "alice", MailboxStatus(), observed=stale)
        assert "needs RBAC verb 'patch' on resource 'mailboxes/status' in API group " in str(
            forbidden.value
        )


def test_operator_rules_are_enough(crds: ControlPlane, tmp_path: Path) -> None:
    with Kube.connect(crds.kubeconfig) as admin:
        kube, namespace = operator_kube(crds, admin, tmp_path, OPERATOR_RULES)
    with kube:
        every_call(kube, namespace)


@pytest.mark.parametrize(
    ("group", "resource", "verb"),
    [(g, r, v) for g, r, verbs in OPERATOR_RULES for v in verbs],
    ids=lambda value: value or "core",
)
def test_every_operator_rule_is_needed(
    crds: ControlPlane, tmp_path: Path, group: str, resource: str, verb: str
) -> None:
    fewer = tuple(
        (g, r, tuple(v for v in verbs if (g, r, v) != (group, resource, verb)))
        for g, r, verbs in OPERATOR_RULES
    )
    with Kube.connect(crds.kubeconfig) as admin:
        kube, namespace = operator_kube(crds, admin, tmp_path, fewer)
    with kube, pytest.raises(Forbidden) as forbidden:
        every_call(kube, namespace)
    assert (forbidden.value.verb, forbidden.value.resource, forbidden.value.group) == (
        verb,
        resource,
        group,
    )
