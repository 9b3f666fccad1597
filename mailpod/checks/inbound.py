"""The inbound checks of the MX (port 25), run at the SMTP stages where they decide something:

- connection: rate limits per IP and per /24 (/64);
- MAIL FROM: HELO sanity, DNS block/allow lists, message rate limits, and the SPF evaluation
  started as a task (it runs while the client sends RCPT and DATA);
- RCPT: greylisting;
- end of DATA: DKIM, ARC and DMARC concurrently, then the Authentication-Results header and the
  DMARC disposition (reject → 550 5.7.1, quarantine → the Junk folder).

Every verdict comes from a check module returning a value; this module only combines them under
the `InboundChecks` policy. All DNS goes through the shared async resolver, so no check blocks
the event loop, and the overall end-of-DATA time is bounded by `timeout_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mailpod.checks import arc as arc_check
from mailpod.checks import authresults, dmarc, dnsbl, helo, spf
from mailpod.checks.arc import ArcResult, ArcVerdict
from mailpod.checks.dmarc import DmarcResult, DmarcVerdict, Policy
from mailpod.checks.greylist import Greylist
from mailpod.checks.spf import SpfResult, SpfVerdict
from mailpod.config import InboundChecks, MailpodConfig
from mailpod.dkim import DkimResult, DkimStatus, ParsedMessage
from mailpod.dkim import verify as dkim_verify
from mailpod.dns import Resolver
from mailpod.errors import SmtpError
from mailpod.ratelimit import BucketTable, ClientLimits

log = logging.getLogger("mailpod.checks")

REPORTS_FILE = "dmarc-reports.jsonl"


@dataclass
class InboundTransaction:
    """What the checks know about one SMTP transaction, from MAIL FROM on."""

    ip: str
    helo: str
    mail_from: str
    exempt: bool
    spf_task: asyncio.Task[SpfVerdict] | None = None

    def cancel(self) -> None:
        if self.spf_task is not None and not self.spf_task.done():
            self.spf_task.cancel()


@dataclass(frozen=True)
class InboundOutcome:
    data: bytes
    """The message with forged Authentication-Results removed (else the bytes as received)."""
    header: str | None
    """Our Authentication-Results field, without its CRLF (None with checks off)."""
    folder: str = ""
    """"" for INBOX, else the folder to deliver to (DMARC quarantine)."""
    spf: SpfVerdict | None = None
    dkim: tuple[DkimResult, ...] = ()
    arc: ArcVerdict | None = None
    dmarc: DmarcVerdict | None = None
    summary: dict[str, str] = field(default_factory=dict)


def _in(ip: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _dkim_for_dmarc(results: list[DkimResult]) -> list[DkimResult]:
    """A pass that leaves body octets unsigned (l=) is not trusted for alignment."""
    return [r for r in results if not (r.status is DkimStatus.PASS and r.unsigned_body_octets)]


class InboundChecker:
    def __init__(
        self,
        config: Callable[[], MailpodConfig],
        resolver: Resolver,
        clock: Callable[[], float] = time.monotonic,
        buckets: BucketTable | None = None,
    ) -> None:
        """`buckets`: the pod's shared rate-limit table (without it, limits are per process)."""
        self._config = config
        self.resolver = resolver
        self.limits = ClientLimits(clock, buckets)
        self._rng = random.Random()  # noqa: S311 (pct= sampling, not security)
        self._greylist: Greylist | None = None
        self._reports_fd: int | None = None
        self._reports_path: Path | None = None

    @property
    def policy(self) -> InboundChecks:
        return self._config().checks

    def state_dir(self) -> Path:
        config = self._config()
        return config.checks.state_dir or config.storage.mail_root / ".inbound"

    # --- connection ------------------------------------------------------------------------

    def connection_refusal(self, ip: str) -> SmtpError | None:
        policy = self.policy
        if not policy.enabled or _in(ip, policy.exempt_networks):
            return None
        limits = policy.rate_limits
        if not self.limits.allow(
            "connections", ip, limits.connections_per_ip, limits.connections_per_network
        ):
            return SmtpError(
                421, "4.7.0", "Too many connections, slow down", f"connection rate {ip}"
            )
        return None

    # --- MAIL FROM ---------------------------------------------------------------------------

    async def mail(self, ip: str, helo_name: str, mail_from: str) -> InboundTransaction | None:
        """Raises SmtpError to refuse the sender; None when checks are off."""
        config = self._config()
        policy = config.checks
        if not policy.enabled:
            return None
        tx = InboundTransaction(ip, helo_name, mail_from, _in(ip, policy.exempt_networks))
        if not tx.exempt:
            if policy.helo_checks:
                ours = {config.hostname.lower(), *(d.lower() for d in config.domains)}
                why = helo.problem(helo_name, ip, ours)
                if why:
                    raise SmtpError(550, "5.7.1", "HELO/EHLO name rejected", why)
            limits = policy.rate_limits
            if not self.limits.allow(
                "messages", ip, limits.messages_per_ip, limits.messages_per_network
            ):
                raise SmtpError(
                    450, "4.7.1", "Too many messages, try again later", f"message rate {ip}"
                )
            if policy.dnsbl:
                domains = [mail_from.rpartition("@")[2], helo_name]
                listed = await dnsbl.check(self.resolver, policy.dnsbl, ip, domains)
                if listed.score >= policy.dnsbl_threshold:
                    raise SmtpError(
                        554,
                        "5.7.1",
                        f"Service unavailable; client [{ip}] is listed by "
                        + ", ".join(listed.listed_by),
                        f"dnsbl score {listed.score}",
                    )
        if policy.spf:
            tx.spf_task = asyncio.ensure_future(
                spf.check_mail_from(self.resolver, ip, mail_from, helo_name, config.hostname)
            )
            if policy.spf_fail_reject:
                verdict = await tx.spf_task
                if verdict.result is SpfResult.FAIL:
                    raise SmtpError(
                        550,
                        "5.7.23",
                        f"SPF check failed for {verdict.domain}"
                        + (f": {verdict.explanation}" if verdict.explanation else ""),
                        verdict.reason,
                    )
        return tx

    # --- RCPT --------------------------------------------------------------------------------

    async def rcpt(self, tx: InboundTransaction | None, recipient: str) -> None:
        policy = self.policy
        if tx is None or tx.exempt or not policy.greylisting.enabled:
            return
        if self._greylist is None:
            self._greylist = Greylist(self.state_dir() / "greylist.sqlite3")
        wait = await self._greylist.check(tx.ip, tx.mail_from, recipient, policy.greylisting)
        if wait > 0:
            raise SmtpError(
                451,
                "4.7.1",
                f"Greylisted, please try again in {int(wait) + 1} seconds",
                "greylisted",
            )

    # --- end of DATA -----------------------------------------------------------------------

    async def data(self, tx: InboundTransaction | None, data: bytes) -> InboundOutcome:
        """Raises SmtpError for a DMARC reject."""
        config = self._config()
        policy = config.checks
        if tx is None or not policy.enabled:
            return InboundOutcome(data, None)
        authserv_id = config.hostname
        started = time.monotonic()
        try:
            async with asyncio.timeout(policy.timeout_seconds):
                spf_verdict, dkim_results, arc_verdict = await asyncio.gather(
                    self._spf(tx), self._dkim(data, policy), self._arc(data, policy)
                )
                dmarc_verdict = None
                if policy.dmarc:
                    dmarc_verdict = await dmarc.evaluate(
                        self.resolver,
                        _header_values(data, b"from"),
                        spf_verdict,
                        _dkim_for_dmarc(dkim_results),
                        self._rng,
                    )
        except TimeoutError:
            tx.cancel()
            spf_verdict = SpfVerdict(SpfResult.TEMPERROR, "mailfrom", "", reason="timeout")
            dkim_results, arc_verdict = [], None
            dmarc_verdict = DmarcVerdict(DmarcResult.TEMPERROR, "", reason="timeout")
        disposition, folder, override = self._disposition(dmarc_verdict, arc_verdict, policy)
        stripped, removed = authresults.strip_ours(data, authserv_id)
        header = authresults.header(
            authserv_id,
            self._methods(tx, spf_verdict, dkim_results, arc_verdict, dmarc_verdict, disposition),
        )
        if dmarc_verdict is not None and dmarc_verdict.record is not None:
            self._record(tx, data, spf_verdict, dkim_results, dmarc_verdict, disposition, override)
        summary = {
            "spf": spf_verdict.result.value if spf_verdict else "off",
            "dkim": ",".join(r.status.value for r in dkim_results) or "none",
            "dmarc": dmarc_verdict.result.value if dmarc_verdict else "off",
            "arc": arc_verdict.result.value if arc_verdict else "off",
            "disposition": disposition,
            "removed_ar": str(removed),
            "check_ms": str(round((time.monotonic() - started) * 1000, 1)),
        }
        if disposition == "reject":
            assert dmarc_verdict is not None
            raise SmtpError(
                550,
                "5.7.1",
                f"Rejected by the DMARC policy of {dmarc_verdict.from_domain}",
                f"dmarc fail p=reject {summary}",
            )
        return InboundOutcome(
            stripped,
            header,
            folder,
            spf_verdict,
            tuple(dkim_results),
            arc_verdict,
            dmarc_verdict,
            summary,
        )

    async def _spf(self, tx: InboundTransaction) -> SpfVerdict | None:
        return await tx.spf_task if tx.spf_task is not None else None

    async def _dkim(self, data: bytes, policy: InboundChecks) -> list[DkimResult]:
        if not policy.dkim:
            return []
        resolver = self.resolver

        async def fetch_key(selector: str, domain: str) -> str | None:
            answer = await resolver.query(f"{selector}._domainkey.{domain}", "TXT")
            return answer.records[0] if answer.records else None

        return await dkim_verify(data, fetch_key)

    async def _arc(self, data: bytes, policy: InboundChecks) -> ArcVerdict | None:
        if not policy.arc:
            return None
        return await arc_check.verify(data, self.resolver)

    @staticmethod
    def _disposition(
        verdict: DmarcVerdict | None, arc: ArcVerdict | None, policy: InboundChecks
    ) -> tuple[str, str, str]:
        """(disposition, folder, override reason)."""
        if verdict is None or verdict.result is not DmarcResult.FAIL:
            return "none", "", ""
        if verdict.policy is Policy.NONE:
            return "none", "", ""
        if (
            arc is not None
            and arc.result is ArcResult.PASS
            and arc.sealer in {s.lower() for s in policy.trusted_arc_sealers}
        ):
            # RFC 7489 §7.2.1 local policy override: a trusted forwarder vouched for it.
            return "none", "", f"trusted_forwarder {arc.sealer}"
        if not policy.dmarc_enforce:
            return "none", "", "local_policy (not enforced)"
        if verdict.policy is Policy.REJECT:
            return "reject", "", ""
        return "quarantine", policy.junk_folder, ""

    @staticmethod
    def _methods(
        tx: InboundTransaction,
        spf_verdict: SpfVerdict | None,
        dkim_results: list[DkimResult],
        arc_verdict: ArcVerdict | None,
        dmarc_verdict: DmarcVerdict | None,
        disposition: str,
    ) -> list[str]:
        methods: list[str] = []
        if spf_verdict is not None:
            # RFC 8601 §2.7.2: the null sender was checked as the HELO identity.
            prop = {"smtp_mailfrom": tx.mail_from} if tx.mail_from else {"smtp_helo": tx.helo}
            methods.append(authresults.method("spf", spf_verdict.result.value, **prop))
        for result in dkim_results:
            status = result.status.value
            comment = result.reason
            if result.status is DkimStatus.PASS and result.unsigned_body_octets:
                status = "policy"  # RFC 8601 §2.7.1: signed, but not acceptable to us
            methods.append(
                authresults.method(
                    "dkim",
                    status,
                    comment,
                    header_d=result.domain,
                    header_s=result.selector,
                    header_a=result.algorithm,
                )
            )
        if dkim_results == [] and dmarc_verdict is not None:
            methods.append(authresults.method("dkim", "none"))
        if arc_verdict is not None:
            comment = f"sealer {arc_verdict.sealer}" if arc_verdict.sealer else ""
            methods.append(
                authresults.method(
                    "arc", arc_verdict.result.value, comment, **{"smtp.remote-ip": tx.ip}
                )
            )
        if dmarc_verdict is not None:
            comment = ""
            if dmarc_verdict.record is not None:
                comment = f"p={dmarc_verdict.record.policy} dis={disposition}"
            methods.append(
                authresults.method(
                    "dmarc",
                    dmarc_verdict.result.value,
                    comment,
                    header_from=dmarc_verdict.from_domain,
                )
            )
        return methods

    # --- aggregate report data (RFC 7489 §7.2; sending reports is a later step) ---------------

    def _record(
        self,
        tx: InboundTransaction,
        data: bytes,
        spf_verdict: SpfVerdict | None,
        dkim_results: list[DkimResult],
        verdict: DmarcVerdict,
        disposition: str,
        override: str,
    ) -> None:
        record = verdict.record
        assert record is not None
        line = {
            "time": int(time.time()),
            "source_ip": tx.ip,
            "header_from": verdict.from_domain,
            "envelope_from": tx.mail_from.rpartition("@")[2],
            "policy_domain": verdict.record_domain,
            "policy_published": {
                "p": record.policy.value,
                "sp": record.subdomain_policy.value,
                "pct": record.percent,
                "adkim": "s" if record.strict_dkim else "r",
                "aspf": "s" if record.strict_spf else "r",
                "rua": list(record.rua),
            },
            "disposition": disposition,
            "override": override,
            "dmarc": verdict.result.value,
            "dkim_aligned": verdict.dkim_aligned,
            "spf_aligned": verdict.spf_aligned,
            "spf": None
            if spf_verdict is None
            else {"domain": spf_verdict.domain, "result": spf_verdict.result.value},
            "dkim": [
                {"domain": r.domain, "selector": r.selector, "result": r.status.value}
                for r in dkim_results
            ],
        }
        try:
            fd = self._reports()
            # One write per line on an O_APPEND descriptor: workers never interleave lines.
            os.write(fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())
        except OSError:
            log.exception("cannot record DMARC result")

    def _reports(self) -> int:
        path = self.state_dir() / REPORTS_FILE
        if self._reports_fd is None or self._reports_path != path:
            if self._reports_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._reports_fd)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._reports_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._reports_path = path
        return self._reports_fd


def _header_values(data: bytes, name: bytes) -> list[str]:
    end = data.find(b"\r\n\r\n")
    parsed = ParsedMessage.parse(data[: end + 4] if end >= 0 else data)
    return [
        raw.partition(b":")[2].decode("utf-8", "replace").replace("\r\n", "").strip()
        for raw in parsed.all(name)
    ]
