"""cert-manager mode on the real control plane. cert-manager cannot run here, so its Certificate
CRD (tests/e2e/data, written from its documented API) is installed and the test plays the
issuer: it writes the TLS Secret and the Certificate's Ready condition. The operator (as its
ServiceAccount, with `certificates` rights added) must render the Certificate, reflect Ready
into the MailDomain's CertificateReady and certificateNotAfter, and the mail pod started from
the rendered template must serve a renewed certificate to new handshakes within seconds, read
from the Secret through the API (this kubelet stand-in never refreshes the mounted copy)."""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509

from letterbox.kube import Kube, NotFound
from tests.e2e.operator_harness import (
    RECONCILE_RULES,
    grant_operator,
    operator_in_process,
    wait_for,
)
from tests.e2e.test_operator_pod import (
    TemplatePod,
    operator_settings,
    tls_secret,
)
from tests.harness.controlplane import ControlPlane

pytestmark = pytest.mark.e2e

NAMESPACE = "cert-manager-e2e"
CRD = Path(__file__).resolve().parent / "data" / "cert-manager-certificate-crd.yaml"
CERT_API = "cert-manager.io/v1"
RULES = (
    *RECONCILE_RULES,
    ("cert-manager.io", "certificates", ("get", "list", "watch", "create", "patch")),
)
DOMAIN = {
    "apiVersion": "letterbox.dev/v1alpha1",
    "kind": "MailDomain",
    "metadata": {"name": "example-com", "namespace": NAMESPACE},
    "spec": {
        "domain": "example.com",
        "tls": {"certManager": {"issuerRef": {"name": "test-ca", "kind": "Issuer"}}},
    },
}


@pytest.fixture(scope="module")
def certificate_crd(crds: ControlPlane) -> Iterator[ControlPlane]:
    """cert-manager's Certificate CRD, for this module only: other tests run against a cluster
    without cert-manager, where MailDomains do not default to it."""
    crds.kubectl("apply", "--server-side", "-f", str(CRD))
    crds.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/certificates.cert-manager.io",
    )
    try:
        yield crds
    finally:
        crds.kubectl("delete", "--wait=true", "-f", str(CRD))


@pytest.fixture(scope="module")
def cluster(
    certificate_crd: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kube]:
    plane = certificate_crd
    admin = Kube.connect(plane.kubeconfig)
    kubeconfig = grant_operator(
        plane, admin, NAMESPACE, tmp_path_factory.mktemp("operator") / "kubeconfig", RULES
    )
    with operator_in_process(kubeconfig, operator_settings(NAMESPACE)):
        try:
            yield admin
        finally:
            admin.close()


def _condition(admin: Kube, type_: str) -> dict[str, Any] | None:
    domain = admin.get("letterbox.dev/v1alpha1", "MailDomain", "example-com", NAMESPACE)
    for condition in (domain.get("status") or {}).get("conditions") or []:
        if condition["type"] == type_:
            return dict(condition)
    return None


def _certificate(admin: Kube) -> dict[str, Any] | None:
    try:
        return dict(admin.get(CERT_API, "Certificate", "mailpod-mail", NAMESPACE))
    except NotFound:
        return None


def _issue(admin: Kube, ca: trustme.CA) -> tuple[int, str]:
    """What cert-manager does when an order completes: the Secret, then Ready=True with the
    certificate's validity in the status. Returns the serial and notAfter."""
    secret = tls_secret(NAMESPACE, "mailpod-tls", ca)
    admin.apply(secret)
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    not_after = leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    certificate = _certificate(admin)
    assert certificate is not None
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    admin.patch_status(
        "Certificate",
        NAMESPACE,
        "mailpod-mail",
        {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Ready",
                    "message": "Certificate is up to date and has not expired",
                    "lastTransitionTime": now,
                    "observedGeneration": certificate["metadata"]["generation"],
                }
            ],
            "notBefore": leaf.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "notAfter": not_after,
            "revision": 1,
        },
        api_version=CERT_API,
    )
    return leaf.serial_number, not_after


def _served_serial(port: int, ca: trustme.CA) -> int:
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="mail.example.com") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_certificate_rendered_reflected_and_hot_reloaded(
    certificate_crd: ControlPlane, cluster: Kube, tmp_path: Path
) -> None:
    admin = cluster
    admin.apply(DOMAIN)

    # The operator renders the Certificate for the mail host into the Secret the pods mount.
    certificate = wait_for("the Certificate", lambda: _certificate(admin), 30)
    spec = certificate["spec"]
    assert spec["secretName"] == "mailpod-tls"
    assert spec["dnsNames"] == ["mail.example.com"]
    assert spec["issuerRef"] == {"name": "test-ca", "kind": "Issuer", "group": "cert-manager.io"}
    pending = wait_for("CertificateReady", lambda: _condition(admin, "CertificateReady"), 30)
    assert (pending["status"], pending["reason"]) == ("False", "CertificatePending")

    # The test is cert-manager now: the Secret, then Ready.
    ca = trustme.CA()
    first_serial, not_after = _issue(admin, ca)

    def ready() -> dict[str, Any] | None:
        condition = _condition(admin, "CertificateReady")
        return condition if condition and condition["status"] == "True" else None

    condition = wait_for("CertificateReady=True", ready, 30)
    assert condition["reason"] == "Ready" and "up to date" in condition["message"]
    domain = admin.get("letterbox.dev/v1alpha1", "MailDomain", "example-com", NAMESPACE)
    assert domain["status"]["certificateNotAfter"] == not_after

    # The pod, from the rendered template, serves that certificate and watches its Secret.
    pod = TemplatePod(certificate_crd, admin, NAMESPACE, "mailpod", tmp_path)
    pod.materialise()
    try:
        pod.start()
        assert _served_serial(pod.ports["submissions"], ca) == first_serial
        live = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
        session = smtplib.SMTP("127.0.0.1", pod.ports["submission"], timeout=10)
        session.starttls(context=live)
        session.ehlo("live.test")

        # Renewal: a new Secret. New handshakes get it within 5 s, the open session goes on.
        renewed_serial, renewed_not_after = _issue(admin, ca)
        renewed_at = time.monotonic()
        wait_for(
            "the renewed certificate",
            lambda: all(
                _served_serial(pod.ports["submissions"], ca) == renewed_serial for _ in range(4)
            ),
            5,
            pod.log(),
        )
        elapsed = time.monotonic() - renewed_at
        assert session.noop()[0] == 250
        session.quit()
        assert pod.proc is not None and pod.proc.poll() is None
        print(f"\nrenewed certificate served {elapsed:.2f}s after the Secret changed")
    finally:
        pod.stop()

    def followed() -> bool:
        status = admin.get("letterbox.dev/v1alpha1", "MailDomain", "example-com", NAMESPACE)
        return bool(status["status"].get("certificateNotAfter") == renewed_not_after)

    wait_for("certificateNotAfter to follow", followed, 30)
