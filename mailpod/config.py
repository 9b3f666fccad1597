"""The mail pod's configuration: the one contract between the operator and the pod.

The operator renders it (as a Secret, possibly split into shards); the pod loads it at start and
whenever it changes. Plain-text passwords never appear here, only argon2id/bcrypt hashes.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_VERSION = 1

# Shared with the operator's API models, so kubectl and the pod accept exactly the same names.
DNS_LABEL_PATTERN = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN_PATTERN = rf"({DNS_LABEL_PATTERN}\.)+([a-z]{{2,63}}|xn--[a-z0-9-]{{1,59}})"
# Dot-atom local parts (RFC 5321 §4.1.2) without "%", "!" and "/": quoted local parts, % and !
# are relay tricks refused at RCPT, and "/" has no place in a Maildir path.
LOCAL_PART_PATTERN = r"[A-Za-z0-9#$&'*+=?^_`{|}~-]+(\.[A-Za-z0-9#$&'*+=?^_`{|}~-]+)*"
_DOMAIN = DOMAIN_PATTERN
_LOCAL = LOCAL_PART_PATTERN

Domain = Annotated[str, Field(max_length=253, pattern=rf"^{_DOMAIN}$")]
Address = Annotated[str, Field(max_length=254, pattern=rf"^{_LOCAL}@{_DOMAIN}$")]
AliasAddress = Annotated[str, Field(max_length=254, pattern=rf"^({_LOCAL})?@{_DOMAIN}$")]
# Only slow, salted hashes: argon2id (PHC string) or bcrypt.
PasswordHash = Annotated[
    str,
    Field(
        max_length=512,
        pattern=r"^(\$argon2id\$v=19\$[^\s]+|\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53})$",
    ),
]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenerKind(StrEnum):
    SMTP = "smtp"  # port 25: MX, inbound from the Internet, optional STARTTLS
    SUBMISSION = "submission"  # port 587: STARTTLS required before AUTH
    SUBMISSIONS = "submissions"  # port 465: implicit TLS
    IMAP = "imap"  # port 143: STARTTLS
    IMAPS = "imaps"  # port 993: implicit TLS
    HTTP = "http"  # health, readiness and metrics


class Listener(Model):
    kind: ListenerKind
    address: str = "0.0.0.0"  # noqa: S104 (a pod listens on its pod IP; local mode sets 127.0.0.1)
    port: Annotated[int, Field(ge=0, le=65535)]
    proxy_protocol: bool = False
    """Expect a PROXY protocol v2 header first (only honoured from `trusted_proxies`)."""

    @property
    def implicit_tls(self) -> bool:
        """TLS from the start of the session (465, 993), not after STARTTLS."""
        return self.kind in (ListenerKind.SUBMISSIONS, ListenerKind.IMAPS)

    @property
    def tls_on_accept(self) -> bool:
        """Whether the socket server does the TLS handshake itself. Not behind a PROXY-protocol
        load balancer: its header comes in clear before the handshake, so the session reads
        it first and then starts TLS."""
        return self.implicit_tls and not self.proxy_protocol


class TlsConfig(Model):
    cert_file: Path
    key_file: Path
    secret_name: str | None = None
    """The kubernetes.io/tls Secret the files are mounted from. With the config read from the API,
    the pod watches it too, so a renewed certificate is served within seconds rather than at the
    kubelet's next volume sync."""


class Mailbox(Model):
    address: Address
    password_hash: PasswordHash
    quota_bytes: Annotated[int, Field(ge=0)] = 0
    """0 is unlimited."""
    send_as: tuple[Address, ...] = ()
    suspended: bool = False
    display_name: str | None = None


class Alias(Model):
    address: AliasAddress
    """An address, or @domain for the domain's catch-all."""
    destinations: Annotated[tuple[Address, ...], Field(min_length=1)]


class DkimAlgorithm(StrEnum):
    RSA_SHA256 = "rsa-sha256"
    ED25519_SHA256 = "ed25519-sha256"


class DkimKey(Model):
    domain: Domain
    selector: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", max_length=63)]
    algorithm: DkimAlgorithm
    private_key_file: Path


class Limits(Model):
    max_message_bytes: Annotated[int, Field(ge=1024)] = 50 * 2**20
    max_recipients: Annotated[int, Field(ge=1)] = 100
    max_connections: Annotated[int, Field(ge=1)] = 1000
    max_connections_per_ip: Annotated[int, Field(ge=1)] = 50
    command_timeout_seconds: Annotated[float, Field(gt=0)] = 300.0
    auth_failures_before_lockout: Annotated[int, Field(ge=1)] = 10
    auth_lockout_seconds: Annotated[float, Field(ge=0)] = 300.0


class Storage(Model):
    mail_root: Path
    """Mailboxes live in <mail_root>/<domain>/<local part>/ as Maildir++."""
    queue_dir: Path
    """The outbound queue (remote recipients)."""


class PurgedMailbox(Model):
    """A deleted mailbox whose stored mail every pod removes from its volume (the Mailbox had
    deletionPolicy Delete). Only listed addresses are ever removed, so Retain is the default."""

    address: Address
    since: datetime
    """When the deletion was requested; the operator stops listing it after a while."""


class ResolverConfig(Model):
    """DNS as the pod's checks and outbound delivery see it (one shared async resolver)."""

    nameservers: tuple[str, ...] = ()
    """host or host:port entries; empty uses /etc/resolv.conf."""
    timeout_seconds: Annotated[float, Field(gt=0)] = 5.0
    cache_entries: Annotated[int, Field(ge=0)] = 10_000


class RelayHost(Model):
    """A smarthost: where mail leaves when port 25 is blocked. TLS is always required (implicit
    on 465, STARTTLS otherwise) and its certificate verified."""

    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    username: str | None = None
    password_file: Path | None = None
    """The relay password, read at connect time (a mounted Secret key; never in the config)."""
    domains: tuple[Domain, ...] = ()
    """Recipient domains routed through this relay; empty: every remote domain (global)."""


class OutboundConfig(Model):
    """The outbound queue, remote delivery, DKIM signing, bounces, SRS and smarthosts."""

    enabled: bool = True
    """Queue remote recipients of authenticated and forwarded mail; off: they get 451 4.4.3."""
    lifetime_seconds: Annotated[float, Field(gt=0)] = 5 * 86400.0
    retry_initial_seconds: Annotated[float, Field(gt=0)] = 300.0
    retry_max_seconds: Annotated[float, Field(gt=0)] = 4 * 3600.0
    delay_warning_seconds: Annotated[float, Field(ge=0)] = 4 * 3600.0
    """A local sender whose message is still being retried after this long gets one "delayed"
    DSN (RFC 3464) for it, unless NOTIFY excludes DELAY; 0: never."""
    max_connections_per_destination: Annotated[int, Field(ge=1)] = 10
    max_messages_per_connection: Annotated[int, Field(ge=1)] = 100
    max_messages_per_second_per_destination: Annotated[float, Field(ge=0)] = 0.0
    """0 is unlimited."""
    max_deliveries: Annotated[int, Field(ge=1)] = 200
    """Concurrent connections over all destinations."""
    connect_timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    command_timeout_seconds: Annotated[float, Field(gt=0)] = 300.0
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 25
    """The port remote MXs are contacted on: 25 except in tests."""
    mta_sts_port: Annotated[int, Field(ge=1, le=65535)] = 443
    """The HTTPS port MTA-STS policies are fetched from: 443 except in tests."""
    ca_file: Path | None = None
    """Extra trusted CAs (PEM) for MTA-STS, DANE-less verified TLS and relays; tests only."""
    relays: tuple[RelayHost, ...] = ()
    srs_domain: Domain | None = None
    """Forwarded mail's envelope sender is rewritten into this domain (SRS); None: no SRS."""
    srs_secret_files: tuple[Path, ...] = ()
    """SRS HMAC keys, one per file (a mounted Secret): the first signs, every one verifies, so
    a rotation lists the new key first and keeps the previous one until old bounces are done."""
    srs_max_age_days: Annotated[int, Field(ge=1, le=1000)] = 21

    @model_validator(mode="after")
    def _srs_needs_a_key(self) -> OutboundConfig:
        if self.srs_domain is not None and not self.srs_secret_files:
            raise ValueError("srs_domain needs at least one srs_secret_files entry")
        return self


class RateLimit(Model):
    """At most `count` events per `seconds` (a token bucket: bursts up to `count`)."""

    count: Annotated[int, Field(ge=1)]
    seconds: Annotated[float, Field(gt=0)]


class RateLimits(Model):
    """Pod-wide (shared by the workers); each key is the client IP or its /24 (IPv6: /64).
    None disables."""

    connections_per_ip: RateLimit | None = RateLimit(count=60, seconds=60)
    connections_per_network: RateLimit | None = RateLimit(count=300, seconds=60)
    messages_per_ip: RateLimit | None = RateLimit(count=120, seconds=60)
    messages_per_network: RateLimit | None = RateLimit(count=600, seconds=60)


class DnsListKind(StrEnum):
    IP = "ip"  # <reversed client IP>.<zone>
    DOMAIN = "domain"  # <MAIL FROM domain>.<zone> and <HELO>.<zone>


class DnsList(Model):
    """A DNSBL (positive weight) or DNSWL (negative weight) zone."""

    zone: Domain
    kind: DnsListKind = DnsListKind.IP
    weight: int = 1
    answers: tuple[ipaddress.IPv4Address, ...] = ()
    """Only these A answers count (e.g. 127.0.0.2); empty: any 127.0.0.0/8 answer."""


class Greylisting(Model):
    """Temporarily refuse an unknown (client /24, sender, recipient) triplet once."""

    enabled: bool = False
    delay_seconds: Annotated[float, Field(ge=0)] = 300.0
    retry_window_seconds: Annotated[float, Field(gt=0)] = 4 * 3600.0
    pass_seconds: Annotated[float, Field(gt=0)] = 36 * 86400.0
    """How long a triplet that retried stays known."""


class InboundChecks(Model):
    """SPF, DKIM verification, DMARC, ARC and abuse defences on inbound mail (port 25 only;
    authenticated submission is never checked here)."""

    enabled: bool = True
    """False turns every inbound check off (no Authentication-Results either)."""
    spf: bool = True
    dkim: bool = True
    dmarc: bool = True
    dmarc_enforce: bool = True
    """Act on p=reject (550 5.7.1 at end of DATA) and p=quarantine (Junk); else only record."""
    junk_folder: str = "Junk"
    arc: bool = True
    trusted_arc_sealers: tuple[Domain, ...] = ()
    """ARC sealers (d= of a passing chain) whose recorded pass overrides a DMARC failure."""
    spf_fail_reject: bool = False
    """Reject SPF fail outright at MAIL FROM (else DMARC decides)."""
    helo_checks: bool = True
    """Refuse malformed HELO names, IP literals that are not the client's, and our own names."""
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    dnsbl: tuple[DnsList, ...] = ()
    dnsbl_threshold: Annotated[int, Field(ge=1)] = 1
    """Refuse the client when the weights of the lists naming it add up to this."""
    greylisting: Greylisting = Field(default_factory=Greylisting)
    exempt_networks: tuple[IpNetwork, ...] = (
        ipaddress.IPv4Network("127.0.0.0/8"),
        ipaddress.IPv6Network("::1/128"),
    )
    """Clients the abuse defences (rate limits, DNSBL, greylisting, HELO) leave alone."""
    state_dir: Path | None = None
    """DMARC report data and the greylist; default <mail_root>/.inbound."""
    timeout_seconds: Annotated[float, Field(gt=0)] = 20.0
    """Overall time for the end-of-DATA checks; beyond it they count as temperror."""


class MailpodConfig(Model):
    version: int = CONFIG_VERSION
    hostname: Domain
    """Our name in greetings, Received headers and certificates."""
    listeners: tuple[Listener, ...]
    tls: TlsConfig | None = None
    domains: tuple[Domain, ...]
    mailboxes: tuple[Mailbox, ...] = ()
    aliases: tuple[Alias, ...] = ()
    dkim_keys: tuple[DkimKey, ...] = ()
    limits: Limits = Field(default_factory=Limits)
    storage: Storage
    trusted_proxies: tuple[IpNetwork, ...] = ()
    """Peers allowed to send a PROXY header carrying the real client address."""
    resolver: ResolverConfig = Field(default_factory=ResolverConfig)
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    checks: InboundChecks = Field(default_factory=InboundChecks)
    purged_mailboxes: tuple[PurgedMailbox, ...] = ()

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != CONFIG_VERSION:
            raise ValueError(f"this mailpod understands config version {CONFIG_VERSION}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MailpodConfig:
        domains = set(self.domains)
        seen: set[str] = set()
        for mailbox in self.mailboxes:
            if mailbox.address.rpartition("@")[2] not in domains:
                raise ValueError(f"mailbox {mailbox.address}: its domain is not in domains")
            if mailbox.address in seen:
                raise ValueError(f"mailbox {mailbox.address} is listed twice")
            seen.add(mailbox.address)
        for alias in self.aliases:
            if alias.address.rpartition("@")[2] not in domains:
                raise ValueError(f"alias {alias.address}: its domain is not in domains")
            if alias.address in seen:
                raise ValueError(f"{alias.address} is both a mailbox and an alias, or listed twice")
            seen.add(alias.address)
        # Maildirs are named in lower case: a listed address must not share one with a mailbox.
        in_use = {mailbox.address.lower() for mailbox in self.mailboxes}
        for purged in self.purged_mailboxes:
            if purged.address.lower() in in_use:
                raise ValueError(f"{purged.address} is a mailbox: its stored mail cannot be purged")
        tls_kinds = {
            ListenerKind.SUBMISSION,
            ListenerKind.SUBMISSIONS,
            ListenerKind.IMAP,
            ListenerKind.IMAPS,
        }
        if self.tls is None and any(listener.kind in tls_kinds for listener in self.listeners):
            raise ValueError("submission and IMAP listeners need tls (AUTH only over TLS)")
        bound: set[tuple[str, int]] = set()
        for listener in self.listeners:
            where = (listener.address, listener.port)
            if listener.port and where in bound:
                raise ValueError(f"two listeners on {listener.address}:{listener.port}")
            bound.add(where)
        return self


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file, field path and reason."""


def parse_document(name: str, text: str) -> dict[str, Any]:
    """One config document: JSON when `name` ends in .json, else YAML (a superset of JSON)."""
    try:
        document = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"{name}: cannot be read: {error}") from error
    if not isinstance(document, dict):
        raise ConfigError(f"{name}: a config document must be a mapping")
    return document


def _shards(path: Path) -> list[Path]:
    if path.is_dir():
        # Kubernetes mounts Secret keys as symlinks next to ..data; skip the dot entries.
        return sorted(
            p
            for p in path.iterdir()
            if not p.name.startswith(".") and p.suffix in (".json", ".yaml", ".yml") and p.is_file()
        )
    return [path]


_SHARD_LISTS = ("mailboxes", "aliases", "dkim_keys", "domains")


def read_documents(paths: Sequence[Path] | Path) -> list[tuple[str, dict[str, Any]]]:
    """The documents of config files and directories of shards, in merge order, each with the
    name of its file."""
    files: list[Path] = []
    for path in [paths] if isinstance(paths, Path) else paths:
        if not path.exists():
            raise ConfigError(f"{path}: no such file or directory")
        files += _shards(path)
    if not files:
        raise ConfigError("no configuration files found")
    documents = []
    for file in files:
        try:
            text = file.read_text()
        except OSError as error:
            raise ConfigError(f"{file}: cannot be read: {error}") from error
        documents.append((str(file), parse_document(str(file), text)))
    return documents


def config_from_documents(documents: Sequence[tuple[str, Mapping[str, Any]]]) -> MailpodConfig:
    """Merge and validate named documents, whether they come from files or from the API.

    The operator splits large configs (an object holds at most 1 MiB): one document holds the
    settings, the others only add `mailboxes`, `aliases`, `dkim_keys` or `domains` entries."""
    if not documents:
        raise ConfigError("no configuration documents")
    merged: dict[str, Any] = {}
    for name, document in documents:
        for key, value in document.items():
            if key in _SHARD_LISTS and key in merged:
                if not isinstance(value, list) or not isinstance(merged[key], list):
                    raise ConfigError(f"{name}: {key} must be a list")
                merged[key] = [*merged[key], *value]
            elif key in merged:
                raise ConfigError(f"{name}: {key} is set by more than one file")
            else:
                merged[key] = value
    try:
        return MailpodConfig.model_validate(merged)
    except ValidationError as error:
        problems = [
            f"{'.'.join(str(part) for part in detail['loc']) or '(config)'}: "
            f"{detail['msg'].removeprefix('Value error, ')}"
            for detail in error.errors()
        ]
        names = ", ".join(name for name, _ in documents)
        raise ConfigError(f"invalid config ({names}):\n  " + "\n  ".join(problems)) from None


def load_config(paths: Sequence[Path] | Path) -> MailpodConfig:
    """Load and validate a config from files or directories of shards."""
    return config_from_documents(read_documents(paths))


def dump_config(config: MailpodConfig) -> str:
    return json.dumps(config.model_dump(mode="json", exclude_defaults=False), indent=1)
