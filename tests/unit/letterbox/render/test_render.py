"""Golden-file tests of the pure renderers; UPDATE_GOLDEN=1 rewrites the files after a deliberate
change (review the diff)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from letterbox.api.dkimkey import DkimAlgorithm
from letterbox.api.maildomain import MailDomainSpec
from letterbox.api.manifests import load_manifests
from letterbox.render.dkim import DkimKeyMaterial, dkim_record_value
from letterbox.render.dnsrecords import dmarc_value, domain_records, spf_value
from letterbox.render.mtasts import mta_sts_policy, mta_sts_policy_id
from letterbox.render.secrets import credentials_secret, dkim_secret
from tests.conftest import EXAMPLES

GOLDEN = Path(__file__).parent / "golden"
DATA = Path(__file__).parent / "data"

# Fixed keys so renders are reproducible (test-only keys, never used anywhere else).
RSA_KEY = (DATA / "rsa-2048.pem").read_text()
ED25519_KEY = (DATA / "ed25519.pem").read_text()


def check_golden(name: str, value: Any) -> None:
    path = GOLDEN / name
    text = value if isinstance(value, str) else yaml.safe_dump(value, sort_keys=False)
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text()


def _example_manifests() -> Any:
    return load_manifests([(str(p), p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))])


def _keys() -> list[DkimKeyMaterial]:
    return [
        DkimKeyMaterial("example.com", "lb", DkimAlgorithm.RSA_2048, RSA_KEY),
        DkimKeyMaterial("example.com", "lb-ed", DkimAlgorithm.ED25519, ED25519_KEY),
        DkimKeyMaterial("other.example", "x", DkimAlgorithm.ED25519, ED25519_KEY),
    ]


def test_example_domain_records_golden() -> None:
    domain = _example_manifests().domains[0]
    records = domain_records(domain.spec, _keys())
    check_golden(
        "example-com-records.yaml",
        [
            {
                "purpose": r.purpose,
                "name": r.name,
                "type": r.type.value,
                "ttl": r.ttl,
                "value": r.value,
            }
            for r in records
        ],
    )
    assert not any(r.name.endswith("other.example") for r in records)


def test_minimal_domain_records_golden() -> None:
    spec = MailDomainSpec.model_validate({"domain": "example.org", "autoconfig": False})
    records = domain_records(spec)
    check_golden("minimal-records.yaml", [f"{r.name} {r.type.value} {r.value}" for r in records])


def test_secrets_golden() -> None:
    manifests = _example_manifests()
    alice = next(m for m in manifests.mailboxes if m.metadata.name == "alice")
    objects = [
        credentials_secret(alice, "not-a-real-password"),
        dkim_secret(manifests.dkim_keys[0], _keys()[0]),
    ]
    check_golden("secrets.yaml", yaml.safe_dump_all(objects, sort_keys=False))


def test_owner_reference_when_the_owner_exists_in_the_cluster() -> None:
    alice = next(m for m in _example_manifests().mailboxes if m.metadata.name == "alice")
    live = alice.model_copy(
        update={"metadata": alice.metadata.model_copy(update={"uid": "u-1", "namespace": "mail"})}
    )
    secret = credentials_secret(live, "pw")
    assert secret["metadata"]["namespace"] == "mail"
    assert secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "letterbox.dev/v1alpha1",
            "kind": "Mailbox",
            "name": "alice",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


@pytest.mark.parametrize(
    ("spf", "expected"),
    [
        ({}, "v=spf1 mx ~all"),
        (
            {"all": "fail", "mechanisms": ["ip4:192.0.2.0/24", "include:_spf.example.net"]},
            "v=spf1 mx ip4:192.0.2.0/24 include:_spf.example.net -all",
        ),
        ({"all": "neutral"}, "v=spf1 mx ?all"),
    ],
)
def test_spf(spf: dict[str, Any], expected: str) -> None:
    assert (
        spf_value(MailDomainSpec.model_validate({"domain": "example.org", "spf": spf})) == expected
    )


def test_dmarc_with_every_tag() -> None:
    spec = MailDomainSpec.model_validate(
        {
            "domain": "example.org",
            "dmarc": {
                "policy": "reject",
                "subdomainPolicy": "quarantine",
                "dkimAlignment": "strict",
                "spfAlignment": "strict",
                "percent": 25,
                "rua": ["mailto:a@example.org"],
                "ruf": ["mailto:f@example.org", "https://reports.example.net/dmarc"],
            },
        }
    )
    assert dmarc_value(spec) == (
        "v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=s; pct=25; rua=mailto:a@example.org; "
        "ruf=mailto:f@example.org,https://reports.example.net/dmarc"
    )


def test_mta_sts_policy_and_id() -> None:
    testing = MailDomainSpec.model_validate({"domain": "example.org"})
    enforce = MailDomainSpec.model_validate(
        {"domain": "example.org", "mtaSts": {"mode": "enforce", "maxAge": "30d"}}
    )
    assert mta_sts_policy(enforce) == (
        "version: STSv1\r\nmode: enforce\r\nmx: mail.example.org\r\nmax_age: 2592000\r\n"
    )
    ids = {mta_sts_policy_id(mta_sts_policy(s)) for s in (testing, enforce)}
    assert len(ids) == 2
    assert all(i.isalnum() and 1 <= len(i) <= 32 for i in ids)
    capped = MailDomainSpec.model_validate({"domain": "example.org", "mtaSts": {"maxAge": "1000d"}})
    assert "max_age: 31557600\r\n" in mta_sts_policy(capped)


def test_dkim_records_carry_the_public_key() -> None:
    rsa, ed = _keys()[:2]
    assert dkim_record_value(rsa).startswith("v=DKIM1; k=rsa; p=MIIBIjAN")
    ed_value = dkim_record_value(ed)
    assert ed_value.startswith("v=DKIM1; k=ed25519; p=")
    assert len(ed_value.split("p=")[1]) == 44  # 32 raw bytes, base64


def test_pod_config_golden_and_loadable_by_the_pod(tmp_path: Path) -> None:
    """The contract: what the operator renders, the mail pod loads unchanged."""
    from letterbox.render.podconfig import PodMaterial, render_pod_config
    from mailpod import config as pod
    from mailpod.config import dump_config, load_config

    manifests = _example_manifests()
    hashes = {m.spec.address: "$2b$04$" + "x" * 53 for m in manifests.mailboxes}
    config = render_pod_config(
        manifests,
        PodMaterial(
            hostname="mail.example.com",
            listeners=[pod.Listener(kind=pod.ListenerKind.SMTP, port=25)],
            storage=pod.Storage(mail_root=Path("/var/mail"), queue_dir=Path("/var/queue")),
            tls=None,
            password_hashes=hashes,
            dkim_keys=[(_keys()[0], Path("/keys/lb.pem")), (_keys()[2], Path("/keys/x.pem"))],
        ),
    )
    check_golden("pod-config.json", dump_config(config) + "\n")
    assert [m.quota_bytes for m in config.mailboxes] == [10 * 2**30, 5 * 2**30]  # own, default
    assert [k.domain for k in config.dkim_keys] == ["example.com"]  # no MailDomain for the other
    path = tmp_path / "config.json"
    path.write_text(dump_config(config))
    assert load_config(path) == config
