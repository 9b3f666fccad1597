"""The served certificate, replaced in place without a restart or a dropped session.

Listeners hold one SSLContext for life. Loading a new chain into it changes what new handshakes
get; established connections keep their own SSL objects and never notice. A new pair is first
loaded into a throwaway context: OpenSSL installs the certificate before it checks the key, so
a mismatched pair (a certificate written before its key) loaded straight into the live context
would leave it with no usable key and fail every new handshake until the next good pair.

Two sources feed it: the files (the mounted TLS Secret, local mode), polled by `PodState`, and
in a cluster the TLS Secret itself, watched through the API (`TlsSecretSource`), because the
kubelet refreshes a mounted Secret only on its sync, up to about a minute late.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from cryptography import x509

from mailpod import metrics
from mailpod.config import ConfigError
from mailpod.kubesource import (
    KubeSourceSettings,
    Secret,
    _SecretWatch,
    _value,
    api_client,
    connect_with_retry,
)

log = logging.getLogger("mailpod.tls")


def record_certificate(cert_pem: bytes) -> datetime:
    """The leaf's not-after, also exported as a metric."""
    not_after = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
    metrics.TLS_NOT_AFTER.set(not_after.timestamp())
    return not_after


def load_pair(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> datetime:
    """Check the pair, then make it the context's certificate; the leaf's not-after.

    Raises ssl.SSLError and leaves the context as it was when the pair is not usable."""
    # ssl loads chains only from files: a private directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="mailpod-tls-") as directory:
        cert_file, key_file = Path(directory, "tls.crt"), Path(directory, "tls.key")
        for path, content in ((cert_file, cert_pem), (key_file, key_pem)):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(handle, "wb") as file:
                file.write(content)
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        probe.load_cert_chain(cert_file, key_file)  # an unusable pair stops here
        not_after = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
        context.load_cert_chain(cert_file, key_file)
    metrics.TLS_NOT_AFTER.set(not_after.timestamp())
    return not_after


def load_files(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> datetime:
    """`load_pair` from files, each read once: a pair caught half-replaced fails the check and
    the next poll picks up the completed one."""
    return load_pair(context, cert_file.read_bytes(), key_file.read_bytes())


class TlsSecretSource:
    """Watches the TLS Secret by name and hands every new certificate/key pair to `on_pair`.
    Like the config source it never returns (cancel it) and retries for ever, so the pod keeps
    serving the certificate it has while the API is away."""

    def __init__(
        self,
        settings: KubeSourceSettings,
        secret_name: str,
        on_pair: Callable[[bytes, bytes], object],
    ) -> None:
        self.settings = settings
        self.secret_name = secret_name
        self.on_pair = on_pair
        self._last: tuple[bytes, bytes] | None = None

    def _report(self, _name: str, secret: Secret | None) -> None:
        if secret is None:
            return  # deleted: keep serving what we have
        try:
            cert, key = _value(secret, "tls.crt"), _value(secret, "tls.key")
        except ConfigError as error:
            log.error("tls secret %s unreadable: %s", self.secret_name, error)
            return
        if not cert or not key or (cert, key) == self._last:
            return
        self._last = (cert, key)
        self.on_pair(cert, key)

    async def run(self) -> None:
        connection, namespace = await connect_with_retry(self.settings, "tls secret", log)
        async with api_client(connection) as client:
            watch = _SecretWatch(client, connection, namespace, self.secret_name, self._report)
            await watch.run()
