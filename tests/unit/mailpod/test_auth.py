from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from argon2 import PasswordHasher, Type

import mailpod.auth
from mailpod.auth import Authenticator, AuthResult, hash_password, verify_password
from mailpod.config import Limits, Mailbox, MailpodConfig, Storage

# Tests use cheap parameters; the format (and code path) is the same as production hashes.
_FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ALICE_PW = "correct horse battery staple"
BOB_PW = "hunter2-but-longer"
ALICE_HASH = _FAST.hash(ALICE_PW)
BOB_HASH = bcrypt.hashpw(BOB_PW.encode(), bcrypt.gensalt(4)).decode()
FAILURES = 6
LOCKOUT = 60.0


def mailbox(address: str, password_hash: str, suspended: bool = False) -> Mailbox:
    return Mailbox(address=address, password_hash=password_hash, suspended=suspended)


ALICE = mailbox("alice@example.com", ALICE_HASH)
BOB = mailbox("bob@example.com", BOB_HASH)


def config(*mailboxes: Mailbox) -> MailpodConfig:
    return MailpodConfig(
        hostname="mail.example.com",
        listeners=(),
        domains=("example.com",),
        mailboxes=mailboxes,
        limits=Limits(auth_failures_before_lockout=FAILURES, auth_lockout_seconds=LOCKOUT),
        storage=Storage(mail_root=Path("/srv/mail"), queue_dir=Path("/srv/queue")),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(clock: Clock) -> Authenticator:
    return Authenticator(config(ALICE, BOB), clock=clock, sleep=clock.sleep)


@pytest.fixture
def verifies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts real password checks (every call authenticate makes to verify_password)."""
    calls: list[str] = []
    real: Callable[[str, str], bool] = verify_password

    def counting(password: str, password_hash: str) -> bool:
        calls.append(password_hash)
        return real(password, password_hash)

    monkeypatch.setattr(mailpod.auth, "verify_password", counting)
    return calls


# --- hashes -------------------------------------------------------------------------------------


def test_hash_password_is_argon2id_rfc9106_second_option() -> None:
    stored = hash_password("s3cret ✓")
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert verify_password("s3cret ✓", stored)
    assert not verify_password("s3cret", stored)


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$"])
def test_bcrypt_variants_verify(prefix: str) -> None:
    stored = prefix + BOB_HASH[4:]
    assert verify_password(BOB_PW, stored)
    assert not verify_password(BOB_PW + "x", stored)


def test_argon2_wrong_password() -> None:
    assert verify_password(ALICE_PW, ALICE_HASH)
    assert not verify_password(ALICE_PW.upper(), ALICE_HASH)
    assert not verify_password("", ALICE_HASH)


def test_bcrypt_long_password_matches_hashes_made_by_truncating_implementations() -> None:
    long_password = "p" * 100
    stored = bcrypt.hashpw(long_password.encode()[:72], bcrypt.gensalt(4)).decode()
    assert verify_password(long_password, stored)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plaintext",
        "$argon2id$v=19$garbage",
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$",
        _FAST.hash(ALICE_PW)[:-5],
        PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.I).hash(ALICE_PW),
        "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA",
        BOB_HASH[:-1],
        "$2x$" + BOB_HASH[4:],
        "$2b$03$" + BOB_HASH[7:],
        "$2b$31$" + BOB_HASH[7:],
        "$2b$04$" + "!" * 53,
    ],
    ids=lambda s: s[:24] or "empty",
)
def test_malformed_or_unsupported_hash_is_false(stored: str) -> None:
    assert verify_password(ALICE_PW, stored) is False


def test_never_raises_on_odd_input() -> None:
    assert verify_password("\ud800", ALICE_HASH) is False  # lone surrogate: unencodable
    bad: Any = None
    assert verify_password(bad, ALICE_HASH) is False
    assert verify_password(ALICE_PW, bad) is False


# --- authenticate -------------------------------------------------------------------------------


async def test_login_returns_canonical_address(auth: Authenticator) -> None:
    assert await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1") == AuthResult(
        "alice@example.com"
    )
    assert (await auth.authenticate("alice@EXAMPLE.Com", ALICE_PW, "192.0.2.1")).user == (
        "alice@example.com"
    )
    # Local parts fold too, as mailpod.directory resolves them.
    assert (await auth.authenticate("Bob@Example.COM", BOB_PW, "192.0.2.1")).user == (
        "bob@example.com"
    )


@pytest.mark.parametrize("username", ["alice", "alice@", "@example.com", "alice@example.com\r\n"])
async def test_malformed_username_fails(auth: Authenticator, username: str) -> None:
    assert await auth.authenticate(username, ALICE_PW, "192.0.2.1") == AuthResult(None)


async def test_wrong_password_and_unknown_user(auth: Authenticator) -> None:
    assert (await auth.authenticate("alice@example.com", BOB_PW, "192.0.2.1")).user is None
    assert (await auth.authenticate("carol@example.com", ALICE_PW, "192.0.2.2")).user is None


async def test_unknown_user_still_costs_a_check(auth: Authenticator, verifies: list[str]) -> None:
    # Otherwise the response time would tell which addresses exist.
    result = await auth.authenticate("carol@example.com", ALICE_PW, "192.0.2.1")
    assert result == AuthResult(None)
    assert verifies == [ALICE_HASH]  # a real hash of the table: the same cost as a real user


async def test_unknown_user_with_an_empty_table(clock: Clock, verifies: list[str]) -> None:
    auth = Authenticator(config(), clock=clock, sleep=clock.sleep)
    assert (await auth.authenticate("carol@example.com", "x", "192.0.2.1")).user is None
    assert len(verifies) == 1
    assert verifies[0].startswith("$argon2id$v=19$m=65536,t=3,p=4$")


async def test_cache_hit_skips_the_password_check(auth: Authenticator, verifies: list[str]) -> None:
    for _ in range(3):
        assert (await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")).user
    assert len(verifies) == 1
    # Only successes are cached: a wrong password is checked every time.
    for _ in range(2):
        assert not (await auth.authenticate("alice@example.com", "nope", "192.0.2.1")).user
    assert len(verifies) == 3


async def test_cache_entry_expires(auth: Authenticator, clock: Clock, verifies: list[str]) -> None:
    await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")
    clock.now += mailpod.auth.CACHE_TTL_SECONDS + 1
    assert (await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")).user
    assert len(verifies) == 2


async def test_cache_is_bounded(clock: Clock) -> None:
    users = [mailbox(f"user{i}@example.com", ALICE_HASH) for i in range(5)]
    auth = Authenticator(config(*users), clock=clock, sleep=clock.sleep, cache_size=3)
    for user in users:
        assert (await auth.authenticate(user.address, ALICE_PW, "192.0.2.1")).user
    assert len(auth._cache) == 3


async def test_cache_never_holds_the_password(auth: Authenticator) -> None:
    await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")
    ((address, stored, digest),) = list(auth._cache._entries)
    assert (address, stored) == ("alice@example.com", ALICE_HASH)
    assert ALICE_PW.encode() not in digest and len(digest) == 32


async def test_password_change_invalidates_cache(auth: Authenticator, verifies: list[str]) -> None:
    assert (await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")).user
    new_hash = _FAST.hash("new password")
    auth.update(config(mailbox("alice@example.com", new_hash), BOB))
    assert len(auth._cache) == 0
    assert not (await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")).user
    assert (await auth.authenticate("alice@example.com", "new password", "192.0.2.1")).user
    assert verifies == [ALICE_HASH, new_hash, new_hash]


async def test_unchanged_users_stay_cached_across_reload(
    auth: Authenticator, verifies: list[str]
) -> None:
    await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")
    await auth.authenticate("bob@example.com", BOB_PW, "192.0.2.1")
    auth.update(config(ALICE))  # bob removed
    assert len(auth._cache) == 1
    assert (await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")).user
    assert not (await auth.authenticate("bob@example.com", BOB_PW, "192.0.2.1")).user
    assert len(verifies) == 3  # alice 1st, bob 1st, bob's dummy check after removal


async def test_suspended_mailbox_never_authenticates(clock: Clock) -> None:
    auth = Authenticator(
        config(mailbox("alice@example.com", ALICE_HASH, suspended=True)),
        clock=clock,
        sleep=clock.sleep,
    )
    assert await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1") == AuthResult(None)


async def test_suspending_drops_a_cached_login(auth: Authenticator) -> None:
    assert (await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")).user
    auth.update(config(mailbox("alice@example.com", ALICE_HASH, suspended=True), BOB))
    assert len(auth._cache) == 0
    assert not (await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")).user


async def test_reload_during_check_does_not_let_the_old_password_in(
    auth: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()

    def slow_verify(password: str, password_hash: str) -> bool:
        started.set()
        release.wait(5)
        return verify_password(password, password_hash)

    monkeypatch.setattr(mailpod.auth, "verify_password", slow_verify)
    attempt = asyncio.create_task(auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1"))
    await asyncio.to_thread(started.wait, 5)
    auth.update(config(mailbox("alice@example.com", _FAST.hash("changed")), BOB))
    release.set()
    assert (await attempt).user is None
    assert len(auth._cache) == 0


async def test_argon2_runs_off_the_event_loop() -> None:
    auth = Authenticator(config(mailbox("alice@example.com", hash_password(ALICE_PW))))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        assert (await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")).user
    finally:
        task.cancel()
    # A ~0.1 s argon2 check on the loop's thread would allow at most one tick.
    assert ticks >= 5


async def test_logs_name_user_and_ip_never_the_password(
    auth: Authenticator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mailpod.auth")
    await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")
    await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")  # cached
    await auth.authenticate("alice@example.com", "wrong-secret", "192.0.2.1")
    assert len(caplog.records) == 3
    for record in caplog.records:
        assert record.name == "mailpod.auth"
        text = record.getMessage() + repr(record.__dict__)
        assert ALICE_PW not in text and "wrong-secret" not in text
        assert "alice@example.com" in record.getMessage() and "192.0.2.1" in record.getMessage()
        assert (record.__dict__["username"], record.__dict__["client_ip"]) == (
            "alice@example.com",
            "192.0.2.1",
        )


# --- throttling ---------------------------------------------------------------------------------


async def fail(auth: Authenticator, user: str, ip: str) -> AuthResult:
    result = await auth.authenticate(user, "wrong password", ip)
    assert result.user is None
    return result


async def test_delays_grow_then_lockout(
    auth: Authenticator, clock: Clock, verifies: list[str]
) -> None:
    delays = [(await fail(auth, "alice@example.com", "192.0.2.1")).delay for _ in range(FAILURES)]
    assert delays == [0, 1, 2, 4, 8, 15]  # capped at 15 s
    assert clock.slept == delays[1:]
    checks = len(verifies)
    # Locked: refused at once, even with the right password, without a password check.
    result = await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")
    assert result == AuthResult(None, locked=True)
    assert len(verifies) == checks


async def test_lockout_expires(auth: Authenticator, clock: Clock) -> None:
    for _ in range(FAILURES):
        await fail(auth, "alice@example.com", "192.0.2.1")
    clock.now += LOCKOUT - 1
    assert (await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")).locked
    clock.now += 1
    assert await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1") == AuthResult(
        "alice@example.com"
    )


async def test_failures_outside_the_window_are_forgotten(auth: Authenticator, clock: Clock) -> None:
    for _ in range(FAILURES - 1):
        await fail(auth, "alice@example.com", "192.0.2.1")
    clock.now += mailpod.auth.FAILURE_WINDOW_SECONDS + 1
    assert (await fail(auth, "alice@example.com", "192.0.2.1")).delay == 0
    assert not (await fail(auth, "alice@example.com", "192.0.2.1")).locked


async def test_ip_lockout_does_not_touch_other_ips(auth: Authenticator) -> None:
    # One IP spraying many accounts (one failure each): the IP is locked, the accounts are not.
    for i in range(FAILURES):
        await fail(auth, f"user{i}@example.com", "198.51.100.7")
    assert (await auth.authenticate("alice@example.com", ALICE_PW, "198.51.100.7")).locked
    result = await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")
    assert result == AuthResult("alice@example.com")
    assert (await auth.authenticate("user0@example.com", "x", "192.0.2.1")).delay == 1


async def test_account_lockout_does_not_touch_other_accounts(auth: Authenticator) -> None:
    # Many IPs guessing one account (one failure each): the account is locked, the IPs are not.
    for i in range(FAILURES):
        await fail(auth, "alice@example.com", f"198.51.100.{i}")
    assert (await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")).locked
    assert (await auth.authenticate("Alice@Example.com", ALICE_PW, "192.0.2.1")).locked
    result = await auth.authenticate("bob@example.com", BOB_PW, "198.51.100.0")
    assert result == AuthResult("bob@example.com", delay=1)  # that IP's own single failure
    assert await auth.authenticate("bob@example.com", BOB_PW, "192.0.2.1") == AuthResult(
        "bob@example.com"
    )


async def test_success_forgives_only_that_ip_s_failures(auth: Authenticator) -> None:
    for _ in range(2):
        await fail(auth, "alice@example.com", "198.51.100.9")  # someone else
    for _ in range(3):
        await fail(auth, "alice@example.com", "192.0.2.1")  # alice's typos
    assert (await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")).delay == 15
    # Her own failures are gone; the other IP's two still count against the account.
    assert (await fail(auth, "alice@example.com", "192.0.2.1")).delay == 2
    assert (await fail(auth, "alice@example.com", "203.0.113.1")).delay == 4


async def test_cached_login_skips_the_delay_but_not_the_lockout(
    auth: Authenticator, clock: Clock
) -> None:
    assert (await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")).user
    for i in range(FAILURES - 1):
        await fail(auth, "alice@example.com", f"198.51.100.{i}")
    assert await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1") == AuthResult(
        "alice@example.com"
    )
    await fail(auth, "alice@example.com", "198.51.100.99")
    assert (await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")).locked


async def test_ipv6_clients_are_throttled_per_64(auth: Authenticator) -> None:
    for i in range(FAILURES):
        await fail(auth, f"user{i}@example.com", f"2001:db8:1:2::{i + 1}")
    assert (await auth.authenticate("alice@example.com", ALICE_PW, "2001:db8:1:2::ffff")).locked
    assert (await auth.authenticate("alice@example.com", ALICE_PW, "2001:db8:1:3::1")).user


async def test_throttle_memory_is_bounded(auth: Authenticator, clock: Clock) -> None:
    for i in range(50):
        await fail(auth, f"user{i}@example.com", f"198.51.{i}.1")
    assert len(auth._ips) == 50
    clock.now += mailpod.auth.FAILURE_WINDOW_SECONDS + 1
    await fail(auth, "alice@example.com", "192.0.2.1")
    assert len(auth._ips) == 1 and len(auth._accounts) == 1


async def test_lockout_limits_follow_reloads(auth: Authenticator) -> None:
    new = config(ALICE, BOB).model_copy(
        update={"limits": Limits(auth_failures_before_lockout=2, auth_lockout_seconds=10)}
    )
    auth.update(new)
    await fail(auth, "alice@example.com", "192.0.2.1")
    await fail(auth, "alice@example.com", "192.0.2.1")
    assert (await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")).locked


async def test_raised_threshold_after_reload_still_locks(auth: Authenticator) -> None:
    for _ in range(3):
        await fail(auth, "alice@example.com", "192.0.2.1")
    raised = Limits(auth_failures_before_lockout=FAILURES + 2, auth_lockout_seconds=LOCKOUT)
    auth.update(config(ALICE, BOB).model_copy(update={"limits": raised}))
    results = [await fail(auth, "alice@example.com", "192.0.2.1") for _ in range(FAILURES - 1)]
    assert not any(r.locked for r in results)
    assert (await auth.authenticate("alice@example.com", ALICE_PW, "192.0.2.1")).locked


@pytest.mark.parametrize("password", ["", "x" * (mailpod.auth.MAX_PASSWORD_CHARS + 1), "\ud800"])
async def test_unusable_password_fails_without_a_check(
    auth: Authenticator, verifies: list[str], password: str
) -> None:
    assert await auth.authenticate("alice@example.com", password, "192.0.2.1") == AuthResult(None)
    assert verifies == []
    assert (await fail(auth, "alice@example.com", "192.0.2.1")).delay == 1  # it still counted
