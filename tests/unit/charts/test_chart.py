"""The Helm chart rendered by the real `helm`: lint, every manifest valid Kubernetes, values that
reach the operator's settings, the restricted security context, and its opt-in parts."""

from __future__ import annotations

import hashlib
from typing import Any

import kubernetes_validate
import pytest
import yaml

from letterbox.api.settings import load_settings
from tests.harness.helm import CHART, HelmError, find, helm, role_triples, template
from tests.harness.reference import REPO

# Every option on at once: each opt-in template renders and must validate too.
EVERYTHING: dict[str, Any] = {
    "crds": {"templated": True},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "networkPolicy": {"enabled": True, "extraEgress": [{"ports": [{"port": 8081}]}]},
    "argocdHealth": {"enabled": True},
    "imagePullSecrets": ["registry"],
    "operator": {"logLevel": "debug", "nodeSelector": {"kubernetes.io/os": "linux"}},
    "mail": {
        "replicas": 2,
        "service": {"type": "NodePort"},
        "web": {
            "enabled": True,
            "ingress": {"className": "nginx", "tlsSecretName": "letterbox-web-tls"},
        },
    },
}
# Kinds kubernetes-validate has no schema for (not in Kubernetes itself).
FOREIGN_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def test_helm_lint_is_clean() -> None:
    for values in ([], ["--set", "crds.templated=true,serviceMonitor.enabled=true"]):
        done = helm("lint", "--strict", str(CHART), *values)
        assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
        assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


@pytest.mark.parametrize("values", [{}, EVERYTHING], ids=["defaults", "everything"])
def test_every_manifest_is_valid_kubernetes(values: dict[str, Any]) -> None:
    version = kubernetes_validate.latest_version()
    manifests = template(values, include_crds=True)
    validated = 0
    for manifest in manifests:
        if (manifest["apiVersion"], manifest["kind"]) in FOREIGN_KINDS:
            continue
        kubernetes_validate.validate(manifest, version, strict=True)
        validated += 1
    kinds = {m["kind"] for m in manifests}
    assert {"CustomResourceDefinition", "Deployment", "Role", "RoleBinding"} <= kinds
    assert validated >= 8


def test_settings_are_what_the_operator_loads() -> None:
    relay = {
        "host": "smtp.relay.example",
        "port": 2525,
        "username": "letterbox",
        "passwordSecretRef": {"name": "relay-login", "key": "password"},
    }
    manifests = template(
        {
            "image": {"tag": "1.2.3"},
            "mail": {
                "replicas": 3,
                "storage": {"size": "50Gi"},
                "outbound": {"relays": [relay]},
            },
        },
        namespace="mail",
    )
    text = find(manifests, "ConfigMap", "letterbox-settings")["data"]["settings.yaml"]
    settings = load_settings(text)
    assert settings.namespace == "mail"  # the release namespace, written out
    assert settings.replicas == 3
    assert settings.storage.size == "50Gi"
    [loaded] = settings.outbound.relays
    assert (loaded.host, loaded.port, loaded.username) == ("smtp.relay.example", 2525, "letterbox")
    assert loaded.password_secret_ref is not None
    assert loaded.password_secret_ref.name == "relay-login"
    # The mail pods run the operator's image unless told otherwise.
    assert settings.image.reference == "ghcr.io/letterbox/letterbox:1.2.3"

    own = template({"mail": {"namespace": "elsewhere", "image": {"repository": "r", "tag": "t"}}})
    settings = load_settings(find(own, "ConfigMap")["data"]["settings.yaml"])
    assert (settings.namespace, settings.image.reference) == ("elsewhere", "r:t")
    # The Role lives where the mail system is; the binding names the operator's account.
    binding = find(own, "RoleBinding")
    assert find(own, "Role")["metadata"]["namespace"] == "elsewhere"
    assert binding["metadata"]["namespace"] == "elsewhere"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "letterbox", "namespace": "letterbox"}
    ]


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"mail": {"replicaz": 2}}, "replicaz"),  # a typo fails the install, not the operator
        ({"mail": {"replicas": 100}}, "maximum"),
        ({"mail": {"service": {"clientAddress": "Proxy"}}}, "clientAddress"),
        ({"operator": {"replicas": 2}}, "maximum"),
        ({"image": {"digest": "sha256:abc"}}, "digest"),
        ({"mail": {"outbound": {"relays": [{"host": "relay.example", "user": "x"}]}}}, "user"),
    ],
)
def test_values_schema_rejects_what_the_operator_would(
    values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(HelmError) as error:
        template(values)
    assert "values don't meet the specifications of the schema" in str(error.value)
    assert complaint in str(error.value)


def test_deployment_runs_the_operator_restricted_and_probed() -> None:
    manifests = template({"image": {"digest": "sha256:" + "a" * 64}})
    deployment = find(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/letterbox/letterbox@sha256:" + "a" * 64
    assert container["command"] == ["letterbox"]
    assert container["args"][:2] == ["operator", "--settings=/etc/letterbox/settings.yaml"]
    # Restricted Pod Security Standard.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert "requests" in container["resources"] and "memory" in container["resources"]["limits"]
    # The probes ask the port the operator's health server listens on.
    liveness = next(a for a in container["args"] if a.startswith("--liveness="))
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["health"]
    assert liveness == f"--liveness=http://0.0.0.0:{port}/healthz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    # One operator at a time, also during a rollout.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert pod["serviceAccountName"] == find(manifests, "ServiceAccount")["metadata"]["name"]


def test_a_settings_change_rolls_the_operator() -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = find(template(values), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/settings"])

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"mail": {"workers": 4}})
    text = find(template({}), "ConfigMap")["data"]["settings.yaml"]
    assert checksum({}) == hashlib.sha256(text.rstrip("\n").encode()).hexdigest()


def test_rbac_is_namespaced_and_names_no_wildcards() -> None:
    manifests = template()
    for manifest in manifests:
        assert manifest["kind"] != "ClusterRoleBinding", "the operator needs nothing cluster-wide"
    for group, resource, verbs in role_triples(find(manifests, "Role")):
        assert "*" not in (group, resource, *verbs)
        assert not {"escalate", "bind", "impersonate", "update"} & set(verbs), resource
    # The aggregated roles give users the kinds, never the operator's other rights.
    for role in (m for m in manifests if m["kind"] == "ClusterRole"):
        assert {g for rule in role["rules"] for g in rule["apiGroups"]} == {"letterbox.dev"}
    without = template({"rbac": {"aggregateToDefaultRoles": False}})
    assert not [m for m in without if m["kind"] == "ClusterRole"]


def test_optional_rules_follow_the_features_they_serve() -> None:
    def resources(values: dict[str, Any]) -> set[str]:
        return {r for _, r, _ in role_triples(find(template(values), "Role"))}

    assert "certificates" in resources({})
    assert "certificates" not in resources({"rbac": {"certManager": False}})
    assert "ingresses" not in resources({"mail": {"web": {"enabled": True}}})
    ingress = {"tlsSecretName": "web-tls"}
    assert "ingresses" in resources({"mail": {"web": {"enabled": True, "ingress": ingress}}})


def test_crds_ship_identical_to_crds_dir_and_templated_ones_are_kept() -> None:
    shipped = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert shipped == sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    for name in shipped:
        assert (CHART / "crds" / name).read_text() == (REPO / "crds" / name).read_text()

    assert not [m for m in template() if m["kind"] == "CustomResourceDefinition"]
    templated = [
        m
        for m in template({"crds": {"templated": True}})
        if m["kind"] == "CustomResourceDefinition"
    ]
    assert len(templated) == len(shipped)
    for crd in templated:
        annotations = crd["metadata"].pop("annotations")
        assert annotations == {"helm.sh/resource-policy": "keep"}
        original = yaml.safe_load((REPO / "crds" / f"{crd['metadata']['name']}.yaml").read_text())
        assert crd == original


def test_opt_in_parts() -> None:
    manifests = template(EVERYTHING)
    monitor = find(manifests, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "mailpod"
    policy = find(manifests, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8088}]}]
    web = find(manifests, "Service", "letterbox-web")
    deployment = find(manifests, "Deployment")
    ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "web", "containerPort": 8088, "protocol": "TCP"} in ports
    assert web["spec"]["ports"][0]["targetPort"] == "web"
    assert web["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    health = find(manifests, "ConfigMap", "letterbox-argocd-health")["data"]
    assert sorted(health) == [
        f"resource.customizations.health.letterbox.dev_{kind}"
        for kind in ("Alias", "DKIMKey", "MailDomain", "Mailbox")
    ]
    # Nothing opt-in by default.
    kinds = {m["kind"] for m in template()}
    assert not kinds & {"ServiceMonitor", "NetworkPolicy", "Service"}


def test_web_server_needs_the_operator_in_the_mail_namespace() -> None:
    with pytest.raises(HelmError, match=r"mail\.web needs the operator in the mail namespace"):
        template({"mail": {"namespace": "other", "web": {"enabled": True}}})
