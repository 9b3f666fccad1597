"""The served certificate is replaced only by a usable pair; a bad one leaves it untouched."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from mailpod import metrics
from mailpod.state import server_tls_context
from mailpod.tls import load_pair


def _pem(ca: trustme.CA) -> tuple[bytes, bytes, int]:
    leaf = ca.issue_cert("mail.example.com")
    cert = leaf.cert_chain_pems[0].bytes()
    return cert, leaf.private_key_pem.bytes(), x509.load_pem_x509_certificate(cert).serial_number


def _served(context: ssl.SSLContext, ca: trustme.CA) -> int:
    """The serial a handshake against `context` gets, over a real socket pair."""
    server_sock, client_sock = socket.socketpair()
    result: list[int] = []

    def serve() -> None:
        with context.wrap_socket(server_sock, server_side=True) as tls:
            tls.recv(1)

    thread = threading.Thread(target=serve)
    thread.start()
    client = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    with client.wrap_socket(client_sock, server_hostname="mail.example.com") as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        result.append(x509.load_der_x509_certificate(der).serial_number)
        tls.send(b"x")
    thread.join(5)
    return result[0]


def test_a_mismatched_pair_is_refused_and_the_old_one_kept(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key, serial = _pem(ca)
    (tmp_path / "c").write_bytes(cert)
    (tmp_path / "k").write_bytes(key)
    context = server_tls_context(tmp_path / "c", tmp_path / "k")
    new_cert, new_key, new_serial = _pem(ca)
    with pytest.raises(ssl.SSLError):
        load_pair(context, new_cert, key)  # certificate renewed, key not yet
    assert _served(context, ca) == serial
    with pytest.raises(ssl.SSLError):
        load_pair(context, b"not a certificate", key)
    assert _served(context, ca) == serial
    not_after = load_pair(context, new_cert, new_key)
    assert _served(context, ca) == new_serial
    rendered = metrics.render_metrics()[0].decode()
    (line,) = [
        line
        for line in rendered.splitlines()
        if line.startswith("mailpod_tls_certificate_not_after_timestamp_seconds ")
    ]
    assert float(line.split()[1]) == not_after.timestamp()
