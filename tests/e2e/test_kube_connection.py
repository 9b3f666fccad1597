"""letterbox.kube.connection against a real kube-apiserver: each way of authenticating reaches
the server as the identity it names (the Forbidden message of an account without rights says
who the server took us for), the in-cluster token file is re-read when the kubelet rotates it,
and an exec plugin's token is cached until it expires."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from letterbox.kube import Forbidden, Kube, Unavailable
from letterbox.kube.client import CONNECTIONS
from letterbox.kube.connection import KubeconfigError, Transport, from_kubeconfig, in_cluster
from tests.harness.controlplane import ControlPlane, service_account_kubeconfig

pytestmark = pytest.mark.e2e

NAMESPACE = "kube-connection"


def _token(plane: ControlPlane, name: str, tmp_path: Path) -> str:
    plane.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
    )
    config = yaml.safe_load(
        service_account_kubeconfig(plane, NAMESPACE, name, tmp_path / f"{name}.yaml").read_text()
    )
    return str(config["users"][0]["user"]["token"])


def _who(kube: Kube) -> str:
    """The identity the server saw: an account without rights is told its own name."""
    with pytest.raises(Forbidden) as refused:
        kube.list("v1", "Secret", NAMESPACE)
    return str(refused.value)


def _kubeconfig(plane: ControlPlane, user: dict[str, object], path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": plane.server,
                            "certificate-authority": str(plane.ca_file),
                        },
                    }
                ],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def test_token_file_is_relative_to_its_kubeconfig_and_read_per_request(
    crds: ControlPlane, tmp_path: Path
) -> None:
    first, second = _token(crds, "first", tmp_path), _token(crds, "second", tmp_path)
    (tmp_path / "token").write_text(first + "\n")
    config = _kubeconfig(crds, {"tokenFile": "token"}, tmp_path / "config.yaml")
    with Kube.connect(config) as kube:
        assert "system:serviceaccount:kube-connection:first" in _who(kube)
        (tmp_path / "token").write_text(second)  # rotated, as the kubelet does
        assert "system:serviceaccount:kube-connection:second" in _who(kube)


def test_in_cluster_service_account(
    crds: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(_token(crds, "pod", tmp_path))
    (account / "ca.crt").write_bytes(crds.ca_file.read_bytes())
    (account / "namespace").write_text(NAMESPACE)
    host, _, port = crds.server.removeprefix("https://").rpartition(":")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    api_server = in_cluster(account)
    assert api_server.namespace == NAMESPACE
    with Kube(Transport(api_server, connections=CONNECTIONS, user_agent="test")) as kube:
        assert "system:serviceaccount:kube-connection:pod" in _who(kube)


PLUGIN = r"""
import json, os, sys, pathlib
calls = pathlib.Path(sys.argv[1])
calls.write_text(calls.read_text() + os.environ["KUBERNETES_EXEC_INFO"] + "\n" if calls.exists()
                 else os.environ["KUBERNETES_EXEC_INFO"] + "\n")
if os.environ.get("PLUGIN_FAIL"):
    sys.stderr.write("your SSO session has expired\n")
    sys.exit(3)
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": os.environ["PLUGIN_TOKEN"],
                             "expirationTimestamp": os.environ["PLUGIN_EXPIRES"]}}))
"""


def _exec_user(tmp_path: Path, token: str, expires: str, fail: bool = False) -> dict[str, object]:
    (tmp_path / "plugin.py").write_text(PLUGIN)
    env = [{"name": "PLUGIN_TOKEN", "value": token}, {"name": "PLUGIN_EXPIRES", "value": expires}]
    if fail:
        env.append({"name": "PLUGIN_FAIL", "value": "1"})
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(tmp_path / "plugin.py"), str(tmp_path / "calls")],
            "env": env,
            "interactiveMode": "Never",
        }
    }


def test_exec_plugin_token_is_cached_until_it_expires(crds: ControlPlane, tmp_path: Path) -> None:
    token = _token(crds, "plugin", tmp_path)
    user = _exec_user(tmp_path, token, "2999-01-01T00:00:00Z")
    with Kube.connect(_kubeconfig(crds, user, tmp_path / "config.yaml")) as kube:
        for _ in range(3):
            assert "system:serviceaccount:kube-connection:plugin" in _who(kube)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 1  # cached: one run for three requests
    assert json.loads(calls[0]) == {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "spec": {"interactive": False},
    }
    # An expired credential is asked for again on every request.
    (tmp_path / "calls").unlink()
    expired = _exec_user(tmp_path, token, "2000-01-01T00:00:00Z")
    with Kube.connect(_kubeconfig(crds, expired, tmp_path / "expired.yaml")) as kube:
        _who(kube)
        runs = len((tmp_path / "calls").read_text().splitlines())
        _who(kube)
    assert len((tmp_path / "calls").read_text().splitlines()) == runs + 1


def test_failing_exec_plugin_is_a_clear_error(crds: ControlPlane, tmp_path: Path) -> None:
    user = _exec_user(tmp_path, "secret-token", "2999-01-01T00:00:00Z", fail=True)
    kube = Kube.connect(_kubeconfig(crds, user, tmp_path / "config.yaml"))
    with kube, pytest.raises(Unavailable) as failed:
        kube.list("v1", "Secret", NAMESPACE)
    assert "exited 3: your SSO session has expired" in str(failed.value)
    assert "secret-token" not in str(failed.value)


def test_client_certificate_data_authenticates_as_admin(crds: ControlPlane, tmp_path: Path) -> None:
    # The harness's admin kubeconfig carries its certificate inline (client-certificate-data).
    admin = yaml.safe_load(crds.kubeconfig.read_text())
    assert "client-certificate-data" in admin["users"][0]["user"]
    with Kube.connect(crds.kubeconfig) as kube:
        assert isinstance(kube.list("v1", "Secret", NAMESPACE), list)
    # The same kubeconfig with a broken certificate does not load.
    admin["users"][0]["user"]["client-key-data"] = base64.b64encode(b"not a key").decode()
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(admin))
    with pytest.raises(KubeconfigError, match="do not load"):
        from_kubeconfig(broken).ssl_context()


def test_kubeconfig_list_in_environment_merges_first_wins(
    crds: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = _token(crds, "merged", tmp_path)
    ours = _kubeconfig(crds, {"token": token}, tmp_path / "ours.yaml")
    theirs = tmp_path / "theirs.yaml"
    theirs.write_text(
        yaml.safe_dump(
            {
                "current-context": "elsewhere",
                "users": [{"name": "u", "user": {"token": "not-this-one"}}],
                "contexts": [{"name": "elsewhere", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    monkeypatch.setenv(
        "KUBECONFIG", os.pathsep.join([str(ours), str(tmp_path / "gone"), str(theirs)])
    )
    with Kube.connect() as kube:  # ours sets current-context first; its user "u" wins
        assert "system:serviceaccount:kube-connection:merged" in _who(kube)
