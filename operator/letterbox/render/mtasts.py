"""The MTA-STS policy (RFC 8461 §3.2) and its id.

The policy text and the id published in `_mta-sts` TXT both come from `render_mta_sts`, so the
served text and the published id can never describe different policies.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from letterbox.api.maildomain import MailDomainSpec
from letterbox.api.meta import duration_seconds

# RFC 8461 §3.2: max_age is at most 31557600 seconds (about a year).
MAX_AGE_LIMIT = 31557600
POLICY_PATH = "/.well-known/mta-sts.txt"


@dataclass(frozen=True)
class MtaStsPolicy:
    domain: str
    text: str
    """The policy file, CRLF line endings."""
    id: str
    """The `id=` of the `_mta-sts` TXT record: a hash of `text`."""

    @property
    def host(self) -> str:
        """Where senders fetch it: https://mta-sts.<domain>/.well-known/mta-sts.txt."""
        return f"mta-sts.{self.domain}"


def policy_mx_hosts(spec: MailDomainSpec) -> tuple[str, ...]:
    """The `mx:` patterns: the domain's MX targets (the same hosts its MX records name)."""
    return (spec.effective_mail_host,)


def mta_sts_policy(spec: MailDomainSpec) -> str:
    """The policy text, CRLF line endings as the RFC requires."""
    max_age = min(duration_seconds(spec.mta_sts.max_age), MAX_AGE_LIMIT)
    lines = [
        "version: STSv1",
        f"mode: {spec.mta_sts.mode.value}",
        *(f"mx: {host}" for host in policy_mx_hosts(spec)),
        f"max_age: {max_age}",
    ]
    return "".join(f"{line}\r\n" for line in lines)


def mta_sts_policy_id(policy: str) -> str:
    """A content hash, so the id changes exactly when the policy does (1-32 alphanumerics)."""
    digest = hashlib.sha256(policy.encode()).digest()
    return base64.b32encode(digest).decode().rstrip("=").lower()[:20]


def render_mta_sts(spec: MailDomainSpec) -> MtaStsPolicy:
    """The policy as served and the id as published, from one rendering."""
    text = mta_sts_policy(spec)
    return MtaStsPolicy(domain=spec.domain, text=text, id=mta_sts_policy_id(text))
