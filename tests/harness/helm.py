"""Render the Letterbox chart with the real `helm` (built once by tests/harness/helm-binary.sh
into ~/.cache/letterbox; LETTERBOX_HELM points at an existing Helm 3 to skip the build).

The chart's RBAC is the single source of truth for what the operator may do: `operator_rules`
reads it from the rendered chart for the e2e tests.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

HERE: Final = Path(__file__).resolve().parent
REPO: Final = HERE.parents[1]
CHART: Final = REPO / "charts" / "letterbox"
BINARY_SCRIPT: Final = HERE / "helm-binary.sh"

Manifest = dict[str, Any]
# (apiGroup, resource, verbs): one entry per resource a Role rule names.
RuleTriple = tuple[str, str, tuple[str, ...]]


class HelmError(RuntimeError):
    """helm failed; the message holds its output."""


@functools.cache
def helm_binary() -> Path:
    done = subprocess.run(
        ["bash", str(BINARY_SCRIPT)], capture_output=True, text=True, check=False, timeout=1200
    )
    if done.returncode != 0:
        raise HelmError(f"{BINARY_SCRIPT.name} failed:\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def helm(
    *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(helm_binary()), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if check and done.returncode != 0:
        raise HelmError(f"helm {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    return done


def template(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "letterbox",
    namespace: str = "letterbox",
    include_crds: bool = False,
) -> list[Manifest]:
    """`helm template` of the chart with `values` (given on stdin); every document, parsed."""
    args = ["template", release, str(CHART), "--namespace", namespace, "--values", "-"]
    if include_crds:
        args.append("--include-crds")
    text = helm(*args, stdin=yaml.safe_dump(dict(values or {}))).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(manifests: Sequence[Manifest], kind: str, name: str | None = None) -> Manifest:
    matches = [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def role_triples(role: Manifest) -> tuple[RuleTriple, ...]:
    """A Role's rules as (apiGroup, resource, verbs), one per group and resource it names."""
    triples: list[RuleTriple] = []
    for rule in role["rules"]:
        assert "resourceNames" not in rule, "the operator's Role names no single objects"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                triples.append((group, resource, tuple(rule["verbs"])))
    return tuple(triples)


def operator_role(manifests: Sequence[Manifest]) -> Manifest:
    roles = [m for m in manifests if m["kind"] == "Role"]
    assert len(roles) == 1, "the chart renders exactly one Role: the operator's"
    return roles[0]


@functools.cache
def operator_rules() -> tuple[RuleTriple, ...]:
    """The operator's permissions exactly as the chart grants them (default values)."""
    return role_triples(operator_role(template()))
