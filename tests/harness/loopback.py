"""What the loopback peer harnesses (PowerDNS, BIND, Pebble) share: a work directory holding the
server's log, `with` support that cleans up a server whose start failed half-way, and the log's
tail for error messages."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Self

from tests.harness.controlplane import _tail


class LoopbackServer:
    """Subclasses set `workdir` and `log_name` and implement `start` and `stop`."""

    workdir: Path
    log_name: str

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.workdir / self.log_name, lines)
