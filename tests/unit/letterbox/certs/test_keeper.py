"""The keeper's pure parts: one CertificateReady for the mail and web certificates, the CA
bundle file a private ACME CA goes into, and the install-wide ACME settings."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import certifi
import pydantic
import pytest
import trustme

from letterbox.api.meta import ConditionStatus
from letterbox.api.settings import load_settings
from letterbox.certs.keeper import ca_bundle_file, combine
from letterbox.render.certificates import CertificateObservation

EARLY = datetime(2026, 5, 1, tzinfo=UTC)
LATE = datetime(2026, 6, 1, tzinfo=UTC)
TRUE, FALSE = ConditionStatus.TRUE, ConditionStatus.FALSE


def seen(
    status: ConditionStatus, reason: str, not_after: datetime | None
) -> CertificateObservation:
    return CertificateObservation(status, reason, f"{reason} message", not_after)


def test_one_certificate_speaks_for_itself() -> None:
    only = seen(TRUE, "Issued", LATE)
    assert combine([("mail", only)]) is only


def test_both_issued_reports_the_earlier_expiry_and_both_messages() -> None:
    both = combine([("mail", seen(TRUE, "Issued", LATE)), ("web", seen(TRUE, "Issued", EARLY))])
    assert (both.status, both.reason, both.not_after) == (TRUE, "Issued", EARLY)
    assert both.message == "mail certificate: Issued message; web certificate: Issued message"


@pytest.mark.parametrize(
    ("mail", "web", "expected"),
    [
        # A web certificate that cannot be issued makes MTA-STS fail closed: not Ready.
        (
            seen(TRUE, "Issued", LATE),
            seen(FALSE, "IssuanceFailed", None),
            (FALSE, "IssuanceFailed"),
        ),
        (seen(FALSE, "Issuing", None), seen(TRUE, "Issued", LATE), (FALSE, "Issuing")),
        # Still serving, but renewal is failing: the problem is named, not "Issued".
        (seen(TRUE, "Issued", LATE), seen(TRUE, "RenewalFailing", EARLY), (TRUE, "RenewalFailing")),
        (
            seen(ConditionStatus.UNKNOWN, "X", None),
            seen(TRUE, "Issued", LATE),
            (ConditionStatus.UNKNOWN, "X"),
        ),
    ],
)
def test_the_worst_certificate_decides(
    mail: CertificateObservation,
    web: CertificateObservation,
    expected: tuple[ConditionStatus, str],
) -> None:
    combined = combine([("mail", mail), ("web", web)])
    assert (combined.status, combined.reason) == expected


def test_ca_bundle_file_adds_the_private_ca_to_the_public_ones() -> None:
    ca = trustme.CA()
    path = Path(ca_bundle_file(ca.cert_pem.bytes().decode()))
    try:
        text = path.read_text()
        assert text.startswith(Path(certifi.where()).read_text())
        assert text.rstrip().endswith(ca.cert_pem.bytes().decode().strip())
    finally:
        path.unlink()


def test_acme_settings_defaults_and_validation() -> None:
    defaults = load_settings(None).acme
    assert defaults.ca_bundle is None and defaults.authoritative_servers == ()
    assert defaults.propagation_timeout_seconds == 300
    given = load_settings(
        "acme: {caBundle: PEM, authoritativeServers: ['127.0.0.1:5300', 'ns1.example.net']}"
    ).acme
    assert given.authoritative_servers == ("127.0.0.1:5300", "ns1.example.net")
    with pytest.raises(pydantic.ValidationError):
        load_settings("acme: {authoritativeServers: ['not a server']}")
    with pytest.raises(pydantic.ValidationError):
        load_settings("acme: {propagationTimeoutSeconds: 0}")
    with pytest.raises(pydantic.ValidationError):
        load_settings("acme: {caBundleSecret: x}")  # unknown keys are rejected
