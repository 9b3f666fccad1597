"""Labels and metadata every object Letterbox creates carries."""

from __future__ import annotations

from typing import Any

from letterbox.api.meta import GROUP, Resource

MANAGED_BY = {"app.kubernetes.io/managed-by": "letterbox", "app.kubernetes.io/part-of": "letterbox"}


def owned_metadata(
    owner: Resource, name: str, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """Metadata of an object owned by `owner`: same namespace, our labels, and an ownerReference
    when the owner has a uid (objects rendered offline do not)."""
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": owner.metadata.namespace or "default",
        "labels": {
            **MANAGED_BY,
            f"{GROUP}/{type(owner).__name__.lower()}": owner.metadata.name,
            **(labels or {}),
        },
    }
    if owner.metadata.uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": owner.api_version,
                "kind": type(owner).__name__,
                "name": owner.metadata.name,
                "uid": owner.metadata.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return metadata


# --- the install-wide mail workload (StatefulSet, Services, config Secrets) --------------------

APP_NAME = "mailpod"


def selector_labels(instance: str) -> dict[str, str]:
    """The labels a StatefulSet, Service, PDB and NetworkPolicy select mail pods by. Kept to
    name + instance because a StatefulSet's selector can never change after creation."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": instance}


def workload_labels(instance: str, component: str) -> dict[str, str]:
    return {**selector_labels(instance), "app.kubernetes.io/component": component, **MANAGED_BY}


def workload_metadata(
    name: str,
    namespace: str,
    *,
    instance: str,
    component: str,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Metadata of an install-wide object: no single resource owns it, so no ownerReference."""
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {**workload_labels(instance, component), **(labels or {})},
    }
    if annotations:
        metadata["annotations"] = dict(sorted(annotations.items()))
    return metadata
