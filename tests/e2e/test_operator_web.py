"""The operator's web server wired to the reconcile, on the real control plane: a MailDomain
applied with kubectl is served by Host header, a changed policy is served by the time its new id
shows in the MailDomain's records, and the Ingress names every host."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from letterbox.api.settings import load_settings
from letterbox.kube import Kube
from tests.e2e.operator_harness import (
    RECONCILE_RULES,
    grant_operator,
    operator_in_process,
    wait_for,
)
from tests.e2e.test_operator import APPLY
from tests.harness.controlplane import ControlPlane
from tests.harness.ports import free_port

pytestmark = pytest.mark.e2e

NAMESPACE = "webmail"
# What the operator needs besides RECONCILE_RULES once the web Ingress is configured.
RULES = (*RECONCILE_RULES, ("networking.k8s.io", "ingresses", APPLY))
POLICY = "/.well-known/mta-sts.txt"


def _domain(mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "letterbox.dev/v1alpha1",
        "kind": "MailDomain",
        "metadata": {"name": "example-org", "namespace": NAMESPACE},
        "spec": {"domain": "example.org", "mtaSts": {"mode": mode}},
    }


@pytest.fixture(scope="module")
def web_operator(
    crds: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Kube, int]]:
    admin = Kube.connect(crds.kubeconfig)
    directory = tmp_path_factory.mktemp("web-operator")
    kubeconfig = grant_operator(crds, admin, NAMESPACE, directory / "kubeconfig", RULES)
    port = free_port()
    settings = load_settings(
        f"namespace: {NAMESPACE}\n"
        f"web: {{enabled: true, bindAddress: 127.0.0.1, port: {port},"
        " ingress: {tlsSecretName: web-tls}}\n"
    )
    try:
        with operator_in_process(kubeconfig, settings):
            yield admin, port
    finally:
        admin.close()


def _published_id(admin: Kube) -> str | None:
    domain = admin.get("letterbox.dev/v1alpha1", "MailDomain", "example-org", NAMESPACE)
    for record in (domain.get("status") or {}).get("records") or []:
        if record["name"] == "_mta-sts.example.org":
            value: str = record["value"]
            return value.partition("id=")[2]
    return None


def test_policy_served_before_its_id_is_published(web_operator: tuple[Kube, int]) -> None:
    admin, port = web_operator
    url = f"http://127.0.0.1:{port}{POLICY}"
    host = {"Host": "mta-sts.example.org"}
    with httpx.Client(timeout=5.0) as client:
        assert client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        assert client.get(url, headers=host).status_code == 404  # no MailDomain yet

        admin.apply(_domain("testing"))
        served = wait_for(
            "the policy to be served",
            lambda: (r := client.get(url, headers=host)).status_code == 200 and r.text,
        )
        assert "mode: testing\r\n" in served
        first_id = wait_for("the records in status", lambda: _published_id(admin))

        admin.apply(_domain("enforce"))
        # Whenever the new id is visible, the policy it names is already served.
        new_id = wait_for("the new id", lambda: (i := _published_id(admin)) != first_id and i)
        assert "mode: enforce\r\n" in client.get(url, headers=host).text

    ingress = admin.get("networking.k8s.io/v1", "Ingress", "mailpod-web", NAMESPACE)
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == [
        "autoconfig.example.org",
        "autodiscover.example.org",
        "mta-sts.example.org",
    ]
    assert ingress["spec"]["tls"][0]["secretName"] == "web-tls"
    assert new_id != first_id
