from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from letterbox.api import Alias, DKIMKey, Mailbox, MailDomain
from letterbox.api.manifests import ManifestError, load_manifests
from letterbox.api.meta import duration_seconds, quantity_bytes
from tests.conftest import EXAMPLES, INVALID_EXAMPLES, expectations


def _examples() -> list[tuple[str, str]]:
    return [(str(p), p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))]


def test_examples_load_as_one_complete_domain() -> None:
    manifests = load_manifests(_examples())
    assert [d.spec.domain for d in manifests.domains] == ["example.com"]
    assert sorted(m.spec.address for m in manifests.mailboxes) == [
        "alice@example.com",
        "bob@example.com",
    ]
    assert {a.spec.address for a in manifests.aliases} >= {"sales@example.com"}
    assert [k.spec.selector for k in manifests.dkim_keys] == ["lb"]
    assert [s["metadata"]["name"] for s in manifests.secrets] == ["bob-password"]


@pytest.mark.parametrize("path", INVALID_EXAMPLES, ids=lambda p: p.stem)
def test_invalid_examples_are_rejected_with_their_message(path: Path) -> None:
    expected = expectations(path, "offline")
    assert expected, f"{path.name} declares no '# expect:' line"
    with pytest.raises(ManifestError) as error:
        load_manifests([(str(path), path.read_text())])
    text = str(error.value)
    assert f"{path}: document 1" in text
    for message in expected:
        assert message in text


def test_every_problem_is_reported_not_just_the_first() -> None:
    text = "\n---\n".join(p.read_text() for p in INVALID_EXAMPLES)
    with pytest.raises(ManifestError) as error:
        load_manifests([("all.yaml", text)])
    assert len(error.value.problems) >= len(INVALID_EXAMPLES)


def _mailbox(**spec: object) -> Mailbox:
    return Mailbox.model_validate(
        {
            "apiVersion": "letterbox.dev/v1alpha1",
            "kind": "Mailbox",
            "metadata": {"name": "m"},
            "spec": spec,
        }
    )


@pytest.mark.parametrize(
    "address",
    ["alice@example.com", "a.b+tag@sub.example.co.uk", "x@xn--bcher-kva.example", "o'neil@ex.io"],
)
def test_good_addresses(address: str) -> None:
    assert _mailbox(address=address).spec.address == address


@pytest.mark.parametrize(
    "address",
    [
        "alice",
        "alice@",
        "@example.com",
        "alice@example",
        "Alice@Example.COM",
        "alice@-example.com",
        '"quoted"@example.com',
        "a..b@example.com",
        "alice@example.com\n",
        "alice@[192.0.2.1]",
        "alice@example.com@evil.test",
        "alice%evil.test@example.com",
        "evil.test!alice@example.com",
        "../alice@example.com",
    ],
)
def test_bad_addresses(address: str) -> None:
    with pytest.raises(ValidationError, match="must be an address"):
        _mailbox(address=address)


def test_send_as_must_not_repeat_own_address() -> None:
    with pytest.raises(ValidationError, match="must not repeat the mailbox's own address"):
        _mailbox(address="a@example.com", sendAs=["a@example.com"])


def test_catch_all_alias() -> None:
    alias = Alias.model_validate(
        {
            "apiVersion": "letterbox.dev/v1alpha1",
            "kind": "Alias",
            "metadata": {"name": "all"},
            "spec": {"address": "@example.com", "destinations": ["postmaster@example.com"]},
        }
    )
    assert alias.spec.is_catch_all


def test_alias_needs_a_destination() -> None:
    with pytest.raises(ValidationError, match="at least 1 item"):
        Alias.model_validate(
            {
                "apiVersion": "letterbox.dev/v1alpha1",
                "kind": "Alias",
                "metadata": {"name": "a"},
                "spec": {"address": "a@example.com", "destinations": []},
            }
        )


def test_kind_and_api_version_must_match() -> None:
    document = yaml.safe_load((EXAMPLES / "dkimkey.yaml").read_text())
    with pytest.raises(ManifestError, match=r"unsupported object letterbox\.dev/v1beta1/DKIMKey"):
        load_manifests(
            [("k.yaml", yaml.safe_dump({**document, "apiVersion": "letterbox.dev/v1beta1"}))]
        )
    with pytest.raises(ValidationError, match="Input should be 'DKIMKey'"):
        DKIMKey.model_validate({**document, "kind": "Mailbox"})


def test_maildomain_defaults_are_safe() -> None:
    domain = MailDomain.model_validate(
        {
            "apiVersion": "letterbox.dev/v1alpha1",
            "kind": "MailDomain",
            "metadata": {"name": "d"},
            "spec": {"domain": "example.org"},
        }
    )
    spec = domain.spec
    assert spec.effective_mail_host == "mail.example.org"
    assert spec.effective_zone == "example.org"
    assert spec.dns.provider.value == "manual"
    assert spec.dns.policy.value == "upsert-only"
    assert spec.mta_sts.mode.value == "testing"
    assert spec.dmarc.percent == 100


def test_not_yaml_is_reported_with_the_file() -> None:
    with pytest.raises(ManifestError, match=r"broken.yaml: not valid YAML"):
        load_manifests([("broken.yaml", "kind: [unclosed")])


@pytest.mark.parametrize(
    ("text", "expected"), [("0", 0), ("10Gi", 10 * 2**30), ("500M", 500 * 10**6), ("1.5Ki", 1536)]
)
def test_quantity_bytes(text: str, expected: int) -> None:
    assert quantity_bytes(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("90d", 90 * 86400), ("1d12h", 129600), ("2w", 1209600)]
)
def test_duration_seconds(text: str, expected: int) -> None:
    assert duration_seconds(text) == expected
