"""The pod's resolver as the checks and the outbound queue hold it: a `Resolver` that follows the
config's `resolver` settings, so new nameservers, timeout or cache size apply on a config reload
(files or the API) instead of at the next worker start.

A change builds a new resolver (its cache starts empty: answers from the old servers must not
outlive them); queries already waiting finish on the old one. Checking for a change is an
identity test per query, the settings object only changing when a new config is swapped in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mailpod.config import ResolverConfig
from mailpod.dns import Answer, CachingResolver, Resolver

log = logging.getLogger("mailpod.dns")


class ReloadingResolver:
    """`Resolver` over a resolver rebuilt from `settings()` whenever they change."""

    def __init__(
        self,
        settings: Callable[[], ResolverConfig],
        factory: Callable[[ResolverConfig], Resolver] = CachingResolver,
    ) -> None:
        self._settings_of = settings
        self._factory = factory
        self._settings = settings()
        self._resolver = factory(self._settings)

    @property
    def current(self) -> Resolver:
        """The resolver for the settings in force now."""
        settings = self._settings_of()
        if settings is not self._settings:
            if settings != self._settings:
                self._resolver = self._factory(settings)
                log.info(
                    "resolver settings applied",
                    extra={
                        "nameservers": list(settings.nameservers) or "resolv.conf",
                        "timeout_seconds": settings.timeout_seconds,
                        "cache_entries": settings.cache_entries,
                    },
                )
            self._settings = settings
        return self._resolver

    async def query(self, name: str, rtype: str) -> Answer:
        return await self.current.query(name, rtype)
