"""The namespace as the watch streams last showed it: an informer's store, so a pass does not
list 10,000 Mailboxes again to find the one Secret that changed.

Listing the whole namespace costs the API server seconds at 10,000 objects (every page
serialised with its managedFields), and a loaded one far more: it was most of the time from a
password change to the pods. `follow` watches the four kinds and the namespace's Secrets,
every event is applied here (parsed in the watch's thread), and a pass reads the store.

A full listing still happens on the first pass and then every `FULL_LIST_SECONDS` (and the
store replaces its content with it): it is the ground truth for objects whose deletion a broken
watch never reported. Events that arrive while a listing is under way are applied after it, in
the order they came, so an object's newest event always wins: an event older than the listing
is followed by the event of the change the listing saw.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from letterbox.api.dkimkey import DKIMKey
from letterbox.api.meta import API_VERSION
from letterbox.kube.errors import Expired, KubeError
from letterbox.reconcile.dkim import rotation_requested
from letterbox.reconcile.snapshot import (
    Kind,
    Observed,
    SecretView,
    Snapshot,
    observe,
    observe_again,
    secret_view,
)

log = logging.getLogger("letterbox.reconcile")

FULL_LIST_SECONDS = 300.0
SECRETS = "Secret"
# A broken watch is opened again after these delays (the last one repeats).
WATCH_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0)

T = TypeVar("T")
Item = Observed[Any] | SecretView
"""What the store keeps of an object: parsed (`observe`), or a Secret's `secret_view`."""


def _identity(raw: Mapping[str, Any]) -> tuple[str, str]:
    metadata = raw.get("metadata") or {}
    return str(metadata.get("name") or ""), str(metadata.get("resourceVersion") or "")


class ObjectStore:
    """Observed objects by kind and name, and the namespace's Secrets, kept current by events.
    `put` and the listing calls belong to the event loop; `prepare` (the parsing) may run in
    any thread."""

    def __init__(self) -> None:
        self._objects: dict[Kind, dict[str, Observed[Any]]] = {kind: {} for kind in Kind}
        self._secrets: dict[str, SecretView] = {}
        self._journal: list[tuple[str, str | None, Item]] | None = None
        self.listed = False
        """True once a full listing filled the store: only then does it hold the namespace."""

    def event(self, kind: str, type_: str | None, raw: Mapping[str, Any]) -> None:
        """A watch event (or an object of an initial listing, type None) of `kind`: one of
        `Kind`'s values, or "Secret"."""
        self.put(kind, type_, self.prepare(kind, raw))

    def prepare(self, kind: str, raw: Mapping[str, Any]) -> Item:
        """What `put` stores for `raw`; parsed only when its resourceVersion is new (a
        re-delivered or re-listed object is the same object)."""
        if kind == SECRETS:
            return secret_view(raw)
        return self.observe(Kind(kind), raw)

    def put(self, kind: str, type_: str | None, item: Item) -> None:
        """Apply a prepared event; events that arrive during a listing are replayed after it."""
        if self._journal is not None:
            self._journal.append((kind, type_, item))
        self._put(kind, type_, item)

    def _put(self, kind: str, type_: str | None, item: Item) -> None:
        if isinstance(item, SecretView):
            if not item.name:
                return
            if type_ == "DELETED":
                self._secrets.pop(item.name, None)
            else:
                self._secrets[item.name] = item
            return
        name = item.key.name
        if not name:
            return
        objects = self._objects[Kind(kind)]
        if type_ == "DELETED":
            objects.pop(name, None)
        else:
            objects[name] = item

    def observe(self, kind: Kind, raw: Mapping[str, Any]) -> Observed[Any]:
        """`snapshot.observe`, reusing the stored object when the listing has the same version
        (a full listing then costs no second copy of 10,000 parsed objects). Safe from a worker
        thread: it only reads the store."""
        name, version = _identity(raw)
        known = self._objects[kind].get(name)
        if known is None:
            return observe(kind, raw)
        if version and known.resource_version == version:
            return known
        return observe_again(known, raw)

    def begin_listing(self) -> None:
        """Events from now on are also replayed after the listing `finish_listing` gets."""
        self._journal = []

    def finish_listing(
        self, observed: Mapping[Kind, Iterable[Observed[Any]]], secrets: Iterable[SecretView]
    ) -> None:
        journal, self._journal = self._journal or [], None
        self._objects = {kind: {o.key.name: o for o in observed.get(kind, ())} for kind in Kind}
        self._secrets = {view.name: view for view in secrets}
        for kind, type_, item in journal:
            self._put(kind, type_, item)
        self.listed = True

    def abandon_listing(self) -> None:
        self._journal = None

    def snapshot(self, namespace: str) -> Snapshot:
        return Snapshot.of_observed(
            namespace,
            {kind: objects.values() for kind, objects in self._objects.items()},
            self._secrets.values(),
        )


def needs_pass(type_: str | None, item: Item, secret_matters: Callable[[str], bool]) -> bool:
    """Whether an event may change the config: a Secret a pass reads, or a letterbox object's
    change that is not the echo of our own status write (the status subresource never bumps
    metadata.generation, and passes write status.observedGeneration)."""
    if isinstance(item, SecretView):
        return secret_matters(item.name)
    if type_ == "DELETED" or item.deleting:
        return True
    if isinstance(item.model, DKIMKey) and rotation_requested(item.model):
        return True  # an annotation: no new generation, yet a rotation to make
    status = item.raw.get("status") or {}
    return bool(status.get("observedGeneration") != item.generation)


@runtime_checkable
class WatchApi(Protocol):
    """The watch call of `letterbox.kube.AsyncKube`."""

    async def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        transform: Callable[[Any], T],
        deliver: Callable[[Sequence[T]], None],
        *,
        resource_version: str | None = None,
        timeout_seconds: int = ...,
    ) -> str: ...


async def follow(
    api: WatchApi,
    store: ObjectStore,
    namespace: str,
    *,
    nudge: Callable[[], None],
    secret_matters: Callable[[str], bool],
) -> None:
    """Keep `store` current from watches of the four kinds and the namespace's Secrets, and
    `nudge` for a pass when an event `needs_pass`, until cancelled.

    The store's own watches, not kopf's: kopf keeps state per object it sees (a memory
    record, a worker task and queue per object with events in flight, a body wrapper per
    event), which at 10,000 Mailboxes applied at once was tens of MB for nothing a pass reads.
    Here an event is parsed in the watch's thread and only the parsed object is kept.
    """
    kinds = [(API_VERSION, kind.value) for kind in Kind] + [("v1", SECRETS)]
    await asyncio.gather(
        *(
            _follow(api, store, namespace, api_version, kind, nudge, secret_matters)
            for api_version, kind in kinds
        )
    )


async def _follow(
    api: WatchApi,
    store: ObjectStore,
    namespace: str,
    api_version: str,
    kind: str,
    nudge: Callable[[], None],
    secret_matters: Callable[[str], bool],
) -> None:
    def transform(event: Any) -> tuple[str, Item]:
        return event.type, store.prepare(kind, event.object)

    def deliver(batch: Sequence[tuple[str, Item]]) -> None:
        wanted = False
        for type_, item in batch:
            store.put(kind, type_, item)
            wanted = wanted or needs_pass(type_, item, secret_matters)
        if wanted:
            nudge()

    # None first: the server sends the current objects as ADDED events, then the changes.
    # Restarting that way after a 410 misses deletions made meanwhile; the periodic full
    # listing (FULL_LIST_SECONDS) removes those.
    version: str | None = None
    failures = 0
    while True:
        try:
            version = await api.watch(
                api_version, kind, namespace, transform, deliver, resource_version=version
            )
            failures = 0
        except Expired:
            version = None
        except KubeError as error:
            delay = WATCH_RETRY_SECONDS[min(failures, len(WATCH_RETRY_SECONDS) - 1)]
            failures += 1
            log.warning(
                "watching %s in %s failed (retry in %ss): %s", kind, namespace, delay, error
            )
            await asyncio.sleep(delay)
