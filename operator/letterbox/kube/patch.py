"""Pure helpers for writes: JSON merge-patch diffs and status normalisation (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from letterbox.api.meta import Status


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch turning `old` into `new`.

    A plain `{"status": new}` merge patch would leave keys the new status no longer has (a
    merge patch only removes what it sets to null), so we send the difference instead: removed
    keys become null, lists and scalars are replaced whole. Values equal in both give `{}`.
    """
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            if isinstance(old[key], Mapping) and isinstance(value, Mapping):
                patch[key] = merge_patch(old[key], value)
            else:
                patch[key] = value
    return patch


def drop_nulls(value: Any) -> Any:
    """`value` without null map entries: the server stores an absent field and a null the same."""
    if isinstance(value, Mapping):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [drop_nulls(v) for v in value]
    return value


def status_json(status: Status | Mapping[str, Any]) -> dict[str, Any]:
    """The wire form of a status (camelCase, no nulls)."""
    if isinstance(status, BaseModel):
        dumped: dict[str, Any] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        return dumped
    result: dict[str, Any] = drop_nulls(status)
    return result


def same_status(stored: Mapping[str, Any], desired: Status | Mapping[str, Any]) -> bool:
    """Whether the stored status already says what `desired` says.

    For a model, the stored status is read back through the same model so that equal values in
    different spellings (timestamps `Z` vs `+00:00`, a default written out or left implicit)
    compare equal; a stored status the model rejects counts as different and is overwritten.
    """
    if isinstance(desired, BaseModel):
        try:
            reread = type(desired).model_validate(stored)
        except ValidationError:
            return False
        return status_json(reread) == status_json(desired)
    same: bool = drop_nulls(stored) == status_json(desired)
    return same
