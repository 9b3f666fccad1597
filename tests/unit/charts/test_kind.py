"""kind/: the cluster's port mappings and the script that uses them, linted by shellcheck."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.harness.reference import REPO

KIND = REPO / "kind"
SCRIPTS = [KIND / "up.sh", REPO / "tests/harness/helm-binary.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_is_clean(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is a system dependency (Makefile APT_PACKAGES)"
    done = subprocess.run(
        [shellcheck, "--severity=style", "--external-sources", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout


def test_shellcheck_can_fail() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck
    done = subprocess.run(
        [shellcheck, "-"],
        input="#!/bin/bash\nrm -rf $DIR/*\n",
        text=True,
        capture_output=True,
        check=False,
    )
    assert done.returncode != 0 and "SC2086" in done.stdout


def test_cluster_maps_the_mail_ports_to_the_node_ports_the_script_pins() -> None:
    cluster = yaml.safe_load((KIND / "cluster.yaml").read_text())
    mappings = {m["hostPort"]: m["containerPort"] for m in cluster["nodes"][0]["extraPortMappings"]}
    assert set(mappings) == {25, 465, 587, 993, 443}
    script = (KIND / "up.sh").read_text()
    patch = re.search(r"patch service mailpod --type strategic -p '(.*?)'", script, re.S)
    assert patch, "the script pins the Service's node ports"
    pinned = {p["port"]: p["nodePort"] for p in json.loads(patch.group(1))["spec"]["ports"]}
    for port, node_port in pinned.items():
        assert mappings[port] == node_port
    assert set(pinned) == {25, 465, 587, 993}
    for node_port in mappings.values():
        assert 30000 <= node_port <= 32767, "inside the default NodePort range"
    # What the script installs: the chart, with the image it loaded and a NodePort Service.
    for needed in (
        "charts/letterbox",
        "image.pullPolicy=Never",
        "mail.service.type=NodePort",
        "kind load docker-image",
        'apply -f "$ROOT/examples/"',
        "--for=condition=Ready",
    ):
        assert needed in script
