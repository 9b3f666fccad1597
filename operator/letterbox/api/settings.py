"""Install-wide operator settings: what the Helm chart's values decide for the whole install.

The chart writes the values this model reads into a file the operator loads at start
(`load_settings`); every field has a default so an empty file works. Field names are camelCase on
the wire, as Helm values are, and unknown keys are rejected so a typo in values.yaml fails the
operator's start instead of being silently ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import Field

from letterbox import __version__
from letterbox.api.maildomain import HostPort, SecretKeyRef
from letterbox.api.meta import (
    GROUP,
    ApiModel,
    DnsLabel,
    DomainName,
    Matches,
    ObjectName,
    Quantity,
    Rule,
)

# A resource quantity as Kubernetes writes them: cpu in cores or millicores, memory in bytes.
KubeQuantity = Annotated[
    str,
    Field(max_length=32),
    Matches(
        r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$",
        "must be a Kubernetes quantity such as 500m, 2, 256Mi or 1Gi",
    ),
]
Port = Annotated[int, Field(ge=1024, le=65535)]
"""Container ports are unprivileged: the pod runs as non-root without NET_BIND_SERVICE."""
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The environment variable the chart sets from the downward API, so an install without
# `namespace` in its values runs the mail system next to the operator.
NAMESPACE_ENV = "LETTERBOX_NAMESPACE"


class PullPolicy(StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class ImageSettings(ApiModel):
    """The container image holding both entry points (`letterbox` and `mailpod`)."""

    repository: Annotated[str, Field(min_length=1, max_length=255)] = "ghcr.io/letterbox/letterbox"
    tag: Annotated[str, Field(min_length=1, max_length=128)] = __version__
    """Defaults to the operator's own version, so operator and mail pod match."""
    digest: (
        Annotated[
            str,
            Matches(r"^sha256:[0-9a-f]{64}$", "must be a digest such as sha256:<64 hex digits>"),
        ]
        | None
    ) = None
    """Pins the image by content; wins over `tag`."""
    pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT

    @property
    def reference(self) -> str:
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag}"


class StorageSettings(ApiModel):
    """The mail pod's persistent volume (one PVC per replica holds mailboxes and the queue)."""

    storage_class_name: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """Unset uses the cluster's default StorageClass."""
    size: Quantity = "10Gi"
    """Requested size. Kubernetes does not let a StatefulSet's volumeClaimTemplates change: a new
    size applies to new replicas only; grow existing volumes by editing their PVCs (if the
    StorageClass allows expansion)."""


class ServiceType(StrEnum):
    LOAD_BALANCER = "LoadBalancer"
    NODE_PORT = "NodePort"
    CLUSTER_IP = "ClusterIP"


class ClientAddressMode(StrEnum):
    """How the mail pod learns the client's real IP address (SPF, throttling and logs need it)."""

    LOCAL = "Local"
    """externalTrafficPolicy: Local: nodes do not SNAT, so the TCP peer is the client. Traffic only
    reaches nodes running a mail pod (the load balancer health-checks for that)."""
    PROXY_PROTOCOL = "ProxyProtocol"
    """The load balancer prepends a PROXY protocol header with the client address (enable it with
    the cloud's Service annotation); the pod honours it only from `trustedProxies`."""


class ServiceSettings(ApiModel):
    """The public Service in front of the mail ports (25, 465, 587, 993, 143)."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.clientAddress != 'ProxyProtocol' || size(self.trustedProxies) > 0",
            "clientAddress ProxyProtocol needs trustedProxies: the networks the PROXY header "
            "may come from (anyone else could forge client addresses)",
            lambda s: (
                s.client_address is not ClientAddressMode.PROXY_PROTOCOL or bool(s.trusted_proxies)
            ),
        ),
    )

    type: ServiceType = ServiceType.LOAD_BALANCER
    annotations: dict[str, str] = Field(default_factory=dict)
    """E.g. the cloud load balancer's settings, or its PROXY protocol switch."""
    client_address: ClientAddressMode = ClientAddressMode.LOCAL
    trusted_proxies: tuple[IpNetwork, ...] = ()
    """Networks whose connections may carry a PROXY header. With ProxyProtocol the Service uses
    externalTrafficPolicy Cluster, where kube-proxy may SNAT to a node address: include the node
    network as well as the load balancer's."""
    # Spelled as in the Service spec; the generated camelCase would be loadBalancerIp.
    load_balancer_ip: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, alias="loadBalancerIP"
    )
    """A fixed address for clouds that still honour spec.loadBalancerIP (mail needs a stable
    address with matching reverse DNS)."""
    load_balancer_class: Annotated[str, Field(max_length=253)] | None = None
    load_balancer_source_ranges: tuple[IpNetwork, ...] = ()
    """Restricts who can connect through the load balancer; empty is everyone (what MX needs)."""


class ContainerPorts(ApiModel):
    """Ports the mail pod listens on. The Service maps the standard ports onto these, so the pod
    needs no privileged ports."""

    smtp: Port = 2525
    submissions: Port = 2465
    submission: Port = 2587
    imaps: Port = 2993
    imap: Port = 2143
    http: Port = 8080
    """Health, readiness and metrics; never exposed by the public Service."""


class Toleration(ApiModel):
    key: Annotated[str, Field(max_length=317)] | None = None
    operator: Annotated[str, Matches(r"^(Exists|Equal)$", "must be Exists or Equal")] | None = None
    value: Annotated[str, Field(max_length=63)] | None = None
    effect: (
        Annotated[
            str,
            Matches(
                r"^(NoSchedule|PreferNoSchedule|NoExecute)$",
                "must be NoSchedule, PreferNoSchedule or NoExecute",
            ),
        ]
        | None
    ) = None
    toleration_seconds: int | None = None


class ResourceSettings(ApiModel):
    """Container resources. Memory is what matters: each worker process holds the whole
    directory (all mailboxes) in memory."""

    requests: dict[str, KubeQuantity] = Field(
        default_factory=lambda: {"cpu": "100m", "memory": "256Mi"}
    )
    limits: dict[str, KubeQuantity] = Field(default_factory=lambda: {"memory": "1Gi"})


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


class NetworkPolicySettings(ApiModel):
    """The NetworkPolicy around the mail pods (enforced only where the CNI supports it)."""

    enabled: bool = True
    monitoring_namespace_labels: dict[str, str] = Field(
        default_factory=lambda: {"kubernetes.io/metadata.name": "monitoring"}
    )
    """Namespaces whose pods may scrape the http port besides the mail namespace itself."""
    api_server_cidrs: tuple[IpNetwork, ...] = (
        ipaddress.IPv4Network("0.0.0.0/0"),
        ipaddress.IPv6Network("::/0"),
    )
    """Where the API server's endpoints are. The mail pod watches its config Secrets there; the
    policy sees the endpoint address after the Service's DNAT, which is not knowable up front,
    so the default is anywhere (on the API server ports only)."""
    api_server_ports: tuple[Annotated[int, Field(ge=1, le=65535)], ...] = (443, 6443)


class PodSecuritySettings(ApiModel):
    """Ids the mail pod runs as. Set them to null where the platform assigns ids (OpenShift's
    restricted SCC); the pod must still run as non-root."""

    run_as_user: Annotated[int, Field(ge=1)] | None = 10001
    run_as_group: Annotated[int, Field(ge=1)] | None = 10001
    fs_group: Annotated[int, Field(ge=1)] | None = 10001


class KopfSettings(ApiModel):
    """The operator's identity towards kopf: its own finalizer and annotation prefix, so it never
    collides with another kopf operator watching the same objects."""

    finalizer: Annotated[str, Field(max_length=253)] = f"{GROUP}/finalizer"
    annotation_prefix: Annotated[str, Field(max_length=253)] = GROUP
    """Prefix of kopf's progress and last-handled-configuration annotations."""
    peering: DnsLabel | None = None
    """Name of a KopfPeering object so only one of several operator replicas is active; unset runs
    standalone (one replica, no peering objects needed)."""
    field_manager: DnsLabel = "letterbox"
    """Server-side apply field manager of everything the operator writes."""


class WebIngressSettings(ApiModel):
    """An Ingress publishing the web server's hosts (mta-sts., autoconfig., autodiscover. of
    every domain) over HTTPS; the controller terminates TLS and forwards plain HTTP."""

    tls_secret_name: ObjectName
    """kubernetes.io/tls Secret with a certificate for every host: filled by cert-manager when
    `annotations` name an issuer, else as the `<name>-web` certificate of the oldest
    MailDomain's spec.tls (certManager or acme)."""
    class_name: Annotated[str, Field(max_length=253)] | None = None
    """spec.ingressClassName; unset uses the cluster's default class."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """E.g. cert-manager.io/cluster-issuer."""


class WebSettings(ApiModel):
    """The operator's small HTTP server: MTA-STS policies and client autoconfiguration."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.ingress) || self.enabled",
            "web.ingress needs web.enabled: the Ingress forwards to the operator's web server",
            lambda s: s.ingress is None or s.enabled,
        ),
    )

    enabled: bool = False
    port: Port = 8088
    """Plain HTTP port of the operator pod the Ingress forwards to."""
    bind_address: Annotated[str, Field(max_length=64)] | None = None
    """Address to listen on; unset is every interface (what the pod network needs)."""
    service_name: DnsLabel = "letterbox-web"
    """The Service in front of that port (created with the operator's Deployment)."""
    ingress: WebIngressSettings | None = None
    """Unset renders no Ingress (expose the server some other way, or not at all)."""


class AcmeSettings(ApiModel):
    """The built-in ACME client (MailDomains in spec.tls.acme mode)."""

    ca_bundle: Annotated[str, Field(max_length=65536)] | None = None
    """PEM certificates of a private ACME CA's HTTPS endpoint (step-ca, Pebble), trusted besides
    the system's; e.g. `--set-file mail.acme.caBundle=ca.pem`."""
    authoritative_servers: tuple[HostPort, ...] = ()
    """host:port of the DNS servers a challenge record must be answered by before the CA is told
    to look; empty means every server the zone's NS records name."""
    propagation_timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 300
    """How long to wait for those servers before the attempt counts as failed."""


class RelaySettings(ApiModel):
    """A smarthost the mail pods hand remote mail to, for clusters whose outbound port 25 is
    blocked. TLS is always required (implicit on 465, STARTTLS otherwise) and the relay's
    certificate is verified."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "has(self.username) == has(self.passwordSecretRef)",
            "username and passwordSecretRef go together (the relay login)",
            lambda r: (r.username is None) == (r.password_secret_ref is None),
        ),
    )

    host: DomainName
    """The relay's host name (its certificate must name it)."""
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    """465 means implicit TLS; any other port (587, 2587, 2525) STARTTLS."""
    username: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    """The login at the relay (AUTH PLAIN or LOGIN, only ever over TLS)."""
    password_secret_ref: SecretKeyRef | None = None
    """The Secret key in the mail namespace holding the relay password. Mounted into the pods
    and read at each connection, so a changed password needs no restart; never in the config."""
    domains: Annotated[tuple[DomainName, ...], Field(max_length=100)] = ()
    """Recipient domains routed through this relay; empty: every remote domain."""


class SrsSettings(ApiModel):
    """The Sender Rewriting Scheme for mail Aliases forward to outside addresses."""

    enabled: bool = True
    """Rewrite the envelope sender of forwarded mail into our domain (SRS0=…), so it passes
    SPF at the next hop; bounces to the rewritten address come back and are passed on to the
    original sender. The HMAC key is generated once into the Secret `<name>-srs`."""
    domain: DomainName | None = None
    """The domain rewritten senders are in; it must be one of your MailDomains (the bounces
    come to its MX). Default: the oldest MailDomain."""


class OutboundSettings(ApiModel):
    """Mail leaving the pods for other servers."""

    relays: Annotated[tuple[RelaySettings, ...], Field(max_length=16)] = ()
    """Smarthosts. A recipient goes through the relay that lists its domain, else through the
    first relay that lists none; empty: straight to each domain's MX on port 25."""
    srs: SrsSettings = Field(default_factory=SrsSettings)


class OperatorSettings(ApiModel):
    """Settings for the whole install; the chart's values, with defaults for an empty file."""

    namespace: DnsLabel = "letterbox"
    """Namespace the mail pods, their Services and config Secrets live in."""
    name: DnsLabel = "mailpod"
    """Name of the StatefulSet and prefix of every object rendered for it."""
    image: ImageSettings = Field(default_factory=ImageSettings)
    image_pull_secrets: tuple[ObjectName, ...] = ()
    replicas: Annotated[int, Field(ge=1, le=16)] = 1
    """Each replica has its own volume and Letterbox does not route mailboxes between them yet:
    keep 1 unless the mailbox storage is shared."""
    storage: StorageSettings = Field(default_factory=StorageSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    ports: ContainerPorts = Field(default_factory=ContainerPorts)
    resources: ResourceSettings = Field(default_factory=ResourceSettings)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    affinity: dict[str, Any] | None = None
    """A core/v1 Affinity, passed through to the pod spec as is."""
    workers: Annotated[int, Field(ge=1, le=64)] = 2
    """Worker processes per pod. Explicit because os.cpu_count() in a container is the node's CPU
    count, not the pod's limit."""
    log_format: LogFormat = LogFormat.JSON
    termination_grace_period_seconds: Annotated[int, Field(ge=0, le=3600)] = 60
    """Time for open SMTP and IMAP sessions to finish before the pod is killed."""
    pod_security: PodSecuritySettings = Field(default_factory=PodSecuritySettings)
    network_policy: NetworkPolicySettings = Field(default_factory=NetworkPolicySettings)
    min_config_shards: Annotated[int, Field(ge=1, le=256)] = 1
    """Lower bound on the number of config shard Secrets (rounded up to a power of two). The
    count only grows when the config outgrows it, and growing it changes the pod's volumes,
    which rolls the pods once; an install expecting many mailboxes can start large instead."""
    kopf: KopfSettings = Field(default_factory=KopfSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    acme: AcmeSettings = Field(default_factory=AcmeSettings)
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)


def load_settings(text: str | None, environ: Mapping[str, str] | None = None) -> OperatorSettings:
    """Settings from the chart's YAML (None or empty for all defaults). `namespace`, when the
    file leaves it out, comes from LETTERBOX_NAMESPACE (the operator's own namespace).

    Raises pydantic.ValidationError (or ValueError for YAML that is not a mapping)."""
    document = yaml.safe_load(text) if text else None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ValueError("operator settings must be a YAML mapping")
    namespace = (environ or {}).get(NAMESPACE_ENV)
    if namespace and "namespace" not in document:
        document = {**document, "namespace": namespace}
    return OperatorSettings.model_validate(document)
