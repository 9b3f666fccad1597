from __future__ import annotations

from typing import Any

import pytest
import yaml

from letterbox.api import KINDS
from letterbox.api.crd import custom_resource_definition, custom_resource_definitions
from tests.conftest import REPO

CRDS = {crd["spec"]["names"]["kind"]: crd for crd in custom_resource_definitions()}


def test_crds_directory_is_up_to_date() -> None:
    for crd in CRDS.values():
        path = REPO / "crds" / f"{crd['metadata']['name']}.yaml"
        assert path.exists(), f"{path} missing: run `make crds`"
        assert yaml.safe_load(path.read_text()) == crd, f"{path} is stale: run `make crds`"
    on_disk = {p.name for p in (REPO / "crds").glob("*.yaml")}
    assert on_disk == {f"{crd['metadata']['name']}.yaml" for crd in CRDS.values()}


def _version(kind: str) -> dict[str, Any]:
    version: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]
    return version


@pytest.mark.parametrize(
    ("kind", "columns"),
    [
        ("MailDomain", ["Domain", "Mail Host", "DNS", "MTA-STS", "Ready", "Reason", "Age"]),
        ("Mailbox", ["Address", "Quota", "Suspended", "Ready", "Reason", "Age"]),
        ("Alias", ["Address", "Destinations", "Ready", "Reason", "Age"]),
        ("DKIMKey", ["Domain", "Selector", "Algorithm", "Phase", "Ready", "Reason", "Age"]),
    ],
)
def test_printer_columns_tell_the_story(kind: str, columns: list[str]) -> None:
    printed = _version(kind)["additionalPrinterColumns"]
    assert [c["name"] for c in printed] == columns
    ready = next(c for c in printed if c["name"] == "Ready")
    assert ready["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert next(c for c in printed if c["name"] == "Age")["type"] == "date"


@pytest.mark.parametrize("kind", list(CRDS))
def test_crd_basics(kind: str) -> None:
    crd = CRDS[kind]
    assert crd["spec"]["group"] == "letterbox.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["shortNames"]
    assert "letterbox" in crd["spec"]["names"]["categories"]
    version = _version(kind)
    assert version["name"] == "v1alpha1" and version["storage"] and version["served"]
    assert version["subresources"] == {"status": {}}
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) == {"type", "status"}
    assert "observedGeneration" in status["properties"]


def _walk(node: Any, path: str) -> list[str]:
    """Structural-schema violations: every schema node needs a type, no $ref/anyOf left."""
    problems: list[str] = []
    if not isinstance(node, dict):
        return problems
    for banned in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "title", "const"):
        if banned in node:
            problems.append(f"{path}: {banned}")
    if "type" not in node and not node.get("x-kubernetes-int-or-string"):
        problems.append(f"{path}: no type")
    for name, child in node.get("properties", {}).items():
        problems += _walk(child, f"{path}.{name}")
    if "items" in node:
        problems += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _walk(node["additionalProperties"], f"{path}{{}}")
    return problems


@pytest.mark.parametrize("kind", list(CRDS))
def test_schemas_are_structural(kind: str) -> None:
    schema = _version(kind)["schema"]["openAPIV3Schema"]
    assert _walk(schema["properties"]["spec"], "spec") == []
    assert _walk(schema["properties"]["status"], "status") == []


def test_validation_rules_carry_messages() -> None:
    spec = _version("Mailbox")["schema"]["openAPIV3Schema"]["properties"]["spec"]
    address_rules = spec["properties"]["address"]["x-kubernetes-validations"]
    assert address_rules[0]["message"].startswith("must be an address")
    assert address_rules[0]["rule"].startswith('self.matches(r"^')
    algorithm = _version("DKIMKey")["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["algorithm"]
    assert algorithm["enum"] == ["rsa-2048", "rsa-3072", "ed25519"]
    destinations = _version("Alias")["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["destinations"]
    assert destinations["x-kubernetes-list-type"] == "set"
    assert destinations["minItems"] == 1


def test_every_kind_generates() -> None:
    assert [custom_resource_definition(k)["spec"]["names"]["kind"] for k in KINDS] == [
        "MailDomain",
        "Mailbox",
        "Alias",
        "DKIMKey",
    ]
