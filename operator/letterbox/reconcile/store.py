"""The namespace as the watch streams last showed it: an informer's store, so a pass does not
list 10,000 Mailboxes again to find the one Secret that changed.

Listing the whole namespace costs the API server seconds at 10,000 objects (every page
serialised with its managedFields), and a loaded one far more: it was most of the time from a
password change to the pods. kopf already watches the four kinds and the namespace's Secrets
for the handlers, so every event it delivers is applied here too, and a pass reads the store.

A full listing still happens on the first pass and then every `FULL_LIST_SECONDS` (and the
store replaces its content with it): it is the ground truth for objects whose deletion a broken
watch never reported. Events that arrive while a listing is under way are applied after it, in
the order they came, so an object's newest event always wins: an event older than the listing
is followed by the event of the change the listing saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from letterbox.reconcile.snapshot import Kind, Observed, SecretView, Snapshot, observe, secret_view

FULL_LIST_SECONDS = 300.0
SECRETS = "Secret"


def _identity(raw: Mapping[str, Any]) -> tuple[str, str]:
    metadata = raw.get("metadata") or {}
    return str(metadata.get("name") or ""), str(metadata.get("resourceVersion") or "")


class ObjectStore:
    """Observed objects by kind and name, and the namespace's Secrets, kept current by events.
    Used from the event loop only."""

    def __init__(self) -> None:
        self._objects: dict[Kind, dict[str, Observed[Any]]] = {kind: {} for kind in Kind}
        self._secrets: dict[str, SecretView] = {}
        self._journal: list[tuple[str, str | None, Mapping[str, Any]]] | None = None
        self.listed = False
        """True once a full listing filled the store: only then does it hold the namespace."""

    def event(self, kind: str, type_: str | None, raw: Mapping[str, Any]) -> None:
        """A watch event (or an object of kopf's initial listing, type None) of `kind`: one of
        `Kind`'s values, or "Secret"."""
        if self._journal is not None:
            self._journal.append((kind, type_, raw))
        self._apply(kind, type_, raw)

    def _apply(self, kind: str, type_: str | None, raw: Mapping[str, Any]) -> None:
        name, version = _identity(raw)
        if not name:
            return
        if kind == SECRETS:
            if type_ == "DELETED":
                self._secrets.pop(name, None)
            else:
                self._secrets[name] = secret_view(raw)
            return
        objects = self._objects[Kind(kind)]
        if type_ == "DELETED":
            objects.pop(name, None)
            return
        known = objects.get(name)
        if known is not None and version and known.resource_version == version:
            return  # the same object again (kopf re-delivers on its own relists)
        objects[name] = observe(Kind(kind), raw)

    def observe(self, kind: Kind, raw: Mapping[str, Any]) -> Observed[Any]:
        """`snapshot.observe`, reusing the stored object when the listing has the same version
        (a full listing then costs no second copy of 10,000 parsed objects). Safe from a worker
        thread: it only reads the store."""
        name, version = _identity(raw)
        known = self._objects[kind].get(name)
        if known is not None and version and known.resource_version == version:
            return known
        return observe(kind, raw)

    def begin_listing(self) -> None:
        """Events from now on are also replayed after the listing `finish_listing` gets."""
        self._journal = []

    def finish_listing(
        self, observed: Mapping[Kind, Iterable[Observed[Any]]], secrets: Iterable[SecretView]
    ) -> None:
        journal, self._journal = self._journal or [], None
        self._objects = {kind: {o.key.name: o for o in observed.get(kind, ())} for kind in Kind}
        self._secrets = {view.name: view for view in secrets}
        for kind, type_, raw in journal:
            self._apply(kind, type_, raw)
        self.listed = True

    def abandon_listing(self) -> None:
        self._journal = None

    def snapshot(self, namespace: str) -> Snapshot:
        return Snapshot.of_observed(
            namespace,
            {kind: objects.values() for kind, objects in self._objects.items()},
            self._secrets.values(),
        )
