"""The DNS records a mail domain needs: MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT and client
autoconfiguration (RFC 6186 SRV, autoconfig/autodiscover hosts)."""

from __future__ import annotations

from collections.abc import Iterable

from letterbox.api.dnsrecord import DnsRecord, RecordType
from letterbox.api.maildomain import Alignment, MailDomainSpec, SpfQualifier
from letterbox.render.dkim import DkimKeyMaterial, dkim_record_value
from letterbox.render.mtasts import render_mta_sts

_SPF_ALL = {SpfQualifier.FAIL: "-all", SpfQualifier.SOFTFAIL: "~all", SpfQualifier.NEUTRAL: "?all"}

# RFC 6186 / RFC 8314: services we offer, and POP3, which we do not ("." target = not offered).
_SRV_SERVICES = (
    ("_submissions._tcp", 465),
    ("_submission._tcp", 587),
    ("_imaps._tcp", 993),
    ("_imap._tcp", 143),
)
_SRV_NOT_OFFERED = ("_pop3s._tcp", "_pop3._tcp")


def spf_value(spec: MailDomainSpec) -> str:
    return " ".join(("v=spf1", "mx", *spec.spf.mechanisms, _SPF_ALL[spec.spf.all]))


def dmarc_value(spec: MailDomainSpec) -> str:
    dmarc = spec.dmarc
    tags = [("v", "DMARC1"), ("p", dmarc.policy.value)]
    if dmarc.subdomain_policy is not None:
        tags.append(("sp", dmarc.subdomain_policy.value))
    if dmarc.dkim_alignment is Alignment.STRICT:
        tags.append(("adkim", "s"))
    if dmarc.spf_alignment is Alignment.STRICT:
        tags.append(("aspf", "s"))
    if dmarc.percent != 100:
        tags.append(("pct", str(dmarc.percent)))
    if dmarc.rua:
        tags.append(("rua", ",".join(dmarc.rua)))
    if dmarc.ruf:
        tags.append(("ruf", ",".join(dmarc.ruf)))
    return "; ".join(f"{tag}={value}" for tag, value in tags)


def domain_records(
    spec: MailDomainSpec, dkim_keys: Iterable[DkimKeyMaterial] = ()
) -> list[DnsRecord]:
    """Every record the domain needs, grouped by purpose; `dkim_keys` are the keys whose
    records should be published (pending, active and retiring ones)."""
    domain, ttl = spec.domain, spec.dns.ttl
    host = f"{spec.effective_mail_host}."

    def record(name: str, rtype: RecordType, value: str, purpose: str) -> DnsRecord:
        return DnsRecord(name=name, type=rtype, value=value, ttl=ttl, purpose=purpose)

    records = [
        record(domain, RecordType.MX, f"10 {host}", "MX"),
        record(domain, RecordType.TXT, spf_value(spec), "SPF"),
        record(f"_dmarc.{domain}", RecordType.TXT, dmarc_value(spec), "DMARC"),
        record(
            f"_mta-sts.{domain}",
            RecordType.TXT,
            f"v=STSv1; id={render_mta_sts(spec).id}",
            "MTA-STS",
        ),
        record(f"mta-sts.{domain}", RecordType.CNAME, host, "MTA-STS"),
    ]
    records += [
        record(key.record_name, RecordType.TXT, dkim_record_value(key), "DKIM")
        for key in dkim_keys
        if key.domain == domain
    ]
    if spec.tls_rpt.rua:
        records.append(
            record(
                f"_smtp._tls.{domain}",
                RecordType.TXT,
                f"v=TLSRPTv1; rua={','.join(spec.tls_rpt.rua)}",
                "TLS-RPT",
            )
        )
    if spec.autoconfig:
        records += [
            record(f"{service}.{domain}", RecordType.SRV, f"0 1 {port} {host}", "autoconfig")
            for service, port in _SRV_SERVICES
        ]
        records += [
            record(f"{service}.{domain}", RecordType.SRV, "0 0 0 .", "autoconfig")
            for service in _SRV_NOT_OFFERED
        ]
        records += [
            record(f"{label}.{domain}", RecordType.CNAME, host, "autoconfig")
            for label in ("autoconfig", "autodiscover")
        ]
    return records
