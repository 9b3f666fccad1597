"""The Argo CD health check the chart ships, run by a real Lua 5.1 (the language version of
Argo CD's gopher-lua) with the `obj` global Argo CD sets."""

from __future__ import annotations

from typing import Any

import lupa.lua51 as lua51
import pytest

from tests.harness.helm import CHART

SCRIPT = (CHART / "files" / "argocd-health.lua").read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return runtime.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return runtime.table_from([to_lua(v) for v in value])
        return value

    runtime.globals().obj = to_lua(obj)
    result = runtime.execute(SCRIPT)
    return str(result["status"]), str(result["message"])


def mailbox(generation: int, status: dict[str, Any] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "letterbox.dev/v1alpha1",
        "kind": "Mailbox",
        "metadata": {"name": "alice", "generation": generation},
        "spec": {"address": "alice@example.com"},
    }
    if status is not None:
        obj["status"] = status
    return obj


def ready(status: str, reason: str, generation: int, message: str = "") -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (mailbox(1, None), ("Progressing", "Waiting for the Letterbox operator")),
        (
            mailbox(1, {"observedGeneration": 1, "conditions": [ready("True", "Reconciled", 1)]}),
            ("Healthy", "Reconciled"),
        ),
        (
            mailbox(
                2,
                {
                    "observedGeneration": 2,
                    "conditions": [
                        ready("False", "DomainNotFound", 2, "no MailDomain declares example.org")
                    ],
                },
            ),
            ("Degraded", "DomainNotFound: no MailDomain declares example.org"),
        ),
        (
            mailbox(1, {"conditions": [ready("Unknown", "Reconciling", 1)]}),
            ("Progressing", "Reconciling"),
        ),
        # A spec change the operator has not seen yet is not healthy, whatever Ready says.
        (
            mailbox(3, {"observedGeneration": 2, "conditions": [ready("True", "Reconciled", 2)]}),
            ("Progressing", "Waiting for the operator to reconcile generation 3"),
        ),
        (
            mailbox(3, {"conditions": [ready("True", "Reconciled", 2)]}),
            ("Progressing", "Waiting for the operator to reconcile generation 3"),
        ),
        (
            mailbox(1, {"conditions": [{"type": "ConfigApplied", "status": "True"}]}),
            ("Progressing", "Waiting for the Letterbox operator"),
        ),
    ],
)
def test_health(obj: dict[str, Any], expected: tuple[str, str]) -> None:
    assert health(obj) == expected
