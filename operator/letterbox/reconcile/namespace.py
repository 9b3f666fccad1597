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
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from letterbox.api.dkimkey import DKIMKey, KeyPhase
from letterbox.api.mailbox import Mailbox
from letterbox.api.maildomain import DnsRecordStatus, MailDomain, MailDomainSpec
from letterbox.api.manifests import Manifests
from letterbox.api.meta import API_VERSION, ConditionStatus, Status, domain_of, quantity_bytes
from letterbox.api.settings import OperatorSettings
from letterbox.certs.keeper import CertificateKeeper, CertificateOutcome, certificate_status
from letterbox.kube.errors import Conflict, KubeError, NotFound
from letterbox.kube.events import EventType
from letterbox.kube.patch import same_status
from letterbox.material import generate_dkim_key, reuse_or_hash
from letterbox.reconcile import passwords, purge
from letterbox.reconcile.decide import Decisions, Verdict, apply_failed, decide
from letterbox.reconcile.ports import ClusterApi
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
from letterbox.reconcile.status import KEY_ACTIVE, desired_status, transition
from letterbox.reconcile.store import FULL_LIST_SECONDS, ObjectStore
from letterbox.render.dkim import DkimKeyMaterial, dkim_record_value
from letterbox.render.dnsrecords import domain_records
from letterbox.render.ingress import render_web_ingress
from letterbox.render.labels import owned_metadata
from letterbox.render.podconfig import PodMaterial, render_pod_config
from letterbox.render.podconfig_secrets import (
    CONFIG_LABEL,
    PART_LABEL,
    settings_secret_name,
    shard_count,
)
from letterbox.render.secrets import credentials_secret_name, dkim_secret, dkim_secret_name
from letterbox.render.workload import (
    WorkloadNames,
    pod_listeners,
    pod_storage,
    pod_tls,
    pod_trusted_proxies,
    render_dkim_keys_secret,
    render_workload,
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
        self._hash_limit = max(1, (os.cpu_count() or 1))
        self.referenced_secrets: frozenset[str] = frozenset()
        self.certificates = CertificateKeeper(kube, settings, nudge=self.nudge)
        self._tls: CertificateOutcome | None = None
        """Secrets whose change should trigger a pass (password refs, generated credentials)."""

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
            if any(v.temporary for v in result.decisions.verdicts.values()):
                loop.call_later(RETRY_TEMPORARY_SECONDS, self._wanted.set)

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
        )
        self._tls = await self.certificates.observe(decisions.domains, snapshot.secrets)
        self.referenced_secrets |= self.certificates.watched_secrets(decisions.domains)
        hashes = await self._password_hashes(snapshot, decisions)
        keys = await self._dkim_keys(snapshot, decisions)
        purged = self._tombstones(snapshot)
        outcome = await self._apply(snapshot, decisions, hashes, purged)
        if outcome.failures:
            decisions = apply_failed(
                snapshot,
                decisions,
                f"the API server refused the mail workload: {'; '.join(outcome.failures)}; "
                "retrying with backoff",
                config_applied=outcome.config_applied,
            )
        purged_addresses = (
            frozenset(p.address for p in purged) if outcome.config_applied else frozenset()
        )
        # Before the statuses: a finalizer patch is conditional on the listed resourceVersion,
        # which a status write would change (a status write re-reads on a conflict instead).
        await self._finalizers(snapshot, purged_addresses, config_applied=outcome.config_applied)
        written = await self._write_statuses(snapshot, decisions, hashes, keys)
        await self.certificates.report(self.kube, decisions.domains, self._tls)
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

    async def _dkim_keys(
        self, snapshot: Snapshot, decisions: Decisions
    ) -> dict[str, tuple[DkimKeyMaterial, str]]:
        """DKIMKey name -> (its current key, the key Secret's creation time). A key is generated
        once into its Secret and never regenerated while the Secret exists."""
        keys: dict[str, tuple[DkimKeyMaterial, str]] = {}
        missing: list[DKIMKey] = []
        for dkimkey in decisions.dkim_keys:
            spec = dkimkey.spec
            secret = snapshot.secrets.get(dkim_secret_name(dkimkey, spec.selector))
            pem = secret.text("private.pem") if secret is not None else None
            if secret is not None and pem:
                material = DkimKeyMaterial(spec.domain, spec.selector, spec.algorithm, pem)
                keys[dkimkey.metadata.name] = (material, secret.created)
            else:
                missing.append(dkimkey)

        async def create(dkimkey: DKIMKey) -> str:
            spec = dkimkey.spec
            pem = await asyncio.to_thread(generate_dkim_key, spec.algorithm)
            material = DkimKeyMaterial(spec.domain, spec.selector, spec.algorithm, pem)
            rendered = dkim_secret(dkimkey, material)
            ensured = await self.kube.ensure_secret(
                rendered["metadata"]["name"],
                self.namespace,
                rendered["stringData"],
                owner=dkimkey,
                labels=rendered["metadata"]["labels"],
                immutable_keys={"private.pem", "algorithm"},
            )
            stored = ensured.data["private.pem"].decode()
            keys[dkimkey.metadata.name] = (
                DkimKeyMaterial(spec.domain, spec.selector, spec.algorithm, stored),
                self._clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            return ""

        await passwords.bounded_map(create, missing, WRITE_CONCURRENCY)
        return keys

    def _render(
        self,
        decisions: Decisions,
        hashes: Mapping[str, str],
        snapshot: Snapshot,
        purged: tuple[pod.PurgedMailbox, ...],
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
            # No key signs before its record is published (issue 8: DNS checks and the key
            # lifecycle are not implemented yet), so no DKIM key reaches the pods for now.
            dkim_keys=[],
        )
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
                purged_mailboxes=purged,
            ),
        )
        # A copy with one field set, not a dump and re-validation of 10,000 mailboxes.
        config = config.model_copy(update={"trusted_proxies": pod_trusted_proxies(settings)})
        live_settings = snapshot.secrets.get(settings_secret_name(settings.name))
        owners = workload_owners(decisions.domains)
        ingress = render_web_ingress(settings, [d.spec for d in decisions.domains], owners=owners)
        return [
            *(self._tls.objects if self._tls is not None else ()),
            render_dkim_keys_secret(settings, [], owners=owners),
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

    async def _apply(
        self,
        snapshot: Snapshot,
        decisions: Decisions,
        hashes: Mapping[str, str],
        purged: tuple[pod.PurgedMailbox, ...],
    ) -> ApplyOutcome:
        objects = await asyncio.to_thread(self._render, decisions, hashes, snapshot, purged)
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
        keys: Mapping[str, tuple[DkimKeyMaterial, str]],
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
        if isinstance(model, DKIMKey) and verdict.accepted and model.metadata.name in keys:
            material, created = keys[model.metadata.name]
            return (
                {
                    "phase": KeyPhase.PENDING,
                    "selector": material.selector,
                    "secret_name": dkim_secret_name(model, material.selector),
                    "public_record": dkim_record_value(material),
                    "created_at": created,
                },
                (
                    (
                        KEY_ACTIVE,
                        ConditionStatus.FALSE,
                        "AwaitingPublication",
                        f"publish TXT {material.record_name} (see the MailDomain's "
                        "status.records); signing starts once the record is verified live, "
                        "which this operator version does not check yet",
                    ),
                ),
            )
        if observed.key.kind is Kind.MAIL_DOMAIN and verdict.accepted and model is not None:
            spec = model.spec
            materials = [m for m, _ in keys.values() if m.domain == spec.domain]
            records = [
                DnsRecordStatus(name=r.name, type=r.type.value, ttl=r.ttl, value=r.value)
                for r in domain_records(spec, materials)
            ]
            tls_fields, tls_conditions = certificate_status(self._tls)
            return {"records": tuple(records[:64]), **tls_fields}, tls_conditions
        return {}, ()

    async def _write_statuses(
        self,
        snapshot: Snapshot,
        decisions: Decisions,
        hashes: Mapping[str, str],
        keys: Mapping[str, tuple[DkimKeyMaterial, str]],
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
            fields, extra = self._fields(observed, verdict, keys, domains)
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
