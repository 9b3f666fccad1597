"""What the web server answers, per host name: an immutable snapshot built from MailDomain
specs, swapped as a whole when the domains change."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from letterbox.api.maildomain import MailDomainSpec
from letterbox.render.autoconfig import thunderbird_autoconfig
from letterbox.render.mtasts import MtaStsPolicy, render_mta_sts


class Role(StrEnum):
    """Which of a domain's host names a request came in on."""

    MTA_STS = "mta-sts"
    AUTOCONFIG = "autoconfig"
    AUTODISCOVER = "autodiscover"
    APEX = "apex"
    """The domain itself (/.well-known/autoconfig/..., Outlook's first autodiscover try)."""


@dataclass(frozen=True)
class Site:
    """One domain's documents, rendered once per snapshot (autodiscover answers depend on the
    address asked about, so they are rendered per request)."""

    spec: MailDomainSpec
    policy: MtaStsPolicy
    autoconfig: str | None
    """config-v1.1.xml, or None when the domain publishes no client autoconfiguration."""

    @classmethod
    def of(cls, spec: MailDomainSpec) -> Site:
        return cls(
            spec=spec,
            policy=render_mta_sts(spec),
            autoconfig=thunderbird_autoconfig(spec) if spec.autoconfig else None,
        )


def normalize_host(header: str | None) -> str:
    """The Host header without port or trailing dot, lower-cased ("" when absent)."""
    host = (header or "").strip().lower()
    if host.startswith("["):  # an IPv6 literal, never one of our names
        return host.partition("]")[0] + "]"
    host = host.partition(":")[0]
    return host.rstrip(".")


@dataclass(frozen=True)
class Sites:
    hosts: Mapping[str, tuple[Role, Site]]
    domains: Mapping[str, Site]

    @classmethod
    def of(cls, specs: Iterable[MailDomainSpec], previous: Sites | None = None) -> Sites:
        """The snapshot for `specs`; documents of domains unchanged since `previous` are reused
        (every reconcile pass hands over all domains, and rendering is most of the cost)."""
        hosts: dict[str, tuple[Role, Site]] = {}
        domains: dict[str, Site] = {}
        for spec in specs:
            domain = spec.domain.lower()
            if domain in domains:  # the first (oldest) MailDomain for a name wins, as in decide()
                continue
            known = previous.domains.get(domain) if previous is not None else None
            site = known if known is not None and known.spec == spec else Site.of(spec)
            domains[domain] = site
            hosts.setdefault(f"mta-sts.{domain}", (Role.MTA_STS, site))
            hosts.setdefault(domain, (Role.APEX, site))
            if spec.autoconfig:
                hosts.setdefault(f"autoconfig.{domain}", (Role.AUTOCONFIG, site))
                hosts.setdefault(f"autodiscover.{domain}", (Role.AUTODISCOVER, site))
        return cls(hosts=hosts, domains=domains)

    def lookup(self, host_header: str | None) -> tuple[Role, Site] | None:
        return self.hosts.get(normalize_host(host_header))

    def policy_ids(self) -> dict[str, str]:
        return {domain: site.policy.id for domain, site in self.domains.items()}


EMPTY = Sites(hosts={}, domains={})
