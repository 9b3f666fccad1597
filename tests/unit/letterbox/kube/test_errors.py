from __future__ import annotations

import json

import pytest

from letterbox.kube.errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    Invalid,
    KubeError,
    NotFound,
    Unavailable,
    error_from_response,
)


def status_body(code: int, reason: str, message: str, **details: object) -> bytes:
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": code,
            "reason": reason,
            "message": message,
            "details": details,
        }
    ).encode()


def error(code: int, body: bytes, verb: str = "patch") -> KubeError:
    return error_from_response(
        code, body, verb=verb, resource="secrets", group="", what="Secret ns/x"
    )


@pytest.mark.parametrize(
    ("code", "reason", "cls", "temporary"),
    [
        (404, "NotFound", NotFound, True),
        (409, "Conflict", Conflict, True),
        (409, "AlreadyExists", AlreadyExists, True),
        (403, "Forbidden", Forbidden, False),
        (422, "Invalid", Invalid, False),
        (400, "BadRequest", Invalid, False),
        (429, "TooManyRequests", Unavailable, True),
        (503, "ServiceUnavailable", Unavailable, True),
        (401, "Unauthorized", KubeError, True),
    ],
)
def test_statuses_map_to_the_hierarchy(
    code: int, reason: str, cls: type[KubeError], temporary: bool
) -> None:
    raised = error(code, status_body(code, reason, "server says no"))
    assert type(raised) is cls
    assert raised.temporary is temporary
    assert (raised.status, raised.reason) == (code, reason)
    assert "server says no" in str(raised)
    assert str(raised).startswith("patch Secret ns/x")


def test_already_exists_is_a_conflict() -> None:
    assert isinstance(error(409, status_body(409, "AlreadyExists", "taken")), Conflict)


def test_forbidden_names_the_verb_the_server_checked() -> None:
    message = (
        'configmaps "c" is forbidden: User "system:serviceaccount:ns:op" cannot create '
        'resource "configmaps" in API group "" in the namespace "ns"'
    )
    raised = error(403, status_body(403, "Forbidden", message))
    assert (raised.verb, raised.resource, raised.group) == ("create", "configmaps", "")
    assert str(raised).startswith(
        "patch Secret ns/x: forbidden: needs RBAC verb 'create' on resource 'configmaps' in "
        "the core API group"
    )


def test_forbidden_subresource_in_a_group() -> None:
    message = (
        'mailboxes.letterbox.dev "a" is forbidden: User "u" cannot patch resource '
        '"mailboxes/status" in API group "letterbox.dev" in the namespace "ns"'
    )
    raised = error(403, status_body(403, "Forbidden", message))
    assert (raised.resource, raised.group) == ("mailboxes/status", "letterbox.dev")
    assert "on resource 'mailboxes/status' in API group 'letterbox.dev'" in str(raised)


def test_invalid_carries_the_causes() -> None:
    body = status_body(
        422,
        "Invalid",
        'ConfigMap "c" is invalid: data[a b]: Invalid value: "a b": bad key',
        causes=[{"reason": "FieldValueInvalid", "message": "bad key", "field": "data[a b]"}],
    )
    raised = error(422, body)
    assert isinstance(raised, Invalid)
    assert [(c.field, c.reason, c.message) for c in raised.causes] == [
        ("data[a b]", "FieldValueInvalid", "bad key")
    ]


def test_a_body_that_is_not_a_status_still_gives_a_message() -> None:
    raised = error(502, b"<html>bad gateway</html>")
    assert isinstance(raised, Unavailable)
    assert "<html>bad gateway</html>" in str(raised)
    assert "HTTP 500" in str(error(500, b""))
