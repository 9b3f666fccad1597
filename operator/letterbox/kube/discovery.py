"""apiVersion + kind → REST resource, by asking the server (discovery) once per group version.

We do not hard-code plurals: CRDs (ours, cert-manager's) are found the same way as core kinds,
and a kind installed after start-up (cert-manager added later) is found by refreshing its group
version once on a miss. Discovery is readable by every authenticated user (the built-in
`system:discovery` role), so it adds nothing to the operator's RBAC.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from letterbox.kube.errors import NotFound


@dataclass(frozen=True)
class ResourceInfo:
    """One REST resource: where its objects live and how RBAC names it."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool
    subresources: frozenset[str] = frozenset()

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def rbac_name(self) -> str:
        """`secrets`, `mailboxes.letterbox.dev`: the resource as Role rules and errors name it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str = ""
    ) -> str:
        """The URL path of the collection (across all namespaces when `namespace` is None), or
        of one object and its subresource."""
        prefix = f"/apis/{self.api_version}" if self.group else f"/api/{self.api_version}"
        if self.namespaced and namespace:
            prefix += f"/namespaces/{quote(namespace, safe='')}"
        elif self.namespaced and name is not None:
            raise ValueError(f"{self.kind} is namespaced: {name!r} needs a namespace")
        path = f"{prefix}/{self.plural}"
        if name is not None:
            path += f"/{quote(name, safe='')}"
            if subresource:
                path += f"/{subresource}"
        return path


def discovery_path(api_version: str) -> str:
    return f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"


def parse_resource_list(api_version: str, body: Mapping[str, Any]) -> dict[str, ResourceInfo]:
    """kind → ResourceInfo from an APIResourceList (`GET /apis/<group>/<version>`)."""
    entries = [r for r in body.get("resources", []) if isinstance(r, dict)]
    subresources: dict[str, set[str]] = {}
    for entry in entries:
        plural, _, sub = str(entry.get("name", "")).partition("/")
        if sub:
            subresources.setdefault(plural, set()).add(sub)
    found: dict[str, ResourceInfo] = {}
    for entry in entries:
        name = str(entry.get("name", ""))
        if "/" in name:
            continue
        kind = str(entry.get("kind", ""))
        found[kind] = ResourceInfo(
            api_version=api_version,
            kind=kind,
            plural=name,
            namespaced=bool(entry.get("namespaced", False)),
            subresources=frozenset(subresources.get(name, ())),
        )
    return found


class Discovery:
    """A thread-safe cache of discovered group versions. `fetch` GETs a path and returns JSON
    (raising NotFound for a group version the server does not serve)."""

    def __init__(self, fetch: Callable[[str], Any]) -> None:
        self._fetch = fetch
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, ResourceInfo]] = {}

    def resource(self, api_version: str, kind: str) -> ResourceInfo:
        with self._lock:
            cached = self._cache.get(api_version)
        if cached is not None and kind in cached:
            return cached[kind]
        # A miss may mean a CRD installed after we cached its group version: look again once.
        try:
            body = self._fetch(discovery_path(api_version))
        except NotFound as exc:
            raise NotFound(
                f"the API server does not serve {api_version} (is the CRD or the add-on that "
                f"provides {kind} installed?)",
                status=exc.status,
                reason=exc.reason,
                verb="get",
                resource=api_version,
            ) from exc
        found = parse_resource_list(api_version, body if isinstance(body, dict) else {})
        with self._lock:
            self._cache[api_version] = found
        if kind not in found:
            raise NotFound(
                f"the API server serves {api_version} but no kind {kind} in it",
                status=404,
                verb="get",
                resource=api_version,
            )
        return found[kind]

    def invalidate(self, api_version: str | None = None) -> None:
        with self._lock:
            if api_version is None:
                self._cache.clear()
            else:
                self._cache.pop(api_version, None)
