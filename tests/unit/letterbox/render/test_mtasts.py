"""The MTA-STS policy: golden text, and the published id always being the hash of the served
text (one rendering gives both)."""

from __future__ import annotations

from letterbox.api.maildomain import MailDomainSpec
from letterbox.render.dnsrecords import domain_records
from letterbox.render.mtasts import mta_sts_policy_id, render_mta_sts
from tests.unit.letterbox.render.test_render import check_golden


def _spec(**fields: object) -> MailDomainSpec:
    return MailDomainSpec.model_validate({"domain": "example.org", **fields})


def test_policy_golden() -> None:
    policy = render_mta_sts(
        _spec(mailHost="mx1.example.net", mtaSts={"mode": "enforce", "maxAge": "14d"})
    )
    # The golden file has plain LF line ends (files are read with universal newlines); the
    # CRLF ends are checked here.
    check_golden("mta-sts-enforce.txt", policy.text.replace("\r\n", "\n"))
    assert policy.text.endswith("\r\n")
    assert "\n" not in policy.text.replace("\r\n", "")  # no bare LF anywhere
    assert "\r" not in policy.text.replace("\r\n", "")  # no bare CR either
    assert policy.host == "mta-sts.example.org"


def test_txt_record_announces_the_id_of_the_served_text() -> None:
    for spec in (_spec(), _spec(mtaSts={"mode": "enforce"}), _spec(mailHost="mx.example.net")):
        policy = render_mta_sts(spec)
        assert policy.id == mta_sts_policy_id(policy.text)
        (txt,) = [r for r in domain_records(spec) if r.name == "_mta-sts.example.org"]
        assert txt.value == f"v=STSv1; id={policy.id}"


def test_any_change_of_the_policy_changes_the_id() -> None:
    variants = [
        _spec(),
        _spec(mtaSts={"mode": "enforce"}),
        _spec(mtaSts={"mode": "none"}),
        _spec(mtaSts={"maxAge": "1d"}),
        _spec(mailHost="mx.example.org"),
    ]
    ids = [render_mta_sts(s).id for s in variants]
    assert len(set(ids)) == len(ids)
    # ...and nothing else does: DMARC or SPF changes leave the policy alone.
    assert render_mta_sts(_spec(dmarc={"policy": "reject"})).id == ids[0]
