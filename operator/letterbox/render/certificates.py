"""Certificates of the mail workload, decided and rendered without I/O.

The mail pods serve one certificate, from the TLS Secret the StatefulSet mounts
(`WorkloadNames.tls_secret`); it names every domain's mail host, the pod's own name first. The
MTA-STS and autoconfig hosts are served by the web Ingress, whose Secret is
`web.ingress.tlsSecretName`. The domain that names the server (the oldest one) decides where the
certificates come from:

- certManager: cert-manager.io/v1 Certificate objects writing straight into those Secrets; the
  Certificate's Ready condition becomes our CertificateReady;
- acme: the operator's own ACME client (letterbox.certs) writes the same Secrets;
- secret: an existing kubernetes.io/tls Secret, copied into the pod's Secret so the StatefulSet
  (and so the pods) never change with the choice.

Empty `spec.tls` means certManager when its CRDs are installed (with the ClusterIssuer
`letsencrypt` unless one is named), else acme when the DNS provider can publish challenge
records, else no certificate and a CertificateReady=False that says what to set.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cryptography import x509

from letterbox.api.maildomain import (
    AcmeTls,
    DnsProviderKind,
    IssuerRef,
    MailDomainSpec,
)
from letterbox.api.meta import ConditionStatus
from letterbox.api.settings import OperatorSettings
from letterbox.render.ingress import web_hosts
from letterbox.render.labels import workload_metadata
from letterbox.render.workload import WorkloadNames

CERT_MANAGER_API_VERSION = "cert-manager.io/v1"
CERTIFICATE_KIND = "Certificate"
CERTIFICATE_READY = "CertificateReady"
COMPONENT = "certificate"
DEFAULT_CLUSTER_ISSUER = "letsencrypt"
TLS_SECRET_TYPE = "kubernetes.io/tls"  # noqa: S105 (a Secret type)
# Providers that can publish a challenge TXT within seconds (externalDNS syncs on its own
# schedule, manual needs a person).
DNS01_PROVIDERS = frozenset(
    {DnsProviderKind.RFC2136, DnsProviderKind.POWERDNS, DnsProviderKind.CLOUDFLARE}
)

# CertificateReady reasons of our own (cert-manager's are passed through).
NO_SOURCE = "NoCertificateSource"
PENDING = "CertificatePending"
SECRET_MISSING = "SecretMissing"  # noqa: S105 (a reason)
SECRET_INVALID = "SecretInvalid"  # noqa: S105 (a reason)
EXPIRED = "Expired"
HOSTS_MISSING = "HostsNotCovered"
ISSUED = "Issued"


class TlsMode(StrEnum):
    CERT_MANAGER = "certManager"
    ACME = "acme"
    SECRET = "secret"  # noqa: S105 (a mode name)


@dataclass(frozen=True)
class TlsChoice:
    """Where the certificate comes from; `mode` None when nowhere (then `message` says why)."""

    mode: TlsMode | None
    issuer: IssuerRef | None = None
    acme: AcmeTls | None = None
    secret_name: str | None = None
    message: str = ""


def choose_tls(spec: MailDomainSpec, *, cert_manager_installed: bool) -> TlsChoice:
    tls = spec.tls
    if tls.cert_manager is not None:
        return TlsChoice(TlsMode.CERT_MANAGER, issuer=tls.cert_manager.issuer_ref)
    if tls.acme is not None:
        return TlsChoice(TlsMode.ACME, acme=tls.acme)
    if tls.secret_name is not None:
        return TlsChoice(TlsMode.SECRET, secret_name=tls.secret_name)
    if cert_manager_installed:
        return TlsChoice(TlsMode.CERT_MANAGER, issuer=IssuerRef(name=DEFAULT_CLUSTER_ISSUER))
    if spec.dns.provider in DNS01_PROVIDERS:
        return TlsChoice(TlsMode.ACME, acme=AcmeTls())
    return TlsChoice(
        None,
        message=(
            "no certificate source: cert-manager is not installed and the DNS provider "
            f"({spec.dns.provider.value}) cannot answer ACME DNS-01 challenges; set "
            "spec.tls.secretName to an existing kubernetes.io/tls Secret, spec.tls.acme with "
            "an rfc2136, powerdns or cloudflare DNS provider, or install cert-manager"
        ),
    )


def mail_hosts(domains: Sequence[MailDomainSpec]) -> tuple[str, ...]:
    """Every domain's mail host once, in domain order (the first names the server)."""
    return tuple(dict.fromkeys(spec.effective_mail_host for spec in domains))


def all_web_hosts(domains: Sequence[MailDomainSpec]) -> tuple[str, ...]:
    return tuple(sorted({host for spec in domains for host in web_hosts(spec)}))


def _ingress_shim_issues(settings: OperatorSettings) -> bool:
    """cert-manager's ingress-shim already issues the web Secret when the Ingress names an
    issuer; a second Certificate for the same Secret would fight it."""
    ingress = settings.web.ingress
    return ingress is not None and any(
        key.startswith("cert-manager.io/") and key.endswith("issuer") for key in ingress.annotations
    )


def web_secret_name(settings: OperatorSettings) -> str | None:
    """The web Ingress's TLS Secret, when there is an Ingress."""
    ingress = settings.web.ingress
    return ingress.tls_secret_name if settings.web.enabled and ingress is not None else None


def certificate_name(settings: OperatorSettings, part: str) -> str:
    return f"{settings.name}-{part}"


def render_certificate(
    settings: OperatorSettings,
    name: str,
    secret_name: str,
    dns_names: Sequence[str],
    issuer: IssuerRef,
) -> dict[str, Any]:
    """One cert-manager.io/v1 Certificate."""
    return {
        "apiVersion": CERT_MANAGER_API_VERSION,
        "kind": CERTIFICATE_KIND,
        "metadata": workload_metadata(
            name, settings.namespace, instance=settings.name, component=COMPONENT
        ),
        "spec": {
            "secretName": secret_name,
            "dnsNames": list(dns_names),
            "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
            # RSA 2048: what every SMTP peer accepts; a fresh key at every renewal.
            "privateKey": {"algorithm": "RSA", "size": 2048, "rotationPolicy": "Always"},
            "usages": ["digital signature", "key encipherment", "server auth"],
            "secretTemplate": {
                "labels": workload_metadata(
                    secret_name, settings.namespace, instance=settings.name, component=COMPONENT
                )["labels"]
            },
        },
    }


@dataclass(frozen=True)
class WantedCertificate:
    """A certificate the workload needs, whoever issues it."""

    part: str
    """`mail` or `web`: the Certificate is `<name>-<part>`."""
    secret_name: str
    hosts: tuple[str, ...]
    """DNS names, the first one the subject."""


def wanted_certificates(
    settings: OperatorSettings, domains: Sequence[MailDomainSpec]
) -> list[WantedCertificate]:
    """The mail hosts into the pods' Secret, and the MTA-STS/autoconfig hosts into the web
    Ingress's Secret when there is one (and cert-manager's ingress-shim does not fill it)."""
    if not domains:
        return []
    wanted = [WantedCertificate("mail", WorkloadNames.of(settings).tls_secret, mail_hosts(domains))]
    web_secret = web_secret_name(settings)
    hosts = all_web_hosts(domains)
    if web_secret is not None and hosts and not _ingress_shim_issues(settings):
        wanted.append(WantedCertificate("web", web_secret, hosts))
    return wanted


def render_certificates(
    settings: OperatorSettings, domains: Sequence[MailDomainSpec], issuer: IssuerRef
) -> list[dict[str, Any]]:
    """The Certificates of certManager mode (`wanted_certificates`)."""
    return [
        render_certificate(
            settings, certificate_name(settings, w.part), w.secret_name, w.hosts, issuer
        )
        for w in wanted_certificates(settings, domains)
    ]


def render_tls_secret(
    settings: OperatorSettings, name: str, data: Mapping[str, bytes]
) -> dict[str, Any]:
    """A kubernetes.io/tls Secret with `tls.crt` and `tls.key` (secret mode's copy)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": TLS_SECRET_TYPE,
        "metadata": workload_metadata(
            name, settings.namespace, instance=settings.name, component=COMPONENT
        ),
        "data": {key: base64.b64encode(data[key]).decode() for key in ("tls.crt", "tls.key")},
    }


# --- what the certificate in force says ----------------------------------------------------


@dataclass(frozen=True)
class CertificateObservation:
    """CertificateReady as observed, with the certificate's expiry when known."""

    status: ConditionStatus
    reason: str
    message: str
    not_after: datetime | None = None


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def observe_certificate(certificate: Mapping[str, Any] | None) -> CertificateObservation:
    """CertificateReady from a cert-manager Certificate: its Ready condition, passed through,
    once cert-manager has looked at the Certificate's current generation."""
    if certificate is None:
        return CertificateObservation(
            ConditionStatus.FALSE, PENDING, "the cert-manager Certificate does not exist yet"
        )
    name = certificate.get("metadata", {}).get("name", "")
    status = certificate.get("status") or {}
    not_after = _parse_time(status.get("notAfter"))
    ready = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"),
        None,
    )
    if ready is None:
        return CertificateObservation(
            ConditionStatus.FALSE,
            PENDING,
            f"cert-manager has not reported on Certificate {name} yet",
            not_after,
        )
    generation = certificate.get("metadata", {}).get("generation")
    observed = ready.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return CertificateObservation(
            ConditionStatus.FALSE,
            PENDING,
            f"cert-manager has not processed the latest spec of Certificate {name} yet",
            not_after,
        )
    value = ready.get("status")
    condition_status = (
        ConditionStatus(value)
        if value in {s.value for s in ConditionStatus}
        else ConditionStatus.UNKNOWN
    )
    reason = str(
        ready.get("reason") or (ISSUED if condition_status is ConditionStatus.TRUE else PENDING)
    )
    message = f"Certificate {name}: {ready.get('message') or reason}"
    return CertificateObservation(condition_status, reason, message, not_after)


def describe_tls(data: Mapping[str, bytes] | None) -> tuple[datetime, frozenset[str]] | None:
    """not-after and DNS names of a TLS Secret's leaf, None when absent or unreadable."""
    if data is None or "tls.crt" not in data or "tls.key" not in data:
        return None
    try:
        leaf = x509.load_pem_x509_certificate(data["tls.crt"])
    except ValueError:
        return None
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = frozenset(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = frozenset()
    return leaf.not_valid_after_utc, names


def _covers(names: frozenset[str], host: str) -> bool:
    if host in names:
        return True
    # RFC 6125: a wildcard matches exactly the left-most label.
    head, _, parent = host.partition(".")
    return bool(head) and f"*.{parent}" in names


def observe_tls_secret(
    name: str, data: Mapping[str, bytes] | None, hosts: Sequence[str], now: datetime
) -> CertificateObservation:
    """CertificateReady from a TLS Secret (secret mode): present, readable, covering `hosts` and
    not expired."""
    if data is None:
        return CertificateObservation(
            ConditionStatus.FALSE, SECRET_MISSING, f"the TLS Secret {name} does not exist"
        )
    described = describe_tls(data)
    if described is None:
        return CertificateObservation(
            ConditionStatus.FALSE,
            SECRET_INVALID,
            f"the TLS Secret {name} needs tls.crt (PEM certificate) and tls.key",
        )
    not_after, names = described
    if not_after <= now:
        return CertificateObservation(
            ConditionStatus.FALSE,
            EXPIRED,
            f"the certificate in {name} expired at {rfc3339(not_after)}",
            not_after,
        )
    missing = [host for host in hosts if not _covers(names, host)]
    if missing:
        return CertificateObservation(
            ConditionStatus.FALSE,
            HOSTS_MISSING,
            f"the certificate in {name} does not name {', '.join(missing)}",
            not_after,
        )
    return CertificateObservation(
        ConditionStatus.TRUE,
        ISSUED,
        f"the certificate in {name} is valid until {rfc3339(not_after)}",
        not_after,
    )
