"""MailDomain: one mail domain, how its DNS is published, its policies and its certificate."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from letterbox.api.meta import (
    ApiModel,
    CrdNames,
    DomainName,
    Duration,
    EmailAddress,
    Matches,
    ObjectName,
    PrinterColumn,
    Quantity,
    ReportUri,
    Resource,
    Rule,
    Status,
    Unique,
    ready_columns,
)
from mailpod.config import DNS_LABEL_PATTERN


class SecretKeyRef(ApiModel):
    """A key of a Secret in the resource's namespace."""

    name: ObjectName
    """Secret name."""
    key: Annotated[str, Field(min_length=1, max_length=253)]
    """Key inside the Secret's data."""


class DnsProviderKind(StrEnum):
    MANUAL = "manual"
    RFC2136 = "rfc2136"
    POWERDNS = "powerdns"
    CLOUDFLARE = "cloudflare"
    EXTERNAL_DNS = "externalDNS"


class DnsPolicy(StrEnum):
    UPSERT_ONLY = "upsert-only"
    SYNC = "sync"


class TsigAlgorithm(StrEnum):
    HMAC_SHA256 = "hmac-sha256"
    HMAC_SHA384 = "hmac-sha384"
    HMAC_SHA512 = "hmac-sha512"


HostPort = Annotated[
    str,
    Field(max_length=300, pattern=r"^[A-Za-z0-9.:\[\]-]+$"),
]


# TSIG key names are DNS names but usually a single label (tsig-keygen's default is tsig-key).
TsigKeyName = Annotated[
    str,
    Field(max_length=253, min_length=1),
    Matches(
        rf"^{DNS_LABEL_PATTERN}(\.{DNS_LABEL_PATTERN})*$",
        "must be a TSIG key name: lower-case letters, digits, '-' and '.', e.g. letterbox-update",
    ),
]


class Rfc2136Provider(ApiModel):
    """RFC 2136 dynamic updates (BIND, Knot, PowerDNS, many hosted DNS services)."""

    server: HostPort
    """Primary server that accepts updates, as host or host:port (default port 53)."""
    tsig_key_name: TsigKeyName | None = None
    """TSIG key name; the secret itself comes from `credentialsSecretRef`."""
    tsig_algorithm: TsigAlgorithm = TsigAlgorithm.HMAC_SHA256
    """TSIG algorithm."""


class PowerDnsProvider(ApiModel):
    """The PowerDNS Authoritative HTTP API; the API key comes from `credentialsSecretRef`."""

    url: Annotated[str, Field(max_length=512, pattern=r"^https?://[^\s]+$")]
    """Base URL of the API, e.g. http://pdns.dns.svc:8081."""
    server_id: Annotated[str, Field(max_length=64)] = "localhost"
    """PowerDNS server id."""


class CloudflareProvider(ApiModel):
    """The Cloudflare API; an API token with Zone.DNS edit rights comes from
    `credentialsSecretRef`."""

    zone_id: Annotated[str, Field(max_length=64, pattern=r"^[0-9a-f]{32}$")] | None = None
    """Zone id; looked up from the zone name when omitted."""


class DnsSpec(ApiModel):
    """How the domain's records reach DNS."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.provider != 'rfc2136' || has(self.rfc2136)",
            "provider rfc2136 needs the rfc2136 settings (server, TSIG key)",
            lambda s: s.provider != DnsProviderKind.RFC2136 or s.rfc2136 is not None,
        ),
        Rule(
            "self.provider != 'powerdns' || (has(self.powerdns) && has(self.credentialsSecretRef))",
            "provider powerdns needs the powerdns settings and credentialsSecretRef (the API key)",
            lambda s: (
                s.provider != DnsProviderKind.POWERDNS
                or (s.powerdns is not None and s.credentials_secret_ref is not None)
            ),
        ),
        Rule(
            "self.provider != 'cloudflare' || has(self.credentialsSecretRef)",
            "provider cloudflare needs credentialsSecretRef (an API token)",
            lambda s: (
                s.provider != DnsProviderKind.CLOUDFLARE or s.credentials_secret_ref is not None
            ),
        ),
        Rule(
            "!has(self.rfc2136) || !has(self.rfc2136.tsigKeyName)"
            " || has(self.credentialsSecretRef)",
            "a TSIG key name needs credentialsSecretRef (the base64 TSIG secret)",
            lambda s: (
                s.rfc2136 is None
                or s.rfc2136.tsig_key_name is None
                or s.credentials_secret_ref is not None
            ),
        ),
    )

    provider: DnsProviderKind = DnsProviderKind.MANUAL
    """manual (records listed in status and by `letterbox dns-plan`), rfc2136, powerdns,
    cloudflare or externalDNS (a DNSEndpoint object for an existing external-dns)."""
    zone: DomainName | None = None
    """The zone the records go into; defaults to the domain itself."""
    ttl: Annotated[int, Field(ge=30, le=604800)] = 3600
    """TTL of published records, in seconds."""
    policy: DnsPolicy = DnsPolicy.UPSERT_ONLY
    """upsert-only never deletes records; sync also withdraws records Letterbox created and
    no longer wants. Records Letterbox did not create are never touched."""
    credentials_secret_ref: SecretKeyRef | None = None
    """Secret key holding the provider credential (API key/token, or TSIG secret)."""
    rfc2136: Rfc2136Provider | None = None
    powerdns: PowerDnsProvider | None = None
    cloudflare: CloudflareProvider | None = None


class SpfQualifier(StrEnum):
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"


SpfMechanism = Annotated[
    str,
    Field(max_length=255, pattern=r"^[+?~-]?(a|mx|ip4|ip6|include|exists|ptr)([:/][^\s]+)?$"),
]


class SpfSpec(ApiModel):
    """The SPF record (RFC 7208). `mx` is always included."""

    mechanisms: Annotated[tuple[SpfMechanism, ...], Field(max_length=20), Unique()] = ()
    """Extra mechanisms before `all`, e.g. include:_spf.example.net or ip4:192.0.2.0/24."""
    all: SpfQualifier = SpfQualifier.SOFTFAIL
    """What `all` says about every other sender: fail (-all), softfail (~all) or neutral (?all)."""


class DmarcPolicy(StrEnum):
    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class Alignment(StrEnum):
    RELAXED = "relaxed"
    STRICT = "strict"


ReportUris = Annotated[tuple[ReportUri, ...], Field(max_length=10), Unique()]


class DmarcSpec(ApiModel):
    """The DMARC record (RFC 7489)."""

    policy: DmarcPolicy = DmarcPolicy.QUARANTINE
    """p=: what receivers do with mail that fails DMARC."""
    subdomain_policy: DmarcPolicy | None = None
    """sp=: policy for subdomains; defaults to `policy`."""
    dkim_alignment: Alignment = Alignment.RELAXED
    """adkim=."""
    spf_alignment: Alignment = Alignment.RELAXED
    """aspf=."""
    percent: Annotated[int, Field(ge=0, le=100)] = 100
    """pct=: share of failing mail the policy applies to."""
    rua: ReportUris = ()
    """Where aggregate reports go (mailto: or https:)."""
    ruf: ReportUris = ()
    """Where failure reports go."""


class MtaStsMode(StrEnum):
    NONE = "none"
    TESTING = "testing"
    ENFORCE = "enforce"


class MtaStsSpec(ApiModel):
    """MTA-STS (RFC 8461): the policy the operator serves at https://mta-sts.<domain>/."""

    mode: MtaStsMode = MtaStsMode.TESTING
    """testing reports failures only; enforce makes senders refuse unauthenticated TLS."""
    max_age: Duration = "7d"
    """How long senders cache the policy (at most a year; RFC 8461 suggests weeks)."""


class TlsRptSpec(ApiModel):
    """SMTP TLS reporting (RFC 8460)."""

    rua: ReportUris = ()
    """Where TLS reports go; no record is published when empty."""


class IssuerRef(ApiModel):
    """A cert-manager issuer."""

    name: ObjectName
    kind: Literal["Issuer", "ClusterIssuer"] = "ClusterIssuer"
    group: Annotated[str, Field(max_length=253)] = "cert-manager.io"


class CertManagerTls(ApiModel):
    """Certificates issued by cert-manager: Letterbox renders the Certificate objects and
    reports their Ready condition as CertificateReady."""

    issuer_ref: IssuerRef
    """The Issuer or ClusterIssuer that signs them."""


class AcmeTls(ApiModel):
    """Certificates issued by the operator itself over ACME DNS-01 through the domain's DNS
    provider (account key in the Secret <name>-acme-account), renewed when a third of their
    lifetime is left, retried with exponential back-off."""

    directory: Annotated[str, Field(max_length=512)] = "production"
    """production, staging (Let's Encrypt) or the directory URL of any ACME CA."""
    email: EmailAddress | None = None
    """Account contact for expiry notices."""


class TlsSpec(ApiModel):
    """Where the mail host's certificate comes from. Empty: cert-manager when its CRDs exist
    (ClusterIssuer `letsencrypt`), else built-in ACME when the DNS provider is rfc2136, powerdns
    or cloudflare, else none (CertificateReady=False says what to set). The mail pods serve one
    certificate for every domain's mail host; the oldest MailDomain's choice decides it."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "[has(self.certManager), has(self.acme), has(self.secretName)]"
            ".filter(x, x).size() <= 1",
            "choose at most one of certManager, acme and secretName",
            lambda s: [s.cert_manager, s.acme, s.secret_name].count(None) >= 2,
        ),
    )

    cert_manager: CertManagerTls | None = None
    acme: AcmeTls | None = None
    secret_name: ObjectName | None = None
    """An existing kubernetes.io/tls Secret to use as is."""


class MailDomainSpec(ApiModel):
    """A mail domain served by Letterbox."""

    domain: DomainName
    """The domain, e.g. example.com."""
    mail_host: DomainName | None = None
    """MX target and TLS name of the mail servers; defaults to mail.<domain>."""
    dns: DnsSpec = Field(default_factory=DnsSpec)
    spf: SpfSpec = Field(default_factory=SpfSpec)
    dmarc: DmarcSpec = Field(default_factory=DmarcSpec)
    mta_sts: MtaStsSpec = Field(default_factory=MtaStsSpec)
    tls_rpt: TlsRptSpec = Field(default_factory=TlsRptSpec)
    tls: TlsSpec = Field(default_factory=TlsSpec)
    catch_all: EmailAddress | None = None
    """Where mail for unknown local parts goes; unknown recipients are rejected when unset."""
    default_quota: Quantity = "0"
    """Quota of mailboxes that set none; 0 is unlimited."""
    autoconfig: bool = True
    """Publish client autoconfiguration (SRV records, autoconfig/autodiscover hosts)."""

    @property
    def effective_mail_host(self) -> str:
        return self.mail_host or f"mail.{self.domain}"

    @property
    def effective_zone(self) -> str:
        return self.dns.zone or self.domain


class MailDomainStatus(Status):
    """Observed state of a MailDomain."""

    records: Annotated[tuple[DnsRecordStatus, ...], Field(max_length=64)] = ()
    """The DNS records the domain needs (and, with a provider, that were published)."""
    mta_sts_policy_id: Annotated[str, Field(max_length=32)] | None = None
    """The id published in _mta-sts TXT; changes whenever the policy changes."""
    certificate_not_after: Annotated[str, Field(max_length=40)] | None = None
    """Expiry of the mail host certificate (RFC 3339)."""


class DnsRecordStatus(ApiModel):
    """One DNS record as the operator wants it."""

    name: Annotated[str, Field(max_length=253)]
    type: Annotated[str, Field(max_length=10)]
    ttl: Annotated[int, Field(ge=0)]
    value: Annotated[str, Field(max_length=4096)]


class MailDomain(Resource):
    names: ClassVar[CrdNames] = CrdNames(
        plural="maildomains",
        short_names=("mdom", "maildomain"),
        columns=(
            PrinterColumn("Domain", ".spec.domain", description="Mail domain"),
            PrinterColumn("Mail Host", ".spec.mailHost", description="MX target and TLS name"),
            PrinterColumn("DNS", ".spec.dns.provider", description="DNS provider"),
            PrinterColumn("MTA-STS", ".spec.mtaSts.mode", priority=1, description="MTA-STS mode"),
            *ready_columns(),
        ),
    )

    kind: Literal["MailDomain"] = "MailDomain"
    spec: MailDomainSpec
    status: MailDomainStatus = Field(default_factory=MailDomainStatus)


MailDomainStatus.model_rebuild()
