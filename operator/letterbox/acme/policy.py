"""When to renew, how long to back off, and when to warn: pure functions of times.

Renewal starts when a third of the lifetime is left (cert-manager's default, and what Let's
Encrypt recommends for 90-day certificates: day 60). A failed attempt is retried after an
exponentially growing delay, capped, so a broken DNS provider is not hammered and a CA's rate
limits are not burnt; a week before expiry a still-failing renewal is reported loudly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

LETS_ENCRYPT_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
DIRECTORY_ALIASES = {"production": LETS_ENCRYPT_PRODUCTION, "staging": LETS_ENCRYPT_STAGING}

EXPIRY_WARNING = timedelta(days=7)


def directory_url(directory: str) -> str:
    """`production`, `staging` (Let's Encrypt) or a directory URL as given."""
    return DIRECTORY_ALIASES.get(directory, directory)


def renewal_time(not_before: datetime, not_after: datetime) -> datetime:
    """The moment a third of the lifetime is left."""
    return not_after - (not_after - not_before) / 3


@dataclass(frozen=True)
class Backoff:
    """Delay after the n-th consecutive failure: base, 2*base, 4*base, ... up to `maximum`."""

    base: timedelta = timedelta(minutes=5)
    maximum: timedelta = timedelta(hours=12)

    def delay(self, failures: int) -> timedelta:
        if failures <= 0:
            return timedelta(0)
        # Capped exponent: 2**64 minutes would overflow timedelta long before the cap applies.
        return min(self.base * (1 << min(failures - 1, 32)), self.maximum)


def expiry_warning_due(not_after: datetime, now: datetime) -> bool:
    """True from a week before expiry on (and after expiry)."""
    return not_after - now <= EXPIRY_WARNING
