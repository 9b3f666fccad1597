"""The real control plane (etcd + kube-apiserver + kube-controller-manager) for e2e tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import REPO
from tests.harness.controlplane import ControlPlane


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    with ControlPlane(controller_manager=True) as plane:
        print(f"\ncontrol plane up in {plane.startup_seconds:.1f}s at {plane.server}")
        yield plane


@pytest.fixture(scope="session")
def crds(control_plane: ControlPlane) -> ControlPlane:
    """The CRDs from crds/ installed and Established."""
    control_plane.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    control_plane.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd",
        "-l",
        "app.kubernetes.io/part-of=letterbox",
    )
    return control_plane
