"""Client autoconfiguration documents: Thunderbird's autoconfig (config-v1.1.xml) and
Microsoft's autodiscover (the Outlook "POX" schema).

Both describe the public ports of the mail Service (IMAP 993/143, submission 465/587), which
are fixed whatever the container ports are. The login name is the full address, which is what
the mail pod authenticates.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from enum import StrEnum
from xml.sax.saxutils import escape

from letterbox.api.maildomain import MailDomainSpec

THUNDERBIRD_PATH = "/mail/config-v1.1.xml"
THUNDERBIRD_WELL_KNOWN_PATH = "/.well-known/autoconfig/mail/config-v1.1.xml"
AUTODISCOVER_PATH = "/autodiscover/autodiscover.xml"

AUTODISCOVER_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE_NS = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
)
OUTLOOK_REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
# Thunderbird substitutes the address the user typed for this placeholder.
EMAIL_PLACEHOLDER = "%EMAILADDRESS%"


class Security(StrEnum):
    """Thunderbird's socketType values."""

    TLS = "SSL"  # implicit TLS (Thunderbird calls it SSL)
    STARTTLS = "STARTTLS"


@dataclass(frozen=True)
class ClientEndpoint:
    protocol: str
    port: int
    security: Security


# Implicit TLS first: RFC 8314 prefers it, and clients try the documents' entries in order.
INCOMING = (
    ClientEndpoint("imap", 993, Security.TLS),
    ClientEndpoint("imap", 143, Security.STARTTLS),
)
OUTGOING = (
    ClientEndpoint("smtp", 465, Security.TLS),
    ClientEndpoint("smtp", 587, Security.STARTTLS),
)


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = text
    return element


def _serialize(root: ET.Element) -> str:
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'


def thunderbird_autoconfig(spec: MailDomainSpec) -> str:
    """config-v1.1.xml for the domain. The username stays the %EMAILADDRESS% placeholder, so one
    document serves every address of the domain (and may be cached)."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=spec.domain)
    _text(provider, "domain", spec.domain)
    _text(provider, "displayName", spec.domain)
    _text(provider, "displayShortName", spec.domain)
    for tag, endpoints in (("incomingServer", INCOMING), ("outgoingServer", OUTGOING)):
        for endpoint in endpoints:
            server = ET.SubElement(provider, tag, type=endpoint.protocol)
            _text(server, "hostname", spec.effective_mail_host)
            _text(server, "port", str(endpoint.port))
            _text(server, "socketType", endpoint.security.value)
            _text(server, "authentication", "password-cleartext")
            _text(server, "username", EMAIL_PLACEHOLDER)
    return _serialize(root)


def autodiscover_response(spec: MailDomainSpec, email: str) -> str:
    """The Outlook autodiscover answer for `email` (an address of the domain): IMAP and SMTP
    settings, implicit TLS first."""
    # Written out rather than built with ElementTree: Outlook expects the Response element to
    # redeclare the default namespace, which ElementTree would turn into an ns1: prefix.
    host, login = escape(spec.effective_mail_host), escape(email)
    protocols = []
    for endpoint in (*INCOMING, *OUTGOING):
        if endpoint.security is Security.TLS:
            security = "<SSL>on</SSL>"
        else:
            # Outlook's way to say STARTTLS: SSL on alone would mean implicit TLS.
            security = "<SSL>off</SSL>\n        <Encryption>TLS</Encryption>"
        protocols.append(
            f"""      <Protocol>
        <Type>{endpoint.protocol.upper()}</Type>
        <Server>{host}</Server>
        <Port>{endpoint.port}</Port>
        <DomainRequired>off</DomainRequired>
        <LoginName>{login}</LoginName>
        <SPA>off</SPA>
        {security}
        <AuthRequired>on</AuthRequired>
      </Protocol>
"""
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<Autodiscover xmlns="{AUTODISCOVER_RESPONSE_NS}">\n'
        f'  <Response xmlns="{OUTLOOK_RESPONSE_NS}">\n'
        "    <Account>\n"
        "      <AccountType>email</AccountType>\n"
        "      <Action>settings</Action>\n"
        f"{''.join(protocols)}"
        "    </Account>\n"
        "  </Response>\n"
        "</Autodiscover>\n"
    )
