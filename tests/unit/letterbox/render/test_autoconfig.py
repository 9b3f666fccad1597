"""Client autoconfiguration documents: golden XML for Thunderbird's config-v1.1 and Outlook's
autodiscover, and the structure clients read from them."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from letterbox.api.maildomain import MailDomainSpec
from letterbox.render.autoconfig import (
    EMAIL_PLACEHOLDER,
    OUTLOOK_RESPONSE_NS,
    autodiscover_response,
    thunderbird_autoconfig,
)
from tests.unit.letterbox.render.test_render import check_golden

SPEC = MailDomainSpec.model_validate({"domain": "example.org", "mailHost": "mx.example.org"})


def test_thunderbird_golden_and_structure() -> None:
    text = thunderbird_autoconfig(SPEC)
    check_golden("autoconfig-thunderbird.xml", text)
    root = ET.fromstring(text)
    assert root.tag == "clientConfig"
    assert root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None
    assert provider.findtext("domain") == "example.org"
    servers = [
        (s.tag, s.get("type"), s.findtext("port"), s.findtext("socketType"))
        for s in provider
        if s.tag.endswith("Server")
    ]
    assert servers == [
        ("incomingServer", "imap", "993", "SSL"),
        ("incomingServer", "imap", "143", "STARTTLS"),
        ("outgoingServer", "smtp", "465", "SSL"),
        ("outgoingServer", "smtp", "587", "STARTTLS"),
    ]
    assert {s.findtext("hostname") for s in provider.iter() if s.tag.endswith("Server")} == {
        "mx.example.org"
    }
    assert {u.text for u in provider.iter("username")} == {EMAIL_PLACEHOLDER}


def test_autodiscover_golden_and_structure() -> None:
    text = autodiscover_response(SPEC, "alice@example.org")
    check_golden("autodiscover-outlook.xml", text)
    ns = {"r": OUTLOOK_RESPONSE_NS}
    account = ET.fromstring(text).find("r:Response/r:Account", ns)
    assert account is not None
    assert account.findtext("r:Action", namespaces=ns) == "settings"
    protocols = [
        (
            p.findtext("r:Type", namespaces=ns),
            p.findtext("r:Port", namespaces=ns),
            p.findtext("r:SSL", namespaces=ns),
            p.findtext("r:Encryption", namespaces=ns),
            p.findtext("r:LoginName", namespaces=ns),
        )
        for p in account.findall("r:Protocol", ns)
    ]
    assert protocols == [
        ("IMAP", "993", "on", None, "alice@example.org"),
        ("IMAP", "143", "off", "TLS", "alice@example.org"),
        ("SMTP", "465", "on", None, "alice@example.org"),
        ("SMTP", "587", "off", "TLS", "alice@example.org"),
    ]


def test_autodiscover_escapes_what_it_echoes() -> None:
    text = autodiscover_response(SPEC, "a&b<c@example.org")
    ns = {"r": OUTLOOK_RESPONSE_NS}
    logins = {e.text for e in ET.fromstring(text).iter(f"{{{OUTLOOK_RESPONSE_NS}}}LoginName")}
    assert logins == {"a&b<c@example.org"}
    assert ns  # the namespace constant is the one the document declares
    assert f'xmlns="{OUTLOOK_RESPONSE_NS}"' in text
