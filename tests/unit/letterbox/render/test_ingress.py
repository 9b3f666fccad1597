"""The web server's Ingress: off unless configured, golden YAML when on, valid against the
Kubernetes schema."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from letterbox.api.maildomain import MailDomainSpec
from letterbox.api.settings import load_settings
from letterbox.render.ingress import render_web_ingress
from tests.unit.letterbox.render.test_render import check_golden

DOMAINS = [
    MailDomainSpec.model_validate({"domain": "example.org"}),
    MailDomainSpec.model_validate({"domain": "example.net", "autoconfig": False}),
]
CONFIGURED = """
namespace: mail
web:
  enabled: true
  ingress:
    tlsSecretName: letterbox-web-tls
    className: nginx
    annotations:
      cert-manager.io/cluster-issuer: letsencrypt
"""


def test_off_by_default_and_without_ingress_settings() -> None:
    assert render_web_ingress(load_settings(None), DOMAINS) is None
    assert render_web_ingress(load_settings("web: {enabled: true}"), DOMAINS) is None


def test_no_domains_no_ingress() -> None:
    assert render_web_ingress(load_settings(CONFIGURED), []) is None


def test_ingress_golden_and_valid() -> None:
    import kubernetes_validate

    ingress = render_web_ingress(load_settings(CONFIGURED), DOMAINS)
    assert ingress is not None
    check_golden("web-ingress.yaml", ingress)
    hosts = [rule["host"] for rule in ingress["spec"]["rules"]]
    assert hosts == [
        "autoconfig.example.org",
        "autodiscover.example.org",
        "mta-sts.example.net",
        "mta-sts.example.org",
    ]
    assert ingress["spec"]["tls"] == [{"hosts": hosts, "secretName": "letterbox-web-tls"}]
    kubernetes_validate.validate(ingress, kubernetes_validate.latest_version(), strict=True)


def test_ingress_needs_the_server_enabled() -> None:
    with pytest.raises(ValidationError, match=r"web.ingress needs web.enabled"):
        load_settings("web: {ingress: {tlsSecretName: x}}")
