"""One reconcile pass's view of the certificates: what to apply, what CertificateReady says.

The reconcile calls `observe()` once per pass with the accepted MailDomains (oldest first; the
oldest names the server and chooses where its certificate comes from) and the Secrets it
listed. Nothing here blocks a pass: ACME orders run in the background (`AcmeCertificates.kick`)
and ask for another pass when they finish and again when the next renewal or retry is due.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import certifi

from letterbox.acme.challenge import TxtPublisher
from letterbox.acme.issuer import AcmeError
from letterbox.acme.policy import directory_url, expiry_warning_due
from letterbox.api.maildomain import MailDomain, MailDomainSpec
from letterbox.api.meta import ConditionStatus, Resource
from letterbox.api.settings import AcmeSettings, OperatorSettings
from letterbox.certs.acme import AcmeCertificates, AcmeRequest, CertificateState
from letterbox.certs.dns01 import ProviderTxtPublisher
from letterbox.certs.store import TLS_CERT_KEY, TLS_KEY_KEY, KubeSecretStore, SecretApi
from letterbox.dns.provider import DnsProviderError
from letterbox.dns.publish import provider_for
from letterbox.kube.errors import KubeError, NotFound
from letterbox.kube.events import EventType
from letterbox.render import certificates as render
from letterbox.render.certificates import CertificateObservation, TlsMode
from letterbox.render.workload import WorkloadNames

log = logging.getLogger("letterbox.certs")

EXPIRING_SOON = "ExpiringSoon"
EXPIRING_EVENT = "CertificateExpiring"
NO_DOMAINS = "NoDomains"
CERT_MANAGER_POLL_SECONDS = 5.0
CERT_MANAGER_MISSING = "CertManagerMissing"
# A renewal that comes due while nothing else changes still gets its pass within this.
LONGEST_SLEEP_SECONDS = 6 * 3600.0


class SecretValues(Protocol):
    def value(self, key: str) -> bytes | None: ...


class CertificateApi(SecretApi, Protocol):
    """What the keeper asks of the API: list (Certificates, its Secrets) and apply."""


class EventApi(Protocol):
    async def emit_event(
        self,
        involved_object: Resource | Mapping[str, Any],
        type: EventType | str,
        reason: str,
        message: str,
        *,
        action: str = "Reconcile",
        related: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CertificateOutcome:
    objects: list[dict[str, Any]]
    """To apply this pass (cert-manager Certificates, secret mode's copy)."""
    observation: CertificateObservation
    """CertificateReady of every accepted MailDomain (they share the pods' certificate)."""
    warning: str | None = None
    """Worth a Warning Event: the certificate expires within a week and renewal is failing."""


def _data(secret: SecretValues | None) -> dict[str, bytes] | None:
    if secret is None:
        return None
    values = {key: secret.value(key) for key in (TLS_CERT_KEY, TLS_KEY_KEY)}
    return {key: value for key, value in values.items() if value is not None}


def observation_of(state: CertificateState) -> CertificateObservation:
    """CertificateReady from the built-in ACME state."""
    if state.ready and state.expiry_warning:
        return CertificateObservation(
            ConditionStatus.TRUE, EXPIRING_SOON, state.message, state.not_after
        )
    status = ConditionStatus.TRUE if state.ready else ConditionStatus.FALSE
    return CertificateObservation(status, state.reason, state.message, state.not_after)


def combine(parts: Sequence[tuple[str, CertificateObservation]]) -> CertificateObservation:
    """One CertificateReady for the workload's certificates (they share the condition): the
    worst one decides (False before Unknown before True, a problem before Issued), the earliest
    not-after is reported, and each certificate's message is kept."""
    if len(parts) == 1:
        return parts[0][1]
    rank = {ConditionStatus.FALSE: 0, ConditionStatus.UNKNOWN: 1, ConditionStatus.TRUE: 2}
    worst = min(
        (seen for _, seen in parts), key=lambda o: (rank[o.status], o.reason == render.ISSUED)
    )
    expiries = [seen.not_after for _, seen in parts if seen.not_after is not None]
    message = "; ".join(f"{label} certificate: {seen.message}" for label, seen in parts)
    return CertificateObservation(
        worst.status, worst.reason, message, min(expiries) if expiries else None
    )


def ca_bundle_file(pem: str) -> str:
    """A file with the system's CAs (certifi's, as requests uses) plus `pem`: requests takes a
    bundle path, and a private ACME CA must not cost the public ones."""
    handle, path = tempfile.mkstemp(prefix="letterbox-acme-ca-", suffix=".pem")
    with os.fdopen(handle, "w") as file:
        file.write(Path(certifi.where()).read_text())
        file.write("\n" + pem.strip() + "\n")
    return path


def warning_of(observation: CertificateObservation, now: datetime) -> str | None:
    if observation.reason == EXPIRING_SOON or (
        observation.status is not ConditionStatus.TRUE
        and observation.not_after is not None
        and expiry_warning_due(observation.not_after, now)
    ):
        return f"certificate renewal is failing: {observation.message}"
    return None


@dataclass
class CertificateKeeper:
    kube: CertificateApi
    settings: OperatorSettings
    nudge: Callable[[], None] = lambda: None
    """Asks for a reconcile pass (an ACME order finished, a renewal came due)."""
    ca_bundle: str | None = None
    """Path of the CA bundle to trust for ACME directories; unset: the system's, plus
    `settings.acme.caBundle` when set."""
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    acme: AcmeCertificates = field(init=False)
    _timer: asyncio.TimerHandle | None = field(default=None, init=False)
    _warned: str | None = field(default=None, init=False)
    _bundle_file: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.ca_bundle is None and self.settings.acme.ca_bundle:
            self._bundle_file = self.ca_bundle = ca_bundle_file(self.settings.acme.ca_bundle)
        store = KubeSecretStore(self.kube, self.settings.namespace, self.settings.name)
        self.acme = AcmeCertificates(store, ca_bundle=self.ca_bundle, clock=self.clock)

    @property
    def secret_name(self) -> str:
        return WorkloadNames.of(self.settings).tls_secret

    async def observe(
        self, domains: Sequence[MailDomain], secrets: Mapping[str, SecretValues]
    ) -> CertificateOutcome:
        if not domains:
            return CertificateOutcome(
                [], CertificateObservation(ConditionStatus.UNKNOWN, NO_DOMAINS, "")
            )
        specs = [domain.spec for domain in domains]
        certificates: list[dict[str, Any]] | None
        try:
            certificates = await self.kube.list(
                render.CERT_MANAGER_API_VERSION, render.CERTIFICATE_KIND, self.settings.namespace
            )
        except NotFound:
            certificates = None  # cert-manager's CRDs are not installed
        except KubeError as error:
            log.warning("could not list cert-manager Certificates: %s", error)
            return CertificateOutcome(
                [],
                CertificateObservation(
                    ConditionStatus.UNKNOWN, "CertificatesUnreadable", f"listing failed: {error}"
                ),
            )
        choice = render.choose_tls(specs[0], cert_manager_installed=certificates is not None)
        now = self.clock()
        if choice.mode is TlsMode.CERT_MANAGER:
            assert choice.issuer is not None
            if certificates is None:
                return CertificateOutcome(
                    [],
                    CertificateObservation(
                        ConditionStatus.FALSE,
                        CERT_MANAGER_MISSING,
                        "spec.tls.certManager is set but cert-manager's Certificate CRD is not "
                        "installed",
                    ),
                )
            objects = render.render_certificates(self.settings, specs, choice.issuer)
            mail = render.certificate_name(self.settings, "mail")
            live = next((c for c in certificates if c["metadata"]["name"] == mail), None)
            observation = render.observe_certificate(live)
            if observation.status is not ConditionStatus.TRUE:
                # cert-manager's progress is not watched: look again soon while it works.
                self._schedule(CERT_MANAGER_POLL_SECONDS)
        elif choice.mode is TlsMode.SECRET:
            assert choice.secret_name is not None
            source = _data(secrets.get(choice.secret_name))
            observation = render.observe_tls_secret(
                choice.secret_name, source, render.mail_hosts(specs), now
            )
            objects = []
            if (
                source is not None
                and render.describe_tls(source) is not None
                and choice.secret_name != self.secret_name
            ):
                objects = [render.render_tls_secret(self.settings, self.secret_name, source)]
        elif choice.mode is TlsMode.ACME:
            assert choice.acme is not None
            observation = self._acme(specs, choice.acme.directory, choice.acme.email, secrets)
            objects = []
        else:
            observation = CertificateObservation(
                ConditionStatus.FALSE, render.NO_SOURCE, choice.message
            )
            objects = []
        return CertificateOutcome(objects, observation, warning_of(observation, now))

    # --- built-in ACME ------------------------------------------------------------------------

    def _acme(
        self,
        specs: Sequence[MailDomainSpec],
        directory: str,
        email: str | None,
        secrets: Mapping[str, SecretValues],
    ) -> CertificateObservation:
        parts: list[tuple[str, CertificateObservation]] = []
        for wanted in render.wanted_certificates(self.settings, specs):
            request = AcmeRequest(
                wanted.secret_name,
                wanted.hosts,
                directory_url(directory),
                f"{self.settings.name}-acme-account",
                email,
                state_secret=f"{self.settings.name}-acme-state",
            )
            state = self.acme.kick(
                request,
                lambda: RoutingPublisher(specs, secrets, self.settings.acme),
                on_done=self._finished,
            )
            parts.append((wanted.part, observation_of(state)))
        return combine(parts)

    async def _finished(self, state: CertificateState, publisher: TxtPublisher) -> None:
        if isinstance(publisher, RoutingPublisher):
            await publisher.aclose()
        self.nudge()  # report the outcome
        next_step = state.retry_at or state.renew_at
        if next_step is not None:
            self._schedule((next_step - self.clock()).total_seconds())

    def _schedule(self, seconds: float) -> None:
        """A pass in `seconds` (at most LONGEST_SLEEP_SECONDS), replacing a later one."""
        loop = asyncio.get_running_loop()
        when = loop.time() + min(max(0.0, seconds), LONGEST_SLEEP_SECONDS)
        if self._timer is not None and not self._timer.cancelled():
            if self._timer.when() <= when and self._timer.when() > loop.time():
                return
            self._timer.cancel()
        self._timer = loop.call_at(when, self.nudge)

    def watched_secrets(self, domains: Sequence[MailDomain]) -> frozenset[str]:
        """Secrets whose change should start a pass: the pods' TLS Secret (cert-manager or a
        person renewed it) and secret mode's source."""
        sources = {d.spec.tls.secret_name for d in domains if d.spec.tls.secret_name}
        return frozenset({self.secret_name, *sources})

    async def report(
        self, kube: EventApi, domains: Sequence[MailDomain], outcome: CertificateOutcome | None
    ) -> None:
        """A Warning Event on every domain when the expiry warning starts or its text changes."""
        warning = outcome.warning if outcome is not None else None
        if warning is None or warning == self._warned:
            self._warned = warning
            return
        self._warned = warning
        for domain in domains:
            try:
                await kube.emit_event(domain, EventType.WARNING, EXPIRING_EVENT, warning)
            except KubeError as error:  # events inform; they never fail a pass
                log.warning("could not record the expiry warning: %s", error)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._bundle_file is not None:
            Path(self._bundle_file).unlink(missing_ok=True)
            self._bundle_file = None


def certificate_status(
    outcome: CertificateOutcome | None,
) -> tuple[dict[str, Any], tuple[tuple[str, ConditionStatus, str, str], ...]]:
    """MailDomain status fields and the CertificateReady condition from a pass's outcome."""
    if outcome is None or outcome.observation.reason == NO_DOMAINS:
        return {}, ()
    seen = outcome.observation
    fields = {"certificate_not_after": render.rfc3339(seen.not_after)} if seen.not_after else {}
    return fields, ((render.CERTIFICATE_READY, seen.status, seen.reason, seen.message),)


class RoutingPublisher:
    """Each challenge name goes to the provider of the zone it lies in (the longest match), so
    one certificate can name mail hosts of domains with different DNS providers."""

    def __init__(
        self,
        specs: Sequence[MailDomainSpec],
        secrets: Mapping[str, SecretValues],
        settings: AcmeSettings | None = None,
    ) -> None:
        settings = settings or AcmeSettings()
        self.publishers: dict[str, ProviderTxtPublisher] = {}
        self.errors: dict[str, str] = {}
        for spec in specs:
            credential = None
            ref = spec.dns.credentials_secret_ref
            if ref is not None:
                secret = secrets.get(ref.name)
                value = secret.value(ref.key) if secret is not None else None
                credential = value.decode().strip() if value is not None else None
            try:
                provider = provider_for(spec.dns, credential)
            except DnsProviderError as error:
                self.errors[spec.effective_zone] = str(error)
                continue
            if provider is not None:
                self.publishers[spec.effective_zone] = ProviderTxtPublisher(
                    provider,
                    spec.effective_zone,
                    authoritative=settings.authoritative_servers,
                    propagation_timeout=settings.propagation_timeout_seconds,
                )

    def _for(self, name: str) -> ProviderTxtPublisher:
        zones = [z for z in self.publishers if name == z or name.endswith(f".{z}")]
        broken = [z for z in self.errors if name == z or name.endswith(f".{z}")]
        if broken and (not zones or len(max(broken, key=len)) > len(max(zones, key=len))):
            raise AcmeError(f"the DNS provider of {name} cannot be used: {self.errors[broken[0]]}")
        if not zones:
            raise AcmeError(
                f"no DNS provider that can publish {name}: the domain needs an rfc2136, "
                "powerdns or cloudflare provider for built-in ACME"
            )
        return self.publishers[max(zones, key=len)]

    async def publish(self, name: str, value: str) -> None:
        await self._for(name).publish(name, value)

    async def wait_visible(self, records: Sequence[tuple[str, str]]) -> None:
        by_zone: dict[str, list[tuple[str, str]]] = {}
        for name, value in records:
            by_zone.setdefault(self._for(name).zone, []).append((name, value))
        await asyncio.gather(
            *(self.publishers[zone].wait_visible(group) for zone, group in by_zone.items())
        )

    async def withdraw(self, name: str, value: str) -> None:
        await self._for(name).withdraw(name, value)

    async def aclose(self) -> None:
        for publisher in self.publishers.values():
            await publisher.provider.aclose()
