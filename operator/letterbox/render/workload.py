"""The install-wide mail workload: the mail pod StatefulSet, its Services, PodDisruptionBudget,
NetworkPolicy and the pod's own ServiceAccount with a Role that can read only its config.

Everything here is decided by `OperatorSettings` and the names of the config Secrets; nothing
depends on mailboxes, aliases or passwords, so data changes never change these objects (and
never roll the pods). The pod-side paths the StatefulSet mounts are defined here too, with the
helpers that put the same paths and ports into the pod config, so the two cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from letterbox.api.maildomain import MailDomain
from letterbox.api.meta import GROUP
from letterbox.api.settings import ClientAddressMode, OperatorSettings, ServiceType
from letterbox.render.dkim import DkimKeyMaterial
from letterbox.render.labels import selector_labels, workload_labels, workload_metadata
from letterbox.render.podconfig_secrets import (
    ConfigSecretNames,
    config_restart_checksum,
    render_pod_config_secrets,
)
from mailpod import config as pod

RESTART_CHECKSUM_ANNOTATION = f"{GROUP}/restart-checksum"
COMPONENT = "mail-server"
CONTAINER = "mailpod"

# Where things are inside the mail pod.
CONFIG_DIR = PurePosixPath("/etc/mailpod/config")
SHARDS_DIR = PurePosixPath("/etc/mailpod/shards")
TLS_DIR = PurePosixPath("/etc/mailpod/tls")
DKIM_DIR = PurePosixPath("/etc/mailpod/dkim")
RELAYS_DIR = PurePosixPath("/etc/mailpod/relays")
SRS_DIR = PurePosixPath("/etc/mailpod/srs")
SRS_KEY = "srs.key"
DATA_DIR = PurePosixPath("/var/lib/mailpod")
TMP_DIR = PurePosixPath("/tmp")  # noqa: S108 (an emptyDir of the pod's own, not a shared /tmp)

# Secret files readable by the owner and the pod's fsGroup only (YAML shows the decimal 288).
SECRET_MODE = 0o440
TMP_SIZE_LIMIT = "1Gi"

# The public Service's ports: the standard ones, whatever the container listens on.
SERVICE_PORTS: tuple[tuple[pod.ListenerKind, int], ...] = (
    (pod.ListenerKind.SMTP, 25),
    (pod.ListenerKind.SUBMISSIONS, 465),
    (pod.ListenerKind.SUBMISSION, 587),
    (pod.ListenerKind.IMAPS, 993),
    (pod.ListenerKind.IMAP, 143),
)
MAIL_KINDS = tuple(kind for kind, _ in SERVICE_PORTS)


@dataclass(frozen=True)
class WorkloadNames:
    """Object names, all derived from `settings.name`."""

    statefulset: str
    service: str
    headless_service: str
    pod_disruption_budget: str
    network_policy: str
    service_account: str
    role: str
    role_binding: str
    tls_secret: str
    """Written by cert-manager (a Certificate rendered elsewhere must use this name)."""
    dkim_secret: str
    """Every signing key the pods use, one file each (`render_dkim_keys_secret`)."""
    srs_secret: str
    """The SRS HMAC key, generated once by the reconciler."""

    @classmethod
    def of(cls, settings: OperatorSettings) -> WorkloadNames:
        name = settings.name
        return cls(
            statefulset=name,
            service=name,
            headless_service=f"{name}-headless",
            pod_disruption_budget=name,
            network_policy=name,
            service_account=name,
            role=f"{name}-config-reader",
            role_binding=f"{name}-config-reader",
            tls_secret=f"{name}-tls",
            dkim_secret=f"{name}-dkim",
            srs_secret=f"{name}-srs",
        )


# --- the pod config's side of the contract ----------------------------------------------------


def container_port(settings: OperatorSettings, kind: pod.ListenerKind) -> int:
    port: int = getattr(settings.ports, kind.value)
    return port


def pod_listeners(settings: OperatorSettings) -> tuple[pod.Listener, ...]:
    """The listeners of the pod config, on the ports the StatefulSet declares. With PROXY
    protocol the mail listeners expect the header; http (probes, scrapes) never does."""
    proxy = settings.service.client_address is ClientAddressMode.PROXY_PROTOCOL
    return (
        *(
            pod.Listener(kind=kind, port=container_port(settings, kind), proxy_protocol=proxy)
            for kind in MAIL_KINDS
        ),
        pod.Listener(kind=pod.ListenerKind.HTTP, port=settings.ports.http),
    )


def pod_trusted_proxies(settings: OperatorSettings) -> tuple[pod.IpNetwork, ...]:
    if settings.service.client_address is ClientAddressMode.PROXY_PROTOCOL:
        return settings.service.trusted_proxies
    return ()


def relay_password_path(index: int) -> PurePosixPath:
    return RELAYS_DIR / f"relay-{index}"


def pod_outbound(settings: OperatorSettings, srs_domain: str | None) -> pod.OutboundConfig:
    """The queue's settings: the relays, each password as the file the relays volume mounts,
    and SRS in `srs_domain` (None: off) with the key the srs volume mounts."""
    return pod.OutboundConfig(
        srs_domain=srs_domain,
        srs_secret_files=(Path(SRS_DIR / SRS_KEY),) if srs_domain else (),
        relays=tuple(
            pod.RelayHost(
                host=relay.host,
                port=relay.port,
                username=relay.username,
                password_file=Path(relay_password_path(index))
                if relay.password_secret_ref
                else None,
                domains=relay.domains,
            )
            for index, relay in enumerate(settings.outbound.relays)
        ),
    )


def srs_secret_labels(settings: OperatorSettings) -> dict[str, str]:
    """The labels of the SRS key Secret the reconciler creates (those of the workload)."""
    labels: dict[str, str] = _metadata(settings, WorkloadNames.of(settings).srs_secret)["labels"]
    return labels


def with_install_settings(
    config: pod.MailpodConfig, settings: OperatorSettings, srs_domain: str | None = None
) -> pod.MailpodConfig:
    """The pod config with what the install-wide settings decide (trusted proxies, outbound):
    a copy with those fields set, not a dump and re-validation of 10,000 mailboxes."""
    return config.model_copy(
        update={
            "trusted_proxies": pod_trusted_proxies(settings),
            "outbound": pod_outbound(settings, srs_domain),
        }
    )


def pod_storage() -> pod.Storage:
    return pod.Storage(mail_root=Path(DATA_DIR / "mail"), queue_dir=Path(DATA_DIR / "queue"))


def pod_tls(secret_name: str | None = None) -> pod.TlsConfig:
    """The mounted TLS Secret; naming it lets the pod watch it for renewals (WorkloadNames)."""
    return pod.TlsConfig(
        cert_file=Path(TLS_DIR / "tls.crt"),
        key_file=Path(TLS_DIR / "tls.key"),
        secret_name=secret_name,
    )


def dkim_key_name(domain: str, selector: str) -> str:
    # Secret keys allow [-._a-zA-Z0-9]; selector and domain are DNS names, so this is unique.
    return f"{selector}._domainkey.{domain}.pem"


def dkim_key_path(domain: str, selector: str) -> Path:
    """Where the pod finds a key of the DKIM Secret (for the pod config's `private_key_file`)."""
    return Path(DKIM_DIR / dkim_key_name(domain, selector))


def render_dkim_keys_secret(
    settings: OperatorSettings,
    keys: Sequence[DkimKeyMaterial],
    *,
    owners: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """One Secret with every key the pods sign with, mounted as a directory: a rotation changes
    its content, never the pod's volumes, so it needs no restart (one volume per key would)."""
    names = WorkloadNames.of(settings)
    data = {
        dkim_key_name(key.domain, key.selector): base64.b64encode(
            key.private_key_pem.encode()
        ).decode()
        for key in keys
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": workload_metadata(
            names.dkim_secret, settings.namespace, instance=settings.name, component="dkim"
        ),
        "data": dict(sorted(data.items())),
    }
    return owned_by([secret], owners)[0]


# --- ownership --------------------------------------------------------------------------------


def workload_owners(domains: Sequence[MailDomain]) -> list[dict[str, Any]]:
    """ownerReferences for the install-wide objects: every MailDomain of the namespace.

    The mail workload serves all the namespace's domains at once, so no single MailDomain owns
    it. The garbage collector deletes an object only once all of its owners are gone, so
    deleting one of several MailDomains leaves the workload running for the others (the
    operator drops that reference on its next pass), and deleting the last one removes it all:
    the StatefulSet, Services, PDB, NetworkPolicy, config Secrets and pod RBAC. The mail
    volumes stay (persistentVolumeClaimRetentionPolicy Retain). Not a controller reference
    (only one owner may be the controller) and not blocking: a MailDomain's deletion never
    waits for the workload, and blocking would need update on maildomains/finalizers.
    Domains rendered offline (no uid) own nothing."""
    return [
        {
            "apiVersion": domain.api_version,
            "kind": domain.kind,
            "name": domain.metadata.name,
            "uid": domain.metadata.uid,
            "controller": False,
            "blockOwnerDeletion": False,
        }
        for domain in sorted(domains, key=lambda d: (d.metadata.name, d.metadata.uid or ""))
        if domain.metadata.uid
    ]


def owned_by(
    objects: list[dict[str, Any]], owners: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`objects` with `owners` as their ownerReferences (none: left as they are)."""
    if owners:
        for obj in objects:
            obj["metadata"]["ownerReferences"] = [dict(owner) for owner in owners]
    return objects


# --- objects ------------------------------------------------------------------------------------


def _metadata(
    settings: OperatorSettings, name: str, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return workload_metadata(
        name,
        settings.namespace,
        instance=settings.name,
        component=COMPONENT,
        annotations=annotations,
    )


def _checksum(value: Any) -> str:
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def _container_ports(settings: OperatorSettings) -> list[dict[str, Any]]:
    return [
        {"name": kind.value, "containerPort": container_port(settings, kind), "protocol": "TCP"}
        for kind in (*MAIL_KINDS, pod.ListenerKind.HTTP)
    ]


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _volumes(
    settings: OperatorSettings, config: ConfigSecretNames
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    names = WorkloadNames.of(settings)
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "secret": {"secretName": config.settings, "defaultMode": SECRET_MODE},
        },
        {
            # One directory for every shard (their keys differ), so the shard count is one
            # --config argument, and the kubelet swaps all shards in one atomic update.
            "name": "config-shards",
            "projected": {
                "defaultMode": SECRET_MODE,
                "sources": [{"secret": {"name": shard}} for shard in config.shards],
            },
        },
        {"name": "tls", "secret": {"secretName": names.tls_secret, "defaultMode": SECRET_MODE}},
        {
            # Optional: a new install has no DKIM key yet, and the first one must not need a
            # restart to appear.
            "name": "dkim",
            "secret": {
                "secretName": names.dkim_secret,
                "defaultMode": SECRET_MODE,
                "optional": True,
            },
        },
        # readOnlyRootFilesystem: scratch space (the metrics of the worker processes) lives here.
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
    ]
    relay_passwords = [
        {
            "secret": {
                "name": relay.password_secret_ref.name,
                "items": [
                    {
                        "key": relay.password_secret_ref.key,
                        "path": relay_password_path(index).name,
                    }
                ],
                # A missing Secret must not keep the pod from starting: delivery through that
                # relay waits (and says why in the queue) until it exists.
                "optional": True,
            }
        }
        for index, relay in enumerate(settings.outbound.relays)
        if relay.password_secret_ref is not None
    ]
    if settings.outbound.srs.enabled:
        # Optional: the reconciler creates the key before it names it in the config, and a
        # pod started before that must not be held up by it.
        volumes.append(
            {
                "name": "srs",
                "secret": {
                    "secretName": names.srs_secret,
                    "defaultMode": SECRET_MODE,
                    "optional": True,
                },
            }
        )
    if relay_passwords:
        volumes.append(
            {
                "name": "relays",
                "projected": {"defaultMode": SECRET_MODE, "sources": relay_passwords},
            }
        )
    mounts: list[dict[str, Any]] = [
        {"name": "data", "mountPath": str(DATA_DIR)},
        {"name": "config", "mountPath": str(CONFIG_DIR), "readOnly": True},
        {"name": "config-shards", "mountPath": str(SHARDS_DIR), "readOnly": True},
        {"name": "tls", "mountPath": str(TLS_DIR), "readOnly": True},
        {"name": "dkim", "mountPath": str(DKIM_DIR), "readOnly": True},
        {"name": "tmp", "mountPath": str(TMP_DIR)},
    ]
    if settings.outbound.srs.enabled:
        mounts.append({"name": "srs", "mountPath": str(SRS_DIR), "readOnly": True})
    if relay_passwords:
        mounts.append({"name": "relays", "mountPath": str(RELAYS_DIR), "readOnly": True})
    return volumes, mounts


def _pod_spec(settings: OperatorSettings, config: ConfigSecretNames) -> dict[str, Any]:
    names = WorkloadNames.of(settings)
    volumes, mounts = _volumes(settings, config)
    ids = settings.pod_security
    pod_security: dict[str, Any] = {"runAsNonRoot": True}
    if ids.run_as_user is not None:
        pod_security["runAsUser"] = ids.run_as_user
    if ids.run_as_group is not None:
        pod_security["runAsGroup"] = ids.run_as_group
    if ids.fs_group is not None:
        pod_security["fsGroup"] = ids.fs_group
        # A mail volume holds millions of files: chown them only when the root does not match.
        pod_security["fsGroupChangePolicy"] = "OnRootMismatch"
    pod_security["seccompProfile"] = {"type": "RuntimeDefault"}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.image.reference,
        "imagePullPolicy": settings.image.pull_policy.value,
        "command": ["mailpod"],
        "args": [
            "run",
            "--config",
            str(CONFIG_DIR),
            "--config",
            str(SHARDS_DIR),
            "--workers",
            str(settings.workers),
            "--log-format",
            settings.log_format.value,
        ],
        "env": [
            # For the pod's own watch of its config Secrets through the API (faster than the
            # kubelet's refresh of the mounted copy, which is the start-up fallback).
            {"name": "MAILPOD_CONFIG_SECRET", "value": config.settings},
            {
                "name": "MAILPOD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": "TMPDIR", "value": str(TMP_DIR)},
        ],
        "ports": _container_ports(settings),
        "resources": {
            key: dict(sorted(value.items()))
            for key, value in (
                ("requests", settings.resources.requests),
                ("limits", settings.resources.limits),
            )
            if value
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
        # Start-up loads the whole config and recovers the Maildir and queue, which can take a
        # while on a large volume; liveness only starts counting once that is done.
        "startupProbe": _probe("/healthz", period=2, failures=90),
        "livenessProbe": _probe("/healthz", period=10, failures=3),
        "readinessProbe": _probe("/readyz", period=5, failures=2),
    }
    spec: dict[str, Any] = {
        "serviceAccountName": names.service_account,
        # The pod reads its config Secrets through the API, so it needs its token.
        "automountServiceAccountToken": True,
        # Service environment variables are noise for a pod that never uses them.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": settings.termination_grace_period_seconds,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
    }
    if settings.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    if settings.node_selector:
        spec["nodeSelector"] = dict(sorted(settings.node_selector.items()))
    if settings.tolerations:
        spec["tolerations"] = [
            t.model_dump(mode="json", by_alias=True, exclude_none=True)
            for t in settings.tolerations
        ]
    if settings.affinity:
        spec["affinity"] = settings.affinity
    return spec


def restart_checksum(pod_spec: dict[str, Any], config_checksum: str) -> str:
    """What the pod-template annotation holds: the pod spec (image, ports, volumes, resources,
    args) and the restart-only part of the pod config (`config_restart_checksum`). Neither
    contains mailboxes, aliases, passwords or keys, so data changes leave it, and the pods,
    alone."""
    return _checksum({"podSpec": pod_spec, "config": config_checksum})


def render_statefulset(
    settings: OperatorSettings, config_secrets: ConfigSecretNames, *, config_checksum: str
) -> dict[str, Any]:
    """The mail pods. `config_checksum` is `config_restart_checksum(config)`."""
    names = WorkloadNames.of(settings)
    pod_spec = _pod_spec(settings, config_secrets)
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": settings.storage.size}},
    }
    if settings.storage.storage_class_name:
        claim_spec["storageClassName"] = settings.storage.storage_class_name
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(settings, names.statefulset),
        "spec": {
            "replicas": settings.replicas,
            "serviceName": names.headless_service,
            # Replicas do not depend on each other; start and replace them all at once.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector_labels(settings.name)},
            "updateStrategy": {"type": "RollingUpdate"},
            # Mail is never deleted with the StatefulSet or by scaling down.
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            },
            "template": {
                "metadata": {
                    "labels": workload_labels(settings.name, COMPONENT),
                    "annotations": {
                        "kubectl.kubernetes.io/default-container": CONTAINER,
                        RESTART_CHECKSUM_ANNOTATION: restart_checksum(pod_spec, config_checksum),
                    },
                },
                "spec": pod_spec,
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {
                        "name": "data",
                        "labels": workload_labels(settings.name, COMPONENT),
                    },
                    "spec": claim_spec,
                }
            ],
        },
    }


def _service_ports() -> list[dict[str, Any]]:
    return [
        {"name": kind.value, "port": port, "targetPort": kind.value, "protocol": "TCP"}
        for kind, port in SERVICE_PORTS
    ]


def render_public_service(settings: OperatorSettings) -> dict[str, Any]:
    names = WorkloadNames.of(settings)
    service = settings.service
    spec: dict[str, Any] = {
        "type": service.type.value,
        "selector": selector_labels(settings.name),
        "ports": _service_ports(),
    }
    if service.type is not ServiceType.CLUSTER_IP:
        # Only valid for NodePort and LoadBalancer. Local keeps the client's address (no SNAT);
        # with PROXY protocol the header carries it, so traffic may spread over every node.
        spec["externalTrafficPolicy"] = (
            "Local" if service.client_address is ClientAddressMode.LOCAL else "Cluster"
        )
    if service.type is ServiceType.LOAD_BALANCER:
        if service.load_balancer_ip:
            spec["loadBalancerIP"] = service.load_balancer_ip
        if service.load_balancer_class:
            spec["loadBalancerClass"] = service.load_balancer_class
        if service.load_balancer_source_ranges:
            spec["loadBalancerSourceRanges"] = [
                str(net) for net in service.load_balancer_source_ranges
            ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(settings, names.service, annotations=dict(service.annotations)),
        "spec": spec,
    }


def render_headless_service(settings: OperatorSettings) -> dict[str, Any]:
    """The StatefulSet's governing Service (stable pod DNS names) with every port, http included,
    for in-cluster clients and metrics scrapers."""
    names = WorkloadNames.of(settings)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(settings, names.headless_service),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(settings.name),
            "ports": [
                *_service_ports(),
                {
                    "name": "http",
                    "port": settings.ports.http,
                    "targetPort": "http",
                    "protocol": "TCP",
                },
            ],
        },
    }


def render_pod_disruption_budget(settings: OperatorSettings) -> dict[str, Any]:
    """One pod at a time during drains. maxUnavailable rather than minAvailable so a single
    replica can still be evicted (node drains must not hang on mail)."""
    names = WorkloadNames.of(settings)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(settings, names.pod_disruption_budget),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(settings.name)},
            # A pod that is not ready serves nothing; do not let it block a drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def _tcp(*ports: int | str) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def render_network_policy(settings: OperatorSettings) -> dict[str, Any] | None:
    """Ingress: the mail ports from anywhere, the http port (metrics) from the mail namespace
    and the monitoring namespaces only; kubelet probes come from the node, which CNIs allow.
    Egress: DNS, SMTP to other servers and smarthosts, HTTPS (MTA-STS policies) and the API
    server (the pod watches its config Secrets). None when disabled in the settings."""
    policy = settings.network_policy
    if not policy.enabled:
        return None
    names = WorkloadNames.of(settings)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(settings, names.network_policy),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(settings.name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                # Named ports: the policy follows the container ports whatever their numbers.
                {"ports": _tcp(*(kind.value for kind in MAIL_KINDS))},
                {
                    "from": [
                        {"podSelector": {}},
                        {
                            "namespaceSelector": {
                                "matchLabels": dict(
                                    sorted(policy.monitoring_namespace_labels.items())
                                )
                            }
                        },
                    ],
                    "ports": _tcp("http"),
                },
            ],
            "egress": [
                # Anywhere: cluster DNS, or whatever resolver the node or pod is given (a
                # validating resolver for DNSSEC/DANE may live outside the cluster).
                {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                {
                    "ports": _tcp(
                        *sorted({25, 465, 587, *(r.port for r in settings.outbound.relays)})
                    )
                },
                {"ports": _tcp(443)},
                {
                    "to": [{"ipBlock": {"cidr": str(net)}} for net in policy.api_server_cidrs],
                    "ports": _tcp(*policy.api_server_ports),
                },
            ],
        },
    }


def render_pod_rbac(
    settings: OperatorSettings, config_secrets: ConfigSecretNames
) -> list[dict[str, Any]]:
    """The pod's ServiceAccount, and a Role that can read its config and DKIM Secrets and
    nothing else. list/watch are honoured with resourceNames only for requests that name one
    object (fieldSelector metadata.name=…), so the pod watches each Secret by name."""
    names = WorkloadNames.of(settings)
    readable = sorted({*config_secrets.all, names.dkim_secret, names.tls_secret})
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _metadata(settings, names.service_account),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _metadata(settings, names.role),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["secrets"],
                    "resourceNames": readable,
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _metadata(settings, names.role_binding),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": names.role,
            },
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": names.service_account,
                    "namespace": settings.namespace,
                }
            ],
        },
    ]


def render_workload(
    settings: OperatorSettings,
    config: pod.MailpodConfig,
    *,
    min_shards: int | None = None,
    owners: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Every object of the mail workload except the TLS and DKIM Secrets, in apply order: the
    pod's identity, its config (shards before their index), the Services, the PDB and the
    NetworkPolicy, and the StatefulSet last, when everything it mounts exists. `owners` are
    their ownerReferences (`workload_owners`)."""
    secrets = render_pod_config_secrets(
        config,
        name_prefix=settings.name,
        namespace=settings.namespace,
        min_shards=max(min_shards or 1, settings.min_config_shards),
    )
    names = ConfigSecretNames.of(secrets)
    network_policy = render_network_policy(settings)
    objects = [
        *render_pod_rbac(settings, names),
        *secrets,
        render_public_service(settings),
        render_headless_service(settings),
        render_pod_disruption_budget(settings),
        *([network_policy] if network_policy else []),
        render_statefulset(settings, names, config_checksum=config_restart_checksum(config)),
    ]
    return owned_by(objects, owners)
