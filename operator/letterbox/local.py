"""Local mode (`letterbox up`): the operator's render code without an API server.

Reads the manifests, keeps generated material in a state dir, writes the mail pod config, starts
`mailpod run` on unprivileged localhost ports and re-renders whenever a manifest changes (the
pod hot-reloads the config, as it would from its Secret in a cluster).
"""

from __future__ import annotations

import base64
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from letterbox.api.manifests import Manifests
from letterbox.material import (
    StateDir,
    is_password_hash,
    reuse_or_hash,
    self_signed_certificate,
)
from letterbox.render.dkim import DkimKeyMaterial
from letterbox.render.podconfig import PodMaterial, render_pod_config
from mailpod import config as pod

DEFAULT_PORTS = {"smtp": 2525, "submission": 2587, "submissions": 2465, "http": 2580}


class LocalModeError(Exception):
    """Something local mode cannot work with; the message says what to fix."""


def _secret_value(manifests: Manifests, namespace: str, name: str, key: str) -> str:
    for secret in manifests.secrets:
        meta = secret.get("metadata") or {}
        if meta.get("name") == name and (meta.get("namespace") or "default") == namespace:
            if key in (secret.get("stringData") or {}):
                return str(secret["stringData"][key])
            if key in (secret.get("data") or {}):
                return base64.b64decode(secret["data"][key]).decode()
            raise LocalModeError(f"Secret {name} has no key {key!r}")
    raise LocalModeError(
        f"Secret {name} is not in the manifests (local mode reads Secrets from them)"
    )


def password_hashes(manifests: Manifests, state: StateDir) -> dict[str, str]:
    """The hash of every mailbox's password: from its Secret (a hash is used as is) or generated.
    Hashes are kept in the state dir so the config only changes when a password does."""
    hashes: dict[str, str] = {}
    for mailbox in manifests.mailboxes:
        namespace = mailbox.metadata.namespace or "default"
        if mailbox.spec.password is None:
            password = state.password(namespace, mailbox.metadata.name)
        else:
            ref = mailbox.spec.password.secret_ref
            password = _secret_value(manifests, namespace, ref.name, ref.key)
            if is_password_hash(password):
                hashes[mailbox.spec.address] = password
                continue
        hash_file = state.path(namespace, "mailboxes", f"{mailbox.metadata.name}.hash")
        previous = hash_file.read_text() if hash_file.exists() else None
        password_hash = reuse_or_hash(password, previous)
        if password_hash != previous:
            hash_file.unlink(missing_ok=True)
            state.file(
                str(hash_file.relative_to(state.root)), functools.partial(str, password_hash)
            )
        hashes[mailbox.spec.address] = password_hash
    return hashes


def dkim_key_materials(manifests: Manifests, state: StateDir) -> list[tuple[DkimKeyMaterial, Path]]:
    """Every DKIMKey's current key (generated on first use) and the file holding it."""
    keys = []
    for dkim in manifests.dkim_keys:
        args = (
            dkim.metadata.namespace or "default",
            dkim.metadata.name,
            dkim.spec.selector,
            dkim.spec.algorithm,
        )
        pem = state.dkim_key(*args)
        material = DkimKeyMaterial(dkim.spec.domain, dkim.spec.selector, dkim.spec.algorithm, pem)
        keys.append((material, state.dkim_key_file(*args)))
    return keys


@dataclass
class LocalStack:
    manifests_paths: Sequence[str]
    state: StateDir
    load: Callable[[Sequence[str]], Manifests]
    bind: str = "127.0.0.1"
    ports: dict[str, int] | None = None

    @property
    def config_file(self) -> Path:
        return self.state.path("mailpod.yaml")

    def render(self) -> tuple[Manifests, pod.MailpodConfig]:
        manifests = self.load(self.manifests_paths)
        if not manifests.domains:
            raise LocalModeError("no MailDomain in the manifests: nothing to serve")
        hostname = manifests.domains[0].spec.effective_mail_host
        cert_file, key_file = self.state.path("tls.crt"), self.state.path("tls.key")
        if not cert_file.exists() or not key_file.exists():
            cert, key = self_signed_certificate([hostname, "localhost", "127.0.0.1"])
            self.state.file("tls.key", lambda: key)
            self.state.file("tls.crt", lambda: cert)
        keys = dkim_key_materials(manifests, self.state)
        ports = self.ports or DEFAULT_PORTS
        config = render_pod_config(
            manifests,
            PodMaterial(
                hostname=hostname,
                listeners=[
                    pod.Listener(kind=pod.ListenerKind(kind), address=self.bind, port=port)
                    for kind, port in ports.items()
                ],
                storage=pod.Storage(
                    mail_root=self.state.path("mail"), queue_dir=self.state.path("queue")
                ),
                tls=pod.TlsConfig(cert_file=cert_file, key_file=key_file),
                password_hashes=password_hashes(manifests, self.state),
                dkim_keys=keys,
            ),
        )
        return manifests, config

    def write_config(self, config: pod.MailpodConfig) -> bool:
        """Write the config atomically; False when it is unchanged."""
        text = pod.dump_config(config)
        if self.config_file.exists() and self.config_file.read_text() == text:
            return False
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.config_file.parent, prefix=".mailpod-")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, self.config_file)
        return True

    def _manifest_stamp(self) -> tuple[tuple[str, float], ...]:
        stamps = []
        for raw in self.manifests_paths:
            path = Path(raw)
            files = sorted(path.iterdir()) if path.is_dir() else [path]
            stamps += [(str(f), f.stat().st_mtime) for f in files if f.exists()]
        return tuple(stamps)

    def run(self, announce: Callable[[Manifests, pod.MailpodConfig], None]) -> int:
        manifests, config = self.render()
        self.write_config(config)
        env = {**os.environ, "MAILPOD_LOG_FORMAT": "text"}
        process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [
                sys.executable,
                "-m",
                "mailpod",
                "run",
                "--config",
                str(self.config_file),
                "--workers",
                "1",
            ],
            env=env,
        )
        stopping = False

        def stop(signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True
            process.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        announce(manifests, config)
        stamp = self._manifest_stamp()
        while process.poll() is None:
            time.sleep(0.5)
            if stopping:
                continue
            current = self._manifest_stamp()
            if current == stamp:
                continue
            stamp = current
            try:
                _, config = self.render()
            except Exception as error:  # a broken edit must not take the running pod down
                print(
                    "letterbox: manifests changed but are invalid, keeping the running "
                    f"config:\n{error}",
                    file=sys.stderr,
                )
                continue
            if self.write_config(config):
                print("letterbox: manifests changed, mail pod config updated", file=sys.stderr)
        return 0 if stopping else (process.returncode or 1)
