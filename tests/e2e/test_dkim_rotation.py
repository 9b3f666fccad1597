"""DNS publishing and the DKIM key lifecycle on the real control plane, with a real PowerDNS as
the domain's provider (its HTTP API) and the mail pod started from the rendered template.

One story, in order: a MailDomain and a DKIMKey are applied → the records appear in PowerDNS
beside foreign values in the same RRsets, DNSPublished=True, the key goes Pending → Published
→ Active and the pod signs with it; a rotation asked for by annotation → the new selector
signs only once its record is live at the authoritative server, the old key retires (record
withdrawn, Secret deleted); the MailDomain is deleted → only our values are withdrawn.

The operator runs in-process as its ServiceAccount (the chart's Role). Two knobs are set for
the test: the zone's authoritative server is the PowerDNS on a loopback port (its NS names
nothing resolvable here), and a new key waits 2 s in the mounted Secret instead of 90 s, with
a kubelet stand-in here that refreshes the pod's mounted DKIM Secret every half second.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import json
import os
import ssl
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
import trustme

from letterbox.api.settings import OperatorSettings
from letterbox.kube import Kube, NotFound
from mailpod.dkim import DkimStatus, parse_tags, verify
from tests.e2e.operator_harness import (
    grant_operator,
    operator_in_process,
    publisher_asking,
    wait_for,
)
from tests.e2e.test_operator_pod import (
    TemplatePod,
    _decoded,
    imap_login,
    operator_settings,
    secret_text,
    submit,
    tls_secret,
)
from tests.harness.controlplane import ControlPlane
from tests.harness.powerdns import PowerDns

pytestmark = pytest.mark.e2e

NAMESPACE = "dkim-rotation"
DOMAIN = "rotation-e2e.test"
MOUNT_SECONDS = 2.0
RETIRE_AFTER = "4s"
FOREIGN_TXT = "google-site-verification=rotation-e2e"
FOREIGN_MX = "20 backup.elsewhere.test."


# --- DNS as seen from outside ---------------------------------------------------------------


def txt_values(pdns: PowerDns, name: str) -> list[str]:
    """The TXT values the authoritative server answers, character-strings joined."""
    request = dns.message.make_query(f"{name}.", dns.rdatatype.TXT)
    response = dns.query.udp(request, "127.0.0.1", port=pdns.dns_port, timeout=5.0)
    return sorted(
        b"".join(rdata.strings).decode()
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.TXT
        for rdata in rrset
    )


def dkim_record(pdns: PowerDns, selector: str) -> str | None:
    values = txt_values(pdns, f"{selector}._domainkey.{DOMAIN}")
    return values[0] if values else None


# --- the cluster side ---------------------------------------------------------------------


def operator(
    kubeconfig: Path, settings: OperatorSettings, pdns: PowerDns
) -> contextlib.AbstractContextManager[None]:
    return operator_in_process(
        kubeconfig,
        settings,
        dns=publisher_asking(pdns.nameserver),
        dkim_mount_seconds=MOUNT_SECONDS,
    )


def get(admin: Kube, kind: str, name: str) -> dict[str, Any]:
    return dict(admin.get("letterbox.dev/v1alpha1", kind, name, NAMESPACE))


def condition(obj: dict[str, Any], type_: str) -> tuple[str, str] | None:
    for found in (obj.get("status") or {}).get("conditions") or []:
        if found["type"] == type_:
            return found["status"], found["reason"]
    return None


def config_selectors(admin: Kube) -> list[str]:
    """The DKIM selectors in the applied pod config (its settings Secret and shards)."""
    selectors = []
    for secret in admin.list("v1", "Secret", NAMESPACE):
        if not secret["metadata"]["name"].startswith("mailpod-config"):
            continue
        for value in _decoded(secret).values():
            with contextlib.suppress(ValueError):
                document = json.loads(value)
                if isinstance(document, dict):
                    selectors += [k["selector"] for k in document.get("dkim_keys") or ()]
    return sorted(selectors)


def key_phases(admin: Kube) -> dict[str, str]:
    status = get(admin, "DKIMKey", "rotation-rsa").get("status") or {}
    return {k["selector"]: k["phase"] for k in status.get("keys") or []}


def events(admin: Kube, name: str) -> list[tuple[str, str]]:
    found = admin.list("events.k8s.io/v1", "Event", NAMESPACE)
    return [
        (e["reason"], e.get("note", ""))
        for e in sorted(found, key=lambda e: e["metadata"]["creationTimestamp"])
        if e["regarding"]["name"] == name
    ]


class KubeletSync:
    """The kubelet's refresh of a mounted Secret volume (AtomicWriter: a new timestamped dir,
    then `..data` swapped atomically), every `period` seconds, for the pod's `dkim` volume."""

    def __init__(self, pod: TemplatePod, admin: Kube, volume: str, secret: str) -> None:
        self.directory = pod.root / "volumes" / volume
        self.admin, self.secret = admin, secret
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="kubelet-sync")
        self._generation = 0

    def sync(self) -> None:
        data = _decoded(self.admin.get("v1", "Secret", self.secret, NAMESPACE))
        self._generation += 1
        stamp = self.directory / f"..2026_01_01_00_00_{self._generation:02d}.000000001"
        stamp.mkdir()
        for name, content in data.items():
            (stamp / name).write_bytes(content)
            (stamp / name).chmod(0o644)
        link = self.directory / "..data_tmp"
        link.symlink_to(stamp.name)
        os.replace(link, self.directory / "..data")
        for name in data:
            top = self.directory / name
            if not top.is_symlink():
                top.symlink_to(f"..data/{name}")
        for top in self.directory.iterdir():
            if not top.name.startswith("..") and top.name not in data:
                top.unlink()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(NotFound, OSError):
                self.sync()

    def __enter__(self) -> KubeletSync:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --- mail ---------------------------------------------------------------------------------


def signed_selector(
    pod: TemplatePod, context: ssl.SSLContext, password: str, subject: str
) -> tuple[str, bytes]:
    """Submit a message from alice to herself, read it back over IMAP, return its DKIM s= tag
    and the message as stored."""
    message = EmailMessage()
    message["From"] = f"alice@{DOMAIN}"
    message["To"] = f"alice@{DOMAIN}"
    message["Subject"] = subject
    message.set_content("signed?\n")
    submit(pod.ports["submission"], context, f"alice@{DOMAIN}", password, message)
    imap = imap_login(pod.ports["imap"], context, f"alice@{DOMAIN}", password)
    try:
        imap.select("INBOX")

        def delivered() -> list[bytes]:
            found: list[bytes] = imap.search(None, "SUBJECT", f'"{subject}"')[1]
            return found[0].split() if found and found[0] else []

        (number,) = wait_for("delivery", delivered, 10, pod.log())
        fetched = imap.fetch(number, "(RFC822)")[1][0]
        assert isinstance(fetched, tuple)
        stored = bytes(fetched[1])
    finally:
        imap.logout()
    signatures = email.message_from_bytes(stored).get_all("DKIM-Signature") or []
    assert len(signatures) == 1, f"one key signs at a time: {signatures}"
    tags = parse_tags(str(signatures[0]).replace("\r\n", "").replace("\n", ""))
    return tags["s"], stored


def verified(pdns: PowerDns, stored: bytes) -> bool:
    """The signature checks out against the key the authoritative server publishes."""

    async def fetch_key(selector: str, domain: str) -> str | None:
        values = txt_values(pdns, f"{selector}._domainkey.{domain}")
        return values[0] if values else None

    results = asyncio.run(verify(stored, fetch_key))
    return len(results) == 1 and results[0].status is DkimStatus.PASS


# --- the test -----------------------------------------------------------------------------


def manifests(pdns: PowerDns) -> list[dict[str, Any]]:
    meta = {"namespace": NAMESPACE}
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "pdns-api", **meta},
            "stringData": {"api-key": pdns.api_key},
        },
        {
            "apiVersion": "letterbox.dev/v1alpha1",
            "kind": "MailDomain",
            "metadata": {"name": "rotation", **meta},
            "spec": {
                "domain": DOMAIN,
                "dns": {
                    "provider": "powerdns",
                    "ttl": 60,
                    "powerdns": {"url": f"http://127.0.0.1:{pdns.api_port}"},
                    "credentialsSecretRef": {"name": "pdns-api", "key": "api-key"},
                },
                "autoconfig": False,
                # The test plays cert-manager (no ACME CA to reach from here).
                "tls": {"secretName": "mailpod-tls"},
            },
        },
        {
            "apiVersion": "letterbox.dev/v1alpha1",
            "kind": "Mailbox",
            "metadata": {"name": "alice", **meta},
            "spec": {"address": f"alice@{DOMAIN}"},
        },
        {
            "apiVersion": "letterbox.dev/v1alpha1",
            "kind": "DKIMKey",
            "metadata": {"name": "rotation-rsa", **meta},
            "spec": {
                "domain": DOMAIN,
                "selector": "lb",
                "algorithm": "rsa-2048",
                "rotation": {"every": "1000d", "retireAfter": RETIRE_AFTER},
            },
        },
    ]


def test_dns_publishing_and_dkim_rotation_end_to_end(
    crds: ControlPlane, powerdns: PowerDns, tmp_path: Path
) -> None:
    began = time.monotonic()
    pdns = powerdns
    pdns.create_zone(
        DOMAIN,
        [
            (DOMAIN, "TXT", 300, [f'"{FOREIGN_TXT}"']),
            (DOMAIN, "MX", 300, [FOREIGN_MX]),
        ],
    )
    admin = Kube.connect(crds.kubeconfig)
    kubeconfig = grant_operator(crds, admin, NAMESPACE, tmp_path / "operator" / "kubeconfig")
    settings = operator_settings(NAMESPACE)
    with operator(kubeconfig, settings, pdns):
        for manifest in manifests(pdns):
            admin.apply(manifest)

        # --- published, and the first key active --------------------------------------------
        def published() -> bool:
            domain = get(admin, "MailDomain", "rotation")
            return condition(domain, "DNSPublished") == ("True", "Published")

        wait_for("DNSPublished=True", published, 30)
        assert sorted(pdns.query(DOMAIN, "MX")) == sorted([f"10 mail.{DOMAIN}.", FOREIGN_MX])
        apex = txt_values(pdns, DOMAIN)
        assert FOREIGN_TXT in apex and any(v.startswith("v=spf1 mx") for v in apex)
        assert txt_values(pdns, f"_dmarc.{DOMAIN}")[0].startswith("v=DMARC1")
        status = get(admin, "MailDomain", "rotation")["status"]
        assert {r["type"] for r in status["records"]} >= {"MX", "TXT", "CNAME"}
        assert status["mtaStsPolicyId"]

        wait_for("the first key Active", lambda: key_phases(admin) == {"lb": "Active"}, 30)
        dkimkey = get(admin, "DKIMKey", "rotation-rsa")
        (first,) = dkimkey["status"]["keys"]
        assert dkimkey["status"]["signingSelector"] == "lb"
        assert condition(dkimkey, "KeyActive") == ("True", "Signing")
        assert first["createdAt"] <= first["publishedAt"] <= first["activatedAt"]
        assert dkim_record(pdns, "lb") == first["publicRecord"]
        reasons = [reason for reason, _ in events(admin, "rotation-rsa")]
        assert reasons[:3] == ["KeyCreated", "KeyPublished", "KeyActive"], reasons
        print(f"\nrecords published and the first key active in {time.monotonic() - began:.1f}s")

        # --- the pod signs with it ----------------------------------------------------------
        ca = trustme.CA()
        admin.apply(tls_secret(NAMESPACE, "mailpod-tls", ca))
        context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
        assert config_selectors(admin) == ["lb"]
        password = secret_text(admin, NAMESPACE, "alice-credentials", "password")
        pod = TemplatePod(crds, admin, NAMESPACE, "mailpod", tmp_path / "pod")
        (tmp_path / "pod").mkdir()
        try:
            pod.start()
            with KubeletSync(pod, admin, "dkim", "mailpod-dkim"):
                selector, stored = signed_selector(pod, context, password, "before rotation")
                assert selector == "lb"
                assert verified(pdns, stored)

                # --- rotation by annotation -------------------------------------------------
                rotated_at = time.monotonic()
                crds.kubectl(
                    "annotate", "-n", NAMESPACE, "dkimkey", "rotation-rsa",
                    "letterbox.dev/rotate=first", "--overwrite",
                )  # fmt: skip
                new = wait_for(
                    "a new key",
                    lambda: next((s for s in key_phases(admin) if s != "lb"), None),
                    20,
                )
                assert new.startswith("lb-")
                # Until the new selector signs, every message is signed by the old key, and
                # the first one the new key signs was submitted with its record already live.
                sent = 0
                while True:
                    live_before = dkim_record(pdns, new) is not None
                    sent += 1
                    selector, stored = signed_selector(pod, context, password, f"rotating {sent}")
                    if selector == new:
                        assert live_before, "the new key signed before its record was live"
                        assert verified(pdns, stored)
                        break
                    assert selector == "lb"
                    assert time.monotonic() - rotated_at < 40, "the new key never signed"
                print(
                    f"rotation: {new} signs {time.monotonic() - rotated_at:.1f}s after the "
                    f"annotation ({sent} messages)"
                )
                assert config_selectors(admin) == [new]
                phases = key_phases(admin)
                assert phases[new] == "Active" and phases["lb"] in ("Retiring", "Retired")
                status = get(admin, "DKIMKey", "rotation-rsa")["status"]
                assert status["rotateHandled"] == "first"
                assert status["signingSelector"] == new
        finally:
            pod.stop()

        # --- the old key retires ------------------------------------------------------------
        wait_for("the old key Retired", lambda: key_phases(admin).get("lb") == "Retired", 20)
        assert dkim_record(pdns, "lb") is None
        assert dkim_record(pdns, new) is not None
        with pytest.raises(NotFound):
            admin.get("v1", "Secret", "rotation-rsa-lb", NAMESPACE)
        assert admin.get("v1", "Secret", f"rotation-rsa-{new}", NAMESPACE)
        wait_for(
            "KeyRetiring and KeyRetired events",
            lambda: (
                {"KeyRetiring", "KeyRetired"}
                <= {reason for reason, _ in events(admin, "rotation-rsa")}
            ),
            10,
        )

        # --- deleting the domain withdraws only our values ----------------------------------
        domain = get(admin, "MailDomain", "rotation")
        assert "letterbox.dev/withdraw-dns" in domain["metadata"]["finalizers"]
        admin.delete("letterbox.dev/v1alpha1", "MailDomain", "rotation", NAMESPACE)

        def gone() -> bool:
            try:
                get(admin, "MailDomain", "rotation")
            except NotFound:
                return True
            return False

        wait_for("the MailDomain gone", gone, 30)
        assert pdns.query(DOMAIN, "MX") == [FOREIGN_MX]
        assert txt_values(pdns, DOMAIN) == [FOREIGN_TXT]
        assert dkim_record(pdns, new) is None
        assert txt_values(pdns, f"_dmarc.{DOMAIN}") == []
        listing = pdns.api("GET", f"/zones/{DOMAIN}.")
        leftovers = [r["name"] for r in listing["rrsets"] if r["type"] not in ("SOA", "NS")]
        assert sorted(leftovers) == [f"{DOMAIN}.", f"{DOMAIN}."], leftovers
    admin.close()
    print(f"whole story in {time.monotonic() - began:.1f}s")
