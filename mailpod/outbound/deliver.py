"""Opening an SMTP session to a destination: a recipient domain's MXs, or a smarthost.

For a domain: MTA-STS policy, then MX hosts in preference order, each with its DANE policy (when
the MX answer is authenticated), each address (IPv6 and IPv4) until one session is up. STARTTLS
is used whenever offered; it is required, and the certificate checked, under DANE (TLSA match)
and an MTA-STS policy in enforce mode (a valid chain for an MX name the policy lists). In
testing mode a failure is logged and delivery goes on. DANE takes precedence over MTA-STS
(RFC 8461 §2). Every TLS outcome is recorded for TLS-RPT (RFC 8460).

For a relay: TLS always (implicit on 465, STARTTLS otherwise), verified, then AUTH.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from mailpod.config import OutboundConfig, RelayHost
from mailpod.dns import DnsTemporaryError, Resolver
from mailpod.metrics import OUTBOUND_TLS
from mailpod.outbound.dane import DaneLookupFailed, DanePolicy, dane_policy
from mailpod.outbound.mtasts import Mode, MtaStsClient, Policy
from mailpod.outbound.mx import NoRoute, addresses, mx_hosts
from mailpod.outbound.smtp import SmtpClient, SmtpClientError

log = logging.getLogger("mailpod.outbound")


@dataclass(frozen=True)
class Route:
    """Where a group of recipients goes: `domain`'s MXs, or `relay` for them."""

    domain: str
    relay: RelayHost | None = None

    @property
    def key(self) -> str:
        if self.relay is not None:
            return f"relay:{self.relay.host}:{self.relay.port}"
        return f"mx:{self.domain}"


def route_for(config: OutboundConfig, domain: str) -> Route:
    domain = domain.lower()
    for relay in config.relays:
        if domain in relay.domains:
            return Route(domain, relay)
    for relay in config.relays:
        if not relay.domains:
            return Route(domain, relay)
    return Route(domain)


@dataclass(frozen=True)
class TlsOutcome:
    """One connection's TLS result, in TLS-RPT's terms (RFC 8460 §4.3)."""

    domain: str
    mx: str
    policy: str  # "sts", "tlsa", "no-policy-found"
    result: str  # "success" or a TLS-RPT result type
    detail: str = ""
    at: float = field(default_factory=time.time)


class ConnectFailed(Exception):
    """No session could be opened; `permanent` when retrying cannot help (null MX, ...)."""

    def __init__(self, reason: str, *, permanent: bool = False, code: int = 0) -> None:
        super().__init__(reason)
        self.permanent = permanent
        self.code = code


def client_context(ca_file: Path | None, *, verify: bool) -> ssl.SSLContext:
    if not verify:
        # Opportunistic TLS (and DANE-EE, checked after the handshake): any certificate.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context()
        if ca_file is not None:
            context.load_verify_locations(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Connector:
    """Opens sessions; shared by all deliveries of the scheduler."""

    def __init__(
        self, config: OutboundConfig, resolver: Resolver, hostname: str, keep_outcomes: int = 1000
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.hostname = hostname
        self.mta_sts = MtaStsClient(
            resolver,
            port=config.mta_sts_port,
            verify=client_context(config.ca_file, verify=True),
            timeout=config.connect_timeout_seconds,
        )
        self._verified = client_context(config.ca_file, verify=True)
        self._unverified = client_context(None, verify=False)
        self.outcomes: deque[TlsOutcome] = deque(maxlen=keep_outcomes)

    def update(self, config: OutboundConfig) -> None:
        if config is not self.config:
            self.config = config
            self._verified = client_context(config.ca_file, verify=True)
            self.mta_sts.port = config.mta_sts_port
            self.mta_sts.verify = self._verified

    def _outcome(self, outcome: TlsOutcome) -> None:
        self.outcomes.append(outcome)
        OUTBOUND_TLS.labels(policy=outcome.policy, result=outcome.result).inc()
        log.info(
            "tls outcome",
            extra={
                "domain": outcome.domain,
                "mx": outcome.mx,
                "policy": outcome.policy,
                "result": outcome.result,
                "reason": outcome.detail,
            },
        )

    async def open(self, route: Route) -> SmtpClient:
        if route.relay is not None:
            return await self._open_relay(route.relay)
        return await self._open_mx(route.domain)

    async def _connect(
        self, address: str, port: int, *, implicit: ssl.SSLContext | None, name: str | None
    ) -> SmtpClient:
        return await SmtpClient.connect(
            address,
            port,
            connect_timeout=self.config.connect_timeout_seconds,
            command_timeout=self.config.command_timeout_seconds,
            ssl_context=implicit,
            server_hostname=name,
        )

    # --- relay ---------------------------------------------------------------------------------

    async def _open_relay(self, relay: RelayHost) -> SmtpClient:
        try:
            found = await addresses(self.resolver, relay.host)
        except DnsTemporaryError as error:
            raise ConnectFailed(f"relay {relay.host}: {error}") from None
        if not found:
            raise ConnectFailed(f"relay {relay.host} has no address")
        password = None
        if relay.username is not None and relay.password_file is not None:
            try:
                password = relay.password_file.read_text().strip()
            except OSError as error:
                raise ConnectFailed(f"relay password: {error.strerror}") from None
        last = ""
        for address in found:
            implicit = self._verified if relay.port == 465 else None
            client: SmtpClient | None = None
            try:
                client = await self._connect(
                    address, relay.port, implicit=implicit, name=relay.host
                )
                await client.ehlo(self.hostname)
                if not client.tls:
                    if not client.supports("STARTTLS"):
                        raise SmtpClientError(0, "relay offers no STARTTLS (TLS is required)")
                    await client.starttls(self._verified, relay.host)
                    await client.ehlo(self.hostname)
                if relay.username is not None:
                    await client.auth(relay.username, password or "")
                return client
            except SmtpClientError as error:
                last = str(error)
                if client is not None:
                    client.abort()
                if error.code and "AUTH" in error.text:
                    # Our credentials are wrong: every address would say so. The mail waits
                    # (never bounces) until the operator fixes the Secret.
                    break
        raise ConnectFailed(f"relay {relay.host}: {last}")

    # --- MX --------------------------------------------------------------------------------------

    async def _open_mx(self, domain: str) -> SmtpClient:
        try:
            hosts = await mx_hosts(self.resolver, domain)
        except NoRoute as error:
            raise ConnectFailed(str(error), permanent=error.permanent) from None
        except DnsTemporaryError as error:
            raise ConnectFailed(f"{domain} MX: {error}") from None
        policy = await self.mta_sts.policy(domain)
        enforce = policy is not None and policy.mode is Mode.ENFORCE
        failures: list[str] = []
        for mx in hosts:
            dane: DanePolicy | None = None
            if mx.authenticated:
                try:
                    dane = await dane_policy(self.resolver, mx.host, self.config.smtp_port)
                except DaneLookupFailed as error:
                    failures.append(f"{mx.host}: TLSA lookup failed: {error}")
                    self._outcome(TlsOutcome(domain, mx.host, "tlsa", "tlsa-invalid", str(error)))
                    continue
            sts = dane is None and policy is not None and policy.mode is not Mode.NONE
            if sts and policy is not None and not policy.matches(mx.host):
                detail = f"MX {mx.host} not in the MTA-STS policy"
                self._outcome(
                    TlsOutcome(domain, mx.host, "sts", "certificate-host-mismatch", detail)
                )
                if enforce:
                    failures.append(detail)
                    continue
            try:
                found = await addresses(self.resolver, mx.host)
            except DnsTemporaryError as error:
                failures.append(f"{mx.host}: {error}")
                continue
            for address in found:
                try:
                    return await self._session(domain, mx.host, address, policy, dane)
                except SmtpClientError as error:
                    failures.append(f"{mx.host}[{address}]: {error}")
        raise ConnectFailed(f"{domain}: " + ("; ".join(failures[-4:]) or "no MX reachable"))

    async def _session(
        self,
        domain: str,
        host: str,
        address: str,
        policy: Policy | None,
        dane: DanePolicy | None,
    ) -> SmtpClient:
        sts = dane is None and policy is not None and policy.mode is not Mode.NONE
        policy_type = "tlsa" if dane is not None else "sts" if sts else "no-policy-found"
        required = dane is not None or (sts and policy is not None and policy.mode is Mode.ENFORCE)
        client = await self._connect(address, self.config.smtp_port, implicit=None, name=None)
        try:
            await client.ehlo(self.hostname)
            if not client.supports("STARTTLS"):
                self._outcome(
                    TlsOutcome(domain, host, policy_type, "starttls-not-supported", address)
                )
                if required:
                    raise SmtpClientError(0, "STARTTLS not offered but required")
                return client
            verify_names = sts and dane is None
            context = self._verified if verify_names else self._unverified
            try:
                await client.starttls(context, host if verify_names else None)
            except SmtpClientError as error:
                result = (
                    "certificate-not-trusted"
                    if "CERTIFICATE" in str(error)
                    else ("validation-failure")
                )
                if "hostname" in str(error).lower() or "mismatch" in str(error).lower():
                    result = "certificate-host-mismatch"
                self._outcome(TlsOutcome(domain, host, policy_type, result, str(error)))
                if required:
                    raise
                client.abort()
                # MTA-STS testing: deliver anyway, over TLS without checks. No policy at all:
                # a server whose TLS is broken still gets its mail, in clear (RFC 7435).
                return await self._without_checks(address, tls=verify_names)
            if dane is not None and dane.authenticates:
                der = client.peer_certificate()
                if der is None or not dane.matches(der):
                    self._outcome(
                        TlsOutcome(domain, host, "tlsa", "tlsa-invalid", "no TLSA record matches")
                    )
                    raise SmtpClientError(0, "certificate matches no TLSA record")
            self._outcome(TlsOutcome(domain, host, policy_type, "success", client.tls_version()))
            await client.ehlo(self.hostname)
            return client
        except BaseException:
            client.abort()
            raise

    async def _without_checks(self, address: str, *, tls: bool) -> SmtpClient:
        client = await self._connect(address, self.config.smtp_port, implicit=None, name=None)
        try:
            await client.ehlo(self.hostname)
            if tls:
                await client.starttls(self._unverified, None)
                await client.ehlo(self.hostname)
            return client
        except BaseException:
            client.abort()
            raise
