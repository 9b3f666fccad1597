"""`AsyncKube`: the same calls for asyncio code (the kopf handlers and reconcile).

The official client is synchronous and kubernetes_asyncio is not a dependency, so each call runs
in a worker thread: the event loop keeps serving other handlers while one waits on the API
server. The thread hop costs microseconds against a millisecond round trip, and `Kube` is
thread-safe (urllib3's pool, locked caches). The calls have a pool of their own, `THREADS`
wide, which bounds our load on the API server: the default executor (CPUs + 4 threads, 6 on two
cores) held 10,000 status writes to 6 round trips in flight, and is shared with CPU work
(hashing, rendering) that then queued behind them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from letterbox.api.meta import API_VERSION, Resource, Status
from letterbox.kube.client import (
    LIST_PAGE,
    WATCH_SECONDS,
    EnsuredSecret,
    Kube,
    Object,
    Objects,
    Propagation,
    StatusWrite,
    WatchEvent,
)
from letterbox.kube.discovery import ResourceInfo
from letterbox.kube.events import EventType

P = ParamSpec("P")
T = TypeVar("T")
# Calls in flight at once; `Kube.connect` sizes its connection pool to match.
THREADS = 16


class AsyncKube:
    """`Kube` with awaitable methods; see `Kube` for what each does."""

    def __init__(self, kube: Kube, *, threads: int = THREADS) -> None:
        self.sync = kube
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="kube")

    async def _run(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(call, *args, **kwargs))

    async def resource(self, api_version: str, kind: str) -> ResourceInfo:
        return await self._run(self.sync.resource, api_version, kind)

    async def apply(
        self, obj: Mapping[str, Any], *, field_manager: str | None = None, force: bool = True
    ) -> Object:
        return await self._run(self.sync.apply, obj, field_manager=field_manager, force=force)

    async def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        patch: Mapping[str, Any],
    ) -> Object:
        return await self._run(self.sync.patch, api_version, kind, name, namespace, patch)

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Object:
        return await self._run(self.sync.get, api_version, kind, name, namespace)

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | Mapping[str, str] | None = None,
        page_size: int = LIST_PAGE,
    ) -> Objects:
        return await self._run(
            self.sync.list,
            api_version,
            kind,
            namespace,
            label_selector=label_selector,
            page_size=page_size,
        )

    async def delete(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None = None,
        *,
        propagation: Propagation = Propagation.BACKGROUND,
        missing_ok: bool = True,
    ) -> bool:
        return await self._run(
            self.sync.delete,
            api_version,
            kind,
            name,
            namespace,
            propagation=propagation,
            missing_ok=missing_ok,
        )

    async def patch_status(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        status: Status | Mapping[str, Any],
        *,
        api_version: str = API_VERSION,
        only_if_changed: bool = True,
        observed: Mapping[str, Any] | None = None,
    ) -> StatusWrite:
        return await self._run(
            self.sync.patch_status,
            kind,
            namespace,
            name,
            status,
            api_version=api_version,
            only_if_changed=only_if_changed,
            observed=observed,
        )

    async def emit_event(
        self,
        involved_object: Resource | Mapping[str, Any],
        type: EventType | str,
        reason: str,
        message: str,
        *,
        action: str = "Reconcile",
        related: Mapping[str, Any] | None = None,
    ) -> Object:
        return await self._run(
            self.sync.emit_event,
            involved_object,
            type,
            reason,
            message,
            action=action,
            related=related,
        )

    async def read_secret_key(self, namespace: str, name: str, key: str) -> bytes:
        return await self._run(self.sync.read_secret_key, namespace, name, key)

    async def ensure_secret(
        self,
        name: str,
        namespace: str,
        data: Mapping[str, str | bytes],
        *,
        owner: Resource | Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        immutable_keys: Iterable[str] | None = None,
        secret_type: str = "Opaque",  # noqa: S107 - a Secret type, not a password
    ) -> EnsuredSecret:
        # Materialise a one-shot iterable here, not in the worker thread.
        keys = None if immutable_keys is None else tuple(immutable_keys)
        return await self._run(
            self.sync.ensure_secret,
            name,
            namespace,
            data,
            owner=owner,
            labels=labels,
            immutable_keys=keys,
            secret_type=secret_type,
        )

    async def list_each(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        transform: Callable[[Object], T],
        *,
        label_selector: str | Mapping[str, str] | None = None,
        page_size: int = LIST_PAGE,
    ) -> tuple[T, ...]:
        """`transform` of every listed object, applied page by page in the worker thread: a
        10,000-object listing is never held whole (managedFields and all), and parsing it
        does not run on the event loop."""
        return await self._run(
            self.sync.list_each,
            api_version,
            kind,
            namespace,
            transform,
            label_selector=label_selector,
            page_size=page_size,
        )

    async def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        transform: Callable[[WatchEvent], T],
        deliver: Callable[[Sequence[T]], None],
        *,
        resource_version: str | None = None,
        timeout_seconds: int = WATCH_SECONDS,
    ) -> str:
        """One watch request to its end (see `Kube.watch`); returns the resourceVersion to
        resume from. It runs in a thread of its own, not in the pool: it lasts minutes, and
        the pool bounds calls in flight. `transform` (e.g. parsing) runs in that thread for
        every event; `deliver` gets the results on the event loop, a batch per chunk the
        server sent. Cancelling closes the stream."""
        loop = asyncio.get_running_loop()
        stream = await self._run(
            self.sync.watch,
            api_version,
            kind,
            namespace,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
        )
        finished: asyncio.Future[str] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if finished.done():
                return
            if error is None:
                finished.set_result(stream.resource_version)
            else:
                finished.set_exception(error)

        def pump() -> None:
            outcome: BaseException | None = None
            try:
                for events in stream:
                    batch = [transform(event) for event in events]
                    loop.call_soon_threadsafe(deliver, batch)
            except BaseException as error:  # handed to the awaiting task, not lost
                outcome = error
            # Loop gone (shutdown): nobody waits for this stream any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, outcome)

        # A daemon thread: a process exiting does not wait minutes for the server to end it.
        threading.Thread(target=pump, name=f"watch-{kind}", daemon=True).start()
        try:
            return await finished
        finally:
            stream.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.sync.close()
