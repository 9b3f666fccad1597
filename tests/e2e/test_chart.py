"""The Helm chart on the real control plane: `helm install` of the chart, then the operator run
as the chart's Deployment describes it (command, args, env, settings file from the chart's
ConfigMap, probes) under the chart's ServiceAccount, reconciling examples/ without an RBAC
error. Then minimality: the chart's Role with any one verb dropped no longer reconciles
examples/ (the operator hits a 403 naming it); the few verbs for paths examples/ does not reach
are listed with their reason in BEYOND_EXAMPLES."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from letterbox.kube import Kube
from tests.conftest import EXAMPLES
from tests.e2e.test_kube_rbac import allowed
from tests.harness.controlplane import ControlPlane, service_account_kubeconfig
from tests.harness.helm import CHART, Manifest, find, helm, operator_rules, template
from tests.harness.ports import free_port

pytestmark = pytest.mark.e2e

KINDS = "maildomains,mailboxes,aliases,dkimkeys"
# What examples/ becomes when the operator may do everything it needs.
WORKLOAD = (
    ("v1", "ServiceAccount", "mailpod"),
    ("rbac.authorization.k8s.io/v1", "Role", "mailpod-config-reader"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", "mailpod-config-reader"),
    ("v1", "Secret", "mailpod-config"),
    ("v1", "Secret", "mailpod-dkim"),
    ("v1", "Secret", "alice-credentials"),
    ("v1", "Service", "mailpod"),
    ("v1", "Service", "mailpod-headless"),
    ("policy/v1", "PodDisruptionBudget", "mailpod"),
    ("networking.k8s.io/v1", "NetworkPolicy", "mailpod"),
    ("apps/v1", "StatefulSet", "mailpod"),
)
# kopf logs APIForbiddenError (HTTP 403); letterbox.kube raises Forbidden naming the rule.
FORBIDDEN_MARKERS = ("forbidden", "Forbidden")
RECONCILE_TIMEOUT = 40.0
# With a rule missing, the reconcile of examples/ must fail; it shows as a 403 in the log
# within seconds, and this bounds the wait when it does not.
MINIMALITY_TIMEOUT = 25.0
STRAY_MAILBOX = {
    "apiVersion": "letterbox.dev/v1alpha1",
    "kind": "Mailbox",
    "spec": {"address": "eve@example.org"},
}
# A Mailbox whose stored mail goes with it: the operator guards its deletion with a finalizer.
DELETE_POLICY_MAILBOX = {
    "apiVersion": "letterbox.dev/v1alpha1",
    "kind": "Mailbox",
    "spec": {"address": "carol@example.com", "deletionPolicy": "Delete"},
}
# Verbs the chart grants for paths examples/ does not reach, and why. The minimality test drops
# every other verb in turn; these stay listed here so the list cannot silently rot.
BEYOND_EXAMPLES: dict[tuple[str, str, str], str] = {
    **{
        ("letterbox.dev", kind, "get"): "re-read after a status write meets a newer version"
        for kind in ("maildomains", "mailboxes", "aliases", "dkimkeys")
    },
    ("", "secrets", "delete"): "config shards left over from a larger shard count",
    ("events.k8s.io", "events", "patch"): "a repeated event extends its series",
    **{
        ("cert-manager.io", "certificates", verb): "cert-manager installs (test_cert_manager.py)"
        for verb in ("get", "list", "watch", "create", "patch")
    },
}


@dataclass
class RunningOperator:
    process: subprocess.Popen[bytes]
    log: Path
    health_url: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def forbidden(self) -> list[str]:
        return [
            line
            for line in self.output().splitlines()
            if any(marker in line for marker in FORBIDDEN_MARKERS)
        ]


def _materialise(
    deployment: Manifest, config_maps: dict[str, Manifest], root: Path
) -> dict[str, Path]:
    """Files of the pod's configMap volumes under `root`; {mountPath: directory}."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        source = volumes[mount["name"]].get("configMap")
        if source is None:
            continue  # emptyDir scratch space: the process's own /tmp serves
        directory = root / mount["name"]
        directory.mkdir(parents=True)
        for key, value in config_maps[source["name"]]["data"].items():
            (directory / key).write_text(value)
        mounts[mount["mountPath"]] = directory
    return mounts


@contextlib.contextmanager
def operator_from_chart(
    manifests: Sequence[Manifest], kubeconfig: Path, namespace: str, workdir: Path
) -> Iterator[RunningOperator]:
    """The operator process exactly as the chart's Deployment runs it, on this machine."""
    deployment = find(manifests, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    config_maps = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "ConfigMap"}
    mounts = _materialise(deployment, config_maps, workdir / "volumes")
    port = free_port()
    health_port = {p["name"]: p["containerPort"] for p in container["ports"]}["health"]
    args: list[str] = []
    for arg in [*container["command"], *container["args"]]:
        for mount_path, directory in mounts.items():
            arg = arg.replace(mount_path, str(directory))
        # The pod's port on all its addresses becomes a free loopback port here.
        args.append(arg.replace(f"0.0.0.0:{health_port}", f"127.0.0.1:{port}"))
    env = {**os.environ}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace":
            env[variable["name"]] = namespace
    # In a pod the account's token is mounted; here it is a kubeconfig for the same account.
    binary = Path(sys.executable).parent / args[0]
    log = workdir / "operator.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(binary), *args[1:], "--kubeconfig", str(kubeconfig)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    probe = container["livenessProbe"]["httpGet"]
    running = RunningOperator(process, log, f"http://127.0.0.1:{port}{probe['path']}")
    try:
        yield running
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def probe_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_until_healthy(operator: RunningOperator, timeout: float = 30.0) -> float:
    """Like the Deployment's startupProbe; the seconds it took."""
    began = time.monotonic()
    while not probe_ok(operator.health_url):
        assert operator.process.poll() is None, f"operator exited:\n{operator.output()}"
        assert time.monotonic() - began < timeout, f"never healthy:\n{operator.output()}"
        time.sleep(0.1)
    return time.monotonic() - began


def apply_examples(plane: ControlPlane, admin: Kube, namespace: str) -> None:
    """examples/, plus a Mailbox of an undeclared domain: its Warning event is what a user
    reads to learn why (and the only event a healthy reconcile of examples/ writes: becoming
    Ready is recorded in the condition, not as an event)."""
    plane.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    metadata = {"name": "eve", "namespace": namespace, "labels": {"letterbox.dev/stray": "yes"}}
    admin.apply(STRAY_MAILBOX | {"metadata": metadata})
    admin.apply(DELETE_POLICY_MAILBOX | {"metadata": {"name": "carol", "namespace": namespace}})


def reconciled(admin: Kube, namespace: str) -> bool:
    """Every example object Ready=True for its current generation (the stray Mailbox
    Ready=False, DomainNotFound, with its Warning event; the Delete-policy one guarded by the
    finalizer), and the whole workload exists."""
    events = admin.list("events.k8s.io/v1", "Event", namespace)
    if not any(e["regarding"]["name"] == "eve" and e["type"] == "Warning" for e in events):
        return False
    for plural_kind in ("MailDomain", "Mailbox", "Alias", "DKIMKey"):
        for obj in admin.list("letterbox.dev/v1alpha1", plural_kind, namespace):
            status = obj.get("status") or {}
            conditions = {c["type"]: c for c in status.get("conditions") or []}
            ready = conditions.get("Ready")
            expected = ("False", "DomainNotFound") if obj["metadata"]["name"] == "eve" else None
            if ready is None or ready["status"] != (expected[0] if expected else "True"):
                return False
            if expected and ready["reason"] != expected[1]:
                return False
            if obj["metadata"]["name"] == "carol" and not obj["metadata"].get("finalizers"):
                return False
            if status.get("observedGeneration") != obj["metadata"]["generation"]:
                return False
    for api_version, kind, name in WORKLOAD:
        try:
            admin.get(api_version, kind, name, namespace)
        except Exception:
            return False
    return True


def grant(plane: ControlPlane, admin: Kube, namespace: str, manifests: Sequence[Manifest]) -> None:
    """Apply the chart's account, Role, binding and settings; wait until RBAC serves them."""
    for manifest in manifests:
        if manifest["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ConfigMap"):
            admin.apply(manifest)
    role = find(manifests, "Role")
    account = find(manifests, "ServiceAccount")["metadata"]["name"]
    granted = [
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]
    assert account == "letterbox"  # test_kube_rbac.allowed asks for this account
    deadline = time.monotonic() + 15
    while not all(allowed(plane, namespace, g, r, v) for g, r, v in granted):
        assert time.monotonic() < deadline, "RBAC rules did not take effect"
        time.sleep(0.05)


def names_rule(output: str, line: str, dropped: tuple[str, str, str]) -> bool:
    """The 403 is about exactly this verb: letterbox.kube names the verb and resource as a Role
    rule does ('mailboxes/status'); kopf's list and watch quote the API server's message; and
    granting the mail pods' Role fails when the operator lacks a verb that Role holds (RBAC's
    escalation check lists the missing permission)."""
    group, resource, verb = dropped
    if f"verb '{verb}' on resource '{resource}'" in line:
        return True
    if f'cannot {verb} resource "{resource}" in API group "{group}"' in line:
        return True
    return "attempting to grant RBAC permissions not currently held" in line and (
        f'Resources:["{resource}"]' in output and f'Verbs:["{verb}"' in output
    )


def without(role: Manifest, dropped: tuple[str, str, str]) -> Manifest:
    """The Role less one verb on one resource."""
    group, resource, verb = dropped
    rules = []
    for rule in role["rules"]:
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                verbs = [v for v in rule["verbs"] if (g, r, v) != dropped]
                if verbs:
                    rules.append({"apiGroups": [g], "resources": [r], "verbs": verbs})
    assert (
        sum(len(r["verbs"]) for r in rules)
        == sum(len(r["verbs"]) * len(r["apiGroups"]) * len(r["resources"]) for r in role["rules"])
        - 1
    ), f"{verb} on {group}/{resource} is not in the Role"
    return {**role, "rules": rules}


@pytest.fixture(scope="module")
def admin(crds: ControlPlane) -> Iterator[Kube]:
    with Kube.connect(crds.kubeconfig) as kube:
        yield kube


def test_helm_install_then_the_operator_reconciles_examples_as_the_charts_account(
    crds: ControlPlane, admin: Kube, tmp_path: Path
) -> None:
    namespace = "chart"
    kubeconfig_args = ["--kubeconfig", str(crds.kubeconfig)]
    began = time.monotonic()
    installed = helm(
        "install", "letterbox", str(CHART), "--namespace", namespace, "--create-namespace",
        *kubeconfig_args,
    )  # fmt: skip
    print(f"\nhelm install in {time.monotonic() - began:.2f}s")
    # NOTES.txt tells the user what to apply next.
    assert f"kubectl -n {namespace} apply -f examples/" in installed.stdout
    assert "--for=condition=Ready" in installed.stdout
    # The release's objects are in the API server, as rendered.
    manifests = template(namespace=namespace)
    for manifest in manifests:
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        stored = admin.get(
            api_version,
            kind,
            manifest["metadata"]["name"],
            manifest["metadata"].get("namespace"),
        )
        assert stored["metadata"]["annotations"]["meta.helm.sh/release-name"] == "letterbox"

    kubeconfig = service_account_kubeconfig(crds, namespace, "letterbox", tmp_path / "sa")
    with operator_from_chart(manifests, kubeconfig, namespace, tmp_path) as operator:
        print(f"operator healthy (startup probe) in {wait_until_healthy(operator):.2f}s")
        began = time.monotonic()
        apply_examples(crds, admin, namespace)
        # What a GitOps user runs: every object reports Ready.
        crds.kubectl(
            "wait", "-n", namespace, "--for=condition=Ready", f"--timeout={RECONCILE_TIMEOUT:.0f}s",
            KINDS, "-l", "!letterbox.dev/stray", "--all",
        )  # fmt: skip
        deadline = time.monotonic() + RECONCILE_TIMEOUT
        while not reconciled(admin, namespace):
            assert time.monotonic() < deadline, operator.output()
            time.sleep(0.2)
        print(f"examples/ reconciled under the chart's RBAC in {time.monotonic() - began:.2f}s")
        assert probe_ok(operator.health_url), "the liveness probe fails while reconciling"
        assert operator.forbidden() == [], "\n".join(operator.forbidden())
        assert operator.process.poll() is None

    # The operator's settings came from the chart: the StatefulSet runs the chart's image.
    statefulset = admin.get("apps/v1", "StatefulSet", "mailpod", namespace)
    (mail_container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert mail_container["image"] == "ghcr.io/letterbox/letterbox:0.1.0"

    uninstalled = helm("uninstall", "letterbox", "--namespace", namespace, *kubeconfig_args)
    assert "uninstalled" in uninstalled.stdout
    # CRDs stay (they hold everyone's mail objects), and so do the user's objects.
    assert admin.list("letterbox.dev/v1alpha1", "Mailbox", namespace)


def test_templated_crds_are_kept_on_uninstall(
    crds: ControlPlane, admin: Kube, tmp_path: Path
) -> None:
    """crds.templated: the CRDs are release objects (upgraded by `helm upgrade`), and keep
    stops `helm uninstall` from deleting them. The CRDs exist already (crds/ was applied), so
    they are adopted as Helm does for existing objects: ownership annotations first."""
    namespace = "chart-crds"
    release = "lb-crds"
    kubeconfig_args = ["--kubeconfig", str(crds.kubeconfig)]
    names = [p.stem for p in sorted((CHART / "crds").glob("*.yaml"))]
    for name in names:
        crds.kubectl(
            "annotate", "--overwrite", "crd", name,
            f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={namespace}",
        )  # fmt: skip
        crds.kubectl("label", "--overwrite", "crd", name, "app.kubernetes.io/managed-by=Helm")
    try:
        helm(
            "install", release, str(CHART), "--namespace", namespace, "--create-namespace",
            "--skip-crds", "--set", "crds.templated=true,rbac.aggregateToDefaultRoles=false",
            *kubeconfig_args,
        )  # fmt: skip
        for name in names:
            stored = admin.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
            assert stored["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        done = helm("uninstall", release, "--namespace", namespace, *kubeconfig_args)
        assert "These resources were kept due to the resource policy" in done.stdout + done.stderr
        for name in names:
            admin.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
    finally:
        for name in names:
            crds.kubectl(
                "annotate", "crd", name, "meta.helm.sh/release-name-",
                "meta.helm.sh/release-namespace-", "helm.sh/resource-policy-", check=False,
            )  # fmt: skip
            crds.kubectl("label", "crd", name, "app.kubernetes.io/managed-by-", check=False)


def every_verb() -> list[tuple[str, str, str]]:
    return [(g, r, v) for g, r, verbs in operator_rules() for v in verbs]


def test_verbs_beyond_examples_are_still_granted() -> None:
    assert set(BEYOND_EXAMPLES) <= set(every_verb())


@pytest.mark.parametrize(
    "dropped",
    [verb for verb in every_verb() if verb not in BEYOND_EXAMPLES],
    ids=lambda rule: f"{rule[0] or 'core'}/{rule[1]}/{rule[2]}",
)
def test_every_chart_verb_is_needed(
    crds: ControlPlane, admin: Kube, tmp_path: Path, dropped: tuple[str, str, str]
) -> None:
    group, resource, verb = dropped
    namespace = f"min-{group.split('.')[0] or 'core'}-{resource}-{verb}".replace("/", "-")
    admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    manifests = template(namespace=namespace)
    fewer = [without(m, dropped) if m["kind"] == "Role" else m for m in manifests]
    grant(crds, admin, namespace, fewer)
    kubeconfig = service_account_kubeconfig(crds, namespace, "letterbox", tmp_path / "sa")
    began = time.monotonic()
    with operator_from_chart(fewer, kubeconfig, namespace, tmp_path) as operator:
        with contextlib.suppress(AssertionError):
            # Some rules are needed before the operator can even report healthy.
            wait_until_healthy(operator, timeout=10)
        apply_examples(crds, admin, namespace)
        deadline = time.monotonic() + MINIMALITY_TIMEOUT
        # The 403 is looked for first: a pass may finish the rest before it logs the failure.
        while not (forbidden := operator.forbidden()) and time.monotonic() < deadline:
            assert not reconciled(admin, namespace), (
                f"examples/ reconciled without {dropped}: the verb is not needed"
            )
            time.sleep(0.2)
    print(
        f"\nwithout {verb} {group or 'core'}/{resource}: failed in {time.monotonic() - began:.1f}s"
    )
    print("  " + (forbidden[0][:300] if forbidden else "(no 403)"))
    # A 403 naming the verb: the reconcile of examples/ (or the resync timer) cannot work.
    assert forbidden, f"no 403 within {MINIMALITY_TIMEOUT}s:\n{operator.output()[-3000:]}"
    output = operator.output()
    assert any(names_rule(output, line, dropped) for line in forbidden), "\n".join(forbidden)
