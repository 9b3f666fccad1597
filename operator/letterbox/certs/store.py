"""Where certificates and the ACME account key are kept: Secrets in a cluster, files in local
mode. `SecretStore` is the port; the reconcile adapts its API client to it."""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from letterbox.api.meta import GROUP
from letterbox.render.labels import workload_metadata

TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"
ACCOUNT_KEY_KEY = "private.pem"
STORE_LABEL = f"{GROUP}/certificate-store"


class SecretStore(Protocol):
    async def get(self, name: str) -> Mapping[str, bytes] | None:
        """The data of Secret `name`, None when it does not exist."""
        ...

    async def put(self, name: str, data: Mapping[str, bytes], *, tls: bool) -> None:
        """Create or replace Secret `name` with exactly `data` (type kubernetes.io/tls when
        `tls`)."""
        ...


class DirectorySecretStore:
    """Each Secret is a directory of files, each written atomically (local mode, and any place
    that mounts certificates from disk). The key file is written before the certificate, so a
    reader that watches the certificate never pairs it with the previous key."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def get(self, name: str) -> Mapping[str, bytes] | None:
        directory = self.root / name
        if not directory.is_dir():
            return None
        return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}

    async def put(self, name: str, data: Mapping[str, bytes], *, tls: bool) -> None:
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        ordered = sorted(data, key=lambda key: key != TLS_KEY_KEY)
        for key in ordered:
            _write_atomically(directory / key, data[key])
        for stale in directory.iterdir():  # "exactly `data`", as a replaced Secret holds
            if stale.is_file() and not stale.name.startswith(".") and stale.name not in data:
                stale.unlink()


def _write_atomically(path: Path, content: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class SecretApi(Protocol):
    """The part of the reconcile's API client a `KubeSecretStore` uses."""

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | Mapping[str, str] | None = None,
        page_size: int = ...,
    ) -> list[dict[str, Any]]: ...

    async def apply(
        self, obj: Mapping[str, Any], *, field_manager: str | None = None, force: bool = True
    ) -> dict[str, Any]: ...


class KubeSecretStore:
    """Secrets in one namespace, labelled so a labelled list finds only ours (the operator's
    Secret listing is not filtered by name); written by server-side apply."""

    def __init__(self, api: SecretApi, namespace: str, instance: str) -> None:
        self.api = api
        self.namespace = namespace
        self.instance = instance

    async def get(self, name: str) -> Mapping[str, bytes] | None:
        listed = await self.api.list(
            "v1", "Secret", self.namespace, label_selector={STORE_LABEL: self.instance}
        )
        for secret in listed:
            if secret.get("metadata", {}).get("name") == name:
                data = secret.get("data") or {}
                return {key: base64.b64decode(value) for key, value in data.items()}
        return None

    async def put(self, name: str, data: Mapping[str, bytes], *, tls: bool) -> None:
        metadata = workload_metadata(
            name,
            self.namespace,
            instance=self.instance,
            component="certificate",
            labels={STORE_LABEL: self.instance},
        )
        await self.api.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls" if tls else "Opaque",
                "metadata": metadata,
                "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
            }
        )
