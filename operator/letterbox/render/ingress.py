"""The Ingress in front of the operator's web server: mta-sts.<domain> for every domain, and
autoconfig.<domain> / autodiscover.<domain> where the domain publishes client
autoconfiguration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from letterbox.api.maildomain import MailDomainSpec
from letterbox.api.settings import OperatorSettings
from letterbox.render.labels import workload_metadata

COMPONENT = "web"


def web_hosts(spec: MailDomainSpec) -> list[str]:
    """The host names the web server answers for this domain (besides the domain itself, which
    only an Ingress for the apex website would route here)."""
    hosts = [f"mta-sts.{spec.domain}"]
    if spec.autoconfig:
        hosts += [f"autoconfig.{spec.domain}", f"autodiscover.{spec.domain}"]
    return hosts


def render_web_ingress(
    settings: OperatorSettings,
    domains: Sequence[MailDomainSpec],
    *,
    owners: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any] | None:
    """networking.k8s.io/v1 Ingress, or None when not configured (or no domain exists yet: an
    Ingress without rules would route every host to us). `owners`: the ownerReferences the rest
    of the workload carries, so the Ingress goes with the last MailDomain."""
    web = settings.web
    if not web.enabled or web.ingress is None:
        return None
    hosts = sorted({host for spec in domains for host in web_hosts(spec)})
    if not hosts:
        return None
    spec: dict[str, Any] = {}
    if web.ingress.class_name:
        spec["ingressClassName"] = web.ingress.class_name
    spec["tls"] = [{"hosts": hosts, "secretName": web.ingress.tls_secret_name}]
    spec["rules"] = [
        {
            "host": host,
            "http": {
                "paths": [
                    {
                        "path": "/",
                        "pathType": "Prefix",
                        "backend": {
                            "service": {"name": web.service_name, "port": {"number": web.port}}
                        },
                    }
                ]
            },
        }
        for host in hosts
    ]
    metadata = workload_metadata(
        f"{settings.name}-web",
        settings.namespace,
        instance=settings.name,
        component=COMPONENT,
        annotations=dict(web.ingress.annotations),
    )
    if owners:
        metadata["ownerReferences"] = [dict(owner) for owner in owners]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": spec,
    }
