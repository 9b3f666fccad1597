"""One reconcile pass over a namespace (gather -> decide -> render -> apply -> status), and the
debounced loop that runs passes on request.

All four kinds end up in one mail pod config per namespace, so any change (a Mailbox, a
password Secret, a MailDomain) asks for a pass over the whole namespace. Requests that arrive
while a pass is pending are coalesced into it, so 10,000 Mailboxes created at once cost a few
passes, not 10,000. A pass does work proportional to what changed: unchanged rendered objects
are not re-applied, unchanged statuses are not written, existing hashes and keys are reused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from letterbox.api.dkimkey import DKIMKey, KeyPhase
from letterbox.api.mailbox import Mailbox
from letterbox.api.maildomain import DnsRecordStatus
from letterbox.api.manifests import Manifests
from letterbox.api.meta import API_VERSION, ConditionStatus, Status, domain_of, quantity_bytes
from letterbox.api.settings import OperatorSettings
from letterbox.kube.errors import KubeError, NotFound
from letterbox.kube.events import EventType
from letterbox.kube.patch import same_status
from letterbox.material import generate_dkim_key, reuse_or_hash
from letterbox.reconcile import passwords
from letterbox.reconcile.decide import Decisions, Verdict, decide
from letterbox.reconcile.ports import ClusterApi
from letterbox.reconcile.snapshot import Kind, ObjectKey, Observed, SecretView, Snapshot
from letterbox.reconcile.status import KEY_ACTIVE, desired_status, transition
from letterbox.render.dkim import DkimKeyMaterial, dkim_record_value
from letterbox.render.dnsrecords import domain_records
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
    pod_listeners,
    pod_storage,
    pod_tls,
    pod_trusted_proxies,
    render_dkim_keys_secret,
    render_workload,
)

log = logging.getLogger("letterbox.reconcile")

# Parallel API writes (status, events, Secrets) per pass: enough to hide round trips, few
# enough not to look like a flood to the API server's priority and fairness.
WRITE_CONCURRENCY = 16
# How soon a resource waiting for something that is not there yet (a Secret) is looked at again
# even if no watch event says it appeared.
RETRY_TEMPORARY_SECONDS = 30.0
RETRY_FAILED_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class PassResult:
    decisions: Decisions
    written_statuses: int
    applied_objects: int
    seconds: float

    def verdict(self, key: ObjectKey) -> Verdict | None:
        return self.decisions.verdicts.get(key)


def _digest(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _object_id(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


async def gather(kube: ClusterApi, namespace: str) -> Snapshot:
    """Every letterbox resource and Secret in the namespace, listed concurrently."""
    kinds = list(Kind)
    lists = await asyncio.gather(
        *(kube.list(API_VERSION, kind.value, namespace) for kind in kinds),
        kube.list("v1", "Secret", namespace),
    )
    return Snapshot.of(namespace, dict(zip(kinds, lists[:-1], strict=True)), lists[-1])


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
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.namespace = settings.namespace
        self.debounce_seconds = debounce_seconds
        self._clock = clock
        self._applied: dict[tuple[str, str, str], str] = {}
        self._verified = passwords.VerifiedHashes()
        self._pending: list[asyncio.Future[PassResult]] = []
        self._wanted = asyncio.Event()
        self._failures = 0
        self._hash_limit = max(1, (os.cpu_count() or 1))
        self.referenced_secrets: frozenset[str] = frozenset()
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
                delay = RETRY_FAILED_SECONDS[min(self._failures, len(RETRY_FAILED_SECONDS) - 1)]
                self._failures += 1
                log.warning(
                    "reconcile of %s failed (retry in %ss): %s", self.namespace, delay, error
                )
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
                loop.call_later(delay, self._wanted.set)
                continue
            self._failures = 0
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(result)
            if any(v.temporary for v in result.decisions.verdicts.values()):
                loop.call_later(RETRY_TEMPORARY_SECONDS, self._wanted.set)

    # --- one pass ---------------------------------------------------------------------------

    async def reconcile_once(self) -> PassResult:
        started = asyncio.get_running_loop().time()
        snapshot = await gather(self.kube, self.namespace)
        decisions = decide(snapshot)
        self.referenced_secrets = frozenset(
            {
                m.spec.password.secret_ref.name
                if m.spec.password is not None
                else credentials_secret_name(m)
                for m in (o.model for o in snapshot.mailboxes)
                if m is not None
            }
        )
        hashes = await self._password_hashes(snapshot, decisions)
        keys = await self._dkim_keys(snapshot, decisions)
        applied = await self._apply(snapshot, decisions, hashes)
        written = await self._write_statuses(snapshot, decisions, hashes, keys)
        seconds = asyncio.get_running_loop().time() - started
        log.info(
            "reconciled %s: %d domains, %d mailboxes, %d aliases, %d DKIM keys accepted; "
            "%d objects applied, %d statuses written in %.2fs",
            self.namespace,
            len(decisions.domains),
            len(hashes),
            len(decisions.aliases),
            len(decisions.dkim_keys),
            applied,
            written,
            seconds,
        )
        return PassResult(decisions, written, applied, seconds)

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
            previous = passwords.hashes_in_config(
                s
                for s in snapshot.secrets.values()
                if s.labels.get(CONFIG_LABEL) == self.settings.name
            )

            async def verify(item: tuple[str, str]) -> str:
                address, password = item
                # A password this process saw change: the configured hash is of the old one,
                # so checking it would only cost an argon2 run (~0.1-0.5 s) on the way to the pod.
                changed = self._verified.changed(address, password)
                previous_hash = None if changed else previous.get(address)
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
        self, decisions: Decisions, hashes: Mapping[str, str], snapshot: Snapshot
    ) -> list[dict[str, Any]]:
        settings = self.settings
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
                tls=pod_tls(),
                password_hashes=dict(hashes),
            ),
        )
        # A copy with one field set, not a dump and re-validation of 10,000 mailboxes.
        config = config.model_copy(update={"trusted_proxies": pod_trusted_proxies(settings)})
        live_settings = snapshot.secrets.get(settings_secret_name(settings.name))
        return [
            render_dkim_keys_secret(settings, []),
            *render_workload(
                settings,
                config,
                min_shards=shard_count(live_settings.raw if live_settings else None),
            ),
        ]

    async def _apply(
        self, snapshot: Snapshot, decisions: Decisions, hashes: Mapping[str, str]
    ) -> int:
        objects = await asyncio.to_thread(self._render, decisions, hashes, snapshot)
        applied = 0
        # In order, one at a time: shards before the index naming them, the StatefulSet last.
        for obj in objects:
            identity, digest = _object_id(obj), _digest(obj)
            if self._applied.get(identity) == digest:
                continue
            await self.kube.apply(obj)
            self._applied[identity] = digest
            applied += 1
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
        return applied

    def _fields(
        self,
        observed: Observed[Any],
        verdict: Verdict,
        hashes: Mapping[str, str],
        keys: Mapping[str, tuple[DkimKeyMaterial, str]],
        decisions: Decisions,
    ) -> tuple[dict[str, Any], tuple[tuple[str, ConditionStatus, str, str], ...]]:
        model = observed.model
        if isinstance(model, Mailbox):
            fields: dict[str, Any] = {}
            if model.spec.password is None and verdict.accepted:
                fields["credentials_secret"] = credentials_secret_name(model)
            domain = next(
                (d for d in decisions.domains if d.spec.domain == domain_of(model.spec.address)),
                None,
            )
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
            return {"records": tuple(records[:64])}, ()
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
            fields, extra = self._fields(observed, verdict, hashes, keys, decisions)
            status = desired_status(observed, verdict, now=now, fields=fields, extra=extra)
            # Compared here, not in a worker thread: at 10,000 objects most are unchanged.
            if same_status(observed.raw.get("status") or {}, status):
                continue
            writes.append((observed, status, verdict))

        async def write(item: tuple[Observed[Any], Status, Verdict]) -> str:
            observed, status, verdict = item
            try:
                await self.kube.patch_status(
                    observed.key.kind.value,
                    self.namespace,
                    observed.key.name,
                    status,
                    observed=observed.raw,
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
