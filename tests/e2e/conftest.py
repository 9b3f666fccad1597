"""The real control plane (etcd + kube-apiserver + kube-controller-manager) for e2e tests."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest

from letterbox.kube import Kube
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


_serial = itertools.count()


@pytest.fixture(scope="module")
def kube(crds: ControlPlane) -> Iterator[Kube]:
    """An admin client of the control plane, shared by a module's tests."""
    with Kube.connect(crds.kubeconfig) as client:
        yield client


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> str:
    """A fresh namespace per test, so tests never see each other's objects."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:48]
    name = f"{base}-{next(_serial)}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name
