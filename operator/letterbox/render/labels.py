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
