"""Built-in ACME mode: keep a TLS Secret holding a valid certificate for a set of hosts.

`ensure()` is one level-triggered step: it reads the Secret, and issues (or renews) only when the
certificate is missing, does not cover the hosts, or has a third of its lifetime left. A failed
attempt backs off exponentially per Secret; the back-off is also kept in a state Secret, so a
restarted (or crash-looping) operator waits out the same delay instead of hammering the CA and
burning its failed-validation limits. The certificate in force keeps serving meanwhile, and from
a week before its expiry the state asks for a warning. `kick()` runs the step in the background
so a reconcile pass never waits for a CA.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from letterbox.acme.challenge import TxtPublisher
from letterbox.acme.issuer import (
    AcmeError,
    AcmeIssuer,
    describe_certificate,
    generate_account_key,
)
from letterbox.acme.policy import Backoff, expiry_warning_due, renewal_time
from letterbox.certs.store import (
    ACCOUNT_KEY_KEY,
    TLS_CERT_KEY,
    TLS_KEY_KEY,
    SecretStore,
)

log = logging.getLogger("letterbox.certs")

# CertificateReady reasons.
ISSUED = "Issued"
ISSUING = "Issuing"
RENEWAL_FAILING = "RenewalFailing"
ISSUANCE_FAILED = "IssuanceFailed"


@dataclass(frozen=True)
class AcmeRequest:
    secret_name: str
    """The kubernetes.io/tls Secret the certificate and key go into."""
    hosts: tuple[str, ...]
    """DNS names, the first one the subject."""
    directory_url: str
    account_secret: str
    """Secret holding the account key (`private.pem`); generated when missing."""
    email: str | None = None
    state_secret: str | None = None
    """Opaque Secret keeping the back-off across restarts (a key per certificate Secret); None
    keeps it in memory only."""


@dataclass(frozen=True)
class CertificateState:
    ready: bool
    reason: str
    message: str
    not_after: datetime | None = None
    serial: int | None = None
    renew_at: datetime | None = None
    retry_at: datetime | None = None
    failures: int = 0
    expiry_warning: bool = False
    """Renewal keeps failing and the certificate expires within a week (or has expired)."""


@dataclass(frozen=True)
class _Held:
    """The certificate in a Secret, if it parses."""

    not_before: datetime
    not_after: datetime
    serial: int
    hosts: frozenset[str]


@dataclass(frozen=True)
class _Failures:
    count: int
    retry_at: datetime
    error: str
    attempted: tuple[str, ...]
    """The directory URL and hosts that failed: a changed request deserves a prompt try."""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "failures": self.count,
                "retryAt": self.retry_at.astimezone(UTC).isoformat(),
                "error": self.error[:MAX_STORED_ERROR],
                "attempted": list(self.attempted),
            }
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> _Failures | None:
        try:
            data: Any = json.loads(raw)
            return cls(
                int(data["failures"]),
                datetime.fromisoformat(str(data["retryAt"]).replace("Z", "+00:00")),
                str(data["error"]),
                tuple(str(x) for x in data["attempted"]),
            )
        except (ValueError, TypeError, KeyError):
            return None  # unreadable state: as if there were none


def _attempted(request: AcmeRequest) -> tuple[str, ...]:
    return (request.directory_url, *request.hosts)


# Secret values are small; an error text is only there to be shown again after a restart.
MAX_STORED_ERROR = 1000


def _held(data: Mapping[str, bytes] | None) -> _Held | None:
    if data is None or TLS_KEY_KEY not in data or TLS_CERT_KEY not in data:
        return None
    try:
        not_before, not_after, serial, hosts = describe_certificate(data[TLS_CERT_KEY].decode())
    except ValueError:
        return None
    return _Held(not_before, not_after, serial, frozenset(hosts))


@dataclass
class AcmeCertificates:
    store: SecretStore
    ca_bundle: str | None = None
    """CA certificates to trust for the ACME directory (tests: Pebble's listener CA)."""
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _failures: dict[str, _Failures] = field(default_factory=dict, init=False)
    _restored: set[str] = field(default_factory=set, init=False)
    _state_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _ordering: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    """One order at a time: the `acme` client's nonce pool is not safe across threads."""
    _issuers: dict[tuple[str, str], AcmeIssuer] = field(default_factory=dict, init=False)
    _states: dict[str, CertificateState] = field(default_factory=dict, init=False)
    _tasks: dict[str, asyncio.Task[CertificateState]] = field(default_factory=dict, init=False)

    def state(self, secret_name: str) -> CertificateState | None:
        """The outcome of the last step for this Secret."""
        return self._states.get(secret_name)

    def kick(
        self,
        request: AcmeRequest,
        make_publisher: Callable[[], TxtPublisher],
        *,
        on_done: Callable[[CertificateState, TxtPublisher], Awaitable[None]] | None = None,
    ) -> CertificateState:
        """Start a step in the background unless one runs; the last known state meanwhile.
        The publisher is made only when a step starts, and handed to `on_done` after it."""
        running = self._tasks.get(request.secret_name)
        if running is None or running.done():

            async def step() -> CertificateState:
                publisher = make_publisher()
                state = await self.ensure(request, publisher)
                if on_done is not None:
                    await on_done(state, publisher)
                return state

            self._tasks[request.secret_name] = asyncio.create_task(
                step(), name=f"acme {request.secret_name}"
            )
        return self._states.get(request.secret_name) or CertificateState(
            False, ISSUING, f"requesting a certificate for {', '.join(request.hosts)}"
        )

    async def wait(self, secret_name: str) -> CertificateState | None:
        """Wait for the background step of this Secret, if any (tests, shutdown)."""
        task = self._tasks.get(secret_name)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        return self._states.get(secret_name)

    async def ensure(self, request: AcmeRequest, publisher: TxtPublisher) -> CertificateState:
        state = await self._step(request, publisher)
        self._states[request.secret_name] = state
        return state

    async def _step(self, request: AcmeRequest, publisher: TxtPublisher) -> CertificateState:
        now = self.clock()
        held = _held(await self.store.get(request.secret_name))
        covers = held is not None and set(request.hosts) <= held.hosts
        if held is not None and covers:
            renew_at = renewal_time(held.not_before, held.not_after)
            if now < renew_at:
                await self._set_failures(request, None)
                return CertificateState(
                    True,
                    ISSUED,
                    f"valid until {_iso(held.not_after)}, renewal from {_iso(renew_at)}",
                    held.not_after,
                    held.serial,
                    renew_at,
                )
        failures = await self._failures_of(request)
        if failures is not None and now < failures.retry_at:
            return self._failing(held if covers else None, failures, now)
        try:
            issuer = await self._issuer(request)
            async with self._ordering:
                issued = await issuer.issue(request.hosts, publisher)
            await self.store.put(
                request.secret_name,
                {
                    TLS_CERT_KEY: issued.chain_pem.encode(),
                    TLS_KEY_KEY: issued.key_pem.encode(),
                },
                tls=True,
            )
        except (AcmeError, OSError) as error:
            count = failures.count + 1 if failures else 1
            failures = _Failures(
                count, now + self.backoff.delay(count), str(error), _attempted(request)
            )
            await self._set_failures(request, failures)
            log.warning(
                "certificate for %s: attempt %d failed, next at %s: %s",
                ", ".join(request.hosts),
                count,
                _iso(failures.retry_at),
                error,
            )
            return self._failing(held if covers else None, failures, now)
        await self._set_failures(request, None)
        renew_at = renewal_time(issued.not_before, issued.not_after)
        return CertificateState(
            True,
            ISSUED,
            f"valid until {_iso(issued.not_after)}, renewal from {_iso(renew_at)}",
            issued.not_after,
            issued.serial,
            renew_at,
        )

    # --- back-off state, kept across restarts ------------------------------------------------

    async def _failures_of(self, request: AcmeRequest) -> _Failures | None:
        """The back-off of this request: from memory, or (first time after a start) from the
        state Secret. Failures of a different request (hosts, directory) do not count."""
        name = request.secret_name
        if name not in self._restored and request.state_secret is not None:
            self._restored.add(name)
            try:
                stored = await self.store.get(request.state_secret)
            except Exception as error:  # advisory state: never the reason an order is skipped
                log.warning("could not read the ACME back-off state: %s", error)
                stored = None
            raw = (stored or {}).get(name)
            restored = _Failures.from_json(raw) if raw is not None else None
            if restored is not None and name not in self._failures:
                self._failures[name] = restored
                log.info(
                    "certificate %s: %d failed attempts before the restart, next at %s",
                    name,
                    restored.count,
                    _iso(restored.retry_at),
                )
        failures = self._failures.get(name)
        if failures is not None and failures.attempted != _attempted(request):
            return None
        return failures

    async def _set_failures(self, request: AcmeRequest, failures: _Failures | None) -> None:
        name = request.secret_name
        before = self._failures.pop(name, None)
        if failures is not None:
            self._failures[name] = failures
        if request.state_secret is None or (before is None and failures is None):
            return
        async with self._state_lock:  # read-modify-write of a Secret shared by certificates
            try:
                data = dict(await self.store.get(request.state_secret) or {})
                if failures is None:
                    if name not in data:
                        return
                    del data[name]
                else:
                    data[name] = failures.to_json()
                await self.store.put(request.state_secret, data, tls=False)
            except Exception as error:  # advisory state: the in-memory back-off still holds
                log.warning("could not store the ACME back-off state: %s", error)

    def _failing(self, held: _Held | None, failures: _Failures, now: datetime) -> CertificateState:
        retry = f"attempt {failures.count} failed ({failures.error}); next at "
        retry += _iso(failures.retry_at)
        if held is not None and now < held.not_after:
            return CertificateState(
                True,
                RENEWAL_FAILING,
                f"renewal failing, the certificate in force is valid until "
                f"{_iso(held.not_after)}: {retry}",
                held.not_after,
                held.serial,
                renewal_time(held.not_before, held.not_after),
                failures.retry_at,
                failures.count,
                expiry_warning_due(held.not_after, now),
            )
        return CertificateState(
            False,
            ISSUANCE_FAILED,
            f"no valid certificate: {retry}",
            held.not_after if held else None,
            held.serial if held else None,
            None,
            failures.retry_at,
            failures.count,
            held is not None,
        )

    async def _issuer(self, request: AcmeRequest) -> AcmeIssuer:
        cache_key = (request.directory_url, request.account_secret)
        issuer = self._issuers.get(cache_key)
        if issuer is not None:
            return issuer
        stored = await self.store.get(request.account_secret)
        account_key = stored.get(ACCOUNT_KEY_KEY) if stored else None
        if account_key is None:
            generated = await asyncio.to_thread(generate_account_key)
            await self.store.put(
                request.account_secret, {ACCOUNT_KEY_KEY: generated.encode()}, tls=False
            )
            # Read back: another writer may have won the race; one key per account Secret.
            stored = await self.store.get(request.account_secret)
            account_key = (stored or {}).get(ACCOUNT_KEY_KEY, generated.encode())
        issuer = AcmeIssuer(
            request.directory_url,
            account_key.decode(),
            email=request.email,
            ca_bundle=self.ca_bundle,
        )
        self._issuers[cache_key] = issuer
        return issuer


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
