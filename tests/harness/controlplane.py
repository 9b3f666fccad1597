"""A real Kubernetes control plane for tests, like controller-runtime's envtest.

``ControlPlane`` runs etcd and kube-apiserver (and optionally
kube-controller-manager, for garbage collection and namespace deletion) as
local processes on free loopback ports, with a throw-away CA, and writes an
admin kubeconfig.  No container runtime and no kubelet are involved, so pods
are stored but never run.

The binaries come from ``tests/harness/k8s-binaries.sh`` (built once into a
cache outside the repo; ``KUBEBUILDER_ASSETS`` / ``LETTERBOX_K8S_BIN`` skip
the build).

    with ControlPlane(controller_manager=True) as cp:
        subprocess.run(["kubectl", "--kubeconfig", str(cp.kubeconfig), "get", "ns"])

Manual check: ``python -m tests.harness.controlplane``.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.harness.ports import free_port

__all__ = [
    "BINARIES_SCRIPT",
    "ControlPlane",
    "ControlPlaneError",
    "KubeResponse",
    "find_binaries",
    "service_account_kubeconfig",
]

HERE: Final = Path(__file__).resolve().parent
BINARIES_SCRIPT: Final = HERE / "k8s-binaries.sh"
SERVICE_ACCOUNT_ISSUER: Final = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE: Final = "10.0.0.0/24"
# Enough for ownerReference cascades (GC), namespace deletion, the "default"
# ServiceAccount of each namespace, and kube-root-ca.crt ConfigMaps.
KCM_CONTROLLERS: Final = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
)
_STOP_GRACE_SECONDS: Final = 5.0
_WORKDIR_PREFIX: Final = "letterbox-cp-"
_OWNER_FILE: Final = "owner.pid"
_PR_SET_PDEATHSIG: Final = 1


class ControlPlaneError(RuntimeError):
    """The control plane could not be provided, started or used."""


@dataclass(frozen=True)
class KubeResponse:
    status: int
    body: Any  # decoded JSON (dict) or the raw text when not JSON

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


# --------------------------------------------------------------------------
# binaries


def find_binaries(script: Path = BINARIES_SCRIPT) -> Path:
    """Run k8s-binaries.sh (building on first use) and return the bin dir."""
    try:
        proc = subprocess.run(
            ["bash", str(script)],
            stdout=subprocess.PIPE,
            stderr=None,  # progress of a first build goes straight to the user
            text=True,
            check=False,
        )
    except OSError as exc:
        raise ControlPlaneError(f"cannot run {script}: {exc}") from exc
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise ControlPlaneError(f"{script} failed (exit {proc.returncode}); see its messages above")
    bin_dir = Path(lines[-1].strip())
    for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
        if not os.access(bin_dir / name, os.X_OK):
            raise ControlPlaneError(f"{script} printed {bin_dir}, which lacks {name}")
    return bin_dir


# --------------------------------------------------------------------------
# certificates


@dataclass(frozen=True)
class _Pki:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _make_pki(directory: Path) -> _Pki:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "letterbox-test-ca")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    serving, serving_key = leaf(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
        ],
    )
    admin, admin_key = leaf(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
            ]
        ),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pem = serialization.Encoding.PEM
    return _Pki(
        ca_cert=_write(directory / "ca.crt", ca_cert.public_bytes(pem), 0o644),
        ca_key=_write(directory / "ca.key", _pem_key(ca_key)),
        serving_cert=_write(directory / "apiserver.crt", serving.public_bytes(pem), 0o644),
        serving_key=_write(directory / "apiserver.key", _pem_key(serving_key)),
        admin_cert=_write(directory / "admin.crt", admin.public_bytes(pem), 0o644),
        admin_key=_write(directory / "admin.key", _pem_key(admin_key)),
        sa_key=_write(directory / "sa.key", _pem_key(sa_key)),
        sa_pub=_write(
            directory / "sa.pub",
            sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
            0o644,
        ),
    )


# --------------------------------------------------------------------------
# processes


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """preexec_fn making the child die with its parent (Linux), if possible.

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only
    used when starting from the main thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    return preexec


class _Process:
    """A child in its own process group, logging to a file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, cwd: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self._log_handle: IO[bytes] = log.open("ab")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,  # own process group: killpg reaches its children
                preexec_fn=_pdeathsig_preexec(),
            )
        except BaseException:
            self._log_handle.close()
            raise

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = _STOP_GRACE_SECONDS) -> None:
        try:
            if self.popen.poll() is None:
                self._killpg(signal.SIGTERM)
                try:
                    self.popen.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self._killpg(signal.SIGKILL)
                    self.popen.wait(timeout=grace)
            # Leftover group members (if any) go too.
            self._killpg(signal.SIGKILL)
        finally:
            self._log_handle.close()

    def _killpg(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def failure(self, what: str) -> ControlPlaneError:
        state = "is still running" if self.alive() else f"exited with code {self.popen.returncode}"
        return ControlPlaneError(
            f"{self.name} {what} ({self.name} {state}); last lines of {self.log}"
            " (LETTERBOX_CP_KEEP=1 keeps the files):\n"
            f"{_tail(self.log)}"
        )


# Started and not yet stopped; a strong set so that an unreferenced instance
# is still stopped at exit.
_LIVE: set[ControlPlane] = set()


def _remove_stale_workdirs() -> None:
    """Remove workdirs left by test processes that were SIGKILLed.

    Their control-plane processes died with them (PR_SET_PDEATHSIG); only
    the files (etcd data, logs) remain.  Directories of live owners stay.
    """
    for entry in Path(tempfile.gettempdir()).glob(_WORKDIR_PREFIX + "*"):
        try:
            owner = int((entry / _OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            continue


@atexit.register
def _stop_all_at_exit() -> None:
    for cp in list(_LIVE):
        with contextlib.suppress(Exception):
            cp.stop()


# --------------------------------------------------------------------------
# kubeconfig


def _kubeconfig(
    server: str, ca_file: Path, user: Mapping[str, str], namespace: str = "default"
) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "letterbox-test",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_file.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": "user", "user": dict(user)}],
        "contexts": [
            {
                "name": "letterbox-test",
                "context": {"cluster": "letterbox-test", "user": "user", "namespace": namespace},
            }
        ],
        "current-context": "letterbox-test",
        "preferences": {},
    }
    # JSON is YAML: kubectl, client-go and the Python client all read it.
    return json.dumps(config, indent=2) + "\n"


# --------------------------------------------------------------------------
# the control plane


class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) on loopback.

    Attributes once started: ``kubeconfig`` (admin, client-certificate auth,
    group system:masters), ``server`` (https URL), ``ca_file``, ``workdir``
    (logs: ``etcd.log``, ``kube-apiserver.log``, ``kube-controller-manager.log``),
    ``startup_seconds``.
    """

    def __init__(
        self,
        *,
        bin_dir: Path | str | None = None,
        controller_manager: bool = False,
        startup_timeout: float = 60.0,
        extra_apiserver_args: Sequence[str] = (),
        keep_workdir: bool | None = None,
    ) -> None:
        self._bin_dir_arg = Path(bin_dir) if bin_dir is not None else None
        self.controller_manager = controller_manager
        self.startup_timeout = startup_timeout
        self.extra_apiserver_args = list(extra_apiserver_args)
        if keep_workdir is None:
            keep_workdir = os.environ.get("LETTERBOX_CP_KEEP", "") not in ("", "0")
        self.keep_workdir = keep_workdir
        self._procs: list[_Process] = []
        self._workdir: Path | None = None
        self._pki: _Pki | None = None
        self._server: str | None = None
        self._kubeconfig: Path | None = None
        self._ssl: ssl.SSLContext | None = None
        self.startup_seconds: float | None = None
        self.bin_dir: Path | None = None

    # -- public accessors ---------------------------------------------------

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise ControlPlaneError("control plane not started")
        return self._workdir

    @property
    def server(self) -> str:
        if self._server is None:
            raise ControlPlaneError("control plane not started")
        return self._server

    @property
    def kubeconfig(self) -> Path:
        if self._kubeconfig is None:
            raise ControlPlaneError("control plane not started")
        return self._kubeconfig

    @property
    def ca_file(self) -> Path:
        return self._require_pki().ca_cert

    @property
    def admin_cert_file(self) -> Path:
        return self._require_pki().admin_cert

    @property
    def admin_key_file(self) -> Path:
        return self._require_pki().admin_key

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG pointing at the admin kubeconfig."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        if self._workdir is not None:
            raise ControlPlaneError("control plane already started")
        self.bin_dir = self._bin_dir_arg or find_binaries()
        began = time.monotonic()
        _remove_stale_workdirs()
        self._workdir = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX))
        (self._workdir / _OWNER_FILE).write_text(f"{os.getpid()}\n")
        _LIVE.add(self)
        try:
            self._pki = _make_pki(self._workdir / "pki")
            self._ssl = ssl.create_default_context(cafile=str(self._pki.ca_cert))
            self._ssl.load_cert_chain(str(self._pki.admin_cert), str(self._pki.admin_key))
            etcd_url = self._start_etcd()
            self._start_apiserver(etcd_url)
            if self.controller_manager:
                self._start_controller_manager()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL) and remove the workdir."""
        procs, self._procs = self._procs, []
        errors: list[BaseException] = []
        for proc in reversed(procs):  # controller-manager, apiserver, etcd
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        _LIVE.discard(self)
        if self._workdir is not None:
            if self.keep_workdir:
                print(f"control plane files kept in {self._workdir}", file=sys.stderr)
            else:
                shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None
        self._server = None
        self._kubeconfig = None
        if errors:
            raise ControlPlaneError(f"errors while stopping: {errors!r}")

    # -- requests -------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        content_type: str = "application/json",
    ) -> KubeResponse:
        """One API call as admin (client cert) or with a bearer ``token``."""
        if self._ssl is None or self._pki is None:
            raise ControlPlaneError("control plane not started")
        if token is None:
            context = self._ssl
        else:
            context = ssl.create_default_context(cafile=str(self._pki.ca_cert))
        return _http(
            method,
            self.server + path,
            body,
            context=context,
            token=token,
            timeout=timeout,
            content_type=content_type,
        )

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane (admin unless ``kubeconfig``)."""
        kubectl = shutil.which("kubectl") or "/usr/bin/kubectl"
        argv = [kubectl, "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        return subprocess.run(
            argv, input=input, capture_output=True, text=True, check=check, timeout=timeout
        )

    # -- internals ------------------------------------------------------------

    def _require_pki(self) -> _Pki:
        if self._pki is None:
            raise ControlPlaneError("control plane not started")
        return self._pki

    def _bin(self, name: str) -> str:
        assert self.bin_dir is not None
        return str(self.bin_dir / name)

    def _spawn(self, name: str, argv: Sequence[str]) -> _Process:
        proc = _Process(name, argv, self.workdir / f"{name}.log", self.workdir)
        self._procs.append(proc)
        return proc

    def _wait(self, proc: _Process, what: str, probe: Callable[[], bool], deadline: float) -> None:
        """Poll ``probe()`` (returns True when ready) until ``deadline``."""
        delay = 0.05
        last_error = ""
        while True:
            if not proc.alive():
                raise proc.failure(f"died before {what}")
            try:
                if probe():
                    return
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                suffix = f" (last probe error: {last_error})" if last_error else ""
                raise proc.failure(f"not {what} within {self.startup_timeout:.0f}s{suffix}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _etcd_supports_no_fsync(self) -> bool:
        try:
            out = subprocess.run(
                [self._bin("etcd"), "--help"], capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.SubprocessError):
            return False
        return "--unsafe-no-fsync" in out.stdout + out.stderr

    def _start_etcd(self) -> str:
        client, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        argv = [
            self._bin("etcd"),
            "--name=letterbox-test",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=letterbox-test={peer_url}",
            "--initial-cluster-state=new",
            "--log-level=warn",
        ]
        if self._etcd_supports_no_fsync():
            argv.append("--unsafe-no-fsync")
        proc = self._spawn("etcd", argv)
        deadline = time.monotonic() + self.startup_timeout

        def healthy() -> bool:
            with urllib.request.urlopen(client_url + "/health", timeout=2) as resp:
                return bool(json.load(resp).get("health") == "true")

        self._wait(proc, "healthy", healthy, deadline)
        return client_url

    def _start_apiserver(self, etcd_url: str) -> None:
        pki = self._require_pki()
        port = free_port()
        cert_dir = self.workdir / "apiserver-certs"
        cert_dir.mkdir()
        argv = [
            self._bin("kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--cert-dir={cert_dir}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--secure-port={port}",
            "--bind-address=127.0.0.1",
            # as envtest: never look for a default route to pick an address
            "--advertise-address=127.0.0.1",
            # A loopback address is invalid in the "kubernetes" Endpoints:
            # don't reconcile it (no error every 10 s; nothing routes there).
            "--endpoint-reconciler-type=none",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--allow-privileged=true",
            # Pods can be created without a "default" ServiceAccount existing
            # (no controller-manager needed); there is no kubelet anyway.
            "--disable-admission-plugins=ServiceAccount",
            "--profiling=false",
            *self.extra_apiserver_args,
        ]
        proc = self._spawn("kube-apiserver", argv)
        self._server = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + self.startup_timeout

        def ready() -> bool:
            resp = self.request("GET", "/readyz", timeout=2)
            return resp.status == 200

        self._wait(proc, "ready (/readyz)", ready, deadline)
        kubeconfig = self.workdir / "admin.kubeconfig"
        _write(
            kubeconfig,
            _kubeconfig(
                self.server,
                pki.ca_cert,
                {
                    "client-certificate-data": base64.b64encode(
                        pki.admin_cert.read_bytes()
                    ).decode(),
                    "client-key-data": base64.b64encode(pki.admin_key.read_bytes()).decode(),
                },
            ).encode(),
        )
        self._kubeconfig = kubeconfig

    def _start_controller_manager(self) -> None:
        pki = self._require_pki()
        port = free_port()
        cert_dir = self.workdir / "kcm-certs"
        cert_dir.mkdir()
        argv = [
            self._bin("kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}",
            f"--controllers={','.join(KCM_CONTROLLERS)}",
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            f"--secure-port={port}",
            "--bind-address=127.0.0.1",
            f"--cert-dir={cert_dir}",
            f"--root-ca-file={pki.ca_cert}",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--profiling=false",
        ]
        proc = self._spawn("kube-controller-manager", argv)
        deadline = time.monotonic() + self.startup_timeout
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # its own self-signed serving cert

        def healthy() -> bool:
            resp = _http("GET", f"https://127.0.0.1:{port}/healthz", None, context=insecure)
            return resp.status == 200

        self._wait(proc, "healthy (/healthz)", healthy, deadline)


def _http(
    method: str,
    url: str,
    body: Any,
    *,
    context: ssl.SSLContext,
    token: str | None = None,
    timeout: float = 10.0,
    content_type: str = "application/json",
) -> KubeResponse:
    data: bytes | None
    if body is None:
        data = None
    elif isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body).encode()
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = content_type
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    text = raw.decode("utf-8", "replace")
    try:
        decoded: Any = json.loads(text) if text else None
    except ValueError:
        decoded = text
    return KubeResponse(status=int(status), body=decoded)


# --------------------------------------------------------------------------
# ServiceAccount credentials


def service_account_kubeconfig(
    cp: ControlPlane,
    namespace: str,
    name: str,
    path: Path | str,
    expiration_seconds: int = 3600,
) -> Path:
    """Write a kubeconfig authenticating as ServiceAccount ``namespace/name``.

    Creates the ServiceAccount if missing (the namespace must exist), then asks
    the TokenRequest API for a bearer token.  The account has no permissions
    beyond what RBAC grants it.
    """
    base = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    got = cp.request("GET", f"{base}/{name}")
    if got.status == 404:
        created = cp.request(
            "POST",
            base,
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
        )
        if not created.ok and created.status != 409:
            raise ControlPlaneError(
                f"creating ServiceAccount {namespace}/{name}: {created.status} {created.body}"
            )
    elif not got.ok:
        raise ControlPlaneError(
            f"reading ServiceAccount {namespace}/{name}: {got.status} {got.body}"
        )
    resp = cp.request(
        "POST",
        f"{base}/{name}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": int(expiration_seconds)},
        },
    )
    token = resp.body.get("status", {}).get("token") if isinstance(resp.body, dict) else None
    if not resp.ok or not isinstance(token, str):
        raise ControlPlaneError(
            f"TokenRequest for {namespace}/{name} failed: {resp.status} {resp.body}"
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, _kubeconfig(cp.server, cp.ca_file, {"token": token}, namespace).encode())
    return out


# --------------------------------------------------------------------------
# manual check


def main() -> int:
    with ControlPlane(controller_manager=True) as cp:
        print(f"kubeconfig: {cp.kubeconfig}")
        print(f"server:     {cp.server}")
        print(f"startup:    {cp.startup_seconds:.1f}s (controller-manager included)")
        print("\n$ kubectl get ns")
        print(cp.kubectl("get", "ns").stdout, end="")
        print("\n$ kubectl api-resources | head")
        out = cp.kubectl("api-resources").stdout.splitlines()
        print("\n".join(out[:10]))
    print("\nstopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
