from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from letterbox.cli import main
from tests.conftest import EXAMPLES, INVALID_EXAMPLES, REPO


def test_crds_writes_one_file_per_kind(tmp_path: Path) -> None:
    assert main(["crds", "--output", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "aliases.letterbox.dev.yaml",
        "dkimkeys.letterbox.dev.yaml",
        "mailboxes.letterbox.dev.yaml",
        "maildomains.letterbox.dev.yaml",
    ]


def test_dns_plan_of_the_examples(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dns-plan", "--state-dir", str(state_dir), str(EXAMPLES)]) == 0
    out = capsys.readouterr().out
    for expected in (
        "example.com: zone example.com, provider manual, policy upsert-only",
        "10 mail.example.com.",
        "v=spf1 mx ~all",
        "lb._domainkey.example.com",
        "_mta-sts.example.com",
        "_smtp._tls.example.com",
        "_submissions._tcp.example.com",
    ):
        assert expected in out


def test_dns_plan_is_stable_across_runs(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The DKIM key is generated once into the state dir and reused, so the plan is stable."""
    main(["dns-plan", "--format", "zone", "--state-dir", str(state_dir), str(EXAMPLES)])
    first = capsys.readouterr().out
    main(["dns-plan", "--format", "zone", "--state-dir", str(state_dir), str(EXAMPLES)])
    assert capsys.readouterr().out == first
    keys = list(state_dir.rglob("*.pem"))
    assert len(keys) == 1
    assert stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(keys[0].read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    # A 2048-bit key's record is longer than one TXT string: the zone line splits it.
    dkim_line = next(line for line in first.splitlines() if "_domainkey" in line)
    assert dkim_line.count('"') == 4


def test_dns_plan_yaml(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dns-plan", "--format", "yaml", "--state-dir", str(state_dir), str(EXAMPLES)]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["domain"] == "example.com"
    assert {r["purpose"] for r in plan["records"]} == {
        "MX",
        "SPF",
        "DKIM",
        "DMARC",
        "MTA-STS",
        "TLS-RPT",
        "autoconfig",
    }


def test_render_redacts_secrets_unless_asked(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", "--state-dir", str(state_dir), str(EXAMPLES)]) == 0
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    names = [o["metadata"]["name"] for o in objects]
    assert names == ["alice-credentials", "example-com-rsa-lb"]  # bob brings his own password
    assert objects[0]["stringData"] == {"username": "alice@example.com", "password": "<redacted>"}
    assert objects[1]["stringData"]["private.pem"] == "<redacted>"

    assert main(["render", "--show-secrets", "--state-dir", str(state_dir), str(EXAMPLES)]) == 0
    shown = list(yaml.safe_load_all(capsys.readouterr().out))
    password = shown[0]["stringData"]["password"]
    assert len(password) == 24
    assert (state_dir / "default" / "mailboxes" / "alice.password").read_text() == password
    assert shown[1]["stringData"]["private.pem"].startswith("-----BEGIN PRIVATE KEY-----")


def test_invalid_manifest_errors_name_file_document_and_field(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", "--state-dir", str(state_dir), *map(str, INVALID_EXAMPLES)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: invalid manifests:")
    assert "mailbox-negative-quota.yaml: document 1 (Mailbox negative-quota): spec.quota: " in err
    assert len(err.strip().splitlines()) == len(INVALID_EXAMPLES) + 1
    assert not state_dir.exists()  # nothing generated for invalid input


def test_warns_about_resources_for_undeclared_domains(
    tmp_path: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    orphan = tmp_path / "orphan.yaml"
    orphan.write_text(
        "apiVersion: letterbox.dev/v1alpha1\nkind: Mailbox\nmetadata: {name: x}\n"
        "spec: {address: x@nowhere.example}\n"
    )
    assert main(["render", "--state-dir", str(state_dir), str(orphan)]) == 0
    assert "no MailDomain declares nowhere.example" in capsys.readouterr().err
    assert main(["dns-plan", "--state-dir", str(state_dir), str(orphan)]) == 1
    assert "no MailDomain in the given manifests" in capsys.readouterr().err


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dns-plan", "/nonexistent/x.yaml"]) == 1
    assert "no such file or directory" in capsys.readouterr().err


_ARENAS = """
import ctypes, sys, threading
from letterbox import cli
if sys.argv[1] == "limit":
    cli._limit_malloc_arenas()
libc = ctypes.CDLL(None)
start = threading.Barrier(8)
def work():
    start.wait()  # allocating at the same time is what makes glibc open more arenas
    for _ in range(2000):
        keep = [bytearray(256) for _ in range(50)]
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc.fdopen.restype = ctypes.c_void_p
out = ctypes.c_void_p(libc.fdopen(1, b"w"))
libc.malloc_info(0, out)  # glibc's XML report: one <heap> element per arena
libc.fflush(out)
"""


@pytest.mark.parametrize(
    ("mode", "explicit", "expected"),
    [
        ("limit", None, range(1, 3)),
        ("none", None, range(3, 100)),  # what the limit is for: a thread pool opens several
        ("limit", "4", range(3, 5)),  # an explicit MALLOC_ARENA_MAX wins over ours
    ],
)
def test_the_operator_limits_malloc_arenas_unless_told_otherwise(
    mode: str, explicit: str | None, expected: range
) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    environment["PYTHONPATH"] = str(REPO / "operator")
    if explicit is not None:
        environment["MALLOC_ARENA_MAX"] = explicit
    out = subprocess.run(
        [sys.executable, "-c", _ARENAS, mode], env=environment, capture_output=True, check=True
    ).stdout.decode()
    assert out.count("<heap nr=") in expected
