"""How values cross each provider's boundary: TXT strings split at 255 bytes and joined on read,
Cloudflare's priority/data fields, external-dns targets."""

from __future__ import annotations

import pytest

from letterbox.api.dnsrecord import DnsRecord, RecordType
from letterbox.dns.cloudflare import record_body, record_value
from letterbox.dns.externaldns import render_dns_endpoint
from letterbox.dns.powerdns import content_value, txt_content
from letterbox.dns.rfc2136 import presentation, split_host_port, to_rdata

LONG = "v=DKIM1; k=rsa; p=" + "A" * 390


@pytest.mark.parametrize("value", ["v=spf1 mx ~all", LONG, 'quote " and \\ backslash'])
def test_txt_round_trips_through_every_wire_form(value: str) -> None:
    rdata = to_rdata(RecordType.TXT, value)
    assert all(len(s) <= 255 for s in rdata.strings)  # type: ignore[attr-defined]
    assert presentation(rdata) == value
    assert content_value("TXT", txt_content(value)) == value
    body = record_body("example.com", RecordType.TXT, value, 300)
    assert record_value({"type": "TXT", "content": body["content"]}) == value


def test_long_txt_becomes_several_strings() -> None:
    assert txt_content(LONG).count('" "') == 1
    assert len(to_rdata(RecordType.TXT, LONG).strings) == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("cloudflare", "value"),
    [
        ({"type": "MX", "content": "mail.example.com", "priority": 10}, "10 mail.example.com."),
        (
            {
                "type": "SRV",
                "content": "1 993 mail.example.com",
                "data": {"priority": 0, "weight": 1, "port": 993, "target": "mail.example.com"},
            },
            "0 1 993 mail.example.com.",
        ),
        ({"type": "SRV", "content": "0 0 .", "priority": 0}, "0 0 0 ."),
        ({"type": "CNAME", "content": "mail.example.com"}, "mail.example.com."),
        ({"type": "TXT", "content": "plain unquoted text"}, "plain unquoted text"),
        ({"type": "TXT", "content": '"one" "two"'}, "onetwo"),
        ({"type": "A", "content": "192.0.2.1"}, "192.0.2.1"),
    ],
)
def test_cloudflare_records_as_values(cloudflare: dict[str, object], value: str) -> None:
    assert record_value(cloudflare) == value


def test_cloudflare_bodies() -> None:
    assert record_body("Example.com.", RecordType.MX, "10 mail.example.com.", 300) == {
        "type": "MX",
        "name": "example.com",
        "ttl": 300,
        "priority": 10,
        "content": "mail.example.com",
    }
    srv = record_body("_imaps._tcp.example.com", RecordType.SRV, "0 1 993 mail.example.com.", 60)
    assert srv["data"] == {"priority": 0, "weight": 1, "port": 993, "target": "mail.example.com"}
    none = record_body("_pop3._tcp.example.com", RecordType.SRV, "0 0 0 .", 60)
    assert none["data"]["target"] == "."
    assert record_value({"type": "SRV", "data": srv["data"]}) == "0 1 993 mail.example.com."


@pytest.mark.parametrize(
    ("server", "parsed"),
    [
        ("ns1.example.net", ("ns1.example.net", 53)),
        ("127.0.0.1:5300", ("127.0.0.1", 5300)),
        ("[2001:db8::1]:5353", ("2001:db8::1", 5353)),
        ("2001:db8::1", ("2001:db8::1", 53)),
    ],
)
def test_server_addresses(server: str, parsed: tuple[str, int]) -> None:
    assert split_host_port(server) == parsed


def test_dns_endpoint_groups_rrsets_and_drops_trailing_dots() -> None:
    records = [
        DnsRecord("example.com", RecordType.MX, "10 mail.example.com.", 300),
        DnsRecord("example.com", RecordType.TXT, "v=spf1 mx ~all", 300),
        DnsRecord("_pop3._tcp.example.com", RecordType.SRV, "0 0 0 .", 300),
        DnsRecord("autoconfig.example.com", RecordType.CNAME, "mail.example.com.", 300),
    ]
    obj = render_dns_endpoint("example-dns", "mail", records, labels={"a": "b"})
    assert obj["apiVersion"] == "externaldns.k8s.io/v1alpha1"
    assert obj["kind"] == "DNSEndpoint"
    assert obj["metadata"] == {"name": "example-dns", "namespace": "mail", "labels": {"a": "b"}}
    by_key = {(e["dnsName"], e["recordType"]): e for e in obj["spec"]["endpoints"]}
    assert by_key["example.com", "MX"]["targets"] == ["10 mail.example.com"]
    assert by_key["example.com", "TXT"]["targets"] == ["v=spf1 mx ~all"]
    assert by_key["_pop3._tcp.example.com", "SRV"]["targets"] == ["0 0 0 ."]
    assert by_key["autoconfig.example.com", "CNAME"] == {
        "dnsName": "autoconfig.example.com",
        "recordType": "CNAME",
        "recordTTL": 300,
        "targets": ["mail.example.com"],
    }
