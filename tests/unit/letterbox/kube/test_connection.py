"""Kubeconfig and in-cluster loading: kubectl's merge and path rules, and clear errors."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from letterbox.kube.connection import (
    ApiServer,
    KubeconfigError,
    connect,
    from_kubeconfig,
    in_cluster,
)


def write(path: Path, document: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def config(
    user: Mapping[str, object], cluster: Mapping[str, object] | None = None
) -> dict[str, object]:
    return {
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://api.test:6443/"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [
            {"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "mail"}},
            {"name": "y", "context": {"cluster": "c", "user": "u"}},
        ],
        "current-context": "x",
    }


def test_current_context_server_namespace_and_token(tmp_path: Path) -> None:
    api = from_kubeconfig(write(tmp_path / "c.yaml", config({"token": "t0"})))
    assert (api.server, api.namespace, api.authorization()) == (
        "https://api.test:6443",
        "mail",
        "Bearer t0",
    )
    assert "t0" not in repr(api)  # secrets stay out of logs and tracebacks
    other = from_kubeconfig(tmp_path / "c.yaml", context="y")
    assert other.namespace is None


def test_paths_are_relative_to_the_kubeconfig_that_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_bytes(b"CA")
    (tmp_path / "certs" / "token").write_text("from-file\n")
    cluster = {"server": "https://api.test", "certificate-authority": "certs/ca.pem"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = write(tmp_path / "c.yaml", config({"tokenFile": "certs/token"}, cluster))
    monkeypatch.chdir(elsewhere)
    api = from_kubeconfig(path)
    assert api.ca_data == b"CA"
    assert api.authorization() == "Bearer from-file"


def test_basic_auth_and_inline_certificate_data(tmp_path: Path) -> None:
    user = {
        "username": "admin",
        "password": "pw",
        "client-certificate-data": base64.b64encode(b"CERT").decode(),
        "client-key-data": base64.b64encode(b"KEY").decode(),
    }
    api = from_kubeconfig(write(tmp_path / "c.yaml", config(user)))
    assert api.authorization() == "Basic " + base64.b64encode(b"admin:pw").decode()
    assert (api.client_certificate, api.client_key) == (b"CERT", b"KEY")


def test_kubeconfig_environment_merges_first_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write(tmp_path / "a.yaml", {"users": [{"name": "u", "user": {"token": "first"}}]})
    second = write(tmp_path / "b.yaml", config({"token": "second"}))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", f"{first}:{tmp_path / 'missing'}:{second}")
    api = connect()
    # current-context comes from the second file (the first sets none); user "u" from the first.
    assert api.authorization() == "Bearer first"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"clusters": []}, "no current-context"),
        ({"current-context": "nope"}, "no context named 'nope'"),
        (config({"auth-provider": {"name": "gcp"}}), "auth-provider is not supported"),
        (config({"client-key-data": "***"}), "cannot read its certificates"),
        (config({"exec": {"args": ["x"]}}), "needs a command"),
        (config({}, {"certificate-authority": "/nonexistent"}), "missing 'server'"),
    ],
)
def test_unusable_kubeconfigs_say_why(
    tmp_path: Path, document: dict[str, object], message: str
) -> None:
    with pytest.raises(KubeconfigError, match=message):
        from_kubeconfig(write(tmp_path / "c.yaml", document))


def test_missing_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match="cannot read the kubeconfig"):
        from_kubeconfig(tmp_path / "absent.yaml")


def test_in_cluster_reads_the_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeconfigError, match="not in a cluster"):
        in_cluster(tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubeconfigError, match="no ServiceAccount token"):
        in_cluster(tmp_path)
    (tmp_path / "token").write_text("one")
    (tmp_path / "ca.crt").write_bytes(b"CA")
    (tmp_path / "namespace").write_text("mail\n")
    api = in_cluster(tmp_path)
    assert (api.server, api.namespace, api.ca_data) == ("https://[fd00::1]:443", "mail", b"CA")
    assert api.authorization() == "Bearer one"
    (tmp_path / "token").write_text("two")  # the kubelet rotated it
    assert api.authorization() == "Bearer two"
    (tmp_path / "token").unlink()
    with pytest.raises(KubeconfigError, match="cannot read the token file"):
        api.authorization()


def test_tls_is_verified_and_at_least_1_2() -> None:
    context = ApiServer("https://api.test").ssl_context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    insecure = ApiServer("https://api.test", insecure=True).ssl_context()
    assert insecure.verify_mode == ssl.CERT_NONE
    with pytest.raises(KubeconfigError, match="CA certificate does not load"):
        ApiServer("https://api.test", ca_data=b"not a certificate").ssl_context()
