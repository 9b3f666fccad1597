"""kopf's session: the same server and identity as letterbox.kube, and a token that can change
is given an expiry so kopf logs in again and picks up the rotated one."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from letterbox.handlers.operator import TOKEN_REFRESH_SECONDS, _session
from letterbox.kube.connection import ApiServer


@dataclass
class _Transport:
    api_server: ApiServer


@dataclass
class _Sync:
    transport: _Transport


@dataclass
class _Kube:
    sync: _Sync


def kube_for(api_server: ApiServer) -> _Kube:
    return _Kube(_Sync(_Transport(api_server)))


async def test_static_token_never_expires() -> None:
    session = _session(kube_for(ApiServer("https://api.test", token="t", namespace="mail")))  # type: ignore[arg-type]
    try:
        assert (session.server, session.default_namespace, session.expiration) == (
            "https://api.test",
            "mail",
            None,
        )
        assert session.aiohttp_session.headers["Authorization"] == "Bearer t"
    finally:
        await session.aiohttp_session.close()


async def test_rotating_token_file_is_taken_again_before_long(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("rotated\n")
    session = _session(kube_for(ApiServer("https://api.test", token_file=tmp_path / "token")))  # type: ignore[arg-type]
    try:
        assert session.aiohttp_session.headers["Authorization"] == "Bearer rotated"
        assert session.expiration is not None
        left = session.expiration.timestamp() - time.time()
        assert 0 < left <= TOKEN_REFRESH_SECONDS
    finally:
        await session.aiohttp_session.close()
