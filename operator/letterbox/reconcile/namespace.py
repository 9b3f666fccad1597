"""One reconcile pass over a namespace (gather -> decide -> render -> apply -> status), and the
debounced loop that runs passes on request.

All four kinds end up in one mail pod config per namespace, so any change (a Mailbox, a
password Secret, a MailDomain) asks for a pass over the whole namespace. Requests that arrive
while a pass is pending are coalesced into it, so 10,000 Mailboxes created at once cost a few
passes, not 10,000. A pass does work proportional to what changed: the namespace comes from
the watch-fed store (`reconcile.store`; a full listing only every few minutes), an object is
parsed once per resourceVersion, unchanged rendered objects are not re-applied, statuses whose
inputs did not change are neither recomputed nor written, existing hashes and keys are reused.

When the API server refuses part of the workload, the resources it affects get Ready=False
ApplyFailed with its answer and a Warning Event (`decide.apply_failed`), and the pass is
retried with backoff; the Mailboxes whose stored mail goes with them hold a finalizer until
the config listing that mail for removal is applied (`reconcile.purge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from secrets import token_urlsafe
from typing import Any

from letterbox.api.dkimkey import ROTATE_ANNOTATION, DKIMKey, KeyPhase
from letterbox.api.dnsrecord import DnsRecord, RecordType
from letterbox.api.mailbox import Mailbox
from letterbox.api.maildomain import DnsProviderKind, DnsRecordStatus, MailDomain, MailDomainSpec
from letterbox.api.manifests import Manifests
from letterbox.api.meta import (
    API_VERSION,
    GROUP,
    ConditionStatus,
    Status,
    domain_of,
    quantity_bytes,
)
from letterbox.api.settings import OperatorSettings
from letterbox.certs.keeper import CertificateKeeper, CertificateOutcome, certificate_status
from letterbox.dns.externaldns import render_dns_endpoint
from letterbox.dns.provider import DnsProviderError
from letterbox.dns.publish import DnsOutcome, DnsPublisher, owner_id
from letterbox.kube.errors import Conflict, KubeError, NotFound
from letterbox.kube.events import EventType
from letterbox.kube.patch import same_status
from letterbox.material import generate_dkim_key, reuse_or_hash
from letterbox.reconcile import dkim as lifecycle
from letterbox.reconcile import passwords, purge
from letterbox.reconcile.decide import Decisions, Verdict, apply_failed, decide
from letterbox.reconcile.ports import ClusterApi
from letterbox.reconcile.publishing import (
    SWEPT_REASONS,
    calls_provider,
    handed_to_external_dns,
    live_records,
    publish_and_sweep,
    withdraw_domain,
)
from letterbox.reconcile.snapshot import (
    Kind,
    ObjectKey,
    Observed,
    ParseCache,
    SecretView,
    Snapshot,
    observe,
    secret_view,
)
from letterbox.reconcile.status import desired_status, key_active, transition
from letterbox.reconcile.store import FULL_LIST_SECONDS, ObjectStore
from letterbox.render.dkim import DkimKeyMaterial, dkim_record_value
from letterbox.render.dnsrecords import domain_records
from letterbox.render.ingress import render_web_ingress
from letterbox.render.labels import owned_metadata
from letterbox.render.mtasts import render_mta_sts
from letterbox.render.podconfig import PodMaterial, render_pod_config
from letterbox.render.podconfig_secrets import (
    CONFIG_LABEL,
    PART_LABEL,
    settings_secret_name,
    shard_count,
)
from letterbox.render.secrets import credentials_secret_name, dkim_secret, dkim_secret_name
from letterbox.render.workload import (
    SRS_KEY,
    WorkloadNames,
    dkim_key_path,
    pod_listeners,
    pod_storage,
    pod_tls,
    render_dkim_keys_secret,
    render_workload,
    srs_secret_labels,
    with_install_settings,
    workload_owners,
)
from mailpod import config as pod

log = logging.getLogger("letterbox.reconcile")

# Parallel API writes (status, events, Secrets) per pass: enough to hide round trips, few
# enough not to look like a flood to the API server's priority and fairness.
WRITE_CONCURRENCY = 16
# How soon a resource waiting for something that is not there yet (a Secret) is looked at again
# even if no watch event says it appeared.
RETRY_TEMPORARY_SECONDS = 30.0
RETRY_FAILED_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
# An applied object is re-applied after this long even if its render did not change, so one
# deleted or edited by hand comes back without an operator restart.
REAPPLY_SECONDS = 600.0
CONFIG_CHAIN_KINDS = frozenset({"ServiceAccount", "Role", "RoleBinding", "Secret"})
# A Pending key's record is looked for again after these delays (then every last one).
DKIM_CHECK_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Held on MailDomains whose records a provider API holds, until they are withdrawn.
DNS_FINALIZER = f"{GROUP}/withdraw-dns"
# A deleted domain whose records cannot be withdrawn (provider down) is let go after this long,
# with a Warning event naming what was left behind: a deletion must not hang forever.
WITHDRAW_GIVE_UP_SECONDS = 900.0
WITHDRAW_RETRY_SECONDS = 10.0


CheckId = tuple[ObjectKey, str, str]
"""A Pending key's record check: the DKIMKey, the selector and the record value."""


@dataclass
class KeyWork:
    """One accepted DKIMKey's keys through a pass (`reconcile.dkim` decides, this carries)."""

    observed: Observed[Any]
    dkimkey: DKIMKey
    keys: lifecycle.Keys
    handled: str | None
    before: dict[str, KeyPhase]
    """Phase per selector when the pass began (for transition events)."""
    materials: dict[str, DkimKeyMaterial]
    events: list[tuple[EventType, str, str]]
    signer: lifecycle.KeyState | None = None

    @property
    def domain(self) -> str:
        return self.dkimkey.spec.domain


@dataclass(frozen=True)
class DomainDns:
    """A MailDomain's DNS after a pass: what was published and how it went."""

    domain: str
    records: tuple[DnsRecord, ...]
    outcome: DnsOutcome
    mta_sts_id: str | None


@functools.lru_cache(maxsize=256)
def _record_value(material: DkimKeyMaterial) -> str:
    # Loading an RSA key costs a millisecond or two; every pass asks for every key's record.
    return dkim_record_value(material)


@dataclass(frozen=True)
class ApplyOutcome:
    applied: int = 0
    failures: tuple[str, ...] = ()
    """What the API server refused, one message per object (with its answer)."""
    config_applied: bool = True
    """Whether the pod config (and what the pod needs to read it) got through."""


@dataclass(frozen=True)
class PassResult:
    decisions: Decisions
    written_statuses: int
    applied_objects: int
    seconds: float
    failures: tuple[str, ...] = ()
    purged: frozenset[str] = frozenset()
    """Addresses whose stored mail the applied pod config asks the pods to remove."""

    def verdict(self, key: ObjectKey) -> Verdict | None:
        return self.decisions.verdicts.get(key)


def _digest(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _object_id(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


async def gather(
    kube: ClusterApi, namespace: str, cache: ParseCache | ObjectStore | None = None
) -> Snapshot:
    """Every letterbox resource and Secret in the namespace, listed concurrently and parsed page
    by page in the API client's threads (a raw page, managedFields and all, is dropped as soon
    as it is parsed; the event loop never parses 10,000 objects). With a `cache`, only objects
    changed since its last listing are parsed."""
    kinds = list(Kind)
    parse = cache.observe if cache is not None else observe
    try:
        lists = await asyncio.gather(
            *(
                kube.list_each(API_VERSION, kind.value, namespace, functools.partial(parse, kind))
                for kind in kinds
            ),
        )
        secrets = await kube.list_each("v1", "Secret", namespace, secret_view)
    except BaseException:
        if isinstance(cache, ParseCache):
            cache.abandon()
        raise
    if isinstance(cache, ParseCache):
        cache.finish()
    return Snapshot.of_observed(namespace, dict(zip(kinds, lists, strict=True)), secrets)


def _fallback_hostname(settings: OperatorSettings) -> str:
    return f"{settings.name}.{settings.namespace}.svc.cluster.local"


class NamespaceReconciler:
    """Reconciles the letterbox resources of `settings.namespace` into the mail workload there."""

    def __init__(
        self,
        kube: ClusterApi,
        settings: OperatorSettings,
        *,
        debounce_seconds: float = 0.2,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_domains: Callable[[Sequence[MailDomainSpec]], None] | None = None,
        watched: bool = False,
        dns: DnsPublisher | None = None,
        mta_sts_served: Callable[[str, str], bool] | None = None,
        dkim_mount_seconds: float = lifecycle.MOUNT_SECONDS,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.namespace = settings.namespace
        self.debounce_seconds = debounce_seconds
        self._clock = clock
        self.on_domains = on_domains
        """Told the accepted domains each pass (the web server's `set_domains`)."""
        self._applied: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._verified = passwords.VerifiedHashes()
        self._parsed = ParseCache()
        self.store = ObjectStore()
        """Fed by the watch events when `watched` (the kopf handlers do); passes read it and
        list the namespace only every `FULL_LIST_SECONDS`. Unwatched, every pass lists."""
        self._watched = watched
        self._listed_at: float | None = None
        # What the last rendered config held, in case the store has not seen our own write yet:
        # tombstones must not be lost, and the shard count must not shrink.
        self._last_purged: tuple[pod.PurgedMailbox, ...] = ()
        self._last_shards = 1
        # Statuses known to be right: (resourceVersion, verdict, fields, extra conditions) per
        # object. The same inputs give the same status, so at 10,000 objects a pass computes
        # and compares only the statuses of objects (or verdicts) that changed.
        self._settled: dict[ObjectKey, tuple[str, Verdict, dict[str, Any], tuple[Any, ...]]] = {}
        self._pending: list[asyncio.Future[PassResult]] = []
        self._wanted = asyncio.Event()
        self._failures = 0
        self._hash_limit = passwords.hash_concurrency(os.cpu_count())
        self.referenced_secrets: frozenset[str] = frozenset()
        self.certificates = CertificateKeeper(kube, settings, nudge=self.nudge)
        self._tls: CertificateOutcome | None = None
        self.dns = dns or DnsPublisher(publish_fn=publish_and_sweep)
        """Publishing state per MailDomain (provider calls only when something is due)."""
        self.mta_sts_served = mta_sts_served
        """The web server's `serves(domain, id)`: an `_mta-sts` id is published only once the
        policy it names is served. None: no web server here, publish the id as rendered."""
        self.dkim_mount_seconds = dkim_mount_seconds
        # Key states this process decided last, ahead of the stored status until the watch
        # brings our own write back (`reconcile.dkim.merge`).
        self._dkim_memory: dict[ObjectKey, tuple[lifecycle.Keys, str | None]] = {}
        self._dkim_checks: dict[CheckId, tuple[int, float]] = {}
        """(attempts, loop time of the next check) of each Pending key's record."""
        self._dkim_checking: dict[str, asyncio.Task[None]] = {}
        self._dkim_live: set[CheckId] = set()
        """Pending keys a finished check found live, for the next pass to take."""
        self._dns_seen: dict[str, DnsOutcome] = {}
        self._endpoints: dict[str, str] = {}
        """DNSEndpoint objects applied, by MailDomain name (deleted when the provider changes)."""
        self._wake: asyncio.TimerHandle | None = None
        self._withdraw_retry = False
        self.next_pass_in: float | None = None
        """Seconds until something is due without any watch event (DNS resync or retry, a key
        to check, activate, retire or rotate)."""

    # --- the debounced loop -----------------------------------------------------------------

    def request(self) -> asyncio.Future[PassResult]:
        """Ask for a pass that starts after now; the future resolves with its result."""
        future: asyncio.Future[PassResult] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        self._wanted.set()
        return future

    def nudge(self) -> None:
        """Ask for a pass without waiting for it (watch events, retries)."""
        self._wanted.set()

    async def run(self) -> None:
        """Run passes whenever requested, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wanted.wait()
            # Let a burst of watch events (kubectl apply -f dir/) land in one pass.
            await asyncio.sleep(self.debounce_seconds)
            self._wanted.clear()
            waiters, self._pending = self._pending, []
            try:
                result = await self.reconcile_once()
            except asyncio.CancelledError:
                for waiter in waiters:
                    waiter.cancel()
                raise
            except Exception as error:
                delay = self._backoff()
                log.warning(
                    "reconcile of %s failed (retry in %ss): %s", self.namespace, delay, error
                )
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
                loop.call_later(delay, self._wanted.set)
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(result)
            if result.failures:
                # Reported in the statuses already; retried sooner at first, then less often.
                delay = self._backoff()
                log.warning(
                    "applying the workload of %s failed (retry in %ss): %s",
                    self.namespace,
                    delay,
                    "; ".join(result.failures),
                )
                loop.call_later(delay, self._wanted.set)
                continue
            self._failures = 0
            due = self.next_pass_in
            if any(v.temporary for v in result.decisions.verdicts.values()):
                due = (
                    min(due, RETRY_TEMPORARY_SECONDS)
                    if due is not None
                    else RETRY_TEMPORARY_SECONDS
                )
            self._schedule(due)

    def _schedule(self, delay: float | None, *, earlier_only: bool = False) -> None:
        """One timer for the next pass something is due for (replacing the previous one, or
        with `earlier_only` only a later one)."""
        loop = asyncio.get_running_loop()
        if earlier_only and (
            delay is None or (self._wake is not None and self._wake.when() <= loop.time() + delay)
        ):
            return
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        if delay is not None:
            # A little late rather than early: a pass a moment before a key's time does nothing.
            self._wake = loop.call_later(max(0.0, delay) + 0.05, self._wanted.set)

    def _backoff(self) -> float:
        delay = RETRY_FAILED_SECONDS[min(self._failures, len(RETRY_FAILED_SECONDS) - 1)]
        self._failures += 1
        return delay

    # --- one pass ---------------------------------------------------------------------------

    async def reconcile_once(self) -> PassResult:
        started = asyncio.get_running_loop().time()
        snapshot = await self._snapshot()
        decisions = decide(snapshot)
        if self.on_domains is not None:  # served before any status or DNS names a new policy id
            self.on_domains([domain.spec for domain in decisions.domains])
        self.referenced_secrets = frozenset(
            {
                m.spec.password.secret_ref.name
                if m.spec.password is not None
                else credentials_secret_name(m)
                for m in (o.model for o in snapshot.mailboxes)
                if m is not None
            }
            | {
                d.spec.dns.credentials_secret_ref.name
                for d in decisions.domains
                if d.spec.dns.credentials_secret_ref is not None
            }
        )
        self._tls = await self.certificates.observe(decisions.domains, snapshot.secrets)
        self.referenced_secrets |= self.certificates.watched_secrets(decisions.domains)
        hashes = await self._password_hashes(snapshot, decisions)
        now = self._clock()
        work = await self._dkim_keys(snapshot, decisions, now)
        dns = await self._publish_dns(snapshot, decisions, work)
        await self._dkim_published(decisions, work, now)
        for item in work.values():
            item.signer = lifecycle.signing(
                item.keys, now=now, mount_seconds=self.dkim_mount_seconds
            )
        purged = self._tombstones(snapshot)
        outcome = await self._apply(snapshot, decisions, hashes, purged, work)
        if outcome.failures:
            decisions = apply_failed(
                snapshot,
                decisions,
                f"the API server refused the mail workload: {'; '.join(outcome.failures)}; "
                "retrying with backoff",
                config_applied=outcome.config_applied,
            )
        await self._dkim_settle(work, dns, applied=outcome.config_applied, now=now)
        purged_addresses = (
            frozenset(p.address for p in purged) if outcome.config_applied else frozenset()
        )
        # Before the statuses: a finalizer patch is conditional on the listed resourceVersion,
        # which a status write would change (a status write re-reads on a conflict instead).
        await self._finalizers(snapshot, purged_addresses, config_applied=outcome.config_applied)
        await self._domain_finalizers(snapshot, decisions)
        written = await self._write_statuses(snapshot, decisions, hashes, work, dns)
        await self._key_events(work)
        await self.certificates.report(self.kube, decisions.domains, self._tls)
        self.dns.forget(d.metadata.name for d in decisions.domains)
        self.next_pass_in = self._next_due(work, now)
        seconds = asyncio.get_running_loop().time() - started
        log.info(
            "reconciled %s: %d domains, %d mailboxes, %d aliases, %d DKIM keys accepted; "
            "%d objects applied, %d failed, %d statuses written in %.2fs",
            self.namespace,
            len(decisions.domains),
            len(hashes),
            len(decisions.aliases),
            len(decisions.dkim_keys),
            outcome.applied,
            len(outcome.failures),
            written,
            seconds,
        )
        return PassResult(
            decisions,
            written,
            outcome.applied,
            seconds,
            failures=outcome.failures,
            purged=purged_addresses,
        )

    def _next_due(self, work: Mapping[str, KeyWork], now: datetime) -> float | None:
        loop_now = asyncio.get_running_loop().time()
        candidates = [self.dns.due_in()]
        for item in work.values():
            due = lifecycle.next_due(
                item.dkimkey.spec, item.keys, now=now, mount_seconds=self.dkim_mount_seconds
            )
            if due is not None:
                candidates.append((due - now).total_seconds())
        candidates += [max(0.0, at - loop_now) for _, at in self._dkim_checks.values()]
        if self._withdraw_retry:
            candidates.append(WITHDRAW_RETRY_SECONDS)
        found = [c for c in candidates if c is not None]
        return min(found) if found else None

    # --- DKIM keys and DNS ------------------------------------------------------------------

    async def _dkim_keys(
        self, snapshot: Snapshot, decisions: Decisions, now: datetime
    ) -> dict[str, KeyWork]:
        """Each accepted DKIMKey's keys: stored and remembered state merged, a new key made if
        one is due (generated once into its Secret, never regenerated while the Secret exists),
        and every key's record read from its Secret."""
        observed_of = {o.key.name: o for o in snapshot.dkim_keys}
        work: dict[str, KeyWork] = {}
        for dkimkey in decisions.dkim_keys:
            name = dkimkey.metadata.name
            observed = observed_of[name]
            stored = [lifecycle.KeyState.of_status(v) for v in dkimkey.status.keys]
            remembered, handled = self._dkim_memory.get(observed.key, ((), None))
            keys = lifecycle.merge((k for k in stored if k is not None), remembered)
            plan = lifecycle.plan_keys(
                dkimkey.spec,
                keys,
                annotation=dkimkey.metadata.annotations.get(ROTATE_ANNOTATION),
                handled=handled if handled is not None else dkimkey.status.rotate_handled,
                now=now,
            )
            events: list[tuple[EventType, str, str]] = []
            if plan.create is not None:
                events.append(
                    (
                        EventType.NORMAL,
                        "KeyCreated",
                        f"generated {plan.create.algorithm.value} key {plan.create.selector} "
                        f"({plan.reason}); it signs once its record is live",
                    )
                )
            work[name] = KeyWork(
                observed=observed,
                dkimkey=dkimkey,
                keys=plan.keys,
                handled=plan.handled,
                before={k.selector: k.phase for k in keys},
                materials={},
                events=events,
            )

        missing: list[tuple[KeyWork, lifecycle.KeyState]] = []
        for item in work.values():
            spec = item.dkimkey.spec
            for key in item.keys:
                if key.phase not in lifecycle.STAGED_PHASES and key.phase is not KeyPhase.RETIRING:
                    continue
                secret = snapshot.secrets.get(dkim_secret_name(item.dkimkey, key.selector))
                pem = secret.text("private.pem") if secret is not None else None
                if pem:
                    item.materials[key.selector] = DkimKeyMaterial(
                        spec.domain, key.selector, key.algorithm, pem
                    )
                elif key.phase in lifecycle.STAGED_PHASES:
                    missing.append((item, key))

        async def create(entry: tuple[KeyWork, lifecycle.KeyState]) -> str:
            item, key = entry
            pem = await asyncio.to_thread(generate_dkim_key, key.algorithm)
            material = DkimKeyMaterial(item.domain, key.selector, key.algorithm, pem)
            rendered = dkim_secret(item.dkimkey, material)
            # Returns the stored key when the Secret exists already (our own write, not yet
            # seen by the watch): a key is never regenerated under a live Secret.
            ensured = await self.kube.ensure_secret(
                rendered["metadata"]["name"],
                self.namespace,
                rendered["stringData"],
                owner=item.dkimkey,
                labels=rendered["metadata"]["labels"],
                immutable_keys={"private.pem", "algorithm"},
            )
            item.materials[key.selector] = DkimKeyMaterial(
                item.domain, key.selector, key.algorithm, ensured.data["private.pem"].decode()
            )
            return ""

        await passwords.bounded_map(create, missing, WRITE_CONCURRENCY)
        for item in work.values():
            records = {
                selector: _record_value(material) for selector, material in item.materials.items()
            }
            item.keys, replaced = lifecycle.with_records(item.keys, records)
            for key in replaced:
                item.events.append(
                    (
                        EventType.WARNING,
                        "KeyReplaced",
                        f"the private key of selector {key.selector} is not the one whose "
                        "record was published (its Secret was replaced?); it signs again "
                        "only once its new record is live",
                    )
                )
        return work

    def _domain_records(
        self, domain: MailDomain, work: Mapping[str, KeyWork], now: datetime
    ) -> tuple[list[DnsRecord], str | None]:
        """The records to publish for `domain` (DKIM records of every key still published) and
        the MTA-STS policy id among them."""
        spec = domain.spec
        records = domain_records(spec)
        ttl = spec.dns.ttl
        for item in work.values():
            if item.domain != spec.domain:
                continue
            grace = lifecycle.retire_after(item.dkimkey.spec)
            for key in lifecycle.to_publish(item.keys, grace=grace, now=now):
                assert key.public_record is not None
                records.append(
                    DnsRecord(
                        name=f"{key.selector}._domainkey.{spec.domain}",
                        type=RecordType.TXT,
                        value=key.public_record,
                        ttl=ttl,
                        purpose="DKIM",
                    )
                )
        policy_id: str | None = render_mta_sts(spec).id
        if self.mta_sts_served is not None and not self.mta_sts_served(
            spec.domain, policy_id or ""
        ):
            # RFC 8461 §3.1: a sender fetches the policy when it sees a new id, so an id goes
            # out only once its policy is served; until then the one published before stays.
            policy_id = domain.status.mta_sts_policy_id
            name = f"_mta-sts.{spec.domain}"
            records = [
                r
                if not (r.name == name and r.type is RecordType.TXT)
                else DnsRecord(r.name, r.type, f"v=STSv1; id={policy_id}", r.ttl, r.purpose)
                for r in records
                if policy_id is not None or not (r.name == name and r.type is RecordType.TXT)
            ]
        return records, policy_id

    async def _publish_dns(
        self, snapshot: Snapshot, decisions: Decisions, work: Mapping[str, KeyWork]
    ) -> dict[str, DomainDns]:
        """Every accepted domain's records through its provider, in parallel; a failure is
        that domain's DNSPublished condition, never the pass's."""
        now = self._clock()

        async def one(domain: MailDomain) -> tuple[str, DomainDns]:
            name = domain.metadata.name
            records, policy_id = self._domain_records(domain, work, now)
            try:
                outcome = await self._publish_domain(snapshot, domain, records)
            except Exception as error:
                log.warning("publishing the records of MailDomain %s failed: %s", name, error)
                outcome = DnsOutcome(
                    ConditionStatus.FALSE, "ProviderError", str(error), temporary=True
                )
            if outcome is not self._dns_seen.get(name):  # a fresh run, not the cached outcome
                self._dns_seen[name] = outcome
                for action in outcome.drift:
                    await self._event(
                        domain,
                        EventType.WARNING,
                        "DNSDriftRepaired",
                        f"{action.describe()} (the record was changed by hand)",
                    )
            return name, DomainDns(domain.spec.domain, tuple(records), outcome, policy_id)

        results = await asyncio.gather(*(one(d) for d in decisions.domains))
        live = {d.metadata.name for d in decisions.domains}
        for name in [n for n in self._dns_seen if n not in live]:
            del self._dns_seen[name]
        return dict(results)

    async def _publish_domain(
        self, snapshot: Snapshot, domain: MailDomain, records: Sequence[DnsRecord]
    ) -> DnsOutcome:
        spec, name = domain.spec, domain.metadata.name
        dns = spec.dns
        if dns.provider is DnsProviderKind.EXTERNAL_DNS:
            endpoint = render_dns_endpoint(
                name,
                self.namespace,
                records,
                labels=owned_metadata(domain, name)["labels"],
                owner_references=owned_metadata(domain, name).get("ownerReferences", ()),
            )
            try:
                await self._apply_once(endpoint)
            except KubeError as error:
                return DnsOutcome(
                    ConditionStatus.FALSE,
                    "DNSEndpointRefused",
                    f"the API server refused DNSEndpoint {name}: {error}; is external-dns's "
                    "DNSEndpoint CRD installed, and the chart's rbac.externalDNS on?",
                    temporary=True,
                )
            self._endpoints[name] = name
        elif name in self._endpoints or handed_to_external_dns(domain):
            # The domain left externalDNS: its endpoint would keep publishing old records. The
            # stored status covers a switch made while no operator was running; remembering
            # the name first keeps a failed delete retried once our status stops saying so.
            self._endpoints[name] = name
            await self.kube.delete(
                "externaldns.k8s.io/v1alpha1", "DNSEndpoint", name, self.namespace
            )
            self._applied.pop(("externaldns.k8s.io/v1alpha1", "DNSEndpoint", name), None)
            del self._endpoints[name]
        credential: str | None = None
        ref = dns.credentials_secret_ref
        if ref is not None and calls_provider(dns):
            secret = snapshot.secrets.get(ref.name)
            credential = secret.text(ref.key) if secret is not None else None
            if credential is None:
                return DnsOutcome(
                    ConditionStatus.FALSE,
                    "SecretNotFound",
                    f"{'key ' + repr(ref.key) + ' of ' if secret else ''}Secret {ref.name} "
                    f"(spec.dns.credentialsSecretRef) does not exist in namespace "
                    f"{self.namespace}",
                    temporary=True,
                )
        return await self.dns.publish(
            name,
            dns,
            records,
            zone=spec.effective_zone,
            owner=owner_id(self.namespace, name),
            credential=credential,
        )

    async def _apply_once(self, obj: dict[str, Any]) -> None:
        """Apply `obj` unless the same render was applied recently (raises KubeError)."""
        identity, digest = _object_id(obj), _digest(obj)
        now = asyncio.get_running_loop().time()
        known = self._applied.get(identity)
        if known is not None and known[0] == digest and now - known[1] < REAPPLY_SECONDS:
            return
        try:
            await self.kube.apply(obj)
        except KubeError:
            self._applied.pop(identity, None)
            raise
        self._applied[identity] = (digest, now)

    async def _dkim_published(
        self, decisions: Decisions, work: Mapping[str, KeyWork], now: datetime
    ) -> None:
        """Pending keys whose record every authoritative server of the zone answers are
        Published (whoever published it: our provider, external-dns, or a person). The
        queries run beside the passes (an unreachable server must not slow every pass down);
        a finished check asks for a pass, which takes its result."""
        zones = {d.spec.domain: d.spec.effective_zone for d in decisions.domains}
        loop_now = asyncio.get_running_loop().time()
        due: dict[str, list[tuple[CheckId, DnsRecord]]] = {}
        pending: set[CheckId] = set()
        for item in work.values():
            for key in item.keys:
                if key.phase is not KeyPhase.PENDING or not key.public_record:
                    continue
                check_id = (item.observed.key, key.selector, key.public_record)
                pending.add(check_id)
                if check_id in self._dkim_live:
                    item.keys = lifecycle.mark_published(item.keys, [key.selector], now)
                    continue
                _, at = self._dkim_checks.get(check_id, (0, loop_now))
                zone = zones[item.domain]
                if loop_now < at or zone in self._dkim_checking:
                    continue
                record = DnsRecord(
                    f"{key.selector}._domainkey.{item.domain}", RecordType.TXT, key.public_record, 0
                )
                due.setdefault(zone, []).append((check_id, record))
        self._dkim_live &= pending
        for check_id in [c for c in self._dkim_checks if c not in pending]:
            del self._dkim_checks[check_id]
        for zone, checks in due.items():
            self._dkim_checking[zone] = asyncio.create_task(
                self._check_live(zone, checks), name=f"letterbox-dkim-check-{zone}"
            )

    async def _check_live(self, zone: str, checks: list[tuple[CheckId, DnsRecord]]) -> None:
        try:
            live = await live_records(
                [record for _, record in checks],
                zone=zone,
                authoritative=self.dns.authoritative(zone),
            )
        except Exception as error:  # a failed check is a record not seen yet
            log.warning("checking DKIM records in %s failed: %s", zone, error)
            live = frozenset()
        finally:
            self._dkim_checking.pop(zone, None)
        loop_now = asyncio.get_running_loop().time()
        for check_id, record in checks:
            if record in live:
                self._dkim_live.add(check_id)
                self._dkim_checks.pop(check_id, None)
            else:
                attempts = self._dkim_checks.get(check_id, (0, 0.0))[0]
                delay = DKIM_CHECK_SECONDS[min(attempts, len(DKIM_CHECK_SECONDS) - 1)]
                self._dkim_checks[check_id] = (attempts + 1, loop_now + delay)
        if live:
            self.nudge()
        else:
            # Passes are not the only clock: make sure one comes when the next check is due.
            self._schedule(
                min(at for _, at in self._dkim_checks.values()) - loop_now, earlier_only=True
            )

    async def _dkim_settle(
        self,
        work: Mapping[str, KeyWork],
        dns: Mapping[str, DomainDns],
        *,
        applied: bool,
        now: datetime,
    ) -> None:
        """After the apply: the signing key is Active and the one it replaced Retiring; keys
        whose record went away are Retired and their Secrets deleted."""
        swept = {d.domain for d in dns.values() if d.outcome.reason in SWEPT_REASONS}
        for item in work.values():
            item.keys = lifecycle.after_apply(item.keys, item.signer, applied=applied, now=now)
            grace = lifecycle.retire_after(item.dkimkey.spec)
            gone = lifecycle.withdrawing(item.keys, grace=grace, now=now)
            if gone and item.domain in swept:
                for selector in sorted(gone):
                    try:
                        await self.kube.delete(
                            "v1",
                            "Secret",
                            dkim_secret_name(item.dkimkey, selector),
                            self.namespace,
                        )
                    except KubeError as error:
                        log.warning("could not delete the retired key %s: %s", selector, error)
                        gone = gone - {selector}
                    item.materials.pop(selector, None)
                item.keys = lifecycle.mark_retired(item.keys, gone, now)
            self._dkim_memory[item.observed.key] = (item.keys, item.handled)
        kept = {item.observed.key for item in work.values()}
        for key in [k for k in self._dkim_memory if k not in kept]:
            del self._dkim_memory[key]

    async def _key_events(self, work: Mapping[str, KeyWork]) -> None:
        messages = {
            KeyPhase.PUBLISHED: (
                "KeyPublished",
                "its record is answered by every authoritative server of the zone",
            ),
            KeyPhase.ACTIVE: ("KeyActive", "the mail pods sign with it"),
            KeyPhase.RETIRING: (
                "KeyRetiring",
                "replaced: no longer signing, still published for mail in flight",
            ),
            KeyPhase.RETIRED: ("KeyRetired", "its record is withdrawn and its Secret deleted"),
        }
        for item in work.values():
            events = list(item.events)
            for key in item.keys:
                if item.before.get(key.selector) is not key.phase and key.phase in messages:
                    reason, text = messages[key.phase]
                    events.append((EventType.NORMAL, reason, f"selector {key.selector}: {text}"))
            for type_, reason, message in events:
                await self._event(item.observed.raw, type_, reason, message)

    async def _event(
        self,
        involved: MailDomain | Mapping[str, Any],
        type_: EventType,
        reason: str,
        message: str,
    ) -> None:
        try:
            await self.kube.emit_event(involved, type_, reason, message)
        except KubeError as error:  # events inform; they never fail a pass
            log.warning("could not record the event %s: %s", reason, error)

    async def _domain_finalizers(self, snapshot: Snapshot, decisions: Decisions) -> None:
        """`DNS_FINALIZER` on accepted MailDomains whose records a provider API holds; when
        one is deleted, its records (only ours) are withdrawn before it is let go."""
        self._withdraw_retry = False
        for observed in snapshot.domains:
            model = observed.model
            has = DNS_FINALIZER in observed.finalizers
            verdict = decisions.verdicts.get(observed.key)
            wants = (
                model is not None
                and calls_provider(model.spec.dns)
                and verdict is not None
                and verdict.accepted
            )
            if observed.deleting:
                if has and await self._withdraw(snapshot, observed):
                    await self._set_finalizer(observed, add=False)
            elif wants and not has:
                await self._set_finalizer(observed, add=True)
            elif has and not wants and (model is None or not calls_provider(model.spec.dns)):
                await self._set_finalizer(observed, add=False)

    async def _set_finalizer(self, observed: Observed[Any], *, add: bool) -> None:
        current = observed.finalizers
        finalizers = (
            [*current, DNS_FINALIZER] if add else [f for f in current if f != DNS_FINALIZER]
        )
        patch = {
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": observed.resource_version,
            }
        }
        # Gone, or changed since listed: the watch event brings a new pass.
        with contextlib.suppress(NotFound, Conflict):
            await self.kube.patch(
                API_VERSION, Kind.MAIL_DOMAIN.value, observed.key.name, self.namespace, patch
            )

    async def _withdraw(self, snapshot: Snapshot, observed: Observed[Any]) -> bool:
        """Withdraw a deleted domain's records; whether its finalizer can go."""
        model = observed.model
        name = observed.key.name
        if model is None:
            return True
        spec = model.spec
        ref = spec.dns.credentials_secret_ref
        secret = snapshot.secrets.get(ref.name) if ref is not None else None
        credential = secret.text(ref.key) if secret is not None and ref is not None else None
        deleted_at = lifecycle.parse_time(
            str((observed.raw.get("metadata") or {}).get("deletionTimestamp") or "")
        )
        waited = (self._clock() - deleted_at).total_seconds() if deleted_at else 0.0
        try:
            if ref is not None and credential is None:
                raise DnsProviderError(
                    f"Secret {ref.name} key {ref.key} (the provider credential) is gone",
                    temporary=False,
                )
            steps = await withdraw_domain(
                spec.dns,
                zone=spec.effective_zone,
                owner=owner_id(self.namespace, name),
                credential=credential,
            )
        except DnsProviderError as error:
            if error.temporary and waited < WITHDRAW_GIVE_UP_SECONDS:
                log.warning("withdrawing the records of %s failed (retrying): %s", name, error)
                self._withdraw_retry = True
                return False
            await self._event(
                observed.raw,
                EventType.WARNING,
                "DNSNotWithdrawn",
                f"the records of {spec.domain} stay in {spec.effective_zone}: {error}; remove "
                "them by hand (their _letterbox.* registry entries name this MailDomain)",
            )
            return True
        await self._event(
            observed.raw,
            EventType.NORMAL,
            "DNSWithdrawn",
            f"withdrew {sum(len(a.previous) for a in steps.actions)} record values of "
            f"{spec.domain} from "
            f"{spec.effective_zone}; values Letterbox did not create are untouched",
        )
        self._dns_seen.pop(name, None)
        return True

    async def _finalizers(
        self, snapshot: Snapshot, purged: frozenset[str], *, config_applied: bool
    ) -> None:
        """Our finalizer on Mailboxes whose stored mail is deleted with them (`reconcile.purge`),
        released once the config listing the mail for removal is applied."""
        changes = purge.finalizer_changes(snapshot.mailboxes, config_applied=config_applied)

        async def write(change: purge.FinalizerChange) -> str:
            observed = change.observed
            patch = {
                "metadata": {
                    "finalizers": list(change.finalizers),
                    "resourceVersion": observed.resource_version,
                }
            }
            try:
                await self.kube.patch(
                    API_VERSION, Kind.MAILBOX.value, observed.key.name, self.namespace, patch
                )
            except (NotFound, Conflict):
                return ""  # gone, or changed since listed: the watch event brings a new pass
            if not change.released:
                return ""
            model = observed.model
            address = model.spec.address if model is not None else ""
            if address in purged:
                reason, message = (
                    "StoredMailDeletionRequested",
                    f"deletionPolicy is Delete: the mail pods remove the stored mail of "
                    f"{address} from their volumes",
                )
            else:
                reason, message = (
                    "StoredMailKept",
                    f"the stored mail of {address or 'this mailbox'} is kept: the mailbox did "
                    "not hold the address in the mail pod config, or another Mailbox claims it",
                )
            try:
                await self.kube.emit_event(
                    observed.raw, EventType.NORMAL, reason, message, action="Delete"
                )
            except KubeError as error:  # events inform; they never fail a pass
                log.warning("could not record an event for %s: %s", observed.key, error)
            return ""

        await passwords.bounded_map(write, changes, WRITE_CONCURRENCY)

    async def _snapshot(self) -> Snapshot:
        """The namespace: from the store, or a full listing when one is due (which refills it)."""
        now = asyncio.get_running_loop().time()
        if (
            self._watched
            and self.store.listed
            and self._listed_at is not None
            and now - self._listed_at < FULL_LIST_SECONDS
        ):
            return self.store.snapshot(self.namespace)
        self.store.begin_listing()
        try:
            listed = await gather(
                self.kube, self.namespace, self.store if self._watched else self._parsed
            )
        except BaseException:
            self.store.abandon_listing()
            raise
        self.store.finish_listing(
            {
                Kind.MAIL_DOMAIN: listed.domains,
                Kind.MAILBOX: listed.mailboxes,
                Kind.ALIAS: listed.aliases,
                Kind.DKIM_KEY: listed.dkim_keys,
            },
            listed.secrets.values(),
        )
        self._listed_at = now
        return self.store.snapshot(self.namespace) if self._watched else listed

    def _tombstones(self, snapshot: Snapshot) -> tuple[pod.PurgedMailbox, ...]:
        """The deleted mailboxes whose mail the pods remove (see `reconcile.purge`). Every live
        Mailbox's address counts as in use, accepted or not: its mail is never removed."""
        live = settings_secret_name(self.settings.name)
        return purge.tombstones(
            (*purge.listed(snapshot.secrets.get(live)), *self._last_purged),
            purge.deleting_with_mail(snapshot.mailboxes),
            (o.model.spec.address for o in snapshot.mailboxes if o.model and not o.deleting),
            now=self._clock(),
        )

    async def _password_hashes(self, snapshot: Snapshot, decisions: Decisions) -> dict[str, str]:
        hashes: dict[str, str] = {}
        stale: list[tuple[str, SecretView | None, Mailbox]] = []
        plain: list[tuple[str, str]] = []
        for mailbox in decisions.mailboxes:
            address = mailbox.spec.address
            if mailbox.spec.password is None:
                name = credentials_secret_name(mailbox)
                secret = snapshot.secrets.get(name)
                ready = passwords.generated_credentials(secret, mailbox)
                if ready is not None:
                    hashes[address] = ready
                else:
                    stale.append((name, secret, mailbox))
                continue
            ref = mailbox.spec.password.secret_ref
            value = snapshot.secrets[ref.name].text(ref.key) or ""  # decide() checked it exists
            known_hash, password = passwords.plain_or_hash(value)
            if known_hash is not None:
                hashes[address] = known_hash
            elif password is not None:
                cached = self._verified.get(address, password)
                if cached is not None:
                    hashes[address] = cached
                else:
                    plain.append((address, password))
        if plain:
            # A password this process saw change: the configured hash is of the old one, so
            # checking it would only cost an argon2 run (~0.1-0.5 s) on the way to the pod, and
            # reading the hashes back would parse every config shard (tens of MB at 10,000).
            unknown = [a for a, password in plain if not self._verified.changed(a, password)]
            previous = (
                passwords.hashes_in_config(
                    s
                    for s in snapshot.secrets.values()
                    if s.labels.get(CONFIG_LABEL) == self.settings.name
                )
                if unknown
                else {}
            )

            async def verify(item: tuple[str, str]) -> str:
                address, password = item
                previous_hash = previous.get(address)
                if previous_hash is not None and self._verified.changed(address, password):
                    previous_hash = None
                return await asyncio.to_thread(reuse_or_hash, password, previous_hash)

            computed = await passwords.bounded_map(verify, plain, self._hash_limit)
            for (address, password), password_hash in zip(plain, computed, strict=True):
                self._verified.remember(address, password, password_hash)
                hashes[address] = password_hash
        self._verified.forget_except({address for address, _ in plain} | set(hashes))

        # New or edited credentials: hashing (tens of ms each) runs on every core at once.
        async def prepare(
            item: tuple[str, SecretView | None, Mailbox],
        ) -> passwords.CredentialsWrite:
            return await asyncio.to_thread(passwords.credentials_write, *item)

        writes = await passwords.bounded_map(prepare, stale, self._hash_limit)
        if writes:
            stored = await passwords.bounded_map(self._write_credentials, writes, WRITE_CONCURRENCY)
            for write, password_hash in zip(writes, stored, strict=True):
                if password_hash:
                    hashes[write.mailbox.spec.address] = password_hash
        return hashes

    async def _write_credentials(self, write: passwords.CredentialsWrite) -> str:
        """Create or update a credentials Secret; the stored hash if it matches the stored
        password, else "" (someone changed the password meanwhile: the next pass catches up)."""
        metadata = owned_metadata(write.mailbox, write.name)
        ensured = await self.kube.ensure_secret(
            write.name,
            self.namespace,
            dict(write.data),
            owner=write.mailbox,
            labels=metadata["labels"],
            immutable_keys=write.immutable_keys,
        )
        if ensured.created:
            log.info(
                "generated the password of Mailbox %s into Secret %s",
                write.mailbox.metadata.name,
                write.name,
            )
        secret = SecretView.of_data(write.name, ensured.data)
        ready = passwords.generated_credentials(secret, write.mailbox)
        if ready is None:
            self.nudge()
            return ""
        return ready

    def _render(
        self,
        decisions: Decisions,
        hashes: Mapping[str, str],
        snapshot: Snapshot,
        purged: tuple[pod.PurgedMailbox, ...],
        work: Mapping[str, KeyWork],
        srs_domain: str | None = None,
    ) -> list[dict[str, Any]]:
        settings = self.settings
        if not decisions.domains:
            # No MailDomain, no mail server: the garbage collector removes the workload its
            # last owner leaves behind (`workload_owners`), and re-applying it here would
            # bring it back ownerless.
            return []
        manifests = Manifests(
            domains=list(decisions.domains),
            mailboxes=list(decisions.mailboxes),
            aliases=list(decisions.aliases),
            dkim_keys=[],  # the signing keys come with their files, in PodMaterial
        )
        # Only the one key per DKIMKey that may sign (`reconcile.dkim.signing`): a key never
        # signs before its record is live. The mounted Secret holds the keys on their way too,
        # so the kubelet has their files in place before the config names them.
        signing = [
            (item.materials[item.signer.selector], dkim_key_path(item.domain, item.signer.selector))
            for item in work.values()
            if item.signer is not None and item.signer.selector in item.materials
        ]
        staged = [
            item.materials[key.selector]
            for item in work.values()
            for key in item.keys
            if key.phase in lifecycle.STAGED_PHASES and key.selector in item.materials
        ]
        # The oldest domain names the server: stable, so adding domains never rolls the pods.
        hostname = (
            decisions.domains[0].spec.effective_mail_host
            if decisions.domains
            else _fallback_hostname(settings)
        )
        config = render_pod_config(
            manifests,
            PodMaterial(
                hostname=hostname,
                listeners=pod_listeners(settings),
                storage=pod_storage(),
                tls=pod_tls(WorkloadNames.of(settings).tls_secret),
                password_hashes=dict(hashes),
                dkim_keys=signing,
                purged_mailboxes=purged,
            ),
        )
        config = with_install_settings(config, settings, srs_domain)
        live_settings = snapshot.secrets.get(settings_secret_name(settings.name))
        owners = workload_owners(decisions.domains)
        ingress = render_web_ingress(settings, [d.spec for d in decisions.domains], owners=owners)
        return [
            *(self._tls.objects if self._tls is not None else ()),
            render_dkim_keys_secret(settings, staged, owners=owners),
            *([ingress] if ingress else []),
            *render_workload(
                settings,
                config,
                min_shards=max(
                    shard_count(live_settings.raw if live_settings else None), self._last_shards
                ),
                owners=owners,
            ),
        ]

    async def _srs_domain(self, snapshot: Snapshot, decisions: Decisions) -> str | None:
        """The domain forwarded mail's senders are rewritten into, once the SRS key exists
        (generated once into its Secret, never replaced while the Secret holds one); None while
        SRS is off or there is no domain."""
        srs = self.settings.outbound.srs
        if not srs.enabled or not decisions.domains:
            return None
        name = WorkloadNames.of(self.settings).srs_secret
        if snapshot.secrets.get(name) is None:
            await self.kube.ensure_secret(
                name,
                self.namespace,
                {SRS_KEY: token_urlsafe(32)},
                labels=srs_secret_labels(self.settings),
            )
            log.info("generated the SRS key into Secret %s", name)
        return srs.domain or decisions.domains[0].spec.domain

    async def _apply(
        self,
        snapshot: Snapshot,
        decisions: Decisions,
        hashes: Mapping[str, str],
        purged: tuple[pod.PurgedMailbox, ...],
        work: Mapping[str, KeyWork],
    ) -> ApplyOutcome:
        srs_domain = await self._srs_domain(snapshot, decisions)
        objects = await asyncio.to_thread(
            self._render, decisions, hashes, snapshot, purged, work, srs_domain
        )
        if not objects:
            self._applied.clear()
            return ApplyOutcome()
        now = asyncio.get_running_loop().time()
        # The pod's RBAC and its config Secrets are one chain, in order: the Role naming the
        # shards, the shards, the index naming them. A refused link stops the chain (or an index
        # could name a shard that is not there); the other objects are independent.
        applied = 0
        failures: list[str] = []
        chain_broken = False
        # In order, one at a time: shards before the index naming them, the StatefulSet last.
        for obj in objects:
            in_chain = obj["kind"] in CONFIG_CHAIN_KINDS
            if chain_broken and in_chain:
                continue
            identity, digest = _object_id(obj), _digest(obj)
            known = self._applied.get(identity)
            if known is not None and known[0] == digest and now - known[1] < REAPPLY_SECONDS:
                continue
            try:
                await self.kube.apply(obj)
            except KubeError as error:
                self._applied.pop(identity, None)
                failures.append(str(error))
                chain_broken = chain_broken or in_chain
                continue
            self._applied[identity] = (digest, now)
            applied += 1
        if chain_broken:
            return ApplyOutcome(applied, tuple(failures), config_applied=False)
        self._last_purged = purged
        settings_name = settings_secret_name(self.settings.name)
        for obj in objects:
            if obj["kind"] == "Secret" and obj["metadata"]["name"] == settings_name:
                self._last_shards = shard_count(obj)
        # Shards left over from a larger shard count: the index no longer names them.
        rendered = {obj["metadata"]["name"] for obj in objects if obj["kind"] == "Secret"}
        for secret in snapshot.secrets.values():
            if (
                secret.labels.get(CONFIG_LABEL) == self.settings.name
                and secret.labels.get(PART_LABEL) == "shard"
                and secret.name not in rendered
            ):
                await self.kube.delete("v1", "Secret", secret.name, self.namespace)
                self._applied.pop(("v1", "Secret", secret.name), None)
        return ApplyOutcome(applied, tuple(failures))

    def _fields(
        self,
        observed: Observed[Any],
        verdict: Verdict,
        work: Mapping[str, KeyWork],
        dns: Mapping[str, DomainDns],
        domains: Mapping[str, MailDomain],
    ) -> tuple[dict[str, Any], tuple[tuple[str, ConditionStatus, str, str], ...]]:
        model = observed.model
        if isinstance(model, Mailbox):
            fields: dict[str, Any] = {}
            if model.spec.password is None and verdict.accepted:
                fields["credentials_secret"] = credentials_secret_name(model)
            domain = domains.get(domain_of(model.spec.address))
            if domain is not None:
                fields["quota_bytes"] = quantity_bytes(
                    model.spec.quota or domain.spec.default_quota
                )
            return fields, ()
        if isinstance(model, DKIMKey) and verdict.accepted and model.metadata.name in work:
            item = work[model.metadata.name]
            versions = tuple(k.to_status(dkim_secret_name(model, k.selector)) for k in item.keys)
            fields = {"keys": versions, "rotate_handled": item.handled}
            latest = lifecycle.newest(item.keys)
            if latest is not None:
                version = next(v for v in versions if v.selector == latest.selector)
                fields |= {
                    "phase": version.phase,
                    "selector": version.selector,
                    "secret_name": version.secret_name,
                    "public_record": version.public_record,
                    "created_at": version.created_at,
                    "published_at": version.published_at,
                    "activated_at": version.activated_at,
                }
            signer = lifecycle.active(item.keys)
            fields["signing_selector"] = signer.selector if signer is not None else None
            rotation = lifecycle.next_rotation(model.spec, item.keys)
            fields["next_rotation_at"] = (
                lifecycle.timestamp(rotation) if rotation is not None else None
            )
            owner = domains.get(model.spec.domain)
            manual = owner is not None and not calls_provider(owner.spec.dns)
            return fields, (key_active(item.keys, model.spec.domain, manual=manual),)
        if isinstance(model, MailDomain) and verdict.accepted:
            published = dns.get(model.metadata.name)
            records = [
                DnsRecordStatus(name=r.name, type=r.type.value, ttl=r.ttl, value=r.value)
                for r in (published.records if published else domain_records(model.spec))
            ]
            tls_fields, tls_conditions = certificate_status(self._tls)
            fields = {"records": tuple(records[:64]), **tls_fields}
            if published is None:
                return fields, tls_conditions
            fields["mta_sts_policy_id"] = published.mta_sts_id
            return fields, (*tls_conditions, published.outcome.condition)
        return {}, ()

    async def _write_statuses(
        self,
        snapshot: Snapshot,
        decisions: Decisions,
        hashes: Mapping[str, str],
        work: Mapping[str, KeyWork],
        dns: Mapping[str, DomainDns],
    ) -> int:
        now = self._clock()
        writes: list[tuple[Observed[Any], Status, Verdict]] = []
        settled: dict[ObjectKey, tuple[str, Verdict, dict[str, Any], tuple[Any, ...]]] = {}
        domains = {d.spec.domain: d for d in decisions.domains}
        for observed in snapshot.all():
            verdict = decisions.verdicts.get(observed.key)
            if verdict is None:  # being deleted
                continue
            if (
                isinstance(observed.model, Mailbox)
                and verdict.accepted
                and observed.model.spec.address not in hashes
            ):
                continue  # its credentials are being written; the next pass reports it
            fields, extra = self._fields(observed, verdict, work, dns, domains)
            inputs = (observed.resource_version, verdict, fields, extra)
            if self._settled.get(observed.key) == inputs:
                settled[observed.key] = inputs
                continue
            status = desired_status(observed, verdict, now=now, fields=fields, extra=extra)
            # Compared here, not in a worker thread: the loop would wait on the GIL anyway.
            if same_status(observed.raw.get("status") or {}, status):
                settled[observed.key] = inputs
                continue
            writes.append((observed, status, verdict))
        self._settled = settled

        async def write(item: tuple[Observed[Any], Status, Verdict]) -> str:
            observed, status, verdict = item
            try:
                await self.kube.patch_status(
                    observed.key.kind.value,
                    self.namespace,
                    observed.key.name,
                    status,
                    observed=observed.raw,
                    # Compared above; compared again only after a conflict (the object changed
                    # since it was seen, e.g. by our previous write).
                )
            except NotFound:
                return ""  # deleted meanwhile: nothing left to report on
            change = transition(observed, verdict)
            if change is not None:
                try:
                    await self.kube.emit_event(
                        observed.raw,
                        EventType.NORMAL if change.ready else EventType.WARNING,
                        change.reason,
                        change.message,
                    )
                except KubeError as error:  # events inform; they never fail a pass
                    log.warning("could not record an event for %s: %s", observed.key, error)
            return ""

        await passwords.bounded_map(write, writes, WRITE_CONCURRENCY)
        return len(writes)
