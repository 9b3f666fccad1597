"""The MTA-STS policy (RFC 8461 §3.2) and its id."""

from __future__ import annotations

import base64
import hashlib

from letterbox.api.maildomain import MailDomainSpec
from letterbox.api.meta import duration_seconds

# RFC 8461 §3.2: max_age is at most 31557600 seconds (about a year).
MAX_AGE_LIMIT = 31557600


def mta_sts_policy(spec: MailDomainSpec) -> str:
    """The policy text, CRLF line endings as the RFC requires."""
    max_age = min(duration_seconds(spec.mta_sts.max_age), MAX_AGE_LIMIT)
    lines = [
        "version: STSv1",
        f"mode: {spec.mta_sts.mode.value}",
        f"mx: {spec.effective_mail_host}",
        f"max_age: {max_age}",
    ]
    return "".join(f"{line}\r\n" for line in lines)


def mta_sts_policy_id(policy: str) -> str:
    """A content hash, so the id changes exactly when the policy does (1-32 alphanumerics)."""
    digest = hashlib.sha256(policy.encode()).digest()
    return base64.b32encode(digest).decode().rstrip("=").lower()[:20]
