"""The running pod's current configuration and everything derived from it, swapped atomically on
reload so every new SMTP/IMAP command sees one consistent snapshot."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from mailpod.config import ConfigError, MailpodConfig, load_config
from mailpod.directory import Directory
from mailpod.dkim import DkimKeyring
from mailpod.tls import load_files, load_pair, record_certificate

log = logging.getLogger("mailpod.config")


def server_tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """TLS 1.2+ only, server side."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


@dataclass(frozen=True)
class Snapshot:
    config: MailpodConfig
    directory: Directory
    dkim: DkimKeyring = field(init=False)
    """Signing keys read once per snapshot, not per message."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "dkim", DkimKeyring.load(self.config.dkim_keys))


class PodState:
    """Holds the current Snapshot and one SSLContext whose certificate is reloaded in place:
    listeners keep the same context object, so new handshakes get the new certificate and
    established sessions are untouched."""

    def __init__(self, config_paths: list[Path], config: MailpodConfig) -> None:
        self.config_paths = config_paths
        self.follow_files = True
        """False once the API has delivered a config: from then on the mounted copy, which the
        kubelet refreshes up to a minute late, must not swap an older config back in."""
        self.snapshot = Snapshot(config, Directory(config))
        self.tls: ssl.SSLContext | None = None
        self._tls_stamp: tuple[float, float] | None = None
        self._config_stamp = self._stamp()
        self.reload_tls()

    @classmethod
    def load(cls, config_paths: list[Path]) -> PodState:
        return cls(config_paths, load_config(config_paths))

    def _stamp(self) -> tuple[tuple[str, float, int], ...]:
        stamps = []
        for path in self.config_paths:
            files = sorted(path.iterdir()) if path.is_dir() else [path]
            for file in files:
                try:
                    info = file.stat()  # follows the ..data symlink of Secret volumes
                except FileNotFoundError:
                    continue
                stamps.append((str(file), info.st_mtime, info.st_size))
        return tuple(stamps)

    def reload_tls(self) -> None:
        tls = self.snapshot.config.tls
        if tls is None:
            return
        stamp = (tls.cert_file.stat().st_mtime, tls.key_file.stat().st_mtime)
        if stamp == self._tls_stamp:
            return
        if self.tls is None:
            self.tls = server_tls_context(tls.cert_file, tls.key_file)
            record_certificate(tls.cert_file.read_bytes())
        else:
            load_files(self.tls, tls.cert_file, tls.key_file)  # checked before it goes live
        self._tls_stamp = stamp
        log.info("tls certificate loaded", extra={"cert": str(tls.cert_file)})

    def use_tls_pair(self, cert_pem: bytes, key_pem: bytes) -> None:
        """A certificate from the TLS Secret through the API, ahead of the mounted copy."""
        if self.tls is None:
            return
        try:
            not_after = load_pair(self.tls, cert_pem, key_pem)
        except (ssl.SSLError, ValueError) as error:
            log.error("tls certificate from the API refused, keeping the old one: %s", error)
            return
        log.info("tls certificate loaded", extra={"source": "api", "not_after": str(not_after)})

    def maybe_reload(self) -> bool | None:
        """Reload when the config files changed: True on success, False when the new config is
        broken (the old one stays), None when nothing changed."""
        try:
            self.reload_tls()
        except (OSError, ssl.SSLError) as error:
            log.error("tls certificate reload failed, keeping the old one: %s", error)
        if not self.follow_files:
            return None
        stamp = self._stamp()
        if stamp == self._config_stamp:
            return None
        self._config_stamp = stamp
        try:
            config = load_config(self.config_paths)
        except ConfigError as error:
            log.error("config reload refused, keeping the previous config: %s", error)
            return False
        self.snapshot = Snapshot(config, Directory(config))
        try:
            self.reload_tls()
        except (OSError, ssl.SSLError) as error:
            log.error("tls certificate reload failed, keeping the old one: %s", error)
        log.info(
            "config reloaded",
            extra={"mailboxes": len(config.mailboxes), "aliases": len(config.aliases)},
        )
        return True

    def use_config(self, config: MailpodConfig, source: str) -> bool:
        """Swap in a config read elsewhere (the API) and stop following the files. True when it
        differs from the one in force."""
        self.follow_files = False
        if config == self.snapshot.config:
            return False
        self.snapshot = Snapshot(config, Directory(config))
        try:
            self.reload_tls()
        except (OSError, ssl.SSLError) as error:
            log.error("tls certificate reload failed, keeping the old one: %s", error)
        log.info(
            "config reloaded",
            extra={
                "source": source,
                "mailboxes": len(config.mailboxes),
                "aliases": len(config.aliases),
            },
        )
        return True
