"""Our DKIM against independent implementations: npm `mailauth` (Node) verifies what we sign and
signs what we verify; dkimpy does the same in Python. mailauth's DNS lookups are answered
offline from the test keys through its `resolver` option.

mailauth is installed by `make npm-deps` into ~/.cache/letterbox/npm (LETTERBOX_NPM_DIR
overrides)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from letterbox.api.dkimkey import DkimAlgorithm as OperatorAlgorithm
from letterbox.material import generate_dkim_key
from letterbox.render.dkim import DkimKeyMaterial, dkim_record_value
from mailpod import dkim
from mailpod.config import DkimAlgorithm
from tests.integration.mailpod_harness import PASSWORDS, MailpodProcess
from tests.unit.mailpod.test_dkim import dkimpy_verify, fetcher

pytestmark = pytest.mark.integration

ALICE, BOB = "alice@example.com", "bob@example.com"
NPM_DIR = Path(os.environ.get("LETTERBOX_NPM_DIR", Path.home() / ".cache/letterbox/npm"))

# Reads {"mode", "message" (base64), "records" {name: value}, "keys" [...]} on stdin.
NODE_SCRIPT = r"""
const { dkimVerify } = require('mailauth/lib/dkim/verify');
const { dkimSign } = require('mailauth/lib/dkim/sign');
let input = '';
process.stdin.on('data', chunk => (input += chunk));
process.stdin.on('end', async () => {
  const job = JSON.parse(input);
  const message = Buffer.from(job.message, 'base64');
  if (job.mode === 'verify') {
    const resolver = async (name, type) => {
      const value = job.records[name.replace(/\.$/, '')];
      if (type !== 'TXT' || value === undefined) {
        const error = new Error('not found: ' + name);
        error.code = 'ENOTFOUND';
        throw error;
      }
      return [[value]];
    };
    const result = await dkimVerify(message, { resolver });
    const rows = result.results.map(r => ({
      result: r.status.result, comment: r.status.comment || '', domain: r.signingDomain,
      selector: r.selector, algo: r.algo }));
    process.stdout.write(JSON.stringify(rows));
  } else {
    const result = await dkimSign(message, {
      canonicalization: job.canonicalization,
      signatureData: job.keys.map(k => ({
        signingDomain: k.domain, selector: k.selector, privateKey: k.pem,
        algorithm: k.algorithm })),
    });
    if (result.errors && result.errors.length) throw new Error(JSON.stringify(result.errors));
    process.stdout.write(result.signatures);
  }
});
"""


def node(job: dict[str, Any]) -> str:
    node_bin = shutil.which("node")
    assert node_bin, "node is not installed"
    assert (NPM_DIR / "node_modules/mailauth").is_dir(), (
        f"mailauth is not installed in {NPM_DIR}: run `make npm-deps`"
    )
    result = subprocess.run(
        [node_bin, "-e", NODE_SCRIPT],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NODE_PATH": str(NPM_DIR / "node_modules")},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def mailauth_verify(message: bytes, records: dict[tuple[str, str], str]) -> list[dict[str, str]]:
    names = {f"{s}._domainkey.{d}": value for (s, d), value in records.items()}
    job = {"mode": "verify", "message": base64.b64encode(message).decode(), "records": names}
    rows: list[dict[str, str]] = json.loads(node(job))
    return rows


def ours_verify(message: bytes, records: dict[tuple[str, str], str]) -> list[dkim.DkimResult]:
    return asyncio.run(dkim.verify(message, fetcher(records)))


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
SIGNERS = [
    dkim.DkimSigner("example.com", "rsa1", DkimAlgorithm.RSA_SHA256, RSA_KEY),
    dkim.DkimSigner("example.com", "ed1", DkimAlgorithm.ED25519_SHA256, ED_KEY),
]
RECORDS = {
    ("rsa1", "example.com"): dkim.key_record(RSA_KEY),
    ("ed1", "example.com"): dkim.key_record(ED_KEY),
}


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def message(size: int = 10 * 1024) -> bytes:
    header = (
        b"From: =?utf-8?q?Al=C3=AFce?= <alice@example.com>\r\n"
        b"To: bob@example.org,\r\n\tcarol@example.net\r\n"
        b"Subject:  Quarterly   report \r\n"
        b"Date: Mon, 1 Jan 2024 12:00:00 +0000\r\n"
        b"Message-ID: <report@example.com>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"List-Unsubscribe: <mailto:unsub@example.com>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        b"\r\n"
    )
    line = b"Numbers  are\tup; see the table below.   \r\n"
    return header + line * (size // len(line)) + b"\r\n\r\n"


def test_mailauth_and_dkimpy_verify_our_dual_signatures() -> None:
    original = message()
    signed = b"".join(dkim.sign(original, SIGNERS)) + original
    rows = mailauth_verify(signed, RECORDS)
    assert [(r["result"], r["algo"], r["selector"]) for r in rows] == [
        ("pass", "rsa-sha256", "rsa1"),
        ("pass", "ed25519-sha256", "ed1"),
    ], rows
    assert dkimpy_verify(signed, RECORDS) == [True, True]
    assert {r.status for r in ours_verify(signed, RECORDS)} == {dkim.DkimStatus.PASS}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Numbers  are", b"Numbers were"),
        (b"Quarterly", b"Annual"),
        (b"Subject:", b"Subject: injected\r\nSubject:"),
    ],
)
def test_mailauth_rejects_what_we_reject(old: bytes, new: bytes) -> None:
    original = message(2048)
    tampered = (b"".join(dkim.sign(original, SIGNERS)) + original).replace(old, new, 1)
    rows = mailauth_verify(tampered, RECORDS)
    assert len(rows) == 2 and all(r["result"] != "pass" for r in rows), rows
    assert dkimpy_verify(tampered, RECORDS) == [False, False]
    assert {r.status for r in ours_verify(tampered, RECORDS)} == {dkim.DkimStatus.FAIL}


@pytest.mark.parametrize("canonicalization", ["relaxed/relaxed", "simple/simple", "relaxed/simple"])
def test_we_verify_mailauth_signatures(canonicalization: str) -> None:
    original = message(4096)
    keys = [
        {
            "domain": "example.com",
            "selector": "rsa1",
            "pem": pem(RSA_KEY),
            "algorithm": "rsa-sha256",
        },
        {
            "domain": "example.com",
            "selector": "ed1",
            "pem": pem(ED_KEY),
            "algorithm": "ed25519-sha256",
        },
    ]
    job = {
        "mode": "sign",
        "message": base64.b64encode(original).decode(),
        "keys": keys,
        "canonicalization": canonicalization,
    }
    signatures = node(job).encode()
    assert signatures.count(b"DKIM-Signature:") == 2, signatures
    signed = signatures + original
    results = ours_verify(signed, RECORDS)
    assert [(r.status, r.algorithm) for r in results] == [
        (dkim.DkimStatus.PASS, "rsa-sha256"),
        (dkim.DkimStatus.PASS, "ed25519-sha256"),
    ], results
    tampered = signed.replace(b"Numbers  are", b"Numbers were", 1)
    assert {r.status for r in ours_verify(tampered, RECORDS)} == {dkim.DkimStatus.FAIL}


# --- the modifier in a running mail pod --------------------------------------------------------


@pytest.fixture(scope="module")
def signing_pod(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[MailpodProcess, dict[tuple[str, str], str]]]:
    """A mail pod whose config has an RSA-2048 and an Ed25519 key for example.com, generated and
    published exactly as the operator does it."""
    root = Path(tmp_path_factory.mktemp("dkim-pod"))
    keys, records = [], {}
    for selector, algorithm in (
        ("r1", OperatorAlgorithm.RSA_2048),
        ("e1", OperatorAlgorithm.ED25519),
    ):
        private_pem = generate_dkim_key(algorithm)
        key_file = root / f"{selector}.pem"
        key_file.write_text(private_pem)
        key_file.chmod(0o600)
        material = DkimKeyMaterial("example.com", selector, algorithm, private_pem)
        records[(selector, "example.com")] = dkim_record_value(material)
        pod_algorithm = (
            "rsa-sha256" if algorithm is OperatorAlgorithm.RSA_2048 else "ed25519-sha256"
        )
        keys.append(
            {
                "domain": "example.com",
                "selector": selector,
                "algorithm": pod_algorithm,
                "private_key_file": str(key_file),
            }
        )
    server = MailpodProcess(root, workers=1, overrides={"dkim_keys": keys}).start()
    try:
        yield server, records
    finally:
        server.stop()


def _swaks(*args: str) -> str:
    result = subprocess.run(["swaks", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _wait_for(pod: MailpodProcess, address: str, count: int) -> list[bytes]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        messages = pod.messages(address)
        if len(messages) >= count:
            return messages
        time.sleep(0.05)
    raise AssertionError(f"{address} has {len(pod.messages(address))} messages, not {count}")


def test_submitted_mail_is_stored_dual_signed(
    signing_pod: tuple[MailpodProcess, dict[tuple[str, str], str]],
) -> None:
    pod, records = signing_pod
    before = len(pod.messages(BOB))
    _swaks(
        "--server",
        f"127.0.0.1:{pod.ports['submission']}",
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        ALICE,
        "--auth-password",
        PASSWORDS[ALICE],
        "--from",
        ALICE,
        "--to",
        BOB,
        "--header",
        "Subject: signed by the pod",
        "--body",
        "Line one.  \nLine two.\n",
    )
    stored = _wait_for(pod, BOB, before + 1)[-1]
    header = stored.split(b"\r\n\r\n", 1)[0]
    assert header.count(b"DKIM-Signature:") == 2, header
    assert header.index(b"DKIM-Signature: v=1; a=rsa-sha256;") < header.index(b"\r\nFrom:")
    assert dkimpy_verify(stored, records) == [True, True]
    rows = mailauth_verify(stored, records)
    assert [(r["result"], r["selector"]) for r in rows] == [("pass", "r1"), ("pass", "e1")], rows
    assert {r.status for r in ours_verify(stored, records)} == {dkim.DkimStatus.PASS}
    # The key material never reaches the logs.
    for (selector, _), _record in records.items():
        private_pem = (pod.root / f"{selector}.pem").read_text()
        assert private_pem.splitlines()[1] not in pod.log()


def test_mail_received_on_port_25_is_not_signed(
    signing_pod: tuple[MailpodProcess, dict[tuple[str, str], str]],
) -> None:
    pod, _ = signing_pod
    before = len(pod.messages(BOB))
    _swaks(
        "--server",
        f"127.0.0.1:{pod.ports['smtp']}",
        "--from",
        "friend@example.net",
        "--to",
        BOB,
        "--header",
        "From: Alice <alice@example.com>",  # forged: must not get our signature
    )
    stored = _wait_for(pod, BOB, before + 1)[-1]
    assert b"DKIM-Signature:" not in stored.split(b"\r\n\r\n", 1)[0]
