"""The pod config read live from the API server: the settings Secret (with its index) and the
shard Secrets it names, watched so a change reaches the pod in about a second.

Why not the mounted copy: the kubelet refreshes Secret volumes only on its sync (up to about a
minute), so the files are the start-up fallback and the API is the fast path (DESIGN.md, "Two
Kubernetes limits"). The pod's Role may read only its config Secrets by name (`resourceNames`),
and RBAC honours list/watch with `resourceNames` only for requests naming one object, so every
Secret gets its own list + watch with `fieldSelector=metadata.name=<name>`.

Consistency: the index in the settings Secret holds the SHA-256 of the settings document and of
every shard. A set is used only when every hash matches; until then (the operator writes shards
first and the index last, but two watches give no order between their events) the pod keeps its
current config and waits for the next event. A consistent but invalid set is refused and logged,
the current config stays.

`mailpod` never imports `kubernetes` (import-linter); this talks to the API with httpx and
supports the minimal auth a pod needs: the in-cluster ServiceAccount token, or a kubeconfig with
a bearer token or a client certificate (tests, running outside a cluster).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import random
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import yaml

from mailpod.config import ConfigError, MailpodConfig, config_from_documents, parse_document

__all__ = [
    "INDEX_KEY",
    "SETTINGS_KEY",
    "Assembled",
    "ConfigAssembler",
    "ConfigIndex",
    "KubeConfigSource",
    "KubeConnection",
    "KubeSourceError",
    "KubeSourceSettings",
    "Outcome",
    "Refused",
    "ShardRef",
    "Unchanged",
    "Waiting",
    "parse_index",
]

log = logging.getLogger("mailpod.config")
# httpx logs every request at INFO; a watch reconnects every minute or two per Secret and worker.
logging.getLogger("httpx").setLevel(logging.WARNING)

# The operator's layout (letterbox.render.podconfig_secrets); the pod cannot import the operator,
# so the names are repeated here and a unit test keeps them equal.
SETTINGS_KEY: Final = "config.json"
INDEX_KEY: Final = "index"
INDEX_VERSION: Final = 1

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")

Secret = Mapping[str, Any]


class KubeSourceError(Exception):
    """The API source cannot be set up (no credentials, unreadable kubeconfig, …)."""


# --- the index and assembling a consistent set (pure: no I/O) ------------------------------------


@dataclass(frozen=True)
class ShardRef:
    secret: str
    key: str
    sha256: str


@dataclass(frozen=True)
class ConfigIndex:
    settings_sha256: str
    shards: tuple[ShardRef, ...]
    digest: str
    """SHA-256 of the index itself: it names every hash, so it identifies the whole set."""


def _is_sha256(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def parse_index(raw: bytes) -> ConfigIndex:
    """The index of the settings Secret; ConfigError when it is not one this pod understands."""
    try:
        document = json.loads(raw)
    except ValueError as error:
        raise ConfigError(f"{INDEX_KEY}: not JSON: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{INDEX_KEY}: must be a mapping")
    if document.get("version") != INDEX_VERSION:
        raise ConfigError(
            f"{INDEX_KEY}: version {document.get('version')!r}, this mailpod understands "
            f"{INDEX_VERSION}"
        )
    settings_sha256 = document.get("settingsSha256")
    entries = document.get("shards")
    if not _is_sha256(settings_sha256) or not isinstance(entries, list):
        raise ConfigError(f"{INDEX_KEY}: needs settingsSha256 and a list of shards")
    shards = []
    for number, entry in enumerate(entries):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("secret"), str)
            and entry["secret"]
            and isinstance(entry.get("key"), str)
            and entry["key"]
            and _is_sha256(entry.get("sha256"))
        ):
            raise ConfigError(f"{INDEX_KEY}: shards.{number} needs secret, key and sha256")
        shards.append(ShardRef(entry["secret"], entry["key"], entry["sha256"]))
    # Shard keys share one directory in the projected volume, and a Secret is one watch.
    if len({s.key for s in shards}) != len(shards) or len({s.secret for s in shards}) != len(
        shards
    ):
        raise ConfigError(f"{INDEX_KEY}: a shard Secret or key is listed twice")
    return ConfigIndex(str(settings_sha256), tuple(shards), hashlib.sha256(raw).hexdigest())


def _value(secret: Secret, key: str) -> bytes | None:
    """A Secret's decoded value, None when the key is absent; ConfigError when not base64."""
    encoded = (secret.get("data") or {}).get(key)
    if encoded is None:
        return None
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ConfigError(f"{key}: not base64") from None


@dataclass(frozen=True)
class Waiting:
    """Not a consistent set (yet): keep the current config until the next event."""

    reason: str
    starting: bool = False
    """Only because a Secret was not read yet: normal while the watches start."""


@dataclass(frozen=True)
class Unchanged:
    """The set in force (or already refused) is still the latest."""


@dataclass(frozen=True)
class Refused:
    """A consistent set that does not make a valid config: refused, the current one stays."""

    index_digest: str
    error: ConfigError


@dataclass(frozen=True)
class Assembled:
    index: ConfigIndex
    config: MailpodConfig


Outcome = Waiting | Unchanged | Refused | Assembled

_NOT_SEEN: Final[Any] = object()


class _SettingsMismatch(ConfigError):
    pass


@dataclass
class ConfigAssembler:
    """The latest state of every watched Secret, and the config they make when consistent.

    Fed by the watches (`update`), asked after every event (`assemble`). No I/O, so it is
    tested on rendered Secrets alone."""

    settings_name: str
    applied: str | None = None
    """Digest of the index last assembled or refused: repeated events are no-ops."""
    _secrets: dict[str, Secret | None] = field(default_factory=dict)
    _index: ConfigIndex | None = None
    # Decoded shard documents by SHA-256: an update re-parses only the shards that changed.
    _parsed: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def wanted(self) -> set[str]:
        """The Secrets to watch: the settings Secret and the shards of its latest index."""
        shards = self._index.shards if self._index else ()
        return {self.settings_name, *(shard.secret for shard in shards)}

    def update(self, name: str, secret: Secret | None) -> None:
        """The latest version of Secret `name` (None: it does not exist)."""
        self._secrets[name] = secret
        if name == self.settings_name:
            self._index = None
            with contextlib.suppress(ConfigError):
                raw = _value(secret, INDEX_KEY) if secret is not None else None
                self._index = parse_index(raw) if raw is not None else None

    def forget(self, name: str) -> None:
        self._secrets.pop(name, None)

    def assemble(self) -> Outcome:
        try:
            return self._assemble()
        except ConfigError as error:
            # Shards can only change the outcome through a new index; a bad settings Secret
            # can be repaired without one, so its refusal is keyed on all of its data.
            if self._index is None or isinstance(error, _SettingsMismatch):
                digest = _broken_digest(self._settings())
            else:
                digest = self._index.digest
            if digest == self.applied:
                return Unchanged()
            self.applied = digest
            return Refused(digest, error)

    def _settings(self) -> Secret | None:
        return self._secrets.get(self.settings_name)

    def _assemble(self) -> Outcome:
        settings = self._secrets.get(self.settings_name, _NOT_SEEN)
        if settings is _NOT_SEEN:
            return Waiting(f"Secret {self.settings_name} not read yet", starting=True)
        if settings is None:
            return Waiting(f"Secret {self.settings_name} does not exist")
        raw_index = _value(settings, INDEX_KEY)
        if raw_index is None:
            raise ConfigError(f"Secret {self.settings_name} has no {INDEX_KEY}")
        index = parse_index(raw_index)
        if index.digest == self.applied:
            return Unchanged()
        settings_raw = _value(settings, SETTINGS_KEY)
        if (
            settings_raw is None
            or hashlib.sha256(settings_raw).hexdigest() != index.settings_sha256
        ):
            # Written in one object with the index, so waiting cannot fix it.
            raise _SettingsMismatch(
                f"Secret {self.settings_name}: {SETTINGS_KEY} does not match its {INDEX_KEY}"
            )
        payloads: list[tuple[ShardRef, bytes]] = []
        for shard in index.shards:
            secret = self._secrets.get(shard.secret, _NOT_SEEN)
            if secret is _NOT_SEEN:
                return Waiting(f"Secret {shard.secret} not read yet", starting=True)
            if secret is None:
                return Waiting(f"Secret {shard.secret} does not exist")
            try:
                payload = _value(secret, shard.key)
            except ConfigError:
                payload = None  # a shard being rewritten: its next version may be fine
            if payload is None or hashlib.sha256(payload).hexdigest() != shard.sha256:
                return Waiting(f"Secret {shard.secret} does not match the index yet")
            payloads.append((shard, payload))
        documents = [
            (f"{self.settings_name}/{SETTINGS_KEY}", self._parse(SETTINGS_KEY, settings_raw))
        ]
        # The files' order: load_config reads the settings, then the shard directory by name.
        for shard, payload in sorted(payloads, key=lambda item: item[0].key):
            documents.append((f"{shard.secret}/{shard.key}", self._document(shard, payload)))
        config = config_from_documents(documents)  # ConfigError: refused in assemble()
        self.applied = index.digest
        live = {s.sha256 for s in index.shards}
        self._parsed = {sha: doc for sha, doc in self._parsed.items() if sha in live}
        return Assembled(index, config)

    def _parse(self, key: str, payload: bytes) -> dict[str, Any]:
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            raise ConfigError(f"{key}: not UTF-8") from None
        return parse_document(key, text)

    def _document(self, shard: ShardRef, payload: bytes) -> dict[str, Any]:
        document = self._parsed.get(shard.sha256)
        if document is None:
            document = self._parse(f"{shard.secret}/{shard.key}", payload)
            self._parsed[shard.sha256] = document
        return document


def _broken_digest(settings: Secret | None) -> str:
    """Identifies a settings Secret whose index cannot be read, so it is refused once."""
    data = json.dumps((settings or {}).get("data") or {}, sort_keys=True).encode()
    return "broken:" + hashlib.sha256(data).hexdigest()


# --- connecting: in-cluster or a kubeconfig ------------------------------------------------------


@dataclass(frozen=True)
class KubeSourceSettings:
    """What `mailpod run` is told (MAILPOD_CONFIG_SECRET, MAILPOD_NAMESPACE, MAILPOD_KUBECONFIG)."""

    secret: str
    namespace: str | None = None
    kubeconfig: Path | None = None


@dataclass(frozen=True)
class KubeConnection:
    server: str
    ssl_context: ssl.SSLContext
    namespace: str | None = None
    token: str | None = None
    token_file: Path | None = None

    def headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file is not None:
            # Re-read on every request: the kubelet rotates projected ServiceAccount tokens.
            try:
                token = self.token_file.read_text().strip()
            except OSError as error:
                raise KubeSourceError(f"cannot read {self.token_file}: {error}") from error
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    @classmethod
    def in_cluster(cls, account_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeConnection:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise KubeSourceError("not in a cluster (no KUBERNETES_SERVICE_HOST) and no kubeconfig")
        if ":" in host:
            host = f"[{host}]"
        token_file = account_dir / "token"
        if not token_file.exists():
            raise KubeSourceError(f"no ServiceAccount token at {token_file}")
        try:
            context = ssl.create_default_context(cafile=str(account_dir / "ca.crt"))
        except (OSError, ssl.SSLError) as error:
            raise KubeSourceError(f"cannot load {account_dir / 'ca.crt'}: {error}") from error
        namespace_file = account_dir / "namespace"
        namespace = namespace_file.read_text().strip() if namespace_file.exists() else None
        return cls(f"https://{host}:{port}", context, namespace, token_file=token_file)

    @classmethod
    def from_kubeconfig(cls, path: Path) -> KubeConnection:
        """The current context of a kubeconfig: a server, its CA, and a bearer token (token,
        tokenFile) or a client certificate (client-certificate[-data], client-key[-data])."""
        try:
            document = yaml.safe_load(path.read_text())
            context_name = document["current-context"]
            context = _named(document, "contexts", context_name)["context"]
            cluster = _named(document, "clusters", context["cluster"])["cluster"]
            user = _named(document, "users", context["user"])["user"] or {}
            server = cluster["server"]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
            raise KubeSourceError(f"{path}: not a usable kubeconfig: {error!r}") from error
        base = path.parent

        def data(section: Mapping[str, Any], key: str) -> bytes | None:
            # Inline base64 (`<key>-data`) or a path relative to the kubeconfig, as kubectl reads.
            if f"{key}-data" in section:
                return base64.b64decode(section[f"{key}-data"])
            if key in section:
                return (base / str(section[key])).read_bytes()
            return None

        try:
            ca = data(cluster, "certificate-authority")
            context_ssl = ssl.create_default_context(cadata=ca.decode() if ca else None)
            if cluster.get("insecure-skip-tls-verify"):
                context_ssl.check_hostname = False
                context_ssl.verify_mode = ssl.CERT_NONE
            cert, key = data(user, "client-certificate"), data(user, "client-key")
            if cert and key:
                _load_client_cert(context_ssl, cert, key)
        except (OSError, ValueError, ssl.SSLError) as error:
            raise KubeSourceError(f"{path}: cannot load its certificates: {error}") from error
        token_file = user.get("tokenFile")
        if "exec" in user or "auth-provider" in user:
            raise KubeSourceError(f"{path}: only token and client-certificate auth are supported")
        return cls(
            server.rstrip("/"),
            context_ssl,
            context.get("namespace"),
            token=user.get("token"),
            token_file=base / token_file if token_file else None,
        )


def _named(document: Mapping[str, Any], kind: str, name: str) -> Mapping[str, Any]:
    for entry in document.get(kind) or []:
        if entry.get("name") == name:
            return dict(entry)
    raise KeyError(f"{kind}/{name}")


def _load_client_cert(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # ssl loads a certificate chain only from files: a private directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="mailpod-kube-") as directory:
        cert_file, key_file = Path(directory, "tls.crt"), Path(directory, "tls.key")
        for file, content in ((cert_file, cert), (key_file, key)):
            file.touch(mode=0o600)
            file.write_bytes(content)
        context.load_cert_chain(cert_file, key_file)


def connect(settings: KubeSourceSettings) -> tuple[KubeConnection, str]:
    """The connection and the namespace (MAILPOD_NAMESPACE, else the kubeconfig's or the pod's)."""
    if settings.kubeconfig is not None:
        connection = KubeConnection.from_kubeconfig(settings.kubeconfig)
    else:
        connection = KubeConnection.in_cluster()
    namespace = settings.namespace or connection.namespace
    if not namespace:
        raise KubeSourceError("no namespace: set MAILPOD_NAMESPACE")
    return connection, namespace


async def connect_with_retry(
    settings: KubeSourceSettings, what: str, logger: logging.Logger = log
) -> tuple[KubeConnection, str]:
    """`connect`, retried with back-off until it works: the pod keeps serving what it has from
    its files meanwhile. `what` names what the caller follows, for the log."""
    backoff = _Backoff(limit=60.0)
    while True:
        try:
            return connect(settings)
        except KubeSourceError as error:
            delay = backoff.delay()
            logger.error("%s from the API unavailable, retrying in %.0fs: %s", what, delay, error)
            await asyncio.sleep(delay)


def api_client(connection: KubeConnection) -> httpx.AsyncClient:
    # Not from the environment: a proxy meant for the mail traffic must not carry API calls.
    return httpx.AsyncClient(
        base_url=connection.server,
        verify=connection.ssl_context,
        trust_env=False,
        # One connection per watch (HTTP/1.1: no multiplexing without h2).
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=4),
    )


# --- watching ------------------------------------------------------------------------------------


class _Gone(Exception):
    """410: the resourceVersion is too old; list again."""


class _ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        try:  # a Status object says it best (Forbidden names the user, verb and resource)
            message = str(json.loads(body)["message"])
        except (ValueError, KeyError, TypeError):
            message = body[:300]
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass
class _Backoff:
    """Exponential with jitter, so many pods do not reconnect in step after an API outage."""

    first: float = 0.5
    limit: float = 30.0
    _next: float = 0.0

    def reset(self) -> None:
        self._next = 0.0

    def delay(self) -> float:
        self._next = min(self.limit, max(self.first, self._next * 2))
        return self._next * random.uniform(0.8, 1.2)  # noqa: S311 (jitter, not cryptography)


# Short enough that a half-open connection is noticed within a couple of minutes (the read
# timeout is a little longer); resuming a watch from its resourceVersion costs no list.
WATCH_SECONDS: Final = (60, 120)
REQUEST_TIMEOUT: Final = 10.0


@dataclass
class _SecretWatch:
    """List + watch of one Secret by name; reports every version of it, None when deleted."""

    client: httpx.AsyncClient
    connection: KubeConnection
    namespace: str
    name: str
    report: Callable[[str, Secret | None], None]

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets"

    def _params(self) -> dict[str, str]:
        return {"fieldSelector": f"metadata.name={self.name}"}

    async def run(self) -> None:
        backoff = _Backoff()
        version: str | None = None
        while True:
            began = time.monotonic()
            try:
                if version is None:
                    version = await self._list()
                    backoff.reset()
                version = await self._watch(version)
                if time.monotonic() - began > 1:
                    continue  # the server ended the watch as asked: resume it at once
                await asyncio.sleep(backoff.delay())  # but never spin on instant closes
            except _Gone:
                version = None  # re-list; no delay, the API server is answering
            except Exception as error:
                # Anything, not only HTTP errors: a watch that died would leave the pod on a
                # stale config without a word.
                delay = backoff.delay()
                # Forbidden is a broken Role (least privilege gone too far), worth an error.
                level = logging.ERROR if isinstance(error, _ApiError) else logging.WARNING
                log.log(
                    level,
                    "config watch of %s failed, retrying in %.1fs: %s",
                    self.name,
                    delay,
                    error,
                    extra={"object": self.name},
                )
                await asyncio.sleep(delay)

    async def _list(self) -> str:
        response = await self.client.get(
            self._path,
            params=self._params(),
            headers=self.connection.headers(),
            timeout=REQUEST_TIMEOUT,
        )
        if response.status_code != 200:
            raise _ApiError(response.status_code, response.text)
        body = response.json()
        items = body.get("items") or []
        self.report(self.name, items[0] if items else None)
        return str(body["metadata"]["resourceVersion"])

    async def _watch(self, version: str) -> str:
        seconds = random.randint(*WATCH_SECONDS)  # noqa: S311 (spread, not cryptography)
        params = {
            **self._params(),
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(seconds),
        }
        timeout = httpx.Timeout(REQUEST_TIMEOUT, read=seconds + 15)
        async with self.client.stream(
            "GET", self._path, params=params, headers=self.connection.headers(), timeout=timeout
        ) as response:
            if response.status_code == 410:
                raise _Gone
            if response.status_code != 200:
                raise _ApiError(
                    response.status_code, (await response.aread()).decode(errors="replace")
                )
            async for event in _events(response):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise _ApiError(int(obj.get("code") or 0), str(obj.get("message")))
                version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                if kind in ("ADDED", "MODIFIED"):
                    self.report(self.name, obj)
                elif kind == "DELETED":
                    self.report(self.name, None)
        return version


async def _events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if line.strip():
            event = json.loads(line)
            if isinstance(event, dict):
                yield event


class KubeConfigSource:
    """Keeps `on_config` fed with every new consistent, valid config from the API.

    `run()` never returns (cancel it): it retries connecting and watching forever, so a pod
    whose API is unreachable keeps serving the config from its files and catches up later."""

    def __init__(
        self,
        settings: KubeSourceSettings,
        on_config: Callable[[MailpodConfig], object],
        on_refused: Callable[[ConfigError], object] = lambda error: None,
    ) -> None:
        self.settings = settings
        self.on_config = on_config
        self.on_refused = on_refused
        self.assembler = ConfigAssembler(settings.secret)
        self._changed = asyncio.Event()
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._waiting_for = ""

    async def run(self) -> None:
        connection, namespace = await connect_with_retry(self.settings, "config")
        async with api_client(connection) as client:
            try:
                while True:
                    self._sync_watches(client, connection, namespace)
                    await self._changed.wait()
                    self._changed.clear()
                    try:
                        self._evaluate()
                    except Exception:  # never stop following the API over one bad version
                        log.exception("config from the API could not be applied")
            finally:
                tasks = list(self._watches.values())
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def _report(self, name: str, secret: Secret | None) -> None:
        if name in self._watches:
            self.assembler.update(name, secret)
            self._changed.set()

    def _sync_watches(
        self, client: httpx.AsyncClient, connection: KubeConnection, namespace: str
    ) -> None:
        wanted = self.assembler.wanted
        for name in set(self._watches) - wanted:
            self._watches.pop(name).cancel()
            self.assembler.forget(name)
        for name in wanted - set(self._watches):
            watch = _SecretWatch(client, connection, namespace, name, self._report)
            self._watches[name] = asyncio.create_task(watch.run(), name=f"watch {name}")

    def _evaluate(self) -> None:
        started = time.perf_counter()
        outcome = self.assembler.assemble()
        if isinstance(outcome, Waiting):
            if outcome.reason != self._waiting_for:  # once per reason, not once per event
                self._waiting_for = outcome.reason
                log.log(
                    logging.DEBUG if outcome.starting else logging.INFO,
                    "config from the API not consistent yet, keeping the current one: %s",
                    outcome.reason,
                )
            return
        self._waiting_for = ""
        if isinstance(outcome, Refused):
            log.error("config from the API refused, keeping the previous config: %s", outcome.error)
            self.on_refused(outcome.error)
        elif isinstance(outcome, Assembled):
            log.info(
                "config from the API assembled",
                extra={
                    "pid": os.getpid(),  # which worker: each watches on its own
                    "shards": len(outcome.index.shards),
                    "index": outcome.index.digest[:12],
                    "milliseconds": round((time.perf_counter() - started) * 1000, 1),
                },
            )
            self.on_config(outcome.config)
