"""The reloading resolver: rebuilt when the settings change, kept (cache and all) otherwise."""

from __future__ import annotations

from mailpod.checks.dnsreload import ReloadingResolver
from mailpod.config import ResolverConfig
from mailpod.dns import Resolver
from tests.unit.mailpod.checks.zonedata import ZoneResolver

ZONES = {
    "192.0.2.1:53": {"example.test": [{"TXT": "from the first server"}]},
    "192.0.2.2:53": {"example.test": [{"TXT": "from the second server"}]},
}


async def test_follows_changed_settings_only() -> None:
    built: list[ResolverConfig] = []

    def factory(settings: ResolverConfig) -> Resolver:
        built.append(settings)
        return ZoneResolver(ZONES[settings.nameservers[0]])

    current = [ResolverConfig(nameservers=("192.0.2.1:53",))]
    resolver = ReloadingResolver(lambda: current[0], factory)
    first = resolver.current
    assert (await resolver.query("example.test", "TXT")).records == ("from the first server",)
    # A reload that left the resolver settings alone (a new but equal object) keeps it.
    current[0] = ResolverConfig(nameservers=("192.0.2.1:53",))
    assert resolver.current is first
    current[0] = ResolverConfig(nameservers=("192.0.2.2:53",), timeout_seconds=1.0)
    assert (await resolver.query("example.test", "TXT")).records == ("from the second server",)
    assert resolver.current is not first
    assert [s.nameservers for s in built] == [("192.0.2.1:53",), ("192.0.2.2:53",)]
