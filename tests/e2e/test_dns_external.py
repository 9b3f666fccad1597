"""The externalDNS output mode on the real control plane: external-dns's DNSEndpoint CRD
(tests/e2e/data, written from its documented API) installed, the operator running in-process
as its ServiceAccount under the chart's Role rendered with `rbac.externalDNS=true`.

One story: a MailDomain with `dns.provider: externalDNS` and a DKIMKey → one DNSEndpoint whose
endpoints are exactly the planned records (MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, SRV and the
autoconfig names), DNSPublished=True HandedToExternalDNS; the test then plays external-dns (copies
the endpoints into a real PowerDNS and writes status.observedGeneration), and the DKIM key goes
live only then; a changed spec updates the endpoint; switching the provider to manual deletes
it; switching back recreates it, and deleting the MailDomain lets the garbage collector remove
it through its ownerReference. A switch made while no operator runs is seen by the next one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from letterbox.api.dnsrecord import DnsRecord, RecordType, txt_strings
from letterbox.api.maildomain import MailDomainSpec
from letterbox.kube import Kube, NotFound
from letterbox.render.dnsrecords import domain_records
from tests.e2e.operator_harness import (
    grant_operator,
    operator_in_process,
    publisher_asking,
    wait_for,
)
from tests.e2e.test_operator_pod import operator_settings
from tests.harness.controlplane import ControlPlane
from tests.harness.helm import RuleTriple, operator_role, role_triples, template
from tests.harness.powerdns import PowerDns

pytestmark = pytest.mark.e2e

NAMESPACE = "dns-external"
DOMAIN = "external-e2e.test"
CRD = Path(__file__).resolve().parent / "data" / "dnsendpoint-crd.yaml"
ENDPOINT_API = "externaldns.k8s.io/v1alpha1"
LB = "letterbox.dev/v1alpha1"
# The chart's Role exactly as rendered with the value users set for this mode.
RULES: tuple[RuleTriple, ...] = role_triples(
    operator_role(template({"rbac": {"externalDNS": True}}))
)


@pytest.fixture(scope="module")
def endpoint_crd(crds: ControlPlane) -> Iterator[ControlPlane]:
    """external-dns's DNSEndpoint CRD, for this module only (other tests run without it)."""
    crds.kubectl("apply", "--server-side", "-f", str(CRD))
    crds.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/dnsendpoints.externaldns.k8s.io",
    )
    try:
        yield crds
    finally:
        crds.kubectl("delete", "--wait=true", "-f", str(CRD))


def grant(
    plane: ControlPlane,
    admin: Kube,
    path: Path,
    namespace: str = NAMESPACE,
    rules: tuple[RuleTriple, ...] = RULES,
) -> Path:
    """The namespace, the chart's Role bound to the operator's account, its kubeconfig."""
    return grant_operator(plane, admin, namespace, path, rules)


def operator(
    kubeconfig: Path, pdns: PowerDns, namespace: str = NAMESPACE
) -> contextlib.AbstractContextManager[None]:
    # Key checks ask the PowerDNS the test publishes into as external-dns would (the zone's
    # NS names nothing resolvable here).
    return operator_in_process(
        kubeconfig,
        operator_settings(namespace),
        dns=publisher_asking(pdns.nameserver),
        dkim_mount_seconds=0.5,
    )


# --- what the test expects, computed here -----------------------------------------------------

Endpoints = dict[tuple[str, str], tuple[int, frozenset[str]]]


def target(record: DnsRecord) -> str:
    """external-dns's form of a value: host names without the trailing dot."""
    if record.type in (RecordType.MX, RecordType.SRV, RecordType.CNAME):
        *head, host = record.value.split()
        return " ".join([*head, host if host == "." else host.removesuffix(".")])
    return record.value


def expected_endpoints(records: list[DnsRecord]) -> Endpoints:
    found: Endpoints = {}
    for record in records:
        ttl, targets = found.get((record.name, record.type.value), (record.ttl, frozenset()))
        found[(record.name, record.type.value)] = (min(ttl, record.ttl), targets | {target(record)})
    return found


def endpoints_of(endpoint: dict[str, Any]) -> Endpoints:
    found: Endpoints = {}
    for item in endpoint["spec"]["endpoints"]:
        key = (item["dnsName"], item["recordType"])
        assert key not in found, f"one endpoint per name and type: {key} twice"
        assert len(set(item["targets"])) == len(item["targets"]), item
        found[key] = (item["recordTTL"], frozenset(item["targets"]))
    return found


def planned(domain: dict[str, Any], dkim_record: str) -> list[DnsRecord]:
    """The records the domain needs, from the pure renderer plus the key's published record."""
    spec = MailDomainSpec.model_validate(domain["spec"])
    dkim = DnsRecord(f"lb._domainkey.{DOMAIN}", RecordType.TXT, dkim_record, spec.dns.ttl, "DKIM")
    return [*domain_records(spec), dkim]


# --- the cluster side -----------------------------------------------------------------------


def get(admin: Kube, kind: str, name: str) -> dict[str, Any]:
    return dict(admin.get(LB, kind, name, NAMESPACE))


def condition(obj: dict[str, Any], type_: str) -> tuple[str, str] | None:
    for found in (obj.get("status") or {}).get("conditions") or []:
        if found["type"] == type_:
            return found["status"], found["reason"]
    return None


def dns_endpoint(admin: Kube) -> dict[str, Any] | None:
    with contextlib.suppress(NotFound):
        return dict(admin.get(ENDPOINT_API, "DNSEndpoint", "external", NAMESPACE))
    return None


def key_phases(admin: Kube) -> dict[str, str]:
    status = get(admin, "DKIMKey", "external-rsa").get("status") or {}
    return {k["selector"]: k["phase"] for k in status.get("keys") or []}


def play_external_dns(admin: Kube, pdns: PowerDns, endpoint: dict[str, Any]) -> None:
    """What external-dns does with the object: the endpoints become RRsets at the provider
    (TXT split into 255-byte strings, hosts absolute again), then status.observedGeneration."""
    rrsets = []
    for item in endpoint["spec"]["endpoints"]:
        contents = []
        for value in item["targets"]:
            if item["recordType"] == "TXT":
                contents.append(" ".join(f'"{part}"' for part in txt_strings(value)))
            else:
                *head, host = value.split()
                contents.append(" ".join([*head, host if host == "." else f"{host}."]))
        rrsets.append((item["dnsName"], item["recordType"], item["recordTTL"], contents))
    pdns.set_rrsets(DOMAIN, rrsets)
    admin.patch_status(
        "DNSEndpoint",
        NAMESPACE,
        "external",
        {"observedGeneration": endpoint["metadata"]["generation"]},
        api_version=ENDPOINT_API,
    )


def maildomain(namespace: str = NAMESPACE, **dns: Any) -> dict[str, Any]:
    return {
        "apiVersion": LB,
        "kind": "MailDomain",
        "metadata": {"name": "external", "namespace": namespace},
        "spec": {
            "domain": DOMAIN,
            "dns": {"provider": "externalDNS", "ttl": 300, **dns},
            "tlsRpt": {"rua": [f"mailto:tls-reports@{DOMAIN}"]},
            # No issuer to reach from here; the mail host's certificate is a plain Secret.
            "tls": {"secretName": "mailpod-tls"},
        },
    }


DKIMKEY = {
    "apiVersion": LB,
    "kind": "DKIMKey",
    "metadata": {"name": "external-rsa", "namespace": NAMESPACE},
    "spec": {"domain": DOMAIN, "selector": "lb", "algorithm": "rsa-2048"},
}


def test_dns_endpoint_follows_the_maildomain(
    endpoint_crd: ControlPlane, powerdns: PowerDns, tmp_path: Path
) -> None:
    began = time.monotonic()
    pdns = powerdns
    pdns.create_zone(DOMAIN)
    admin = Kube.connect(endpoint_crd.kubeconfig)
    kubeconfig = grant(endpoint_crd, admin, tmp_path / "operator" / "kubeconfig")
    assert ("externaldns.k8s.io", "dnsendpoints", ("create", "patch", "delete")) in RULES
    try:
        with operator(kubeconfig, pdns):
            admin.apply(maildomain())
            admin.apply(DKIMKEY)

            # --- the endpoint holds the planned records -----------------------------------
            def handed() -> dict[str, Any] | None:
                domain = get(admin, "MailDomain", "external")
                found = condition(domain, "DNSPublished") == ("True", "HandedToExternalDNS")
                return domain if found and dns_endpoint(admin) is not None else None

            domain = wait_for("DNSPublished=True HandedToExternalDNS", handed, 30)
            (key,) = wait_for(
                "the DKIM key's record",
                lambda: [
                    k
                    for k in (get(admin, "DKIMKey", "external-rsa").get("status") or {}).get("keys")
                    or []
                    if k.get("publicRecord")
                ],
                30,
            )
            records = planned(domain, key["publicRecord"])
            wait_for(
                "the DKIM record in the endpoint",
                lambda: (
                    endpoints_of(dns_endpoint(admin) or {"spec": {"endpoints": []}})
                    == expected_endpoints(records)
                ),
                20,
            )
            endpoint = dns_endpoint(admin)
            assert endpoint is not None
            owners = endpoint["metadata"]["ownerReferences"]
            assert [(o["kind"], o["name"], o["uid"], o["controller"]) for o in owners] == [
                ("MailDomain", "external", domain["metadata"]["uid"], True)
            ]
            assert endpoint["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "letterbox"
            print(f"\nDNSEndpoint with the planned records in {time.monotonic() - began:.1f}s")

            # Each kind of record, spelled out, so a wrong renderer cannot agree with itself.
            shown = endpoints_of(endpoint)
            assert shown[(DOMAIN, "MX")] == (300, frozenset({f"10 mail.{DOMAIN}"}))
            (spf,) = shown[(DOMAIN, "TXT")][1]
            assert spf.startswith("v=spf1 mx ")
            assert shown[(f"lb._domainkey.{DOMAIN}", "TXT")][1] == {key["publicRecord"]}
            assert len(key["publicRecord"]) > 255  # one target; external-dns splits it
            (dmarc,) = shown[(f"_dmarc.{DOMAIN}", "TXT")][1]
            assert dmarc.startswith("v=DMARC1; p=quarantine")
            domain = wait_for(
                "the policy id in status",
                lambda: (
                    (d := get(admin, "MailDomain", "external"))["status"].get("mtaStsPolicyId")
                    and d
                ),
                10,
            )
            policy_id = domain["status"]["mtaStsPolicyId"]
            assert shown[(f"_mta-sts.{DOMAIN}", "TXT")][1] == {f"v=STSv1; id={policy_id}"}
            assert shown[(f"mta-sts.{DOMAIN}", "CNAME")][1] == {f"mail.{DOMAIN}"}
            assert shown[(f"_smtp._tls.{DOMAIN}", "TXT")][1] == {
                f"v=TLSRPTv1; rua=mailto:tls-reports@{DOMAIN}"
            }
            assert shown[(f"_submissions._tcp.{DOMAIN}", "SRV")][1] == {f"0 1 465 mail.{DOMAIN}"}
            assert shown[(f"_pop3s._tcp.{DOMAIN}", "SRV")][1] == {"0 0 0 ."}
            # The status lists the same records (what a person would copy by hand).
            listed = {(r["name"], r["type"], r["value"]) for r in domain["status"]["records"]}
            assert listed == {(r.name, r.type.value, r.value) for r in records}

            # --- external-dns publishes: only then does the key go live --------------------
            assert key_phases(admin) == {"lb": "Pending"}
            play_external_dns(admin, pdns, endpoint)
            stored = dns_endpoint(admin)
            assert stored is not None
            assert stored["status"] == {"observedGeneration": endpoint["metadata"]["generation"]}
            wait_for("the key Active", lambda: key_phases(admin) == {"lb": "Active"}, 30)
            dkim_txt = pdns.query(f"lb._domainkey.{DOMAIN}", "TXT")
            assert len(dkim_txt) == 1 and dkim_txt[0].count('" "') >= 1

            # --- a changed spec updates the endpoint ---------------------------------------
            generation = endpoint["metadata"]["generation"]
            changed = maildomain(ttl=120)
            changed["spec"]["tlsRpt"] = {"rua": [f"mailto:tlsrpt@reports.{DOMAIN}"]}
            changed["spec"]["dmarc"] = {"policy": "reject"}
            admin.apply(changed)
            domain = get(admin, "MailDomain", "external")
            records = planned(domain, key["publicRecord"])
            assert (f"_smtp._tls.{DOMAIN}", RecordType.TXT) in {(r.name, r.type) for r in records}

            def updated() -> dict[str, Any] | None:
                found = dns_endpoint(admin)
                same = found and endpoints_of(found) == expected_endpoints(records)
                return found if same else None

            endpoint = wait_for("the endpoint updated", updated, 20)
            assert endpoint["metadata"]["generation"] > generation
            shown = endpoints_of(endpoint)
            assert {ttl for ttl, _ in shown.values()} == {120}
            assert shown[(f"_smtp._tls.{DOMAIN}", "TXT")][1] == {
                f"v=TLSRPTv1; rua=mailto:tlsrpt@reports.{DOMAIN}"
            }
            (dmarc,) = shown[(f"_dmarc.{DOMAIN}", "TXT")][1]
            assert dmarc.startswith("v=DMARC1; p=reject")

            # --- switching the provider away deletes it ------------------------------------
            admin.apply(maildomain(provider="manual"))
            wait_for("the endpoint deleted", lambda: dns_endpoint(admin) is None, 20)
            wait_for(
                "DNSPublished Manual",
                lambda: (
                    condition(get(admin, "MailDomain", "external"), "DNSPublished")
                    == ("Unknown", "Manual")
                ),
                20,
            )

            # --- back to externalDNS, then the MailDomain deleted: the GC removes it -------
            admin.apply(maildomain())
            wait_for("the endpoint recreated", lambda: dns_endpoint(admin) is not None, 20)
            admin.delete(LB, "MailDomain", "external", NAMESPACE)

            def domain_gone() -> bool:
                with contextlib.suppress(NotFound):
                    get(admin, "MailDomain", "external")
                    return False
                return True

            wait_for("the MailDomain gone", domain_gone, 20)
            deleted = time.monotonic()
            # The garbage collector watches a CRD's objects only from its next discovery
            # resync (every 30 s), so this wait is mostly that.
            wait_for("the endpoint collected", lambda: dns_endpoint(admin) is None, 90)
            print(f"DNSEndpoint collected {time.monotonic() - deleted:.1f}s after its owner")
    finally:
        admin.close()
        pdns.delete_zone(DOMAIN)
    print(f"whole story in {time.monotonic() - began:.1f}s")


def test_a_switch_made_while_no_operator_runs_deletes_the_endpoint(
    endpoint_crd: ControlPlane, powerdns: PowerDns, tmp_path: Path
) -> None:
    """The operator that wrote the endpoint stops; the domain moves to manual; a new operator
    (which wrote nothing itself) learns of the endpoint from the stored status and deletes it."""
    namespace = "dns-external-restart"
    admin = Kube.connect(endpoint_crd.kubeconfig)
    kubeconfig = grant(endpoint_crd, admin, tmp_path / "kubeconfig", namespace)

    def endpoint() -> dict[str, Any] | None:
        with contextlib.suppress(NotFound):
            return dict(admin.get(ENDPOINT_API, "DNSEndpoint", "external", namespace))
        return None

    def published() -> tuple[str, str] | None:
        return condition(dict(admin.get(LB, "MailDomain", "external", namespace)), "DNSPublished")

    try:
        with operator(kubeconfig, powerdns, namespace):
            admin.apply(maildomain(namespace))
            wait_for(
                "the endpoint written",
                lambda: endpoint() is not None and published() == ("True", "HandedToExternalDNS"),
                30,
            )
        admin.apply(maildomain(namespace, provider="manual"))
        time.sleep(1)  # nothing runs to delete it
        assert endpoint() is not None
        assert published() == ("True", "HandedToExternalDNS")
        began = time.monotonic()
        with operator(kubeconfig, powerdns, namespace):
            wait_for("the endpoint deleted", lambda: endpoint() is None, 30)
            print(f"\nDNSEndpoint deleted {time.monotonic() - began:.1f}s after the start")
            wait_for("DNSPublished Manual", lambda: published() == ("Unknown", "Manual"), 20)
            # Deleted once: the next pass, with Manual stored, does not recreate or fail.
            time.sleep(1)
            assert endpoint() is None and published() == ("Unknown", "Manual")
    finally:
        admin.close()


def test_without_the_rbac_value_the_condition_says_what_to_turn_on(
    endpoint_crd: ControlPlane, powerdns: PowerDns, tmp_path: Path
) -> None:
    """The chart's default Role grants nothing on DNSEndpoints: the domain says so, and
    nothing else about it breaks."""
    namespace = "dns-external-no-rbac"
    rules = role_triples(operator_role(template()))
    assert not any(group == "externaldns.k8s.io" for group, _, _ in rules)
    admin = Kube.connect(endpoint_crd.kubeconfig)
    kubeconfig = grant(endpoint_crd, admin, tmp_path / "kubeconfig", namespace, rules)
    try:
        with operator(kubeconfig, powerdns, namespace):
            admin.apply(maildomain(namespace))

            def refused() -> dict[str, Any] | None:
                domain = dict(admin.get(LB, "MailDomain", "external", namespace))
                for found in (domain.get("status") or {}).get("conditions") or []:
                    if found["type"] == "DNSPublished" and found["reason"] == "DNSEndpointRefused":
                        return dict(found)
                return None

            found = wait_for("DNSPublished DNSEndpointRefused", refused, 30)
            assert found["status"] == "False"
            assert "rbac.externalDNS" in found["message"]
            with pytest.raises(NotFound):
                admin.get(ENDPOINT_API, "DNSEndpoint", "external", namespace)
            # The rest of the domain is reconciled all the same.
            assert admin.get("v1", "Secret", "mailpod-config", namespace)
    finally:
        admin.close()
