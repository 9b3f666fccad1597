"""The CRDs on a real kube-apiserver: install, accept the examples, reject the invalid ones with
the messages we promise, and behave as status subresources should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, INVALID_EXAMPLES, expectations
from tests.harness.controlplane import ControlPlane

pytestmark = pytest.mark.e2e


def _namespace(plane: ControlPlane, name: str) -> str:
    plane.kubectl("create", "namespace", name)
    return name


def test_crds_are_established_with_printer_columns(crds: ControlPlane) -> None:
    out = crds.kubectl(
        "get", "crd", "-l", "app.kubernetes.io/part-of=letterbox", "-o", "name"
    ).stdout
    assert sorted(out.split()) == [
        "customresourcedefinition.apiextensions.k8s.io/aliases.letterbox.dev",
        "customresourcedefinition.apiextensions.k8s.io/dkimkeys.letterbox.dev",
        "customresourcedefinition.apiextensions.k8s.io/mailboxes.letterbox.dev",
        "customresourcedefinition.apiextensions.k8s.io/maildomains.letterbox.dev",
    ]
    resources = crds.kubectl("api-resources", "--api-group=letterbox.dev", "-o", "wide").stdout
    for short_name in ("mdom", "mbx", "mal", "dkim"):
        assert short_name in resources


def test_examples_apply(crds: ControlPlane) -> None:
    ns = _namespace(crds, "examples")
    dry = crds.kubectl("apply", "-n", ns, "--dry-run=server", "-f", str(EXAMPLES))
    assert "(server dry run)" in dry.stdout
    crds.kubectl("apply", "-n", ns, "-f", str(EXAMPLES))
    table = crds.kubectl("get", "mailboxes", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "ADDRESS", "QUOTA", "READY", "REASON", "AGE"]
    assert table[1].split()[:3] == ["alice", "alice@example.com", "10Gi"]
    every_kind = crds.kubectl("get", "letterbox", "-n", ns, "-o", "name").stdout.split()
    assert len(every_kind) == 7  # 1 domain, 2 mailboxes, 3 aliases, 1 DKIM key
    # The API server applied the schema defaults.
    domain = json.loads(crds.kubectl("get", "mdom", "example-com", "-n", ns, "-o", "json").stdout)
    assert domain["spec"]["dns"]["provider"] == "manual"
    assert domain["spec"]["dmarc"]["percent"] == 100


@pytest.mark.parametrize("path", INVALID_EXAMPLES, ids=lambda p: p.stem)
def test_invalid_examples_are_rejected_with_their_message(crds: ControlPlane, path: Path) -> None:
    expected = expectations(path, "apiserver")
    assert expected, f"{path.name} declares no expectation for the API server"
    result = crds.kubectl(
        "apply", "-n", "default", "--dry-run=server", "-f", str(path), check=False
    )
    assert result.returncode != 0, f"{path.name} was accepted:\n{result.stdout}"
    for message in expected:
        assert message in result.stderr, result.stderr


def test_status_subresource(crds: ControlPlane) -> None:
    ns = _namespace(crds, "status")
    crds.kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=(
            "apiVersion: letterbox.dev/v1alpha1\nkind: Mailbox\nmetadata: {name: s}\n"
            "spec: {address: s@example.com, quota: 1Gi}\n"
        ),
    )
    path = f"/apis/letterbox.dev/v1alpha1/namespaces/{ns}/mailboxes/s/status"
    patch = {
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Reconciled",
                    "message": "ok",
                    "lastTransitionTime": "2026-11-22T00:00:00Z",
                    "observedGeneration": 1,
                }
            ],
            "credentialsSecret": "s-credentials",
            "undeclaredField": "pruned",
        },
        # Through the status subresource, spec changes must be ignored.
        "spec": {"quota": "99Gi"},
    }
    response = crds.request("PATCH", path, patch, content_type="application/merge-patch+json")
    assert response.ok, response
    mailbox = json.loads(crds.kubectl("get", "mbx", "s", "-n", ns, "-o", "json").stdout)
    assert mailbox["spec"]["quota"] == "1Gi"
    assert mailbox["status"]["conditions"][0]["reason"] == "Reconciled"
    assert mailbox["status"]["credentialsSecret"] == "s-credentials"
    assert "undeclaredField" not in mailbox["status"]  # the declared schema prunes the rest
    crds.kubectl("wait", "-n", ns, "--for=condition=Ready", "--timeout=10s", "mailbox/s")
    row = crds.kubectl("get", "mbx", "s", "-n", ns, "--no-headers").stdout.split()
    assert row[3:5] == ["True", "Reconciled"]

    # A status write with a bad condition status is rejected by the schema.
    bad = {"status": {"conditions": [{"type": "Ready", "status": "Maybe"}]}}
    rejected = crds.request("PATCH", path, bad, content_type="application/merge-patch+json")
    assert not rejected.ok
    assert 'Unsupported value: "Maybe"' in str(rejected.body)
