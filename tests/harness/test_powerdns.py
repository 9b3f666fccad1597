"""The PowerDNS harness answers what the DNS-touching tests rely on: API changes visible to queries
at once, and RFC 2136 updates accepted only with the zone's TSIG key."""

from __future__ import annotations

import dns.query
import dns.rcode
import dns.tsigkeyring
import dns.update

from tests.harness.powerdns import PowerDns


def test_api_changes_are_answered_at_once(powerdns: PowerDns) -> None:
    powerdns.create_zone(
        "harness-api.test", [("harness-api.test", "MX", 300, ["10 mx.harness-api.test."])]
    )
    assert powerdns.query("harness-api.test", "MX") == ["10 mx.harness-api.test."]
    powerdns.set_rrsets(
        "harness-api.test", [("harness-api.test", "MX", 300, ["20 other.harness-api.test."])]
    )
    assert powerdns.query("harness-api.test", "MX") == ["20 other.harness-api.test."]
    powerdns.set_rrsets("harness-api.test", [("harness-api.test", "MX", 300, [])])
    assert powerdns.query("harness-api.test", "MX") == []


def test_rfc2136_update_needs_the_tsig_key(powerdns: PowerDns) -> None:
    powerdns.create_zone("harness-tsig.test")
    secret = powerdns.allow_updates("harness-tsig.test", "harness-key")
    keyring = dns.tsigkeyring.from_text({"harness-key": ("hmac-sha256", secret)})
    signed = dns.update.UpdateMessage(
        "harness-tsig.test", keyring=keyring, keyalgorithm="hmac-sha256"
    )
    signed.add("www", 300, "A", "192.0.2.7")
    response = dns.query.tcp(signed, "127.0.0.1", port=powerdns.dns_port, timeout=5)
    assert response.rcode() == dns.rcode.NOERROR
    assert powerdns.query("www.harness-tsig.test", "A") == ["192.0.2.7"]

    unsigned = dns.update.UpdateMessage("harness-tsig.test")
    unsigned.add("evil", 300, "A", "192.0.2.66")
    response = dns.query.tcp(unsigned, "127.0.0.1", port=powerdns.dns_port, timeout=5)
    assert response.rcode() == dns.rcode.REFUSED
    assert powerdns.query("evil.harness-tsig.test", "A") == []
