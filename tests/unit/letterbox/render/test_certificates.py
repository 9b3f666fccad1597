"""Certificates: the mode chosen for a domain, the cert-manager Certificates rendered (golden,
and valid against a schema written from cert-manager's documented API), and CertificateReady as
read from a Certificate or a TLS Secret."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from letterbox.api.maildomain import IssuerRef, MailDomainSpec
from letterbox.api.meta import ConditionStatus
from letterbox.api.settings import load_settings
from letterbox.render import certificates as certs
from tests.unit.letterbox.render.test_render import check_golden

CRD = Path(__file__).resolve().parents[3] / "e2e" / "data" / "cert-manager-certificate-crd.yaml"
DOMAINS = [
    MailDomainSpec.model_validate({"domain": "example.org"}),
    MailDomainSpec.model_validate(
        {"domain": "example.net", "mailHost": "mail.example.org", "autoconfig": False}
    ),
    MailDomainSpec.model_validate({"domain": "example.com", "mailHost": "mx.example.com"}),
]
WITH_INGRESS = """
namespace: mail
web:
  enabled: true
  ingress:
    tlsSecretName: letterbox-web-tls
"""


def spec(**fields: Any) -> MailDomainSpec:
    return MailDomainSpec.model_validate({"domain": "example.org", **fields})


# --- choosing the mode ----------------------------------------------------------------------


def test_explicit_modes_win_over_defaults() -> None:
    issuer = {"name": "corp-ca", "kind": "Issuer"}
    choice = certs.choose_tls(
        spec(tls={"certManager": {"issuerRef": issuer}}), cert_manager_installed=False
    )
    assert choice.mode is certs.TlsMode.CERT_MANAGER
    assert choice.issuer == IssuerRef(name="corp-ca", kind="Issuer")
    choice = certs.choose_tls(
        spec(tls={"acme": {"directory": "staging"}}), cert_manager_installed=True
    )
    assert choice.mode is certs.TlsMode.ACME and choice.acme is not None
    assert choice.acme.directory == "staging"
    choice = certs.choose_tls(spec(tls={"secretName": "my-tls"}), cert_manager_installed=True)
    assert (choice.mode, choice.secret_name) == (certs.TlsMode.SECRET, "my-tls")


def test_default_is_cert_manager_then_acme_then_a_clear_no() -> None:
    choice = certs.choose_tls(spec(), cert_manager_installed=True)
    assert choice.mode is certs.TlsMode.CERT_MANAGER
    assert choice.issuer == IssuerRef(name=certs.DEFAULT_CLUSTER_ISSUER, kind="ClusterIssuer")
    powerdns = {
        "provider": "powerdns",
        "powerdns": {"url": "http://pdns:8081"},
        "credentialsSecretRef": {"name": "pdns", "key": "api-key"},
    }
    choice = certs.choose_tls(spec(dns=powerdns), cert_manager_installed=False)
    assert choice.mode is certs.TlsMode.ACME and choice.acme is not None
    assert choice.acme.directory == "production"
    for dns in ({"provider": "manual"}, {"provider": "externalDNS"}):
        choice = certs.choose_tls(spec(dns=dns), cert_manager_installed=False)
        assert choice.mode is None
        assert "spec.tls.secretName" in choice.message and dns["provider"] in choice.message


# --- cert-manager Certificates --------------------------------------------------------------


def _crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _check(schema: dict[str, Any], value: Any, path: str = "") -> None:
    """The subset of structural-schema validation the CRD uses: types, required, enums,
    unknown fields."""
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(value, dict), path
        for name in schema.get("required", []):
            assert name in value, f"{path}.{name} is required"
        properties = schema.get("properties")
        if properties is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
            for key, item in value.items():
                assert key in properties, f"{path}.{key} is not in the schema"
                _check(properties[key], item, f"{path}.{key}")
        elif "additionalProperties" in schema:
            for key, item in value.items():
                _check(schema["additionalProperties"], item, f"{path}.{key}")
    elif kind == "array":
        assert isinstance(value, list), path
        for index, item in enumerate(value):
            _check(schema["items"], item, f"{path}[{index}]")
    elif kind == "string":
        assert isinstance(value, str), path
    elif kind == "integer":
        assert isinstance(value, int), path
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"


def test_certificates_golden_and_valid_against_the_crd() -> None:
    settings = load_settings(WITH_INGRESS)
    rendered = certs.render_certificates(settings, DOMAINS, IssuerRef(name="letsencrypt"))
    check_golden("certificates.yaml", rendered)
    mail, web = rendered
    assert mail["metadata"]["name"] == "mailpod-mail"
    assert mail["spec"]["secretName"] == "mailpod-tls"  # what the StatefulSet mounts
    # Every mail host once, the server's own name first.
    assert mail["spec"]["dnsNames"] == ["mail.example.org", "mx.example.com"]
    assert web["spec"]["secretName"] == "letterbox-web-tls"
    assert web["spec"]["dnsNames"] == [
        "autoconfig.example.com",
        "autoconfig.example.org",
        "autodiscover.example.com",
        "autodiscover.example.org",
        "mta-sts.example.com",
        "mta-sts.example.net",
        "mta-sts.example.org",
    ]
    schema = _crd_schema()
    for certificate in rendered:
        _check(schema, certificate)


def test_no_web_certificate_without_an_ingress_or_when_ingress_shim_issues_it() -> None:
    issuer = IssuerRef(name="x")
    assert len(certs.render_certificates(load_settings(None), DOMAINS, issuer)) == 1
    shim = WITH_INGRESS + "    annotations: {cert-manager.io/cluster-issuer: letsencrypt}\n"
    assert len(certs.render_certificates(load_settings(shim), DOMAINS, issuer)) == 1
    assert certs.render_certificates(load_settings(None), [], issuer) == []


def test_wanted_certificates_are_what_either_issuer_fills() -> None:
    """The same list drives cert-manager's Certificates and the built-in ACME orders."""
    wanted = certs.wanted_certificates(load_settings(WITH_INGRESS), DOMAINS)
    assert [(w.part, w.secret_name) for w in wanted] == [
        ("mail", "mailpod-tls"),
        ("web", "letterbox-web-tls"),
    ]
    assert wanted[0].hosts == ("mail.example.org", "mx.example.com")
    assert wanted[1].hosts[0] == "autoconfig.example.com" and len(wanted[1].hosts) == 7
    rendered = certs.render_certificates(load_settings(WITH_INGRESS), DOMAINS, IssuerRef(name="x"))
    assert [tuple(c["spec"]["dnsNames"]) for c in rendered] == [w.hosts for w in wanted]
    # No Ingress: nothing uses a web certificate.
    assert [w.part for w in certs.wanted_certificates(load_settings(None), DOMAINS)] == ["mail"]
    assert certs.wanted_certificates(load_settings(WITH_INGRESS), []) == []


def test_schema_check_can_fail() -> None:
    rendered = certs.render_certificates(load_settings(None), DOMAINS, IssuerRef(name="x"))[0]
    rendered["spec"]["privateKey"]["algorithm"] = "DSA"
    with pytest.raises(AssertionError, match="not in"):
        _check(_crd_schema(), rendered)


# --- CertificateReady from a Certificate ----------------------------------------------------


def _certificate(conditions: list[dict[str, Any]], generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "mailpod-mail", "generation": generation},
        "status": {"conditions": conditions, "notAfter": "2027-02-20T06:00:00Z"},
    }


def test_ready_is_passed_through_with_not_after() -> None:
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "Ready",
        "message": "Certificate is up to date and has not expired",
        "observedGeneration": 1,
    }
    seen = certs.observe_certificate(_certificate([ready]))
    assert seen.status is ConditionStatus.TRUE and seen.reason == "Ready"
    assert "up to date" in seen.message
    assert seen.not_after == datetime(2027, 2, 20, 6, tzinfo=UTC)
    failing = {**ready, "status": "False", "reason": "DoesNotExist", "message": "no Secret"}
    seen = certs.observe_certificate(_certificate([failing]))
    assert (seen.status, seen.reason) == (ConditionStatus.FALSE, "DoesNotExist")


def test_missing_unreported_or_stale_certificates_are_pending() -> None:
    assert certs.observe_certificate(None).reason == certs.PENDING
    assert certs.observe_certificate(_certificate([])).status is ConditionStatus.FALSE
    stale = {"type": "Ready", "status": "True", "reason": "Ready", "observedGeneration": 1}
    seen = certs.observe_certificate(_certificate([stale], generation=2))
    assert (seen.status, seen.reason) == (ConditionStatus.FALSE, certs.PENDING)


# --- CertificateReady from a TLS Secret -----------------------------------------------------


def _secret(*names: str, expires: datetime | None = None) -> dict[str, bytes]:
    ca = trustme.CA()
    leaf = ca.issue_cert(*names, not_after=expires)
    return {"tls.crt": leaf.cert_chain_pems[0].bytes(), "tls.key": leaf.private_key_pem.bytes()}


def test_tls_secret_observations() -> None:
    now = datetime.now(UTC)
    hosts = ["mail.example.org", "mx.example.com"]
    good = certs.observe_tls_secret("t", _secret(*hosts), hosts, now)
    assert good.status is ConditionStatus.TRUE and good.not_after is not None
    wildcard = certs.observe_tls_secret("t", _secret("*.example.org", "mx.example.com"), hosts, now)
    assert wildcard.status is ConditionStatus.TRUE
    deep = certs.observe_tls_secret("t", _secret("*.org", "mx.example.com"), hosts, now)
    assert deep.reason == certs.HOSTS_MISSING and "mail.example.org" in deep.message
    assert certs.observe_tls_secret("t", None, hosts, now).reason == certs.SECRET_MISSING
    broken = {"tls.crt": b"nope", "tls.key": b"k"}
    assert certs.observe_tls_secret("t", broken, hosts, now).reason == certs.SECRET_INVALID
    old = _secret(*hosts, expires=now - timedelta(days=1))
    assert certs.observe_tls_secret("t", old, hosts, now).reason == certs.EXPIRED


def test_secret_mode_copy_is_a_tls_secret() -> None:
    import kubernetes_validate

    data = _secret("mail.example.org")
    secret = certs.render_tls_secret(load_settings(None), "mailpod-tls", data)
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key"}
    kubernetes_validate.validate(secret, kubernetes_validate.latest_version(), strict=True)
