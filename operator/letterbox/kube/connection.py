"""Where the API server is and who we are to it: the pod's ServiceAccount inside a cluster, else
a kubeconfig (kubectl's rules: `$KUBECONFIG` files merged, first one wins; paths relative to the
file that names them; the current or a chosen context).

Why not the official `kubernetes` client's loaders: importing any of it loads its ~800
generated model classes (about 38 MB of the operator's memory, and kopf imports the same models
whenever the package is installed) for nothing, since we speak plain JSON (see `client.py`).

Authentication: bearer token (inline, `tokenFile`, or an `exec` credential plugin such as
`aws eks get-token` or `gke-gcloud-auth-plugin`), client certificate (file or inline), or basic
auth. The ServiceAccount token file is re-read, since the kubelet rotates it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import urllib3
import yaml

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# An exec credential without an expiry is asked again after this long (client-go caches it for
# the process's life; an hour bounds what a revoked credential can still do).
EXEC_CACHE_SECONDS: Final = 3600.0
# Renew an expiring credential this early, so a request never leaves with a token about to die.
EXPIRY_MARGIN: Final = 60.0
EXEC_TIMEOUT: Final = 60.0


class KubeconfigError(Exception):
    """The kubeconfig or in-cluster account cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class ExecPlugin:
    """A `users[].user.exec` credential plugin (client.authentication.k8s.io)."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = "client.authentication.k8s.io/v1"


@dataclass(frozen=True)
class Credential:
    token: str | None
    expires: float | None  # time.time(); None: no stated expiry


@dataclass
class ApiServer:
    """One API server and one identity; `authorization()` is safe to call from any thread."""

    server: str
    ca_data: bytes | None = field(default=None, repr=False)
    insecure: bool = False
    namespace: str | None = None
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    client_certificate: bytes | None = field(default=None, repr=False)
    client_key: bytes | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    exec_plugin: ExecPlugin | None = None
    _cached: Credential | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(
                cadata=self.ca_data.decode() if self.ca_data else None
            )
        except (ssl.SSLError, ValueError) as error:
            raise KubeconfigError(f"the cluster's CA certificate does not load: {error}") from error
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_certificate and self.client_key:
            _load_client_certificate(context, self.client_certificate, self.client_key)
        return context

    def credential(self) -> Credential:
        """The bearer token to send now (None without one) and when it stops being good."""
        if self.exec_plugin is not None:
            with self._lock:
                cached = self._cached
                if cached is None or (
                    cached.expires is not None and cached.expires - EXPIRY_MARGIN < time.time()
                ):
                    cached = self._cached = _run_exec(self.exec_plugin)
                return cached
        if self.token_file is not None:
            try:
                return Credential(self.token_file.read_text().strip(), None)
            except OSError as error:
                raise KubeconfigError(f"cannot read the token file: {error}") from error
        return Credential(self.token, None)

    def authorization(self, credential: Credential | None = None) -> str | None:
        """The Authorization header value, or None (client-certificate auth); from
        `credential` when the caller has just taken it, so a token file is read once."""
        token = (credential or self.credential()).token
        if token:
            return f"Bearer {token}"
        if self.username is not None and self.password is not None:
            pair = f"{self.username}:{self.password}".encode()
            return f"Basic {base64.b64encode(pair).decode()}"
        return None


def in_cluster(account_dir: Path = SERVICE_ACCOUNT_DIR) -> ApiServer:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubeconfigError("not in a cluster (no KUBERNETES_SERVICE_HOST) and no kubeconfig")
    if ":" in host:
        host = f"[{host}]"
    token_file = account_dir / "token"
    if not token_file.exists():
        raise KubeconfigError(f"no ServiceAccount token at {token_file}")
    try:
        ca_data = (account_dir / "ca.crt").read_bytes()
        namespace_file = account_dir / "namespace"
        namespace = namespace_file.read_text().strip() if namespace_file.exists() else None
    except OSError as error:
        raise KubeconfigError(f"cannot read the ServiceAccount's files: {error}") from error
    return ApiServer(
        f"https://{host}:{port}", ca_data=ca_data, namespace=namespace, token_file=token_file
    )


def kubeconfig_files(explicit: str | os.PathLike[str] | None) -> list[Path]:
    if explicit is not None:
        return [Path(explicit)]
    listed = [Path(p) for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return listed or [Path.home() / ".kube" / "config"]


def from_kubeconfig(
    kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None
) -> ApiServer:
    """The API server and identity of `context` (default: current-context) in `kubeconfig`
    (default: the files in $KUBECONFIG, else ~/.kube/config)."""
    files = kubeconfig_files(kubeconfig)
    merged = _Merged()
    for path in files:
        if kubeconfig is None and not path.exists():
            continue  # kubectl skips missing $KUBECONFIG entries
        merged.add(path)
    if not merged.loaded:
        raise KubeconfigError(f"no kubeconfig found (looked for {', '.join(map(str, files))})")
    name = context or merged.current_context
    if not name:
        raise KubeconfigError("the kubeconfig sets no current-context; choose one with --context")
    try:
        chosen, _ = merged.get("contexts", name, "context")
        cluster, cluster_base = merged.get("clusters", str(chosen["cluster"]), "cluster")
        user, user_base = (
            merged.get("users", str(chosen["user"]), "user") if chosen.get("user") else ({}, None)
        )
        server = str(cluster["server"]).rstrip("/")
    except (KeyError, TypeError) as error:
        raise KubeconfigError(f"context {name!r} is incomplete: missing {error}") from error
    for unsupported in ("auth-provider", "tls-server-name", "proxy-url"):
        if unsupported in cluster or unsupported in user:
            raise KubeconfigError(f"context {name!r}: {unsupported} is not supported")
    try:
        ca_data = _material(cluster, "certificate-authority", cluster_base)
        certificate = _material(user, "client-certificate", user_base)
        key = _material(user, "client-key", user_base)
    except (OSError, binascii.Error, ValueError) as error:
        raise KubeconfigError(f"context {name!r}: cannot read its certificates: {error}") from error
    token_file = user.get("tokenFile")
    return ApiServer(
        server,
        ca_data=ca_data,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        namespace=chosen.get("namespace"),
        token=user.get("token"),
        token_file=_relative(str(token_file), user_base) if token_file else None,
        client_certificate=certificate,
        client_key=key,
        username=user.get("username"),
        password=user.get("password"),
        exec_plugin=_exec_plugin(user.get("exec"), user_base) if user.get("exec") else None,
    )


def connect(
    kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None
) -> ApiServer:
    """In a pod without an explicit kubeconfig: its ServiceAccount. Otherwise the kubeconfig."""
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster()
    return from_kubeconfig(kubeconfig, context)


class Transport:
    """HTTP(S) to one API server over a pool of keep-alive connections."""

    def __init__(self, api_server: ApiServer, *, connections: int, user_agent: str) -> None:
        self.api_server = api_server
        self._user_agent = user_agent
        self._pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=connections,
            ssl_context=api_server.ssl_context(),
            retries=False,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: tuple[float, float],
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """One request; the response with its body read unless `stream`. Raises
        urllib3.exceptions.HTTPError or OSError when the server cannot be reached."""
        sent = {"User-Agent": self._user_agent, **headers}
        authorization = self.api_server.authorization()
        if authorization:
            sent["Authorization"] = authorization
        return self._pool.request(
            method,
            self.api_server.server + path,
            body=body,
            headers=sent,
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
            preload_content=not stream,
            redirect=False,
        )

    def close(self) -> None:
        self._pool.clear()


# --- kubeconfig details --------------------------------------------------------------------------


class _Merged:
    """kubectl's merge of several kubeconfig files: the first file to name an entry wins."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], tuple[dict[str, Any], Path]] = {}
        self.current_context: str | None = None
        self.loaded = False

    def add(self, path: Path) -> None:
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise KubeconfigError(f"cannot read the kubeconfig {path}: {error}") from error
        if not isinstance(document, dict):
            raise KubeconfigError(f"{path} is not a kubeconfig (not a mapping)")
        self.loaded = True
        self.current_context = self.current_context or document.get("current-context") or None
        for section in ("clusters", "users", "contexts"):
            for entry in document.get(section) or []:
                if isinstance(entry, dict) and "name" in entry:
                    self.entries.setdefault((section, str(entry["name"])), (entry, path.parent))

    def get(self, section: str, name: str, key: str) -> tuple[dict[str, Any], Path]:
        found = self.entries.get((section, name))
        if found is None:
            raise KubeconfigError(f"the kubeconfig has no {section[:-1]} named {name!r}")
        entry, base = found
        return dict(entry.get(key) or {}), base


def _relative(value: str, base: Path | None) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() or base is None else base / path


def _material(section: Mapping[str, Any], key: str, base: Path | None) -> bytes | None:
    """Inline base64 (`<key>-data`) or a file (relative to its kubeconfig), as kubectl reads."""
    if section.get(f"{key}-data"):
        return base64.b64decode(str(section[f"{key}-data"]), validate=True)
    if section.get(key):
        return _relative(str(section[key]), base).read_bytes()
    return None


def _exec_plugin(spec: Any, base: Path | None) -> ExecPlugin:
    if not isinstance(spec, dict) or not spec.get("command"):
        raise KubeconfigError("an exec credential plugin needs a command")
    command = str(spec["command"])
    if "/" in command and base is not None:  # relative commands are relative to the file
        command = str(_relative(command, base))
    env = tuple((str(e["name"]), str(e["value"])) for e in spec.get("env") or [])
    return ExecPlugin(
        command,
        tuple(str(a) for a in spec.get("args") or []),
        env,
        str(spec.get("apiVersion") or ExecPlugin.api_version),
    )


def _run_exec(plugin: ExecPlugin) -> Credential:
    request = {"apiVersion": plugin.api_version, "kind": "ExecCredential", "spec": {}}
    if plugin.api_version.endswith("/v1") or plugin.api_version.endswith("/v1beta1"):
        request["spec"] = {"interactive": False}
    env = {**os.environ, **dict(plugin.env), "KUBERNETES_EXEC_INFO": json.dumps(request)}
    try:
        # The command comes from the user's own kubeconfig, as kubectl runs it.
        done = subprocess.run(  # noqa: S603
            [plugin.command, *plugin.args],
            env=env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=EXEC_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise KubeconfigError(
            f"the exec credential plugin {plugin.command} failed: {error}"
        ) from error
    if done.returncode != 0:
        # stderr names the problem (expired SSO session...); the token is only ever on stdout.
        message = done.stderr.decode(errors="replace").strip()[-500:]
        raise KubeconfigError(
            f"the exec credential plugin {plugin.command} exited {done.returncode}: {message}"
        )
    try:
        status = json.loads(done.stdout)["status"]
        token = status.get("token")
        if not token:
            raise KeyError("token")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise KubeconfigError(
            f"the exec credential plugin {plugin.command} gave no token in an ExecCredential "
            "(client certificates from plugins are not supported)"
        ) from error
    return Credential(str(token), _expiry(status.get("expirationTimestamp")))


def _expiry(stamp: Any) -> float:
    if isinstance(stamp, str) and stamp:
        try:
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time() + EXEC_CACHE_SECONDS


def _load_client_certificate(context: ssl.SSLContext, certificate: bytes, key: bytes) -> None:
    # ssl reads a certificate chain only from files: a private directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="letterbox-kube-") as directory:
        paths = Path(directory, "tls.crt"), Path(directory, "tls.key")
        for path, content in zip(paths, (certificate, key), strict=True):
            path.touch(mode=0o600)
            path.write_bytes(content)
        try:
            context.load_cert_chain(*paths)
        except ssl.SSLError as error:
            raise KubeconfigError(f"the client certificate and key do not load: {error}") from error


__all__: Sequence[str] = [
    "ApiServer",
    "Credential",
    "ExecPlugin",
    "KubeconfigError",
    "Transport",
    "connect",
    "from_kubeconfig",
    "in_cluster",
]
