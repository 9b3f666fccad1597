"""Password checks for SMTP submission and IMAP: hashes, an auth cache and failure throttling.

Stored hashes are argon2id (PHC string, what we generate) or bcrypt (what users bring). Both are
slow by design (~0.1-0.3 s of CPU), so:

* checks run in a worker thread (`asyncio.to_thread`) and at most `max_concurrent_verifies` at a
  time per process, so the event loop never stalls and argon2's 64 MiB per check stays bounded;
* recent successful checks are cached in memory (like Dovecot's auth_cache), keyed by
  (address, stored hash, HMAC-SHA256 of the password under a random per-process key): the
  password itself is never stored, and a changed hash can never match an old entry;
* failures slow the client down (per client IP and per account), then lock it out for a while.

`Authenticator.authenticate` returns an `AuthResult`:

    result = await authenticator.authenticate(username, password, client_ip)
    if result.user is not None:  # logged in as result.user, the canonical mailbox address
    elif result.locked:  # refused unchecked: SMTP 454 4.7.0, IMAP NO [UNAVAILABLE]
    else:  # wrong credentials: SMTP 535 5.7.8, IMAP NO [AUTHENTICATIONFAILED]

The throttle delay has already been waited inside `authenticate` (callers cannot forget it);
`result.delay` only reports it. State is per process: with N worker processes an attacker whose
connections the kernel spreads over them gets up to N times the budget.

Logs (logger "mailpod.auth") name the username and client IP, never a password.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache

import bcrypt
from argon2 import PasswordHasher, extract_parameters, profiles

from mailpod.config import Mailbox, MailpodConfig

__all__ = ["AuthResult", "Authenticator", "hash_password", "verify_password"]

log = logging.getLogger("mailpod.auth")

# RFC 9106 section 4, second recommended option (t=3, m=64 MiB, p=4); also argon2-cffi's default.
# The first option (t=1, m=2 GiB) is too much memory per login for a mail pod.
_HASHER = PasswordHasher.from_parameters(profiles.RFC_9106_LOW_MEMORY)

# A stored hash with absurd costs would let one login attempt eat the pod's memory or CPU;
# refuse it (fail closed) rather than run it. Generous: RFC 9106's 2 GiB option still passes.
MAX_ARGON2_MEMORY_KIB = 2 * 2**20
MAX_ARGON2_TIME_COST = 10
MAX_ARGON2_PARALLELISM = 16
MAX_BCRYPT_COST = 16  # 2**16 rounds: ~5 s here; real-world hashes use 10-14

_BCRYPT = re.compile(r"\$2[aby]\$([0-9]{2})\$[./A-Za-z0-9]{53}")

# Beyond this a "password" is an attack on our CPU (HMAC and argon2 pre-hash are linear in it).
MAX_PASSWORD_CHARS = 4096
MAX_USERNAME_CHARS = 254  # RFC 5321 path limit

CACHE_TTL_SECONDS = 3600.0
CACHE_SIZE = 10_000
FAILURE_WINDOW_SECONDS = 900.0
MAX_DELAY_SECONDS = 15.0  # Dovecot's auth_penalty cap; clients time out well after that
MAX_THROTTLE_ENTRIES = 65_536


def _secret_bytes(password: str) -> bytes:
    # surrogateescape: a protocol layer that decoded non-UTF-8 bytes that way gets them back.
    return password.encode("utf-8", "surrogateescape")


def verify_password(password: str, password_hash: str) -> bool:
    """True if `password` matches the argon2id or bcrypt `password_hash`.

    The comparison inside both libraries is constant-time. Never raises: a malformed,
    unsupported or absurdly expensive hash, or an unencodable password, is simply False."""
    try:
        secret = _secret_bytes(password)
        if password_hash.startswith("$argon2id$"):
            params = extract_parameters(password_hash)
            if (
                params.memory_cost > MAX_ARGON2_MEMORY_KIB
                or params.time_cost > MAX_ARGON2_TIME_COST
                or params.parallelism > MAX_ARGON2_PARALLELISM
            ):
                return False
            # The hasher's own parameters are irrelevant here: verify reads them from the hash.
            return _HASHER.verify(password_hash, secret)
        match = _BCRYPT.fullmatch(password_hash)
        if match is None or not 4 <= int(match[1]) <= MAX_BCRYPT_COST:
            return False
        # bcrypt only ever used the first 72 bytes; bcrypt>=5 raises instead of truncating, but
        # hashes made elsewhere were made from the truncated password, so truncate to match them.
        return bcrypt.checkpw(secret[:72], password_hash.encode("ascii"))
    except Exception:  # fail closed on anything a bad hash or input can raise
        return False


def hash_password(password: str) -> str:
    """An argon2id PHC string with RFC 9106's second recommended parameters (t=3, 64 MiB, p=4)."""
    return _HASHER.hash(_secret_bytes(password))


@cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of one login attempt.

    `user`: the canonical mailbox address on success, else None. `locked`: refused without
    checking the password because the client IP or the account is locked out. `delay`: seconds
    this attempt was held back by throttling (already waited)."""

    user: str | None
    locked: bool = False
    delay: float = 0.0


class _AuthCache:
    """LRU of recent successful checks: key -> expiry time. Only successes ever enter."""

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[tuple[str, str, bytes], float] = OrderedDict()

    def hit(self, key: tuple[str, str, bytes], now: float) -> bool:
        expires = self._entries.get(key)
        if expires is None:
            return False
        if expires <= now:
            del self._entries[key]
            return False
        self._entries.move_to_end(key)
        return True

    def add(self, key: tuple[str, str, bytes], now: float) -> None:
        self._entries[key] = now + self.ttl
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def retain(self, keep: Callable[[str, str], bool]) -> None:
        """Drop every entry whose (address, hash) no longer holds."""
        for key in [k for k in self._entries if not keep(k[0], k[1])]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(slots=True)
class _Bucket:
    # Each failure remembers its "other side" (the account for an IP bucket, the IP for an
    # account bucket) so a success can forgive exactly the failures that pair caused.
    failures: deque[tuple[float, str]]
    locked_until: float = 0.0
    touched: float = 0.0


class _Throttle:
    """Failure counts per key (a client IP or an account): growing delays, then a lockout."""

    def __init__(
        self, window: float, max_delay: float, max_entries: int = MAX_THROTTLE_ENTRIES
    ) -> None:
        self.window = window
        self.max_delay = max_delay
        self.max_entries = max_entries
        self.threshold = 10
        self.lockout = 300.0
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _live(self, key: str, now: float) -> _Bucket | None:
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        while bucket.failures and bucket.failures[0][0] <= now - self.window:
            bucket.failures.popleft()
        return bucket

    def locked(self, key: str, now: float) -> bool:
        bucket = self._buckets.get(key)
        return bucket is not None and bucket.locked_until > now

    def delay(self, key: str, now: float) -> float:
        """0 after no recent failure, then 1, 2, 4, 8 … seconds, capped."""
        bucket = self._live(key, now)
        count = len(bucket.failures) if bucket else 0
        return 0.0 if count == 0 else min(2.0 ** (count - 1), self.max_delay)

    def fail(self, key: str, other: str, now: float) -> bool:
        """Record a failure; True if it starts a lockout."""
        self._expire(now)
        bucket = self._live(key, now)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(deque())
        bucket.failures.append((now, other))
        bucket.touched = now
        self._buckets.move_to_end(key)
        # Clearing at the threshold keeps a bucket at most `threshold` long (no deque maxlen:
        # a reload may raise the threshold).
        if len(bucket.failures) >= self.threshold:
            bucket.locked_until = now + self.lockout
            # After the lockout the client starts again with a fresh budget of delays.
            bucket.failures.clear()
            return True
        return False

    def forgive(self, key: str, other: str, now: float) -> None:
        bucket = self._live(key, now)
        if bucket is None:
            return
        remaining = [f for f in bucket.failures if f[1] != other]
        if remaining or bucket.locked_until > now:
            bucket.failures = deque(remaining)
        else:
            del self._buckets[key]

    def _expire(self, now: float) -> None:
        # Buckets are kept in order of last failure, so the stale ones are all at the front.
        horizon = max(self.window, self.lockout)
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            stale = bucket.touched + horizon <= now and bucket.locked_until <= now
            if not stale and len(self._buckets) < self.max_entries:
                break
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def _ip_key(client_ip: str) -> str:
    """IPv6 clients are throttled per /64: one subscriber usually holds a whole /64."""
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return client_ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _login_key(username: str) -> str | None:
    """`local@domain` with the domain lower-cased (and IDNA-encoded if typed in Unicode)."""
    local, at, domain = username.rpartition("@")
    if not at or not local or not domain or len(username) > MAX_USERNAME_CHARS:
        return None
    if any(ord(c) < 0x20 or c == "\x7f" for c in username):
        return None
    domain = domain.lower()
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return f"{local}@{domain}"


class Authenticator:
    """Checks logins against the current config; `update()` swaps in a reloaded config."""

    def __init__(
        self,
        config: MailpodConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        cache_ttl: float = CACHE_TTL_SECONDS,
        cache_size: int = CACHE_SIZE,
        failure_window: float = FAILURE_WINDOW_SECONDS,
        max_delay: float = MAX_DELAY_SECONDS,
        max_concurrent_verifies: int | None = None,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._key = secrets.token_bytes(32)  # per process: cache keys mean nothing elsewhere
        self._cache = _AuthCache(cache_ttl, cache_size)
        self._ips = _Throttle(failure_window, max_delay)
        self._accounts = _Throttle(failure_window, max_delay)
        self._verifies = asyncio.Semaphore(max_concurrent_verifies or min(4, os.cpu_count() or 1))
        self._exact: dict[str, Mailbox] = {}
        self._folded: dict[str, Mailbox] = {}
        self.update(config)

    def update(self, config: MailpodConfig) -> None:
        """Switch to a reloaded config. Call it from the event loop's thread."""
        exact = {m.address: m for m in config.mailboxes}
        # Local parts are matched case-insensitively too (as mailpod.directory resolves them),
        # unless two mailboxes differ only in case: then only the exact spelling logs in.
        folded: dict[str, Mailbox] = {}
        clashes: set[str] = set()
        for mailbox in config.mailboxes:
            key = mailbox.address.lower()
            if key in folded:
                clashes.add(key)
            folded[key] = mailbox
        for key in clashes:
            del folded[key]
        # Unknown and suspended users are checked against a real hash from the table (result
        # ignored), so "no such user" costs exactly as much time as "wrong password".
        self._dummy = config.mailboxes[0].password_hash if config.mailboxes else None
        # One assignment each, no await in between: a running authenticate() sees either table.
        self._exact, self._folded = exact, folded
        for throttle in (self._ips, self._accounts):
            throttle.threshold = config.limits.auth_failures_before_lockout
            throttle.lockout = config.limits.auth_lockout_seconds

        def still_valid(address: str, password_hash: str) -> bool:
            mailbox = exact.get(address)
            return (
                mailbox is not None
                and not mailbox.suspended
                and mailbox.password_hash == password_hash
            )

        self._cache.retain(still_valid)

    def _mailbox(self, login: str) -> Mailbox | None:
        return self._exact.get(login) or self._folded.get(login.lower())

    async def authenticate(self, username: str, password: str, client_ip: str) -> AuthResult:
        """Check a login; see the module docstring for how to read the result."""
        shown = username[:MAX_USERNAME_CHARS]
        context = {"username": shown, "client_ip": client_ip}
        login = _login_key(username)
        ip_key = _ip_key(client_ip)
        account_key = login.lower() if login else f"invalid:{shown}"
        now = self._clock()
        if self._ips.locked(ip_key, now) or self._accounts.locked(account_key, now):
            log.warning("login refused, locked out: user=%r ip=%s", shown, client_ip, extra=context)
            return AuthResult(None, locked=True)

        mailbox = self._mailbox(login) if login else None
        digest = b""
        if 0 < len(password) <= MAX_PASSWORD_CHARS:
            with contextlib.suppress(UnicodeEncodeError):  # unencodable: fails like a bad one
                digest = hmac.new(self._key, _secret_bytes(password), hashlib.sha256).digest()
        usable = bool(digest)
        if mailbox is not None and not mailbox.suspended and usable:
            cache_key = (mailbox.address, mailbox.password_hash, digest)
            # A hit needs the right password, so it skips the delay (not the lockout above).
            if self._cache.hit(cache_key, now):
                self._succeeded(ip_key, account_key, now)
                log.info("login ok (cached): user=%r ip=%s", shown, client_ip, extra=context)
                return AuthResult(mailbox.address)

        delay = max(self._ips.delay(ip_key, now), self._accounts.delay(account_key, now))
        if delay > 0:
            await self._sleep(delay)

        reason, stored = "", ""
        if mailbox is None:
            reason = "unknown user" if login else "malformed username"
        elif mailbox.suspended:
            reason = "suspended"
        elif not usable:
            reason = "unusable password"
        async with self._verifies:
            # Parallel attempts may have locked this client out while we waited.
            now = self._clock()
            if self._ips.locked(ip_key, now) or self._accounts.locked(account_key, now):
                log.warning(
                    "login refused, locked out: user=%r ip=%s", shown, client_ip, extra=context
                )
                return AuthResult(None, locked=True, delay=delay)
            if login is not None and usable:
                if mailbox and not reason:
                    stored = mailbox.password_hash
                else:  # a dummy check, for timing only (see update())
                    stored = self._dummy or _dummy_hash()
                ok = await asyncio.to_thread(verify_password, password, stored)
                if not ok and not reason:
                    reason = "wrong password"
        now = self._clock()

        if not reason and mailbox is not None:
            current = self._exact.get(mailbox.address)
            if current is None or current.suspended or current.password_hash != stored:
                # The config changed while we were checking; the checked hash is stale. Not the
                # client's fault, so no failure is counted.
                log.info("login raced a reload: user=%r ip=%s", shown, client_ip, extra=context)
                return AuthResult(None, delay=delay)
            self._cache.add((mailbox.address, mailbox.password_hash, digest), now)
            self._succeeded(ip_key, account_key, now)
            log.info("login ok: user=%r ip=%s", shown, client_ip, extra=context)
            return AuthResult(mailbox.address, delay=delay)

        locked_ip = self._ips.fail(ip_key, account_key, now)
        locked_account = self._accounts.fail(account_key, ip_key, now)
        log.warning("login failed (%s): user=%r ip=%s", reason, shown, client_ip, extra=context)
        if locked_ip or locked_account:
            log.warning(
                "locking out %s for %.0f s: user=%r ip=%s",
                "client IP" if locked_ip else "account",
                self._ips.lockout,
                shown,
                client_ip,
                extra=context,
            )
        return AuthResult(None, delay=delay)

    def _succeeded(self, ip_key: str, account_key: str, now: float) -> None:
        # Forgive only this pair's failures (the user's own typos): an attacker's failures on
        # this account from other IPs, or on other accounts from this IP, still count.
        self._accounts.forgive(account_key, ip_key, now)
        self._ips.forgive(ip_key, account_key, now)
