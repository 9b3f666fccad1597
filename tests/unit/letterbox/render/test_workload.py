"""The mail workload renderers: golden YAML (UPDATE_GOLDEN=1 rewrites it after a deliberate
change), the restricted securityContext, a restart checksum that ignores data, config Secrets
that stay under 1 MiB at 10,000 mailboxes, and the pod loading exactly what the StatefulSet
mounts."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from letterbox.api.dkimkey import DkimAlgorithm
from letterbox.api.maildomain import MailDomain
from letterbox.api.manifests import load_manifests
from letterbox.api.settings import OperatorSettings, load_settings
from letterbox.render.dkim import DkimKeyMaterial
from letterbox.render.podconfig import PodMaterial, render_pod_config
from letterbox.render.podconfig_secrets import (
    PART_LABEL,
    ConfigSecretNames,
    config_restart_checksum,
    render_pod_config_secrets,
    shard_count,
)
from letterbox.render.workload import (
    RESTART_CHECKSUM_ANNOTATION,
    SRS_KEY,
    dkim_key_path,
    pod_listeners,
    pod_storage,
    pod_tls,
    pod_trusted_proxies,
    render_dkim_keys_secret,
    render_network_policy,
    render_pod_rbac,
    render_public_service,
    render_statefulset,
    render_workload,
    with_install_settings,
    workload_owners,
)
from mailpod import config as pod
from mailpod.cli import build_parser
from mailpod.config import load_config
from mailpod.outbound.deliver import route_for
from tests.conftest import EXAMPLES

GOLDEN = Path(__file__).parent / "golden"
DATA = Path(__file__).parent / "data"
MIB = 2**20

CUSTOM_SETTINGS = OperatorSettings.model_validate(
    {
        "namespace": "mail",
        "name": "mx",
        "image": {
            "repository": "registry.example.net/letterbox",
            "digest": "sha256:" + "ab" * 32,
            "pullPolicy": "Always",
        },
        "imagePullSecrets": ["registry-creds"],
        "replicas": 2,
        "storage": {"storageClassName": "fast-ssd", "size": "50Gi"},
        "service": {
            "annotations": {
                "service.beta.kubernetes.io/aws-load-balancer-proxy-protocol": "*",
                "external-dns.alpha.kubernetes.io/hostname": "mail.example.com",
            },
            "clientAddress": "ProxyProtocol",
            "trustedProxies": ["10.0.0.0/8", "fd00::/8"],
            "loadBalancerIP": "192.0.2.25",
            "loadBalancerSourceRanges": ["0.0.0.0/0"],
        },
        "ports": {"smtp": 10025, "http": 9090},
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "nodeSelector": {"kubernetes.io/os": "linux", "mail": "true"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "mail"}],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "mx"}},
                        },
                    }
                ]
            }
        },
        "workers": 4,
        "logFormat": "text",
        "podSecurity": {"runAsUser": 20000, "runAsGroup": 20000, "fsGroup": 20000},
        "networkPolicy": {
            "monitoringNamespaceLabels": {"team": "observability"},
            "apiServerCidrs": ["172.18.0.0/16"],
            "apiServerPorts": [6443],
        },
    }
)


def check_golden(name: str, value: Any) -> None:
    path = GOLDEN / name
    text = value if isinstance(value, str) else yaml.safe_dump(value, sort_keys=False)
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text()


def _hash(address: str) -> str:
    """A syntactically real argon2id PHC string (the length the pod config really carries)."""
    digest = base64.b64encode(hashlib.sha256(address.encode()).digest()).decode().rstrip("=")
    return f"$argon2id$v=19$m=65536,t=3,p=4${digest[:22]}${digest}"


def _example_config(settings: OperatorSettings) -> pod.MailpodConfig:
    manifests = load_manifests([(str(p), p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))])
    key = DkimKeyMaterial(
        "example.com", "lb", DkimAlgorithm.RSA_2048, (DATA / "rsa-2048.pem").read_text()
    )
    config = render_pod_config(
        manifests,
        PodMaterial(
            hostname="mail.example.com",
            listeners=pod_listeners(settings),
            storage=pod_storage(),
            tls=pod_tls(),
            password_hashes={m.spec.address: _hash(m.spec.address) for m in manifests.mailboxes},
            dkim_keys=[(key, dkim_key_path(key.domain, key.selector))],
        ),
    )
    return with_install_settings(config, settings)


def _big_config(
    mailboxes: int = 10_000, aliases: int = 1_000, domains: int = 20
) -> pod.MailpodConfig:
    names = [f"domain{d}.example" for d in range(domains)]
    boxes = tuple(
        pod.Mailbox(
            address=f"user{i}@{names[i % domains]}",
            password_hash=_hash(f"user{i}"),
            quota_bytes=5 * 2**30,
            display_name=f"User Number {i}",
        )
        for i in range(mailboxes)
    )
    return pod.MailpodConfig(
        hostname="mail.example.com",
        listeners=pod_listeners(OperatorSettings()),
        tls=pod_tls(),
        domains=tuple(names),
        mailboxes=boxes,
        aliases=tuple(
            pod.Alias(
                address=f"team{i}@{names[i % domains]}",
                destinations=tuple(boxes[(i * 7 + j) % mailboxes].address for j in range(3)),
            )
            for i in range(aliases)
        ),
        storage=pod_storage(),
    )


def _sorted(config: pod.MailpodConfig) -> pod.MailpodConfig:
    """Shards group entries by hash; the pod keys everything by address, so order is not part
    of the contract."""
    return config.model_copy(
        update={
            "mailboxes": tuple(sorted(config.mailboxes, key=lambda m: m.address)),
            "aliases": tuple(sorted(config.aliases, key=lambda a: a.address)),
            "dkim_keys": tuple(sorted(config.dkim_keys, key=lambda k: (k.domain, k.selector))),
        }
    )


def _decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def _with_mailbox(config: pod.MailpodConfig, address: str) -> pod.MailpodConfig:
    extra = pod.Mailbox(address=address, password_hash=_hash(address))
    return config.model_copy(update={"mailboxes": (*config.mailboxes, extra)})


def _statefulset(settings: OperatorSettings, config: pod.MailpodConfig) -> dict[str, Any]:
    return next(o for o in render_workload(settings, config) if o["kind"] == "StatefulSet")


def _materialise(workload: list[dict[str, Any]], root: Path) -> tuple[list[Path], dict[str, Any]]:
    """What the kubelet does with the StatefulSet: every Secret volume written out as files at
    its mount path (under `root`); returns the container's --config paths and its args."""
    statefulset = next(o for o in workload if o["kind"] == "StatefulSet")
    secrets = {o["metadata"]["name"]: o for o in workload if o["kind"] == "Secret"}
    spec = statefulset["spec"]["template"]["spec"]
    container = spec["containers"][0]
    mount_paths = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for volume in spec["volumes"]:
        if "secret" in volume:
            names = [volume["secret"]["secretName"]]
        elif "projected" in volume:
            names = [source["secret"]["name"] for source in volume["projected"]["sources"]]
        else:
            continue
        directory = root / mount_paths[volume["name"]].lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        for name in names:
            for key, value in secrets.get(name, {"data": {}})["data"].items():
                assert not (directory / key).exists(), f"two sources write {key}"
                (directory / key).write_bytes(base64.b64decode(value))
    args = build_parser().parse_args(container["args"])
    assert container["command"] == ["mailpod"] and args.command == "run"
    return [root / str(path).lstrip("/") for path in args.config], vars(args)


# --- golden files -----------------------------------------------------------------------------


def test_default_workload_golden() -> None:
    settings = OperatorSettings()
    workload = render_workload(settings, _example_config(settings))
    check_golden("workload-default.yaml", yaml.safe_dump_all(workload, sort_keys=False))


def test_custom_settings_golden() -> None:
    config = _example_config(CUSTOM_SETTINGS)
    workload = render_workload(CUSTOM_SETTINGS, config)
    picked = [o for o in workload if o["kind"] in ("Service", "StatefulSet", "NetworkPolicy")]
    check_golden("workload-custom.yaml", yaml.safe_dump_all(picked, sort_keys=False))


def test_config_secrets_golden_decoded() -> None:
    """The Secrets with their data decoded, so a reviewer can read the golden file."""
    settings = OperatorSettings()
    secrets = render_pod_config_secrets(
        _example_config(settings), name_prefix="mailpod", namespace="letterbox", min_shards=2
    )
    readable = [
        {
            "name": s["metadata"]["name"],
            "labels": s["metadata"]["labels"],
            "data": {key: json.loads(value) for key, value in _decoded(s).items()},
        }
        for s in secrets
    ]
    check_golden("workload-config-secrets.yaml", readable)


def test_dkim_keys_secret_golden() -> None:
    key = DkimKeyMaterial(
        "example.com", "lb", DkimAlgorithm.ED25519, (DATA / "ed25519.pem").read_text()
    )
    secret = render_dkim_keys_secret(OperatorSettings(), [key])
    check_golden("workload-dkim-secret.yaml", secret)
    assert dkim_key_path("example.com", "lb").name in secret["data"]


# --- settings ------------------------------------------------------------------------------------


def test_empty_settings_work_and_namespace_comes_from_the_environment() -> None:
    assert load_settings(None) == OperatorSettings()
    assert load_settings("") == OperatorSettings()
    assert load_settings("{}", {"LETTERBOX_NAMESPACE": "mail"}).namespace == "mail"
    assert load_settings("namespace: own", {"LETTERBOX_NAMESPACE": "mail"}).namespace == "own"
    assert OperatorSettings().kopf.finalizer == "letterbox.dev/finalizer"
    assert OperatorSettings().image.reference.endswith(":0.1.0")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("service: {clientAddress: ProxyProtocol}", "needs trustedProxies"),
        ("replica: 2", "Extra inputs are not permitted"),
        ("ports: {smtp: 25}", "greater than or equal to 1024"),
        ("resources: {limits: {memory: lots}}", "Kubernetes quantity"),
        ("- a list", "must be a YAML mapping"),
    ],
)
def test_bad_settings_are_refused(text: str, message: str) -> None:
    with pytest.raises((ValidationError, ValueError), match=message):
        load_settings(text)


# --- the pod spec ---------------------------------------------------------------------------------


def test_restricted_security_context() -> None:
    statefulset = _statefulset(OperatorSettings(), _example_config(OperatorSettings()))
    spec = statefulset["spec"]["template"]["spec"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["runAsNonRoot"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert all(p["containerPort"] >= 1024 for p in container["ports"])
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/var/lib/mailpod"}
    assert not any("hostPath" in volume for volume in spec["volumes"])


def test_pod_loads_exactly_what_the_statefulset_mounts(tmp_path: Path) -> None:
    settings = OperatorSettings()
    config = _example_config(settings)
    paths, args = _materialise(render_workload(settings, config), tmp_path)
    assert args["workers"] == settings.workers and args["log_format"] == "json"
    loaded = load_config(paths)
    # The pod config's paths are where the StatefulSet mounts things.
    assert loaded.tls == pod_tls() and loaded.storage == pod_storage()
    assert loaded.dkim_keys[0].private_key_file == dkim_key_path("example.com", "lb")
    assert _sorted(loaded) == _sorted(config)


def test_listener_ports_match_the_container_and_the_service() -> None:
    config = _example_config(CUSTOM_SETTINGS)
    workload = render_workload(CUSTOM_SETTINGS, config)
    statefulset = next(o for o in workload if o["kind"] == "StatefulSet")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {listener.kind.value: listener.port for listener in config.listeners} == declared
    assert declared["smtp"] == 10025
    public = render_public_service(CUSTOM_SETTINGS)
    assert {(p["port"], p["targetPort"]) for p in public["spec"]["ports"]} == {
        (25, "smtp"),
        (465, "submissions"),
        (587, "submission"),
        (993, "imaps"),
        (143, "imap"),
    }
    assert all(p["targetPort"] in declared for p in public["spec"]["ports"])


def test_client_address_modes() -> None:
    local = OperatorSettings()
    assert render_public_service(local)["spec"]["externalTrafficPolicy"] == "Local"
    assert not any(listener.proxy_protocol for listener in pod_listeners(local))
    assert pod_trusted_proxies(local) == ()

    proxy = CUSTOM_SETTINGS
    assert render_public_service(proxy)["spec"]["externalTrafficPolicy"] == "Cluster"
    by_kind = {listener.kind: listener.proxy_protocol for listener in pod_listeners(proxy)}
    assert by_kind.pop(pod.ListenerKind.HTTP) is False  # probes and scrapes send no header
    assert all(by_kind.values())
    assert [str(n) for n in pod_trusted_proxies(proxy)] == ["10.0.0.0/8", "fd00::/8"]

    cluster_ip = OperatorSettings.model_validate({"service": {"type": "ClusterIP"}})
    assert "externalTrafficPolicy" not in render_public_service(cluster_ip)["spec"]


# --- restart only for what needs it ---------------------------------------------------------


def test_data_changes_never_touch_the_statefulset() -> None:
    settings = OperatorSettings()
    config = _example_config(settings)
    before = _statefulset(settings, config)
    more = _with_mailbox(config, "carol@example.com")
    more = more.model_copy(
        update={
            "mailboxes": tuple(
                m.model_copy(update={"password_hash": _hash("new" + m.address)})
                for m in more.mailboxes
            ),
            "aliases": (
                *more.aliases,
                pod.Alias(address="team@example.com", destinations=("carol@example.com",)),
            ),
            "trusted_proxies": (ipaddress.IPv4Network("10.0.0.0/8"),),
        }
    )
    assert config_restart_checksum(more) == config_restart_checksum(config)
    assert _statefulset(settings, more) == before


@pytest.mark.parametrize(
    "change",
    [
        {"image": {"tag": "0.2.0"}},
        {"ports": {"imap": 3143}},
        {"resources": {"limits": {"memory": "4Gi"}}},
        {"workers": 8},
    ],
)
def test_restart_checksum_follows_what_needs_a_restart(change: dict[str, Any]) -> None:
    config = _example_config(OperatorSettings())
    before = _statefulset(OperatorSettings(), config)
    after = _statefulset(OperatorSettings.model_validate(change), config)
    annotation = ("spec", "template", "metadata", "annotations", RESTART_CHECKSUM_ANNOTATION)

    def pick(obj: dict[str, Any]) -> Any:
        for part in annotation:
            obj = obj[part]
        return obj

    assert pick(before) != pick(after)


def test_restart_checksum_follows_the_restart_only_config() -> None:
    settings = OperatorSettings()
    config = _example_config(settings)
    renamed = config.model_copy(update={"hostname": "mx.example.com"})
    names = ConfigSecretNames(settings="mailpod-config", shards=("mailpod-config-shard-0",))
    checksums = {
        render_statefulset(settings, names, config_checksum=config_restart_checksum(c))["spec"][
            "template"
        ]["metadata"]["annotations"][RESTART_CHECKSUM_ANNOTATION]
        for c in (config, renamed)
    }
    assert len(checksums) == 2


# --- config Secrets -------------------------------------------------------------------------------


def test_ten_thousand_mailboxes_fit_and_round_trip(tmp_path: Path) -> None:
    config = _big_config()
    settings = OperatorSettings()
    started = time.perf_counter()
    workload = render_workload(settings, config)
    elapsed = time.perf_counter() - started
    secrets = [o for o in workload if o["kind"] == "Secret"]
    wire = {s["metadata"]["name"]: len(json.dumps(s).encode()) for s in secrets}
    decoded = {
        s["metadata"]["name"]: sum(len(base64.b64decode(v)) for v in s["data"].values())
        for s in secrets
    }
    largest = max(wire, key=wire.__getitem__)
    print(
        f"\n10,000 mailboxes + 1,000 aliases: {len(secrets)} Secrets "
        f"({len(secrets) - 1} shards); largest {largest}: {wire[largest]} bytes as JSON "
        f"({wire[largest] / MIB:.2f} MiB), {max(decoded.values())} bytes decoded; "
        f"render_workload {elapsed * 1000:.0f} ms"
    )
    assert max(wire.values()) < 1 * MIB
    assert max(decoded.values()) <= 512 * 1024

    started = time.perf_counter()
    paths, _ = _materialise(workload, tmp_path)
    loaded = load_config(paths)
    print(f"load_config of the mounted Secrets: {(time.perf_counter() - started) * 1000:.0f} ms")
    assert _sorted(loaded) == _sorted(config)


def test_one_more_mailbox_rewrites_one_shard() -> None:
    config = _big_config(mailboxes=5_000, aliases=200)
    before = render_pod_config_secrets(config, name_prefix="m", namespace="n")
    count = len(before) - 1
    assert count > 1
    after = render_pod_config_secrets(
        _with_mailbox(config, "newcomer@domain3.example"),
        name_prefix="m",
        namespace="n",
        min_shards=shard_count(before[-1]),
    )
    assert [s["metadata"]["name"] for s in after] == [s["metadata"]["name"] for s in before]
    changed = [a["metadata"]["name"] for a, b in zip(after, before, strict=True) if a != b]
    assert changed[-1] == "m-config"  # the index carries the changed shard's hash
    assert len(changed) == 2


def test_output_does_not_depend_on_input_order() -> None:
    config = _big_config(mailboxes=2_000, aliases=100)
    shuffled = list(config.mailboxes)
    random.Random(7).shuffle(shuffled)
    again = config.model_copy(update={"mailboxes": tuple(shuffled)})
    kwargs: dict[str, Any] = {"name_prefix": "m", "namespace": "n", "budget_bytes": 64 * 1024}
    assert render_pod_config_secrets(again, **kwargs) == render_pod_config_secrets(config, **kwargs)


def test_doubling_splits_each_shard_in_two() -> None:
    config = _big_config(mailboxes=3_000, aliases=0)

    def members(budget: int, min_shards: int = 1) -> list[set[str]]:
        secrets = render_pod_config_secrets(
            config, name_prefix="m", namespace="n", budget_bytes=budget, min_shards=min_shards
        )
        shards = [s for s in secrets if s["metadata"]["labels"][PART_LABEL] == "shard"]
        return [
            {m["address"] for value in _decoded(s).values() for m in json.loads(value)["mailboxes"]}
            for s in shards
        ]

    small = members(200 * 1024)
    large = members(200 * 1024, min_shards=2 * len(small))
    assert len(small) & (len(small) - 1) == 0  # a power of two
    assert len(large) == 2 * len(small)
    for k, shard in enumerate(large):
        assert shard <= small[k % len(small)]
    assert members(200 * 1024, min_shards=3) == members(200 * 1024, min_shards=4)


def test_shard_count_never_shrinks_and_is_read_back() -> None:
    config = _example_config(OperatorSettings())
    secrets = render_pod_config_secrets(config, name_prefix="m", namespace="n", min_shards=8)
    assert len(secrets) == 9 and shard_count(secrets[-1]) == 8
    assert shard_count(None) == 1 and shard_count({"data": {"index": "bm90IGpzb24="}}) == 1


def test_pod_role_reads_only_its_config() -> None:
    settings = OperatorSettings()
    workload = render_workload(settings, _example_config(settings), min_shards=4)
    names = ConfigSecretNames.of([o for o in workload if o["kind"] == "Secret"])
    role = next(o for o in render_pod_rbac(settings, names) if o["kind"] == "Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": sorted([*names.all, "mailpod-dkim", "mailpod-tls"]),
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert len(names.shards) == 4


def test_network_policy_can_be_disabled() -> None:
    settings = OperatorSettings.model_validate({"networkPolicy": {"enabled": False}})
    assert render_network_policy(settings) is None
    kinds = [o["kind"] for o in render_workload(settings, _example_config(settings))]
    assert "NetworkPolicy" not in kinds


# --- the real Kubernetes schemas -------------------------------------------------------------


def test_every_object_is_valid_kubernetes() -> None:
    """Against the Kubernetes OpenAPI schemas (strict: unknown fields fail), offline."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    objects = [
        *render_workload(OperatorSettings(), _example_config(OperatorSettings())),
        *render_workload(CUSTOM_SETTINGS, _example_config(CUSTOM_SETTINGS)),
        render_dkim_keys_secret(OperatorSettings(), []),
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_every_workload_object_is_owned_by_every_domain() -> None:
    settings = OperatorSettings(namespace="mail")
    config = _example_config(settings)
    domains = [
        MailDomain.model_validate(
            {
                "metadata": {"name": name, "namespace": "mail", "uid": uid},
                "spec": {"domain": domain},
            }
        )
        for name, uid, domain in (
            ("zeta", "u-2", "zeta.example"),
            ("alpha", "u-1", "alpha.example"),
            ("offline", None, "offline.example"),  # rendered from a file: no uid, no owner
        )
    ]
    owners = workload_owners(domains)
    assert [(o["name"], o["uid"], o["controller"]) for o in owners] == [
        ("alpha", "u-1", False),
        ("zeta", "u-2", False),
    ]
    objects = [
        render_dkim_keys_secret(settings, [], owners=owners),
        *render_workload(settings, config, owners=owners),
    ]
    assert {o["kind"] for o in objects} >= {
        "StatefulSet", "Service", "PodDisruptionBudget", "NetworkPolicy", "Secret",
        "ServiceAccount", "Role", "RoleBinding",
    }  # fmt: skip
    for obj in objects:
        assert obj["metadata"]["ownerReferences"] == owners, obj["metadata"]["name"]
    # Without owners (letterbox render, local mode) nothing changes.
    assert all("ownerReferences" not in o["metadata"] for o in render_workload(settings, config))


def test_pod_config_never_purges_a_configured_mailbox() -> None:
    manifests = load_manifests([(str(p), p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))])
    since = datetime(2026, 1, 1, tzinfo=UTC)
    config = render_pod_config(
        manifests,
        PodMaterial(
            hostname="mail.example.com",
            listeners=pod_listeners(OperatorSettings(namespace="mail")),
            storage=pod_storage(),
            tls=pod_tls(),
            password_hashes={m.spec.address: _hash(m.spec.address) for m in manifests.mailboxes},
            purged_mailboxes=[
                pod.PurgedMailbox(address="ALICE@example.com", since=since),
                pod.PurgedMailbox(address="gone@example.com", since=since),
            ],
        ),
    )
    assert [p.address for p in config.purged_mailboxes] == ["gone@example.com"]


RELAY_SETTINGS = OperatorSettings.model_validate(
    {
        "outbound": {
            "relays": [
                {
                    "host": "smtp.relay.example",
                    "port": 2525,
                    "username": "letterbox",
                    "passwordSecretRef": {"name": "relay-login", "key": "password"},
                    "domains": ["gmail.com"],
                },
                {"host": "all.relay.example", "port": 465},
            ]
        }
    }
)


def test_relays_reach_the_pod_config_and_their_passwords_are_mounted_where_it_reads_them() -> None:
    config = _example_config(RELAY_SETTINGS)
    assert route_for(config.outbound, "gmail.com").relay == config.outbound.relays[0]
    assert route_for(config.outbound, "other.example").relay == config.outbound.relays[1]
    first, second = config.outbound.relays
    assert (first.host, first.port, first.username) == ("smtp.relay.example", 2525, "letterbox")
    assert second.username is None and second.password_file is None
    spec = _statefulset(RELAY_SETTINGS, config)["spec"]["template"]["spec"]
    [volume] = [v for v in spec["volumes"] if v["name"] == "relays"]
    [source] = volume["projected"]["sources"]
    assert source["secret"]["name"] == "relay-login"
    assert source["secret"]["optional"] is True  # a missing Secret does not block the pod
    [item] = source["secret"]["items"]
    [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "relays"]
    assert first.password_file == Path(mount["mountPath"]) / item["path"]
    assert item["key"] == "password" and mount["readOnly"] is True
    # The NetworkPolicy lets the pods reach a relay on a port of its own.
    policy = render_network_policy(RELAY_SETTINGS)
    assert policy is not None
    assert {"protocol": "TCP", "port": 2525} in policy["spec"]["egress"][1]["ports"]
    # Without relay passwords there is no extra volume (and so no restart for it).
    plain = _statefulset(OperatorSettings(), _example_config(OperatorSettings()))
    assert "relays" not in {v["name"] for v in plain["spec"]["template"]["spec"]["volumes"]}
    import kubernetes_validate

    for obj in render_workload(RELAY_SETTINGS, config):
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_a_relay_login_needs_both_the_username_and_the_password() -> None:
    relay = {"host": "smtp.relay.example", "username": "letterbox"}
    with pytest.raises(ValidationError, match="username and passwordSecretRef go together"):
        OperatorSettings.model_validate({"outbound": {"relays": [relay]}})


def test_srs_is_on_by_default_with_the_key_where_the_statefulset_mounts_it() -> None:
    settings = OperatorSettings()
    config = with_install_settings(_example_config(settings), settings, "example.com")
    assert config.outbound.srs_domain == "example.com"
    [key_file] = config.outbound.srs_secret_files
    spec = _statefulset(settings, config)["spec"]["template"]["spec"]
    [volume] = [v for v in spec["volumes"] if v["name"] == "srs"]
    assert volume["secret"] == {
        "secretName": "mailpod-srs",
        "defaultMode": 0o440,
        "optional": True,  # created by the reconciler before the config names it
    }
    [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "srs"]
    assert key_file == Path(mount["mountPath"]) / SRS_KEY
    # Before the key exists (no domain given) the config names none.
    assert with_install_settings(config, settings).outbound.srs_domain is None
    off = OperatorSettings.model_validate({"outbound": {"srs": {"enabled": False}}})
    names = {v["name"] for v in _statefulset(off, config)["spec"]["template"]["spec"]["volumes"]}
    assert "srs" not in names
