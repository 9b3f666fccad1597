"""Sender Rewriting Scheme (the Shevek scheme of Mail::SRS and libsrs2) for forwarded mail.

A message an alias forwards to another domain keeps its author's envelope sender, so the next hop's
SPF check sees our address sending for someone else's domain and fails. SRS rewrites the sender
into our domain, with a hash and a timestamp so that only bounces to addresses we made are
reversed (we must not become an open bounce relay):

    SRS0=HHHH=TT=orig.example=user@srs.ours.example          (first forward)
    SRS1=HHHH=hop1.example==HHHH=TT=orig.example=user@srs.ours.example    (forwarding an SRS0)

HHHH is the first characters of base64(HMAC-SHA1(key, lower-cased fields)), compared without
regard to case on the way back (some MTAs fold local parts); TT is the day number modulo 1024 in
two base32 characters, and a bounce older than the maximum age is refused. A list of keys
supports rotation: the first signs, all verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mailpod.config import OutboundConfig

_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_DAY = 86400
_TICKS = 1024  # two base32 characters of days: the timestamp wraps after 2.8 years
_SEP = "="
_SRS0 = re.compile(r"SRS0[-+=]", re.IGNORECASE)
_SRS1 = re.compile(r"SRS1[-+=]", re.IGNORECASE)
HASH_LENGTH = 4
DEFAULT_MAX_AGE_DAYS = 21


class SrsError(ValueError):
    """Not an SRS address we can reverse: wrong domain, malformed, bad hash or too old."""


def _timestamp(now: float) -> str:
    day = int(now // _DAY) % _TICKS
    return _BASE32[day >> 5] + _BASE32[day & 31]


def _day_of(timestamp: str) -> int:
    value = 0
    for char in timestamp.upper():
        index = _BASE32.find(char)
        if index < 0:
            raise SrsError("malformed SRS timestamp")
        value = value << 5 | index
    return value


@dataclass(frozen=True)
class SrsRewriter:
    domain: str
    """Rewritten senders are in this domain; bounces to it are reversed."""
    keys: tuple[bytes, ...]
    """HMAC keys: keys[0] signs, every key verifies."""
    max_age_days: int = DEFAULT_MAX_AGE_DAYS

    def __post_init__(self) -> None:
        if not self.keys or not all(self.keys):
            raise ValueError("SRS needs at least one non-empty key")
        if not 0 < self.max_age_days < _TICKS:
            raise ValueError(f"SRS max age must be between 1 and {_TICKS - 1} days")

    @classmethod
    def from_config(cls, outbound: OutboundConfig) -> SrsRewriter | None:
        """The rewriter the config asks for (None when SRS is off); reads the key files."""
        if outbound.srs_domain is None:
            return None
        keys = tuple(path.read_bytes().strip() for path in outbound.srs_secret_files)
        return cls(outbound.srs_domain, keys, outbound.srs_max_age_days)

    def _hash(self, key: bytes, fields: Sequence[str]) -> str:
        data = "".join(fields).lower().encode("utf-8", "surrogateescape")
        digest = hmac.new(key, data, hashlib.sha1).digest()
        return base64.b64encode(digest).decode()[:HASH_LENGTH]

    def _check_hash(self, given: str, fields: Sequence[str]) -> None:
        if len(given) < HASH_LENGTH:
            raise SrsError("SRS hash too short")
        given = given.lower()
        for key in self.keys:
            if hmac.compare_digest(given, self._hash(key, fields).lower()):
                return
        raise SrsError("SRS hash does not match")

    def forward(self, sender: str, *, now: float | None = None) -> str:
        """The envelope sender to use when forwarding mail from `sender`. The null sender and
        addresses already in our SRS domain stay as they are."""
        if not sender:
            return sender
        local, at, host = sender.rpartition("@")
        if not at or not local or not host:
            raise SrsError(f"not an address: {sender!r}")
        if host.lower() == self.domain.lower():
            return sender
        if _SRS1.match(local):
            # Forwarding an SRS1 again: keep its first hop and SRS0 part, re-sign for us.
            hop, srs0 = self._split_srs1(local)
            return self._srs1(hop, srs0)
        if _SRS0.match(local):
            # Forwarding someone else's SRS0: point back at its domain rather than nest it.
            return self._srs1(host, local[4:])
        stamp = _timestamp(time.time() if now is None else now)
        fields = (stamp, host, local)
        digest = self._hash(self.keys[0], fields)
        return f"SRS0{_SEP}{_SEP.join((digest, *fields))}@{self.domain}"

    def _srs1(self, hop: str, srs0: str) -> str:
        digest = self._hash(self.keys[0], (hop, srs0))
        return f"SRS1{_SEP}{digest}{_SEP}{hop}{_SEP}{srs0}@{self.domain}"

    @staticmethod
    def _split_srs1(local: str) -> tuple[str, str]:
        """SRS1=HHHH=hop==HHHH=TT=host=user -> ("hop", "=HHHH=TT=host=user") without the hash."""
        parts = local[5:].split(_SEP, 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise SrsError("malformed SRS1 address")
        return parts[1], parts[2]

    def reverse(self, address: str, *, now: float | None = None) -> str:
        """Where a bounce to `address` goes: the original sender for an SRS0 we made, or the
        previous hop's SRS0 address for an SRS1. Raises SrsError for anything else."""
        local, at, host = address.rpartition("@")
        if not at or host.lower().rstrip(".") != self.domain.lower():
            raise SrsError("not in our SRS domain")
        if _SRS1.match(local):
            hop, srs0 = self._split_srs1(local)
            self._check_hash(local[5:].split(_SEP, 1)[0], (hop, srs0))
            return f"SRS0{srs0}@{hop}"
        if _SRS0.match(local):
            parts = local[5:].split(_SEP, 3)
            if len(parts) != 4 or not all(parts):
                raise SrsError("malformed SRS0 address")
            digest, stamp, orig_host, orig_local = parts
            self._check_hash(digest, (stamp, orig_host, orig_local))
            if len(stamp) != 2:
                raise SrsError("malformed SRS timestamp")
            today = int((time.time() if now is None else now) // _DAY) % _TICKS
            if (today - _day_of(stamp)) % _TICKS > self.max_age_days:
                raise SrsError("SRS address expired")
            return f"{orig_local}@{orig_host}"
        raise SrsError("not an SRS address")

    @staticmethod
    def is_srs(address: str) -> bool:
        local = address.rpartition("@")[0]
        return bool(_SRS0.match(local) or _SRS1.match(local))
