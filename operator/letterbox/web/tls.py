"""A server TLS context that picks up a renewed certificate without a restart.

Every handshake starts on one base context whose SNI callback checks (two stat calls) whether
the certificate or key file changed; if so it loads them into a fresh context and switches the
connection to it. Connections already open keep the context they were made with, so an open
keep-alive connection is not disturbed by a renewal.
"""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path

log = logging.getLogger("letterbox.web")

Fingerprint = tuple[tuple[int, int, int], tuple[int, int, int]]


def _stat(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    # The inode too: a renewal written elsewhere and renamed into place (as kubelet's atomic
    # writer and cert tools do) may keep size and even mtime.
    return (st.st_mtime_ns, st.st_ino, st.st_size)


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


class ReloadingTlsContext:
    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = Path(cert), Path(key)
        self._lock = threading.Lock()
        self._fingerprint = self._files()
        self._current = _server_context(self.cert, self.key)
        self.reloads = 0
        """How many times a changed certificate was loaded (for tests and logs)."""
        self.context = _server_context(self.cert, self.key)
        """The context to listen with; its callback hands each handshake the current one."""
        self.context.sni_callback = self._on_hello

    def _files(self) -> Fingerprint:
        return (_stat(self.cert), _stat(self.key))

    def current(self) -> ssl.SSLContext:
        """The context new connections get, reloading the files first if they changed."""
        try:
            fingerprint = self._files()
        except OSError as error:  # mid-swap: keep serving the previous certificate
            log.warning("TLS certificate files unreadable, keeping the loaded one: %s", error)
            return self._current
        if fingerprint == self._fingerprint:
            return self._current
        with self._lock:
            if fingerprint != self._fingerprint:
                try:
                    context = _server_context(self.cert, self.key)
                except (OSError, ssl.SSLError) as error:
                    # Certificate and key written one after the other do not match for a
                    # moment; the next handshake tries again.
                    log.warning("TLS certificate reload failed, keeping the loaded one: %s", error)
                    return self._current
                self._current, self._fingerprint = context, fingerprint
                self.reloads += 1
                log.info("loaded a renewed TLS certificate from %s", self.cert)
        return self._current

    def _on_hello(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        connection.context = self.current()


def tls_files(cert: str | None, key: str | None) -> tuple[Path, Path] | None:
    """Both paths or neither (the CLI's --tls-cert/--tls-key)."""
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert and --tls-key go together")
    return (Path(cert), Path(key)) if cert and key else None
