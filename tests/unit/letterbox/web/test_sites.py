"""Host-name lookup of the web server's snapshot."""

from __future__ import annotations

import pytest

from letterbox.api.maildomain import MailDomainSpec
from letterbox.render.mtasts import render_mta_sts
from letterbox.web.sites import Role, Sites, normalize_host

ORG = MailDomainSpec.model_validate({"domain": "example.org"})
NET = MailDomainSpec.model_validate({"domain": "example.net", "autoconfig": False})


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("mta-sts.example.org", "mta-sts.example.org"),
        ("MTA-STS.Example.ORG:443", "mta-sts.example.org"),
        ("mta-sts.example.org.", "mta-sts.example.org"),
        ("[::1]:8443", "[::1]"),
        ("", ""),
        (None, ""),
    ],
)
def test_normalize_host(header: str | None, host: str) -> None:
    assert normalize_host(header) == host


def test_lookup_by_role() -> None:
    sites = Sites.of([ORG, NET])
    roles = {
        host: hit[0] if (hit := sites.lookup(host)) else None
        for host in (
            "mta-sts.example.org",
            "autoconfig.example.org",
            "autodiscover.example.org",
            "example.org",
            "mta-sts.example.net",
            "autoconfig.example.net",
            "www.example.org",
        )
    }
    assert roles == {
        "mta-sts.example.org": Role.MTA_STS,
        "autoconfig.example.org": Role.AUTOCONFIG,
        "autodiscover.example.org": Role.AUTODISCOVER,
        "example.org": Role.APEX,
        "mta-sts.example.net": Role.MTA_STS,
        "autoconfig.example.net": None,  # the domain publishes no autoconfiguration
        "www.example.org": None,
    }
    assert sites.policy_ids() == {
        "example.org": render_mta_sts(ORG).id,
        "example.net": render_mta_sts(NET).id,
    }


def test_first_domain_of_a_name_wins() -> None:
    enforce = MailDomainSpec.model_validate(
        {"domain": "example.org", "mtaSts": {"mode": "enforce"}}
    )
    sites = Sites.of([ORG, enforce])
    hit = sites.lookup("mta-sts.example.org")
    assert hit is not None
    assert hit[1].spec is ORG
    assert sites.policy_ids() == {"example.org": render_mta_sts(ORG).id}


def test_unchanged_domains_keep_their_rendered_documents() -> None:
    first = Sites.of([ORG, NET])
    changed_net = MailDomainSpec.model_validate({"domain": "example.net", "mailHost": "mx.x.org"})
    second = Sites.of([MailDomainSpec.model_validate(ORG.model_dump()), changed_net], first)
    assert second.domains["example.org"] is first.domains["example.org"]
    assert second.domains["example.net"] is not first.domains["example.net"]
    assert "mx: mx.x.org\r\n" in second.domains["example.net"].policy.text
