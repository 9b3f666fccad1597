"""The mail pod config as Secrets that each stay well under Kubernetes' 1 MiB object limit.

Layout (the pod merges them with `mailpod.config.load_config([settings dir, shards dir])`):

- `<prefix>-config`: `config.json`, the settings document (everything except the three long
  lists), and `index`, naming every shard with the SHA-256 of its payload. The index has no
  .json/.yaml suffix, so the loader, which reads only those, never takes it for config.
- `<prefix>-config-shard-<k>` for k < N: `shard-<kkkk>.json` holding the `mailboxes`, `aliases`
  and `dkim_keys` entries whose key (address, or domain/selector) hashes to k.

Sharding: shard = first 8 bytes of SHA-256(key) mod N, with N a power of two. An entry's shard
depends only on its own key and N, so adding, changing or removing a mailbox rewrites exactly one
shard. N is the smallest power of two (at least `min_shards`) for which every shard fits the
budget; when N doubles, shard k splits into k and k+N (the hash's low bits), so half the
entries move and every new shard is a subset of one old one. N never shrinks on its own: the
reconciler passes the current N back as `min_shards` (`shard_count`), so deleting mailboxes
never reshuffles. The shard Secrets are the pod's volumes, so a doubling (rare: at about 2,300,
4,600, 9,000… mailboxes of ~220 bytes) rolls the pods once; `min_config_shards` in
the settings avoids even that. Shards beyond N (left from a larger N) carry the
`letterbox.dev/pod-config` label for the reconciler to prune.

Budget: 512 KiB of JSON per Secret. The API server limits a Secret's decoded data to 1 MiB,
but the object also travels base64-encoded in JSON (x4/3: 683 KiB), sits in etcd with its
metadata and is held by every watcher, so the budget leaves room in every representation.
Hashing balances shards to within about 5% of each other (10,000 mailboxes: 8 shards of
272-290 KiB), so just after a doubling they are a little over half full.

Apply order matters for a pod watching the API: shards first, the settings Secret (with the
index) last, so an index never names a shard that does not exist yet. A pod reading them through
the API should assemble only a set whose shard hashes match the index; from files, `load_config`
refuses an entry listed twice (mid-move between shards) and the pod keeps its previous config.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from letterbox.api.meta import GROUP
from letterbox.render.labels import workload_metadata
from mailpod.config import Alias, Mailbox, MailpodConfig

SHARD_BUDGET_BYTES = 512 * 1024
MAX_SHARDS = 1024
SETTINGS_KEY = "config.json"
INDEX_KEY = "index"
INDEX_VERSION = 1
SHARDED_LISTS = ("aliases", "dkim_keys", "mailboxes")

CONFIG_LABEL = f"{GROUP}/pod-config"
"""Value: the name prefix. Lets the reconciler list (and prune) every Secret of one config."""
PART_LABEL = f"{GROUP}/pod-config-part"
"""Value: `settings` or `shard`."""
COMPONENT = "config"


def settings_secret_name(name_prefix: str) -> str:
    return f"{name_prefix}-config"


def shard_secret_name(name_prefix: str, index: int) -> str:
    return f"{name_prefix}-config-shard-{index}"


def shard_key(index: int) -> str:
    # Zero-padded: the loader reads a directory's files in name order, and so merges shards in
    # index order; the projected volume puts every shard's key in one directory, so keys differ.
    return f"shard-{index:04d}.json"


def _encode(value: Any) -> bytes:
    # ASCII only: the pod reads the files with Path.read_text() in whatever locale the image has.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bucket(key: str, count: int) -> int:
    # `count` is a power of two, so this keeps the hash's low bits: doubling `count` splits
    # shard k into k and k + count, and no entry moves anywhere else.
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count


@dataclass(frozen=True, order=True)
class _Entry:
    kind: str
    key: str
    data: bytes


@functools.lru_cache(maxsize=1 << 16)
def _encoded_entry(entry: Mailbox | Alias) -> bytes:
    # Remembered per (immutable, hashable) entry: re-encoding 10,000 unchanged mailboxes on
    # every pass cost more than everything else the shards need.
    return _encode(entry.model_dump(mode="json", exclude_defaults=True))


def _entries(config: MailpodConfig) -> list[_Entry]:
    entries = [_Entry("mailboxes", m.address, _encoded_entry(m)) for m in config.mailboxes]
    entries += [_Entry("aliases", a.address, _encoded_entry(a)) for a in config.aliases]
    entries += [
        _Entry(
            "dkim_keys",
            f"{k.domain}/{k.selector}",
            _encode(k.model_dump(mode="json", exclude_defaults=True)),
        )
        for k in config.dkim_keys
    ]
    return entries


_EMPTY_SHARD_BYTES = len(_encode({kind: [] for kind in SHARDED_LISTS}))


def _shard_count(entries: Sequence[_Entry], min_shards: int, budget: int) -> int:
    count = 1
    while count < min_shards:
        count *= 2
    while True:
        # Each entry costs its bytes plus at most one separating comma: an upper bound.
        sizes = [_EMPTY_SHARD_BYTES] * count
        for entry in entries:
            sizes[_bucket(entry.key, count)] += len(entry.data) + 1
        if max(sizes) <= budget:
            return count
        if count >= MAX_SHARDS:
            raise ValueError(
                f"the pod config needs more than {MAX_SHARDS} shards of {budget} bytes"
            )
        count *= 2


def _shard_document(entries: Sequence[_Entry]) -> bytes:
    # Assembled from the already encoded entries: the same bytes _shard_count measured.
    ordered = sorted(entries)  # by kind, then key: independent of the input order
    parts = []
    for kind in SHARDED_LISTS:
        items = b",".join(e.data for e in ordered if e.kind == kind)
        parts.append(b'"' + kind.encode() + b'":[' + items + b"]")
    return b"{" + b",".join(parts) + b"}"


def _secret(metadata: dict[str, Any], data: Mapping[str, bytes]) -> dict[str, Any]:
    # `data`, not `stringData`: server-side apply then owns exactly these keys, and a key that
    # disappears from the render is removed from the Secret.
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata,
        "data": {key: base64.b64encode(value).decode() for key, value in sorted(data.items())},
    }


def render_pod_config_secrets(
    config: MailpodConfig,
    *,
    name_prefix: str,
    namespace: str,
    labels: Mapping[str, str] | None = None,
    min_shards: int = 1,
    budget_bytes: int = SHARD_BUDGET_BYTES,
) -> list[dict[str, Any]]:
    """The config as Secrets in apply order: the shards, then the settings Secret with the
    index. `min_shards` is the current shard count (see `shard_count`), so it never shrinks."""
    settings = _encode(config.model_dump(mode="json", exclude=set(SHARDED_LISTS)))
    if len(settings) > budget_bytes:
        raise ValueError(
            f"the pod config's settings document is {len(settings)} bytes, over the "
            f"{budget_bytes}-byte budget of one Secret"
        )
    entries = _entries(config)
    count = _shard_count(entries, min_shards, budget_bytes)
    buckets: list[list[_Entry]] = [[] for _ in range(count)]
    for entry in entries:
        buckets[_bucket(entry.key, count)].append(entry)

    def metadata(name: str, part: str) -> dict[str, Any]:
        return workload_metadata(
            name,
            namespace,
            instance=name_prefix,
            component=COMPONENT,
            labels={**(labels or {}), CONFIG_LABEL: name_prefix, PART_LABEL: part},
        )

    shards: list[dict[str, Any]] = []
    index_shards: list[dict[str, str]] = []
    for number, bucket in enumerate(buckets):
        payload = _shard_document(bucket)
        assert len(payload) <= budget_bytes  # _shard_count's bound is an upper bound
        name = shard_secret_name(name_prefix, number)
        shards.append(_secret(metadata(name, "shard"), {shard_key(number): payload}))
        index_shards.append({"secret": name, "key": shard_key(number), "sha256": _sha256(payload)})
    index = {
        "version": INDEX_VERSION,
        "shardCount": count,
        "settingsSha256": _sha256(settings),
        "shards": index_shards,
    }
    main = _secret(
        metadata(settings_secret_name(name_prefix), "settings"),
        {SETTINGS_KEY: settings, INDEX_KEY: _encode(index)},
    )
    return [*shards, main]


@dataclass(frozen=True)
class ConfigSecretNames:
    """What the StatefulSet mounts and the pod's Role may read."""

    settings: str
    shards: tuple[str, ...]

    @classmethod
    def of(cls, secrets: Sequence[Mapping[str, Any]]) -> ConfigSecretNames:
        """From `render_pod_config_secrets`' output."""
        by_part: dict[str, list[str]] = {"settings": [], "shard": []}
        for secret in secrets:
            by_part[secret["metadata"]["labels"][PART_LABEL]].append(secret["metadata"]["name"])
        if len(by_part["settings"]) != 1:
            raise ValueError("expected exactly one settings Secret")
        return cls(settings=by_part["settings"][0], shards=tuple(by_part["shard"]))

    @property
    def all(self) -> tuple[str, ...]:
        return (self.settings, *self.shards)


def shard_count(settings_secret: Mapping[str, Any] | None) -> int:
    """The shard count recorded in a live settings Secret's index (1 when there is none yet),
    to pass back as `min_shards`."""
    if not settings_secret:
        return 1
    encoded = (settings_secret.get("data") or {}).get(INDEX_KEY)
    if not encoded:
        return 1
    try:
        index = json.loads(base64.b64decode(encoded))
        return max(1, int(index["shardCount"]))
    except (ValueError, KeyError, TypeError):
        return 1  # an index we cannot read is rewritten by the next apply


def config_restart_checksum(config: MailpodConfig) -> str:
    """SHA-256 of the parts of the pod config a running pod cannot change without a restart:
    the sockets it binds, its name in greetings, where it stores mail and where TLS files are.
    Mailboxes, aliases, DKIM keys, domains, limits and trusted proxies are reloaded live and
    deliberately left out, so data changes never roll the pods."""
    restart_only = config.model_dump(
        mode="json", include={"version", "hostname", "listeners", "tls", "storage"}
    )
    return _sha256(_encode(restart_only))
