"""The API config source's pure parts: index verification, merging exactly like the files, and
partial updates seen in either order, on Secrets rendered by the operator's own renderer."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from letterbox.render import podconfig_secrets
from letterbox.render.podconfig_secrets import render_pod_config_secrets
from mailpod.cli import build_parser
from mailpod.config import ConfigError, Mailbox, MailpodConfig, load_config
from mailpod.kubesource import (
    INDEX_KEY,
    SETTINGS_KEY,
    Assembled,
    ConfigAssembler,
    KubeConnection,
    KubeSourceError,
    Refused,
    Unchanged,
    Waiting,
    parse_index,
)

HASH = "$2b$04$" + "a" * 53
Secret = dict[str, Any]


def _config(mailboxes: int = 3) -> MailpodConfig:
    return MailpodConfig.model_validate(
        {
            "hostname": "mail.example.com",
            "listeners": [{"kind": "smtp", "port": 25}],
            "domains": ["example.com", "example.org"],
            "mailboxes": [
                {"address": f"user{i}@example.com", "password_hash": HASH} for i in range(mailboxes)
            ],
            "aliases": [{"address": "team@example.com", "destinations": ["user0@example.com"]}],
            "storage": {"mail_root": "/var/mail", "queue_dir": "/var/queue"},
        }
    )


def _with(config: MailpodConfig, address: str) -> MailpodConfig:
    mailbox = Mailbox(address=address, password_hash=HASH)
    return config.model_copy(update={"mailboxes": (*config.mailboxes, mailbox)})


def _render(config: MailpodConfig, min_shards: int = 4) -> dict[str, Secret]:
    secrets = render_pod_config_secrets(
        config, name_prefix="pod", namespace="mail", min_shards=min_shards
    )
    return {s["metadata"]["name"]: s for s in secrets}


def _feed(assembler: ConfigAssembler, secrets: dict[str, Secret]) -> None:
    for name, secret in secrets.items():
        assembler.update(name, secret)


def _addresses(outcome: object) -> set[str]:
    assert isinstance(outcome, Assembled), outcome
    return {m.address for m in outcome.config.mailboxes}


def _payload(secret: Secret, key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def _set(secret: Secret, key: str, payload: bytes) -> Secret:
    changed = copy.deepcopy(secret)
    changed["data"][key] = base64.b64encode(payload).decode()
    return changed


def _reindex(settings: Secret, shard_name: str, payload: bytes) -> Secret:
    """The settings Secret with its index naming `payload` as shard `shard_name`'s content."""
    index = json.loads(_payload(settings, INDEX_KEY))
    for shard in index["shards"]:
        if shard["secret"] == shard_name:
            shard["sha256"] = hashlib.sha256(payload).hexdigest()
    return _set(settings, INDEX_KEY, json.dumps(index).encode())


def _changed_shard(before: dict[str, Secret], after: dict[str, Secret]) -> str:
    changed = [n for n in after if n != "pod-config" and after[n]["data"] != before[n]["data"]]
    assert len(changed) == 1
    return changed[0]


def test_layout_names_match_the_operator() -> None:
    assert podconfig_secrets.SETTINGS_KEY == SETTINGS_KEY
    assert podconfig_secrets.INDEX_KEY == INDEX_KEY


def test_assembles_what_load_config_reads_from_the_mounted_files(tmp_path: Path) -> None:
    secrets = _render(_config(50))
    settings_dir, shards_dir = tmp_path / "config", tmp_path / "shards"
    for directory, names in ((settings_dir, ["pod-config"]), (shards_dir, list(secrets)[:-1])):
        directory.mkdir()
        for name in names:
            for key in secrets[name]["data"]:
                (directory / key).write_bytes(_payload(secrets[name], key))
    assembler = ConfigAssembler("pod-config")
    _feed(assembler, secrets)
    outcome = assembler.assemble()
    assert isinstance(outcome, Assembled)
    assert len(outcome.index.shards) == 4
    # The same merge in the same order: equal, entry order included.
    assert outcome.config == load_config([settings_dir, shards_dir])
    assert assembler.wanted == set(secrets)


def test_waits_until_every_shard_is_read() -> None:
    secrets = _render(_config())
    assembler = ConfigAssembler("pod-config")
    assert isinstance(assembler.assemble(), Waiting)  # nothing read yet
    assembler.update("pod-config", secrets["pod-config"])
    # The index names the shards to watch before any of them is read.
    assert assembler.wanted == set(secrets)
    assert assembler.assemble() == Waiting("Secret pod-config-shard-0 not read yet", starting=True)
    for name in list(secrets)[:-1]:
        assembler.update(name, secrets[name])
    assert _addresses(assembler.assemble()) == {f"user{i}@example.com" for i in range(3)}
    assert assembler.assemble() == Unchanged()  # a re-list with nothing new is a no-op


@pytest.mark.parametrize("index_first", [True, False], ids=["index-first", "shard-first"])
def test_partial_update_is_used_only_once_consistent(index_first: bool) -> None:
    before, after = _render(_config()), _render(_with(_config(), "new@example.com"))
    shard = _changed_shard(before, after)
    assembler = ConfigAssembler("pod-config")
    _feed(assembler, before)
    assert "new@example.com" not in _addresses(assembler.assemble())
    if index_first:
        assembler.update("pod-config", after["pod-config"])
        # The new index names a shard version not read yet: keep the old config and wait.
        assert assembler.assemble() == Waiting(f"Secret {shard} does not match the index yet")
        assembler.update(shard, after[shard])
    else:
        assembler.update(shard, after[shard])
        # The index in force still names the old shard: nothing new to assemble yet.
        assert assembler.assemble() == Unchanged()
        assembler.update("pod-config", after["pod-config"])
    assert "new@example.com" in _addresses(assembler.assemble())


def test_shard_with_a_bad_hash_is_ignored_until_it_matches() -> None:
    secrets = _render(_config())
    assembler = ConfigAssembler("pod-config")
    _feed(assembler, secrets)
    assert isinstance(assembler.assemble(), Assembled)
    shard = "pod-config-shard-1"
    key = next(iter(secrets[shard]["data"]))
    # A new index whose hash no shard has (a corrupt write): never used, the old set stays.
    new = _with(_config(), "new@example.com")
    corrupt_index = _reindex(secrets["pod-config"], shard, b"something else")
    assembler.update("pod-config", corrupt_index)
    assert assembler.assemble() == Waiting(f"Secret {shard} does not match the index yet")
    assembler.update(shard, _set(secrets[shard], key, b'{"mailboxes":[]}'))
    assert assembler.assemble() == Waiting(f"Secret {shard} does not match the index yet")
    # The next good update is used as soon as it is consistent.
    _feed(assembler, _render(new))
    assert "new@example.com" in _addresses(assembler.assemble())


def test_consistent_but_invalid_config_is_refused_once_then_a_fix_is_used() -> None:
    secrets = _render(_config())
    assembler = ConfigAssembler("pod-config")
    _feed(assembler, secrets)
    assembler.assemble()
    shard = "pod-config-shard-2"
    key = next(iter(secrets[shard]["data"]))
    document = json.loads(_payload(secrets[shard], key))
    document["mailboxes"].append({"address": "x@unknown.test", "password_hash": HASH})
    bad = json.dumps(document).encode()
    assembler.update(shard, _set(secrets[shard], key, bad))
    assembler.update("pod-config", _reindex(secrets["pod-config"], shard, bad))
    outcome = assembler.assemble()
    assert isinstance(outcome, Refused)
    assert "x@unknown.test: its domain is not in domains" in str(outcome.error)
    assert f"{shard}/{key}" in str(outcome.error)  # names where the documents came from
    assert assembler.assemble() == Unchanged()  # refused once, not on every event
    fixed = _render(_with(_config(), "fixed@example.com"))
    _feed(assembler, fixed)
    assert "fixed@example.com" in _addresses(assembler.assemble())


def test_settings_not_matching_their_index_are_refused() -> None:
    secrets = _render(_config())
    settings = _set(secrets["pod-config"], SETTINGS_KEY, b'{"hostname":"other.example.com"}')
    assembler = ConfigAssembler("pod-config")
    _feed(assembler, {**secrets, "pod-config": settings})
    outcome = assembler.assemble()
    assert isinstance(outcome, Refused)
    assert "config.json does not match its index" in str(outcome.error)
    assert assembler.assemble() == Unchanged()
    # Repaired in place, with the same index: used.
    assembler.update("pod-config", secrets["pod-config"])
    assert isinstance(assembler.assemble(), Assembled)


def test_a_duplicate_entry_across_shards_is_refused() -> None:
    # Mid-move between shards, as load_config refuses it from files.
    secrets = _render(_config())
    assembler = ConfigAssembler("pod-config")
    shard = "pod-config-shard-3"
    key = next(iter(secrets[shard]["data"]))
    document = json.loads(_payload(secrets[shard], key))
    document["mailboxes"] = [
        {"address": f"user{i}@example.com", "password_hash": HASH} for i in range(3)
    ]
    payload = json.dumps(document).encode()
    _feed(assembler, secrets)
    assembler.update(shard, _set(secrets[shard], key, payload))
    assembler.update("pod-config", _reindex(secrets["pod-config"], shard, payload))
    outcome = assembler.assemble()
    assert isinstance(outcome, Refused) and "listed twice" in str(outcome.error)


def test_more_shards_are_watched_and_waited_for() -> None:
    before, after = _render(_config(), min_shards=2), _render(_config(), min_shards=4)
    assembler = ConfigAssembler("pod-config")
    _feed(assembler, before)
    assert isinstance(assembler.assemble(), Assembled)
    assert len(assembler.wanted) == 3
    for name in ("pod-config-shard-0", "pod-config-shard-1", "pod-config"):
        assembler.update(name, after[name])
    assert assembler.wanted == set(after)
    assert assembler.assemble() == Waiting("Secret pod-config-shard-2 not read yet", starting=True)
    for name in ("pod-config-shard-2", "pod-config-shard-3"):
        assembler.update(name, after[name])
    outcome = assembler.assemble()
    assert isinstance(outcome, Assembled) and len(outcome.index.shards) == 4


def test_deleted_secrets_keep_the_config_in_force() -> None:
    secrets = _render(_config())
    assembler = ConfigAssembler("pod-config")
    _feed(assembler, secrets)
    assembler.assemble()
    assembler.update("pod-config-shard-0", None)
    assert assembler.assemble() == Unchanged()  # the index did not change
    assembler.update("pod-config", None)
    assert assembler.assemble() == Waiting("Secret pod-config does not exist")
    assembler.forget("pod-config-shard-0")
    assert assembler.wanted == {"pod-config"}


def test_an_unreadable_index_is_refused() -> None:
    secrets = _render(_config())
    settings = _set(secrets["pod-config"], INDEX_KEY, b"{")
    assembler = ConfigAssembler("pod-config")
    assembler.update("pod-config", settings)
    outcome = assembler.assemble()
    assert isinstance(outcome, Refused) and "index: not JSON" in str(outcome.error)
    assert assembler.assemble() == Unchanged()


SHA = "0" * 64


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ({"version": 2, "settingsSha256": SHA, "shards": []}, "version 2"),
        ({"version": 1, "shards": []}, "needs settingsSha256"),
        ({"version": 1, "settingsSha256": SHA, "shards": [{"secret": "a"}]}, "shards.0 needs"),
        (
            {
                "version": 1,
                "settingsSha256": SHA,
                "shards": [{"secret": "a", "key": "k", "sha256": SHA}] * 2,
            },
            "listed twice",
        ),
        ([], "must be a mapping"),
    ],
)
def test_index_validation(index: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_index(json.dumps(index).encode())


def test_index_of_the_renderer() -> None:
    settings = _render(_config())["pod-config"]
    raw = _payload(settings, INDEX_KEY)
    index = parse_index(raw)
    assert [s.secret for s in index.shards] == [f"pod-config-shard-{k}" for k in range(4)]
    assert index.settings_sha256 == hashlib.sha256(_payload(settings, SETTINGS_KEY)).hexdigest()
    assert index.digest == hashlib.sha256(raw).hexdigest()


# --- connection settings -------------------------------------------------------------------------


def _kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [
                    {"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "mail"}}
                ],
                "current-context": "x",
            }
        )
    )
    return path


def test_kubeconfig_with_token(tmp_path: Path) -> None:
    ca = trustme.CA()
    cluster = {
        "server": "https://127.0.0.1:6443/",
        "certificate-authority-data": base64.b64encode(ca.cert_pem.bytes()).decode(),
    }
    connection = KubeConnection.from_kubeconfig(
        _kubeconfig(tmp_path / "kc", cluster, {"token": "abc"})
    )
    assert connection.server == "https://127.0.0.1:6443"
    assert connection.namespace == "mail"
    assert connection.headers()["Authorization"] == "Bearer abc"


def test_kubeconfig_with_client_certificate_files(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("admin")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "admin.crt"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "admin.key"))
    # Relative paths are relative to the kubeconfig, as kubectl reads them.
    connection = KubeConnection.from_kubeconfig(
        _kubeconfig(
            tmp_path / "kc",
            {"server": "https://k:6443", "certificate-authority": "ca.crt"},
            {"client-certificate": "admin.crt", "client-key": "admin.key"},
        )
    )
    assert "Authorization" not in connection.headers()


def test_kubeconfig_exec_plugins_are_not_supported(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path / "kc", {"server": "https://k"}, {"exec": {"command": "x"}})
    with pytest.raises(KubeSourceError, match="only token and client-certificate"):
        KubeConnection.from_kubeconfig(path)


def test_in_cluster_reads_the_token_on_every_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    (tmp_path / "token").write_text("one\n")
    (tmp_path / "namespace").write_text("mail")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    connection = KubeConnection.in_cluster(tmp_path)
    assert connection.server == "https://[fd00::1]:443"
    assert connection.namespace == "mail"
    assert connection.headers()["Authorization"] == "Bearer one"
    (tmp_path / "token").write_text("two\n")  # the kubelet rotated it
    assert connection.headers()["Authorization"] == "Bearer two"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(KubeSourceError, match="not in a cluster"):
        KubeConnection.in_cluster(tmp_path)


def test_run_takes_the_api_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILPOD_CONFIG_SECRET", "pod-config")
    monkeypatch.setenv("MAILPOD_NAMESPACE", "mail")
    monkeypatch.delenv("MAILPOD_KUBECONFIG", raising=False)
    args = build_parser().parse_args(["run", "--config", "/etc/mailpod"])
    assert (args.config_secret, args.namespace, args.kubeconfig) == ("pod-config", "mail", None)
    monkeypatch.delenv("MAILPOD_CONFIG_SECRET")
    assert build_parser().parse_args(["run", "--config", "/c"]).config_secret is None


def test_ten_thousand_mailboxes_one_update_reparses_one_shard() -> None:
    """Figures, not a timed assertion: the swap runs on the worker's event loop."""
    config = _config(10_000)
    before = {
        s["metadata"]["name"]: s
        for s in render_pod_config_secrets(config, name_prefix="pod", namespace="mail")
    }
    assembler = ConfigAssembler("pod-config")
    _feed(assembler, before)
    started = time.perf_counter()
    assert isinstance(assembler.assemble(), Assembled)
    full = time.perf_counter() - started
    after = render_pod_config_secrets(
        _with(config, "new@example.com"),
        name_prefix="pod",
        namespace="mail",
        min_shards=len(before) - 1,
    )
    changed = [s for s in after if s["data"] != before[s["metadata"]["name"]]["data"]]
    assert len(changed) == 2  # one shard and the index
    for secret in changed:
        assembler.update(secret["metadata"]["name"], secret)
    started = time.perf_counter()
    assert "new@example.com" in _addresses(assembler.assemble())
    print(
        f"\n10,000 mailboxes in {len(before) - 1} shards: first assembly "
        f"{full * 1000:.0f} ms, one-mailbox update {(time.perf_counter() - started) * 1000:.0f} ms"
    )
