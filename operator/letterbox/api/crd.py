"""CustomResourceDefinitions generated from the API models (`letterbox crds`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from letterbox.api.meta import GROUP, VERSION, Resource

# JSON Schema keywords the pydantic output carries that a structural CRD schema may not.
_DROPPED_KEYWORDS = {"title", "$defs", "discriminator"}

JsonObject = dict[str, Any]


def _structural(node: Any, defs: dict[str, JsonObject]) -> Any:
    """Inline $refs and rewrite pydantic's JSON Schema into Kubernetes' structural OpenAPI v3."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        if cel := target.get("x-kubernetes-validations"):
            merged["x-kubernetes-validations"] = [
                *cel,
                *node.get("x-kubernetes-validations", []),
            ]
        return _structural(merged, defs)
    if "anyOf" in node:
        # `X | None`: optional fields are simply omitted on the wire.
        options = [option for option in node["anyOf"] if option.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unions other than Optional cannot be CRD schema: {node}")
        rest = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
        merged = {**_structural(options[0], defs), **rest}
        if "x-kubernetes-validations" in options[0] and "x-kubernetes-validations" in rest:
            merged["x-kubernetes-validations"] = [
                *options[0]["x-kubernetes-validations"],
                *rest["x-kubernetes-validations"],
            ]
        return _structural(merged, defs)
    out: JsonObject = {}
    for key, value in node.items():
        if key in _DROPPED_KEYWORDS:
            continue
        if key == "description":
            out[key] = " ".join(value.split())  # docstrings wrap; kubectl explain re-wraps
        elif key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key == "additionalProperties" and value is False:
            continue  # unknown fields are pruned (and rejected by kubectl's strict validation)
        elif key == "prefixItems":
            raise ValueError("fixed-length tuples cannot be CRD schema")
        else:
            out[key] = _structural(value, defs)
    if out.get("default") is None:
        out.pop("default", None)
    if "properties" in out:
        out.setdefault("type", "object")
    return out


def _field_model(kind: type[Resource], field: str) -> type[BaseModel]:
    model = kind.model_fields[field].annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"{kind.__name__}.{field} must be a pydantic model")
    return model


def openapi_schema(model: type[BaseModel]) -> JsonObject:
    """The structural schema of one pydantic model (spec or status)."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    result: JsonObject = _structural(schema, schema.get("$defs", {}))
    return result


def custom_resource_definition(kind: type[Resource]) -> JsonObject:
    names = kind.names
    spec_model = _field_model(kind, "spec")
    status_model = _field_model(kind, "status")
    singular = kind.__name__.lower()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{names.plural}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "letterbox",
                "app.kubernetes.io/part-of": "letterbox",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.__name__,
                "listKind": f"{kind.__name__}List",
                "plural": names.plural,
                "singular": singular,
                "shortNames": list(names.short_names),
                "categories": list(names.categories),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {
                            "name": column.name,
                            "type": column.type,
                            "jsonPath": column.json_path,
                            **({"priority": column.priority} if column.priority else {}),
                            **({"description": column.description} if column.description else {}),
                        }
                        for column in names.columns
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (kind.__doc__ or "").strip()
                            or openapi_schema(spec_model).get("description", ""),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": openapi_schema(spec_model),
                                "status": openapi_schema(status_model),
                            },
                        }
                    },
                }
            ],
        },
    }


def custom_resource_definitions() -> list[JsonObject]:
    from letterbox.api import KINDS

    return [custom_resource_definition(kind) for kind in KINDS]
