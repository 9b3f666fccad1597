"""Built-in ACME on the real control plane: the operator (as its ServiceAccount) with a
MailDomain in `tls.acme` mode orders from a real CA (Pebble) and answers DNS-01 through the
domain's own DNS provider (the PowerDNS API of the `powerdns` harness), trusting Pebble through
the install-wide `acme.caBundle` and checking the challenge records at PowerDNS
(`acme.authoritativeServers`) before the CA looks. Both certificates appear in their Secrets:
the mail host's in `<name>-tls`, the web hosts' (`<name>-web`) in the Ingress's Secret; the
MailDomain reports CertificateReady=True with the earlier not-after."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from letterbox.kube import Kube, NotFound
from tests.e2e.operator_harness import (
    RECONCILE_RULES,
    grant_operator,
    operator_in_process,
    wait_for,
)
from tests.e2e.test_operator import APPLY
from tests.e2e.test_operator_pod import operator_settings
from tests.harness.controlplane import ControlPlane
from tests.harness.pebble import Pebble
from tests.harness.ports import free_port
from tests.harness.powerdns import PowerDns

pytestmark = pytest.mark.e2e

NAMESPACE = "acme-e2e"
ZONE = "acme-operator.letterbox.test"
WEB_SECRET = "acme-web-tls"
RULES = (*RECONCILE_RULES, ("networking.k8s.io", "ingresses", APPLY))


def _domain(powerdns: PowerDns, directory: str) -> dict[str, Any]:
    return {
        "apiVersion": "letterbox.dev/v1alpha1",
        "kind": "MailDomain",
        "metadata": {"name": "acme-operator", "namespace": NAMESPACE},
        "spec": {
            "domain": ZONE,
            "dns": {
                "provider": "powerdns",
                "powerdns": {"url": f"http://127.0.0.1:{powerdns.api_port}"},
                "credentialsSecretRef": {"name": "pdns", "key": "api-key"},
            },
            "tls": {"acme": {"directory": directory, "email": "postmaster@example.net"}},
        },
    }


@pytest.fixture(scope="module")
def pebble(powerdns: PowerDns) -> Iterator[Pebble]:
    with Pebble(powerdns.nameserver) as ca:
        yield ca


@pytest.fixture(scope="module")
def operator(
    crds: ControlPlane, powerdns: PowerDns, pebble: Pebble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kube]:
    powerdns.create_zone(ZONE, [(f"mail.{ZONE}", "A", 300, ["127.0.0.1"])])
    admin = Kube.connect(crds.kubeconfig)
    kubeconfig = grant_operator(
        crds, admin, NAMESPACE, tmp_path_factory.mktemp("acme-operator") / "kubeconfig", RULES
    )
    settings = operator_settings(
        NAMESPACE,
        acme={
            "caBundle": Path(pebble.ca_bundle).read_text(),
            "authoritativeServers": [powerdns.nameserver],
        },
        web={
            "enabled": True,
            "bindAddress": "127.0.0.1",
            "port": free_port(),
            "ingress": {"tlsSecretName": WEB_SECRET},
        },
    )
    with operator_in_process(kubeconfig, settings):
        try:
            yield admin
        finally:
            admin.close()


def _condition(admin: Kube, type_: str) -> dict[str, Any] | None:
    domain = admin.get("letterbox.dev/v1alpha1", "MailDomain", "acme-operator", NAMESPACE)
    for condition in (domain.get("status") or {}).get("conditions") or []:
        if condition["type"] == type_:
            return dict(condition)
    return None


def _secret(admin: Kube, name: str) -> dict[str, Any] | None:
    try:
        return dict(admin.get("v1", "Secret", name, NAMESPACE))
    except NotFound:
        return None


def _leaf(pebble: Pebble, secret: dict[str, Any], host: str) -> x509.Certificate:
    """The Secret's certificate, verified up to Pebble's root for `host`."""
    assert secret["type"] == "kubernetes.io/tls"
    chain = base64.b64decode(secret["data"]["tls.crt"])
    assert b"PRIVATE KEY" in base64.b64decode(secret["data"]["tls.key"])
    leaf, *intermediates = x509.load_pem_x509_certificates(chain)
    root = x509.load_pem_x509_certificate(pebble.root_pem().encode())
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName(host))
    verifier.verify(leaf, intermediates)
    return leaf


def _names(leaf: x509.Certificate) -> set[str]:
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


def test_acme_mode_issues_the_mail_and_web_certificates(
    operator: Kube, powerdns: PowerDns, pebble: Pebble
) -> None:
    admin = operator
    admin.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "pdns", "namespace": NAMESPACE},
            "stringData": {"api-key": powerdns.api_key},
        }
    )
    started = time.monotonic()
    admin.apply(_domain(powerdns, pebble.directory_url))

    def ready() -> dict[str, Any] | None:
        condition = _condition(admin, "CertificateReady")
        return condition if condition and condition["status"] == "True" else None

    condition = wait_for("CertificateReady=True", ready, 45, pebble.log_tail())
    elapsed = time.monotonic() - started
    assert condition["reason"] == "Issued", condition
    assert "mail certificate: valid until" in condition["message"]
    assert "web certificate: valid until" in condition["message"]

    mail_secret = wait_for("the mail TLS Secret", lambda: _secret(admin, "mailpod-tls"), 10)
    web_secret = wait_for("the web TLS Secret", lambda: _secret(admin, WEB_SECRET), 10)
    mail = _leaf(pebble, mail_secret, f"mail.{ZONE}")
    web = _leaf(pebble, web_secret, f"mta-sts.{ZONE}")
    assert _names(mail) == {f"mail.{ZONE}"}
    assert _names(web) == {f"mta-sts.{ZONE}", f"autoconfig.{ZONE}", f"autodiscover.{ZONE}"}

    domain = admin.get("letterbox.dev/v1alpha1", "MailDomain", "acme-operator", NAMESPACE)
    earliest = min(mail.not_valid_after_utc, web.not_valid_after_utc)
    assert domain["status"]["certificateNotAfter"] == earliest.strftime("%Y-%m-%dT%H:%M:%SZ")

    # The account key was generated once into its Secret; no back-off state was needed.
    account = _secret(admin, "mailpod-acme-account")
    assert account is not None and b"PRIVATE KEY" in base64.b64decode(
        account["data"]["private.pem"]
    )
    assert _secret(admin, "mailpod-acme-state") is None
    # Every challenge value was withdrawn again.
    for host in _names(mail) | _names(web):
        assert powerdns.query(f"_acme-challenge.{host}", "TXT") == []
    print(f"\nCertificateReady=True {elapsed:.2f}s after the MailDomain was applied")
