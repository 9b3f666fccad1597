from __future__ import annotations

from typing import Any

import pytest

from letterbox.kube.discovery import Discovery, ResourceInfo, parse_resource_list
from letterbox.kube.errors import NotFound

CORE = {
    "kind": "APIResourceList",
    "groupVersion": "v1",
    "resources": [
        {"name": "secrets", "kind": "Secret", "namespaced": True},
        {"name": "namespaces", "kind": "Namespace", "namespaced": False},
        {"name": "namespaces/status", "kind": "Namespace", "namespaced": False},
    ],
}
LETTERBOX = {
    "kind": "APIResourceList",
    "groupVersion": "letterbox.dev/v1alpha1",
    "resources": [
        {"name": "mailboxes", "kind": "Mailbox", "namespaced": True},
        {"name": "mailboxes/status", "kind": "Mailbox", "namespaced": True},
    ],
}


def test_parse_resource_list_keeps_subresources_apart() -> None:
    found = parse_resource_list("v1", CORE)
    assert found["Secret"] == ResourceInfo("v1", "Secret", "secrets", True, frozenset())
    assert found["Namespace"].subresources == {"status"}
    assert not found["Namespace"].namespaced


def test_paths() -> None:
    secret = ResourceInfo("v1", "Secret", "secrets", True)
    mailbox = ResourceInfo("letterbox.dev/v1alpha1", "Mailbox", "mailboxes", True)
    namespace = ResourceInfo("v1", "Namespace", "namespaces", False)
    assert secret.path("ns", "a") == "/api/v1/namespaces/ns/secrets/a"
    assert secret.path("ns") == "/api/v1/namespaces/ns/secrets"
    assert secret.path() == "/api/v1/secrets"  # every namespace
    assert (
        mailbox.path("ns", "a", "status")
        == "/apis/letterbox.dev/v1alpha1/namespaces/ns/mailboxes/a/status"
    )
    assert namespace.path("ignored", "ns") == "/api/v1/namespaces/ns"
    assert (secret.group, mailbox.group) == ("", "letterbox.dev")
    assert (secret.rbac_name, mailbox.rbac_name) == ("secrets", "mailboxes.letterbox.dev")
    with pytest.raises(ValueError, match="needs a namespace"):
        secret.path(None, "a")


class FakeServer:
    def __init__(self) -> None:
        self.served: dict[str, Any] = {"/api/v1": CORE}
        self.calls: list[str] = []

    def fetch(self, path: str) -> Any:
        self.calls.append(path)
        if path not in self.served:
            raise NotFound(f"get {path}: not found", status=404)
        return self.served[path]


def test_discovery_caches_per_group_version() -> None:
    server = FakeServer()
    discovery = Discovery(server.fetch)
    assert discovery.resource("v1", "Secret").plural == "secrets"
    assert discovery.resource("v1", "Namespace").plural == "namespaces"
    assert server.calls == ["/api/v1"]


def test_a_kind_installed_later_is_found_by_refreshing() -> None:
    server = FakeServer()
    discovery = Discovery(server.fetch)
    with pytest.raises(NotFound, match=r"does not serve letterbox\.dev/v1alpha1"):
        discovery.resource("letterbox.dev/v1alpha1", "Mailbox")
    server.served["/apis/letterbox.dev/v1alpha1"] = {"resources": []}
    with pytest.raises(NotFound, match="no kind Mailbox"):
        discovery.resource("letterbox.dev/v1alpha1", "Mailbox")
    server.served["/apis/letterbox.dev/v1alpha1"] = LETTERBOX
    info = discovery.resource("letterbox.dev/v1alpha1", "Mailbox")
    assert info.subresources == {"status"}
    discovery.resource("letterbox.dev/v1alpha1", "Mailbox")
    assert server.calls.count("/apis/letterbox.dev/v1alpha1") == 3


def test_invalidate() -> None:
    server = FakeServer()
    discovery = Discovery(server.fetch)
    discovery.resource("v1", "Secret")
    discovery.invalidate("v1")
    discovery.resource("v1", "Secret")
    discovery.invalidate()
    discovery.resource("v1", "Secret")
    assert server.calls == ["/api/v1"] * 3
