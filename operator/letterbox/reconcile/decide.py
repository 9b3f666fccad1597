"""Which resources make it into the mail pod config, and why the others do not (pure).

Every resource gets a `Verdict`. A bad resource only ever excludes itself: a Mailbox for an
undeclared domain, an address claimed twice, an alias loop or a missing password Secret leaves
every other resource's config (and readiness) alone. Where two resources claim the same thing,
the older one wins, so applying a new object can never take an address away from a working one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Generic, TypeVar

from letterbox.api.alias import Alias
from letterbox.api.conditions import READY, find_condition
from letterbox.api.dkimkey import DKIMKey
from letterbox.api.mailbox import Mailbox
from letterbox.api.maildomain import MailDomain
from letterbox.api.meta import ConditionStatus, Resource, domain_of
from letterbox.reconcile.snapshot import Kind, ObjectKey, Observed, Snapshot

R = TypeVar("R", bound=Resource)


@dataclass(frozen=True)
class Parsed(Generic[R]):
    """An observed object whose model accepted it."""

    observed: Observed[Any]
    model: R

    @property
    def key(self) -> ObjectKey:
        return self.observed.key


class Reason(StrEnum):
    RECONCILED = "Reconciled"
    INVALID_SPEC = "InvalidSpec"
    DOMAIN_NOT_FOUND = "DomainNotFound"
    DUPLICATE_DOMAIN = "DuplicateDomain"
    DUPLICATE_ADDRESS = "DuplicateAddress"
    DUPLICATE_SELECTOR = "DuplicateSelector"
    ALIAS_LOOP = "AliasLoop"
    SECRET_NOT_FOUND = "SecretNotFound"  # noqa: S105 (a reason, not a password)
    APPLY_FAILED = "ApplyFailed"


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: Reason
    message: str
    temporary: bool = False
    """Not the user's mistake so much as something not there yet (a Secret): retry later."""


ACCEPTED = Verdict(True, Reason.RECONCILED, "")


@dataclass(frozen=True)
class Decisions:
    verdicts: Mapping[ObjectKey, Verdict]
    domains: tuple[MailDomain, ...] = ()
    mailboxes: tuple[Mailbox, ...] = ()
    aliases: tuple[Alias, ...] = ()
    dkim_keys: tuple[DKIMKey, ...] = ()
    owners: Mapping[str, ObjectKey] = field(default_factory=dict)
    """Which resource holds each address (and `@domain` catch-all)."""

    def verdict(self, key: ObjectKey) -> Verdict:
        return self.verdicts[key]


def _live(items: Iterable[Observed[Any]]) -> list[Observed[Any]]:
    # Objects being deleted are gone as far as the config is concerned; their finalizer (if
    # any) waits for the pass that drops them.
    return sorted((o for o in items if not o.deleting), key=lambda o: o.age_key)


def _name(parsed: Parsed[Any]) -> str:
    return f"{parsed.key.kind} {parsed.key.name}"


def _loop_members(graph: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Nodes on a cycle, each with one cycle through it (for the message). Iterative Tarjan, so
    long alias chains cannot hit the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    members: dict[str, list[str]] = {}
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, edge = work.pop()
            if edge == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            successors = graph.get(node, [])
            if edge < len(successors):
                work.append((node, edge + 1))
                nxt = successors[edge]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1 or node in graph.get(node, []):
                    ordered = sorted(component)
                    for member in ordered:
                        members[member] = ordered
    return members


def decide(snapshot: Snapshot) -> Decisions:
    verdicts: dict[ObjectKey, Verdict] = {}

    def reject(
        observed: Observed[Any] | Parsed[Any],
        reason: Reason,
        message: str,
        *,
        temporary: bool = False,
    ) -> None:
        verdicts[observed.key] = Verdict(False, reason, message, temporary)

    def valid(items: Iterable[Observed[R]]) -> list[Parsed[R]]:
        kept = []
        for observed in _live(items):
            if observed.model is None:
                reject(observed, Reason.INVALID_SPEC, observed.error or "invalid object")
            else:
                kept.append(Parsed(observed, observed.model))
        return kept

    # Domains: one MailDomain per domain name.
    domains: dict[str, Parsed[MailDomain]] = {}
    for parsed_domain in valid(snapshot.domains):
        domain = parsed_domain.model.spec.domain
        if domain in domains:
            reject(
                parsed_domain,
                Reason.DUPLICATE_DOMAIN,
                f"{domain} is already declared by {_name(domains[domain])}; delete one of them",
            )
            continue
        domains[domain] = parsed_domain
        verdicts[parsed_domain.key] = ACCEPTED

    def domain_known(parsed: Parsed[Any], domain: str) -> bool:
        if domain in domains:
            return True
        reject(
            parsed,
            Reason.DOMAIN_NOT_FOUND,
            f"no MailDomain in namespace {snapshot.namespace} declares {domain}: create one "
            f"with spec.domain: {domain}, or correct the address",
        )
        return False

    # Addresses: Mailboxes and Aliases share one address space; the oldest claim wins.
    owners: dict[str, Parsed[Mailbox] | Parsed[Alias]] = {}
    candidates: list[Parsed[Mailbox] | Parsed[Alias]] = [
        *valid(snapshot.mailboxes),
        *valid(snapshot.aliases),
    ]
    candidates.sort(key=lambda p: p.observed.age_key)
    claimants = [
        (p, p.model.spec.address)
        for p in candidates
        if domain_known(p, domain_of(p.model.spec.address))
    ]
    for claimant, address in claimants:  # oldest first
        if address in owners:
            reject(
                claimant,
                Reason.DUPLICATE_ADDRESS,
                f"{address} is already used by {_name(owners[address])}, which is older; "
                "change spec.address or delete one of them",
            )
            continue
        owners[address] = claimant

    mailboxes: dict[str, Parsed[Mailbox]] = {}
    aliases: dict[str, Parsed[Alias]] = {}
    for address, owner in owners.items():
        if isinstance(owner.model, Mailbox):
            mailboxes[address] = Parsed(owner.observed, owner.model)
        else:
            aliases[address] = Parsed(owner.observed, owner.model)

    # Alias loops: an alias reaching itself through other aliases (or through its domain's
    # catch-all, for a destination nobody else receives) would bounce every message forever.
    graph: dict[str, list[str]] = defaultdict(list)
    for address, alias in aliases.items():
        for destination in alias.model.spec.destinations:
            if destination in aliases:
                graph[address].append(destination)
            elif destination not in mailboxes and f"@{domain_of(destination)}" in aliases:
                graph[address].append(f"@{domain_of(destination)}")
    for address, cycle in _loop_members(graph).items():
        reject(
            aliases[address],
            Reason.ALIAS_LOOP,
            f"{address} forwards to itself through {' -> '.join(cycle)}: remove one of the "
            "destinations",
        )
        del aliases[address]

    # Passwords: a referenced Secret (or key) that is missing keeps the mailbox out until it
    # appears; generated credentials are created by the pass, so they never block.
    for address, mailbox in list(mailboxes.items()):
        password = mailbox.model.spec.password
        if password is None:
            continue
        ref = password.secret_ref
        secret = snapshot.secrets.get(ref.name)
        if secret is None or secret.value(ref.key) is None:
            what = (
                f"Secret {ref.name}" if secret is None else f"key {ref.key!r} of Secret {ref.name}"
            )
            reject(
                mailbox,
                Reason.SECRET_NOT_FOUND,
                f"{what} (spec.password.secretRef) does not exist in namespace "
                f"{snapshot.namespace}; the mailbox is left out until it does",
                temporary=True,
            )
            del mailboxes[address]

    # DKIM keys: the domain must exist, and a selector names one key per domain.
    selectors: dict[tuple[str, str], Parsed[DKIMKey]] = {}
    for dkimkey in valid(snapshot.dkim_keys):
        spec = dkimkey.model.spec
        if not domain_known(dkimkey, spec.domain):
            continue
        if (spec.domain, spec.selector) in selectors:
            reject(
                dkimkey,
                Reason.DUPLICATE_SELECTOR,
                f"selector {spec.selector} of {spec.domain} is already used by "
                f"{_name(selectors[spec.domain, spec.selector])}; choose another selector",
            )
            continue
        selectors[spec.domain, spec.selector] = dkimkey

    accepted: list[Parsed[Any]] = [*mailboxes.values(), *aliases.values(), *selectors.values()]
    for parsed in accepted:
        verdicts[parsed.key] = ACCEPTED
    return Decisions(
        verdicts=verdicts,
        domains=tuple(o.model for o in domains.values()),
        mailboxes=tuple(o.model for o in mailboxes.values()),
        aliases=tuple(o.model for o in aliases.values()),
        dkim_keys=tuple(o.model for o in selectors.values()),
        owners={address: o.key for address, o in owners.items()},
    )


def _ready_for_generation(observed: Observed[Any]) -> bool:
    if observed.model is None:
        return False
    ready = find_condition(observed.model.status.conditions, READY)
    return (
        ready is not None
        and ready.status == ConditionStatus.TRUE
        and ready.observed_generation == observed.generation
    )


def apply_failed(
    snapshot: Snapshot, decisions: Decisions, message: str, *, config_applied: bool
) -> Decisions:
    """`decisions` after the API refused part of the rendered workload: the resources it
    affects get Ready=False ApplyFailed (temporary: the pass is retried with backoff).

    MailDomains always: they stand for the workload serving them. When the pod config itself did
    not get through, also every accepted resource not already Ready for its generation, since
    the pods do not have it; the others keep being served from the config applied before.
    """
    failed = Verdict(False, Reason.APPLY_FAILED, message, temporary=True)
    verdicts = dict(decisions.verdicts)
    for observed in snapshot.all():
        verdict = verdicts.get(observed.key)
        if verdict is None or not verdict.accepted:
            continue
        if observed.key.kind is Kind.MAIL_DOMAIN or (
            not config_applied and not _ready_for_generation(observed)
        ):
            verdicts[observed.key] = failed
    return replace(decisions, verdicts=verdicts)
