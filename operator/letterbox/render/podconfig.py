"""The mail pod's config (`mailpod.config`) from the API objects and generated material."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from letterbox.api.dkimkey import DkimAlgorithm
from letterbox.api.manifests import Manifests
from letterbox.api.meta import domain_of, quantity_bytes
from letterbox.render.dkim import DkimKeyMaterial
from mailpod import config as pod


@dataclass(frozen=True)
class PodMaterial:
    """Everything generated or resolved outside render/: hashes by mailbox address, DKIM keys
    with the file each private key is mounted at, and the pod's own paths and listeners."""

    hostname: str
    listeners: Sequence[pod.Listener]
    storage: pod.Storage
    tls: pod.TlsConfig | None
    password_hashes: dict[str, str] = field(default_factory=dict)
    dkim_keys: Sequence[tuple[DkimKeyMaterial, Path]] = ()
    purged_mailboxes: Sequence[pod.PurgedMailbox] = ()
    """Deleted mailboxes whose stored mail the pods remove (`reconcile.purge`)."""


# Remembered: the operator renders every mailbox on every pass, and building (validating) the
# same 10,000 entries again was a good part of a pass. Same arguments, same (immutable) entry.
@functools.lru_cache(maxsize=1 << 16)
def _pod_mailbox(
    address: str,
    password_hash: str,
    quota: str,
    send_as: tuple[str, ...],
    suspended: bool,
    display_name: str | None,
) -> pod.Mailbox:
    return pod.Mailbox(
        address=address,
        password_hash=password_hash,
        quota_bytes=quantity_bytes(quota),
        send_as=send_as,
        suspended=suspended,
        display_name=display_name,
    )


def render_pod_config(manifests: Manifests, material: PodMaterial) -> pod.MailpodConfig:
    """Only resources whose domain a MailDomain declares make it in (the others are reported
    as not Ready by the operator); a mailbox without a password hash is left out, never
    configured without one."""
    domains = {d.spec.domain: d.spec for d in manifests.domains}
    mailboxes = [
        _pod_mailbox(
            m.spec.address,
            material.password_hashes[m.spec.address],
            m.spec.quota or domains[domain_of(m.spec.address)].default_quota,
            m.spec.send_as,
            m.spec.suspended,
            m.spec.display_name,
        )
        for m in manifests.mailboxes
        if domain_of(m.spec.address) in domains and m.spec.address in material.password_hashes
    ]
    aliases = {
        a.spec.address: a.spec.destinations
        for a in manifests.aliases
        if domain_of(a.spec.address) in domains
    }
    for spec in domains.values():
        # An explicit `@domain` Alias wins over the MailDomain's catchAll shorthand.
        if spec.catch_all and f"@{spec.domain}" not in aliases:
            aliases[f"@{spec.domain}"] = (spec.catch_all,)
    mailbox_addresses = {m.address for m in mailboxes}
    in_use = {address.lower() for address in mailbox_addresses}
    return pod.MailpodConfig(
        hostname=material.hostname,
        listeners=tuple(material.listeners),
        tls=material.tls,
        domains=tuple(sorted(domains)),
        mailboxes=tuple(mailboxes),
        aliases=tuple(
            pod.Alias(address=address, destinations=destinations)
            for address, destinations in sorted(aliases.items())
            if address not in mailbox_addresses
        ),
        dkim_keys=tuple(
            pod.DkimKey(
                domain=key.domain,
                selector=key.selector,
                algorithm=pod.DkimAlgorithm.ED25519_SHA256
                if key.algorithm is DkimAlgorithm.ED25519
                else pod.DkimAlgorithm.RSA_SHA256,
                private_key_file=path,
            )
            for key, path in material.dkim_keys
            if key.domain in domains
        ),
        storage=material.storage,
        # Never a tombstone for a configured mailbox: its mail is live (the pod refuses both).
        purged_mailboxes=tuple(
            entry for entry in material.purged_mailboxes if entry.address.lower() not in in_use
        ),
    )
