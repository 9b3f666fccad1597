"""`letterbox up` (the README's main command): examples/ become a running mail pod."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, REPO
from tests.harness.ports import free_port

pytestmark = pytest.mark.integration


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "letterbox up exited early"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("mail pod did not come up")


def test_up_serves_the_examples_and_follows_manifest_edits(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    shutil.copytree(EXAMPLES, manifests, ignore=shutil.ignore_patterns("invalid"))
    state = tmp_path / "state"
    ports = {kind: free_port() for kind in ("smtp", "submission", "submissions", "http")}
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'operator'}:{REPO}"}
    out = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "letterbox",
            "up",
            "--state-dir",
            str(state),
            str(manifests),
            *(f"--port={kind}={port}" for kind, port in ports.items()),
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        _wait_port(ports["smtp"], proc)
        announced = (tmp_path / "up.log").read_text()
        assert "lb._domainkey.example.com" in announced  # the DNS plan
        assert f"swaks --server 127.0.0.1:{ports['smtp']}" in announced
        password = (state / "default" / "mailboxes" / "alice.password").read_text()
        assert password not in announced  # the password itself is never printed

        message = tmp_path / "message.eml"
        message.write_bytes(b"From: alice@example.com\r\nSubject: local mode works\r\n\r\nhi\r\n")
        sent = subprocess.run(
            [
                "curl",
                "-sSk",
                f"smtps://127.0.0.1:{ports['submissions']}",
                "--mail-from",
                "alice@example.com",
                "--mail-rcpt",
                "bob@example.com",
                "-u",
                f"alice@example.com:{password}",
                "-T",
                str(message),
            ],
            capture_output=True,
            timeout=30,
        )
        assert sent.returncode == 0, sent.stderr
        # bob's password comes from the Secret in the manifests, in plain text there.
        swaks = subprocess.run(
            [
                "swaks",
                "--server",
                f"127.0.0.1:{ports['submission']}",
                "--tls",
                "--auth",
                "PLAIN",
                "--auth-user",
                "bob@example.com",
                "--auth-password",
                "correct horse battery staple",
                "--from",
                "bob@example.com",
                "--to",
                "alice@example.com",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert swaks.returncode == 0, swaks.stdout
        bob_new = state / "mail" / "example.com" / "bob" / "new"
        assert any(b"Subject: local mode works" in f.read_bytes() for f in bob_new.iterdir())

        # A new Mailbox in the manifests is live in the running pod within seconds.
        (manifests / "carol.yaml").write_text(
            "apiVersion: letterbox.dev/v1alpha1\nkind: Mailbox\nmetadata: {name: carol}\n"
            "spec: {address: carol@example.com}\n"
        )
        deadline = time.monotonic() + 10
        while True:
            probe = subprocess.run(
                [
                    "swaks",
                    "--server",
                    f"127.0.0.1:{ports['smtp']}",
                    "--to",
                    "carol@example.com",
                    "--from",
                    "x@remote.test",
                    "--quit-after",
                    "RCPT",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if probe.returncode == 0:
                break
            assert time.monotonic() < deadline, probe.stdout
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        out.close()
    assert proc.returncode == 0
