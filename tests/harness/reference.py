"""Generated reference material, kept in the repository and checked to be up to date:

- docs/crd-reference.md: every field of the four kinds and of the install-wide settings, from
  the pydantic models (the same models the CRDs and the operator's settings loader use);
- charts/letterbox/values.schema.json: its `mail` property is the JSON Schema of
  `OperatorSettings`, so `helm install` rejects what the operator would reject at start;
- charts/letterbox/crds/: the CRDs, identical to crds/.

    python -m tests.harness.reference           # rewrite them
    python -m tests.harness.reference --check   # exit 1 if any is stale (what the tests assert)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from letterbox.api import KINDS
from letterbox.api.crd import custom_resource_definitions
from letterbox.api.meta import API_VERSION, Resource
from letterbox.api.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "letterbox"
CRD_REFERENCE = REPO / "docs" / "crd-reference.md"
VALUES_SCHEMA = CHART / "values.schema.json"

Schema = dict[str, Any]


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[1]]
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _options(node: Schema, defs: dict[str, Schema]) -> list[Schema]:
    """The non-null alternatives of a node (pydantic writes `X | None` as anyOf with null)."""
    node = _resolve(node, defs)
    if "anyOf" in node:
        return [_resolve(o, defs) for o in node["anyOf"] if o.get("type") != "null"]
    return [node]


def _type_name(node: Schema, defs: dict[str, Schema]) -> str:
    names = []
    for option in _options(node, defs):
        kind = option.get("type")
        if "enum" in option:
            name = "one of " + ", ".join(f"`{value}`" for value in option["enum"])
        elif kind == "array":
            name = "list of " + _type_name(option.get("items", {}), defs)
        elif kind == "object" and "properties" not in option:
            extra = option.get("additionalProperties")
            name = "map of " + (_type_name(extra, defs) if isinstance(extra, dict) else "any")
        elif "properties" in option:
            name = "object"
        elif option.get("format") in ("ipv4network", "ipv6network"):
            name = "IP network"
        else:
            name = str(kind or "any")
        names.append(name)
    return " or ".join(dict.fromkeys(names))


def _constraints(node: Schema, defs: dict[str, Schema]) -> list[str]:
    notes = []
    for option in _options(node, defs):
        if "minimum" in option and "maximum" in option:
            notes.append(f"{option['minimum']} to {option['maximum']}")
        elif "minimum" in option:
            notes.append(f"at least {option['minimum']}")
        if "maxLength" in option:
            notes.append(f"at most {option['maxLength']} characters")
        if option.get("type") == "array" and "maxItems" in option:
            notes.append(f"at most {option['maxItems']} items")
        notes.extend(
            rule["message"]
            for rule in option.get("x-kubernetes-validations", [])
            if "message" in rule
        )
    return notes


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(node: Schema) -> str:
    if "default" not in node or node["default"] in (None, [], {}):
        return ""
    return f"`{json.dumps(node['default'], separators=(', ', ': '))}`"


def _rows(node: Schema, defs: dict[str, Schema], path: str) -> Iterator[str]:
    """Table rows for every field under `node`, depth first, objects before their fields."""
    for option in _options(node, defs):
        target = option
        suffix = ""
        if option.get("type") == "array" and "items" in option:
            target, suffix = _options(option["items"], defs)[0], "[]"
        if "properties" not in target:
            continue
        required = set(target.get("required", []))
        for name, child in target["properties"].items():
            field = f"{path}{suffix}.{name}" if path else name
            resolved = _resolve(child, defs)
            description = resolved.get("description") or _options(child, defs)[0].get(
                "description", ""
            )
            notes = _constraints(child, defs)
            text = _one_line(description)
            if notes:
                text += (" " if text else "") + "(" + "; ".join(notes) + ")"
            flag = " (required)" if name in required else ""
            yield (f"| `{field}`{flag} | {_type_name(child, defs)} | {_default(child)} | {text} |")
            yield from _rows(child, defs, field)


def _model_table(model: type[BaseModel], path: str) -> list[str]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return [
        "| field | type | default | description |",
        "| --- | --- | --- | --- |",
        *_rows(schema, schema.get("$defs", {}), path),
    ]


def _field_model(kind: type[Resource], field: str) -> type[BaseModel]:
    model = kind.model_fields[field].annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    return model


def crd_reference() -> str:
    lines = [
        "# API reference",
        "",
        "<!-- Generated by `python -m tests.harness.reference` from the pydantic models in",
        "     operator/letterbox/api/; edit the models' docstrings, not this file. -->",
        "",
        f"All kinds are namespaced, in `{API_VERSION}`. Every kind has `status.conditions`",
        "(`Ready` first; `True`, `False` with a reason, or `Unknown` until the operator has",
        "reconciled it) and `status.observedGeneration`. Unknown fields are rejected.",
        "",
    ]
    for kind in KINDS:
        names = kind.names
        lines += [
            f"## {kind.__name__}",
            "",
            _one_line(kind.__doc__ or _field_model(kind, "spec").__doc__ or ""),
            "",
            f"Plural `{names.plural}`, short names "
            + ", ".join(f"`{n}`" for n in names.short_names)
            + ".",
            "",
            "### spec",
            "",
            *_model_table(_field_model(kind, "spec"), "spec"),
            "",
            "### status",
            "",
            *_model_table(_field_model(kind, "status"), "status"),
            "",
        ]
    lines += [
        "## Install-wide settings",
        "",
        "The operator's settings file; the Helm chart writes it from the `mail` values",
        "(`--set mail.replicas=1`, or a `mail:` block in your values file). Unknown keys are",
        "rejected by the chart's values.schema.json and by the operator at start.",
        "",
        *_model_table(OperatorSettings, ""),
        "",
    ]
    return "\n".join(lines)


def _strip_titles(node: Any) -> Any:
    """pydantic's `title`s restate the field name; they only add noise to the values schema."""
    if isinstance(node, list):
        return [_strip_titles(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: (
            {name: _strip_titles(child) for name, child in value.items()}
            if key in ("properties", "$defs")
            else _strip_titles(value)
        )
        for key, value in node.items()
        if key != "title" and not key.startswith("x-kubernetes-")
    }


def values_schema(current: Schema) -> Schema:
    """The chart's values schema with `mail` replaced by OperatorSettings' JSON Schema. The
    namespace may be empty in values (the chart fills in the release namespace)."""
    settings: Schema = _strip_titles(
        OperatorSettings.model_json_schema(by_alias=True, mode="validation")
    )
    defs = settings.pop("$defs", {})
    settings["properties"]["namespace"] = {
        "anyOf": [settings["properties"]["namespace"], {"const": ""}, {"type": "null"}],
        "description": "Namespace of the mail system; empty: the release namespace.",
    }
    settings.pop("description", None)
    settings["description"] = "The operator's install-wide settings (docs/crd-reference.md)."
    schema = dict(current)
    schema["properties"] = {**current.get("properties", {}), "mail": settings}
    schema["$defs"] = defs
    return schema


def requirements_lock() -> str:
    """requirements.lock from this environment: the runtime dependency closure of the installed
    letterbox, each pinned to the version installed here (the image installs exactly these)."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pinned: dict[str, str] = {}

    def walk(name: str) -> None:
        key = canonicalize_name(name)
        if key in pinned:
            return
        distribution = metadata.distribution(name)
        pinned[key] = distribution.version
        for spec in distribution.requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                walk(requirement.name)

    for spec in metadata.distribution("letterbox").requires or []:
        requirement = Requirement(spec)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            walk(requirement.name)
    header = [
        "# The image's runtime dependencies, pinned: the closure of pyproject.toml's dependencies",
        f"# on Python {sys.version_info.major}.{sys.version_info.minor}, the Dockerfile's base."
        " Regenerate with",
        "# `python -m tests.harness.reference --lock`; tests/unit/charts/test_image.py checks that",
        "# every dependency is pinned here and that each pin satisfies pyproject.toml.",
    ]
    return "\n".join([*header, *(f"{k}=={v}" for k, v in sorted(pinned.items()))]) + "\n"


def generated() -> dict[Path, str]:
    """Every generated file and its up-to-date content."""
    files = {CRD_REFERENCE: crd_reference()}
    current = json.loads(VALUES_SCHEMA.read_text())
    files[VALUES_SCHEMA] = json.dumps(values_schema(current), indent=2) + "\n"
    for crd in custom_resource_definitions():
        text = yaml.safe_dump(crd, sort_keys=False)
        files[CHART / "crds" / f"{crd['metadata']['name']}.yaml"] = text
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    parser.add_argument(
        "--lock", action="store_true", help="also rewrite requirements.lock from this environment"
    )
    args = parser.parse_args(argv)
    if args.lock:
        (REPO / "requirements.lock").write_text(requirements_lock())
    stale = [
        path for path, text in generated().items() if not path.exists() or path.read_text() != text
    ]
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(REPO)} (run python -m tests.harness.reference)")
        return 1 if stale else 0
    for path, text in generated().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
