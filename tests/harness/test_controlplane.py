"""The test control plane is a real one: kubectl, GC, RBAC, namespace deletion."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.controlplane import (
    ControlPlane,
    ControlPlaneError,
    service_account_kubeconfig,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cp() -> Iterator[ControlPlane]:
    with ControlPlane(controller_manager=True) as plane:
        print(f"control plane up in {plane.startup_seconds:.1f}s at {plane.server}")
        yield plane


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(0.5)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_kubectl_lists_system_namespaces(cp: ControlPlane) -> None:
    out = cp.kubectl("get", "ns", "-o", "name").stdout.split()
    assert "namespace/default" in out
    assert "namespace/kube-system" in out
    assert cp.kubeconfig.is_file()
    assert cp.server.startswith("https://127.0.0.1:")
    version = cp.request("GET", "/version")
    assert version.ok
    assert version.body["gitVersion"].startswith("v1.33.")


def test_owner_reference_cascade_deletes_child(cp: ControlPlane) -> None:
    owner, child = _name("owner"), _name("child")
    cp.kubectl("create", "configmap", owner, "--from-literal=k=v")
    uid = cp.kubectl("get", "configmap", owner, "-o", "jsonpath={.metadata.uid}").stdout
    assert uid
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": child,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": owner, "uid": uid}
            ],
        },
        "data": {"k": "v"},
    }
    cp.kubectl("create", "-f", "-", input=json.dumps(manifest))
    cp.kubectl("delete", "configmap", owner, "--wait=true")

    def child_gone() -> bool:
        got = cp.kubectl("get", "configmap", child, check=False)
        return got.returncode != 0 and "NotFound" in got.stderr

    _eventually(child_gone, 30, "garbage collection of the owned ConfigMap")


def test_service_account_is_bound_by_rbac(cp: ControlPlane, tmp_path: Path) -> None:
    ns = _name("rbac")
    cp.kubectl("create", "namespace", ns)
    kubeconfig = service_account_kubeconfig(cp, ns, "operator", tmp_path / "sa.kubeconfig")

    denied = cp.kubectl("get", "secrets", "-n", ns, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    assert f"system:serviceaccount:{ns}:operator" in denied.stderr

    cp.kubectl("create", "role", "secret-reader", "-n", ns, "--verb=get,list", "--resource=secrets")
    cp.kubectl(
        "create",
        "rolebinding",
        "operator-reads-secrets",
        "-n",
        ns,
        "--role=secret-reader",
        f"--serviceaccount={ns}:operator",
    )

    def allowed() -> bool:
        got = cp.kubectl("get", "secrets", "-n", ns, kubeconfig=kubeconfig, check=False)
        return got.returncode == 0

    _eventually(allowed, 15, "RBAC grant to take effect")
    # Still nothing beyond the grant.
    other = cp.kubectl("get", "configmaps", "-n", ns, kubeconfig=kubeconfig, check=False)
    assert "Forbidden" in other.stderr


def test_namespace_deletion_completes(cp: ControlPlane) -> None:
    ns = _name("doomed")
    cp.kubectl("create", "namespace", ns)
    cp.kubectl("create", "configmap", "content", "-n", ns, "--from-literal=k=v")
    cp.kubectl("delete", "namespace", ns, "--wait=false")

    def gone() -> bool:
        got = cp.kubectl("get", "namespace", ns, check=False)
        return got.returncode != 0 and "NotFound" in got.stderr

    _eventually(gone, 60, "namespace deletion")


def _control_plane_pids() -> set[int]:
    names = {"etcd", "kube-apiserver", "kube-controller-manager"}
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode()
        except OSError:
            continue
        if Path(argv0).name in names and _pid_alive(int(entry.name)):
            pids.add(int(entry.name))
    return pids


def test_startup_failure_reports_log_and_leaves_nothing(cp: ControlPlane) -> None:
    before = _control_plane_pids()
    plane = ControlPlane(bin_dir=cp.bin_dir, extra_apiserver_args=["--no-such-flag"])
    with pytest.raises(ControlPlaneError, match="no-such-flag") as info:
        plane.start()
    assert "kube-apiserver died before ready" in str(info.value)
    # etcd was up when the apiserver failed: it must be gone too.
    assert _control_plane_pids() <= before


def test_stop_kills_every_process_and_removes_files(cp: ControlPlane) -> None:
    plane = ControlPlane(bin_dir=cp.bin_dir)
    with plane:
        pids = [p.popen.pid for p in plane._procs]
        workdir = plane.workdir
        assert len(pids) == 2
        assert all(_pid_alive(pid) for pid in pids)
    assert not any(_pid_alive(pid) for pid in pids)
    assert not workdir.exists()
