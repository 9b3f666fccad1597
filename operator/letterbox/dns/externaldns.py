"""external-dns output mode: the domain's records as one `DNSEndpoint`
(externaldns.k8s.io/v1alpha1), for clusters that already run external-dns with its CRD source
(`--source=crd`). Pure: the reconcile applies the object like any other it renders.

external-dns owns whole RRsets through its own TXT registry, so it will not write an RRset it
did not create: an apex TXT that already holds someone else's strings keeps them and does not
get our SPF (the docs say how to handle that).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from letterbox.api.dnsrecord import DnsRecord, RecordType

API_VERSION = "externaldns.k8s.io/v1alpha1"
KIND = "DNSEndpoint"


def endpoint_target(record: DnsRecord) -> str:
    """external-dns writes targets without the trailing dot of absolute names."""
    if record.type in (RecordType.CNAME, RecordType.MX, RecordType.SRV):
        return " ".join(f.rstrip(".") if f != "." else f for f in record.value.split())
    return record.value


def render_dns_endpoint(
    name: str,
    namespace: str,
    records: Sequence[DnsRecord],
    *,
    labels: Mapping[str, str] | None = None,
    owner_references: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    grouped: dict[tuple[str, RecordType], list[DnsRecord]] = {}
    for record in records:
        grouped.setdefault((record.name, record.type), []).append(record)
    endpoints = [
        {
            "dnsName": dns_name,
            "recordType": rtype.value,
            "recordTTL": min(r.ttl for r in group),
            "targets": list(dict.fromkeys(endpoint_target(r) for r in group)),
        }
        for (dns_name, rtype), group in sorted(grouped.items())
    ]
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    if owner_references:
        metadata["ownerReferences"] = [dict(o) for o in owner_references]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {"endpoints": endpoints},
    }
