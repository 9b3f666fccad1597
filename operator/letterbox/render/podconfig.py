"""The mail pod's config (`mailpod.config`) from the API objects and generated material."""

from __future__ import annotations

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


def render_pod_config(manifests: Manifests, material: PodMaterial) -> pod.MailpodConfig:
    """Only resources whose domain a MailDomain declares make it in (the others are reported
    as not Ready by the operator); a mailbox without a password hash is left out, never
    configured without one."""
    domains = {d.spec.domain: d.spec for d in manifests.domains}
    mailboxes = [
        pod.Mailbox(
            address=m.spec.address,
            password_hash=material.password_hashes[m.spec.address],
            quota_bytes=quantity_bytes(
                m.spec.quota or domains[domain_of(m.spec.address)].default_quota
            ),
            send_as=m.spec.send_as,
            suspended=m.spec.suspended,
            display_name=m.spec.display_name,
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
    )
