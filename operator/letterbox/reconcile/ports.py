"""The API calls a reconcile pass makes, as a Protocol.

`letterbox.kube.AsyncKube` satisfies it; reconcile/ and handlers/ name only this Protocol (and
kube's dependency-free modules: errors, events, patch), so neither imports the Kubernetes client
even indirectly. The CLI, which builds the real client, is where the two meet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from letterbox.api.meta import API_VERSION, Resource, Status
from letterbox.kube.events import EventType

T = TypeVar("T")


class EnsuredSecretView(Protocol):
    @property
    def created(self) -> bool: ...

    @property
    def data(self) -> dict[str, bytes]: ...


class StatusWriteView(Protocol):
    @property
    def written(self) -> bool: ...


class ClusterApi(Protocol):
    # The synchronous client underneath; kopf's login reads its connection settings from it.
    sync: Any

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | Mapping[str, str] | None = None,
        page_size: int = ...,
    ) -> list[dict[str, Any]]: ...

    async def list_each(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        transform: Callable[[dict[str, Any]], T],
        *,
        label_selector: str | Mapping[str, str] | None = None,
        page_size: int = ...,
    ) -> tuple[T, ...]: ...

    async def apply(
        self, obj: Mapping[str, Any], *, field_manager: str | None = None, force: bool = True
    ) -> dict[str, Any]: ...

    async def delete(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> bool: ...

    async def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        patch: Mapping[str, Any],
    ) -> dict[str, Any]: ...

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
    ) -> StatusWriteView: ...

    async def emit_event(
        self,
        involved_object: Resource | Mapping[str, Any],
        type: EventType | str,
        reason: str,
        message: str,
        *,
        action: str = "Reconcile",
        related: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]: ...

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
    ) -> EnsuredSecretView: ...
