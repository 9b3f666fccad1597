from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from mailpod.cli import main
from mailpod.config import ConfigError, load_config

HASH = "$2b$04$" + "a" * 53
BASE = {
    "hostname": "mail.example.com",
    "listeners": [{"kind": "smtp", "port": 25}],
    "domains": ["example.com"],
    "storage": {"mail_root": "/var/mail", "queue_dir": "/var/queue"},
}


def _write(path: Path, document: object) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def test_shards_merge(tmp_path: Path) -> None:
    _write(tmp_path / "00-settings.yaml", BASE)
    _write(
        tmp_path / "mailboxes-0.yaml",
        {"mailboxes": [{"address": "a@example.com", "password_hash": HASH}]},
    )
    _write(
        tmp_path / "mailboxes-1.yaml",
        {"mailboxes": [{"address": "b@example.com", "password_hash": HASH}]},
    )
    (tmp_path / ".hidden.yaml").write_text("not: [valid")  # Secret volumes' dot entries are skipped
    config = load_config(tmp_path)
    assert [m.address for m in config.mailboxes] == ["a@example.com", "b@example.com"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"mailboxes": [{"address": "a@example.com", "password_hash": "plaintext"}]},
            "mailboxes.0.password_hash",
        ),
        (
            {"mailboxes": [{"address": "a@other.test", "password_hash": HASH}]},
            "its domain is not in domains",
        ),
        ({"listeners": [{"kind": "submission", "port": 587}]}, "need tls (AUTH only over TLS)"),
        (
            {"listeners": [{"kind": "smtp", "port": 25}, {"kind": "smtp", "port": 25}]},
            "two listeners on 0.0.0.0:25",
        ),
        ({"version": 2}, "understands config version 1"),
        ({"hostname": "not a host"}, "hostname"),
        ({"unknown": 1}, "unknown: Extra inputs are not permitted"),
    ],
)
def test_bad_config_fails_fast_with_field_and_reason(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    path = _write(tmp_path / "config.yaml", {**BASE, **change})
    with pytest.raises(ConfigError, match="invalid config") as error:
        load_config(path)
    assert message in str(error.value)


def test_a_key_set_twice_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", BASE)
    _write(tmp_path / "b.yaml", {"hostname": "other.example.com"})
    with pytest.raises(ConfigError, match="hostname is set by more than one file"):
        load_config(tmp_path)


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(tmp_path / "good.yaml", BASE)
    assert main(["check-config", "--config", str(good)]) == 0
    assert capsys.readouterr().out.startswith("ok: 1 domains, 0 mailboxes")
    bad = _write(tmp_path / "bad.yaml", {**BASE, "domains": ["Not A Domain"]})
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "domains.0" in capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_a_port_in_use_is_a_clear_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        storage = {"mail_root": str(tmp_path / "mail"), "queue_dir": str(tmp_path / "queue")}
        listeners = [{"kind": "smtp", "address": "127.0.0.1", "port": port}]
        config = _write(
            tmp_path / "config.yaml", {**BASE, "listeners": listeners, "storage": storage}
        )
        assert main(["run", "--config", str(config), "--workers", "1"]) == 2
    assert f"smtp listener on 127.0.0.1:{port}: Address already in use" in capsys.readouterr().err
