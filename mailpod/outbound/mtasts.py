"""MTA-STS (RFC 8461): discover, fetch, cache and apply a recipient domain's policy.

Discovery is the `_mta-sts.<domain>` TXT record (exactly one starting "v=STSv1;" with an id);
the policy comes from https://mta-sts.<domain>/.well-known/mta-sts.txt over verified HTTPS, with
no redirects. Policies are cached by domain until max_age; a changed TXT id triggers a refetch,
and a failing refetch keeps the cached policy (§5.1), so an attacker who blocks the fetch
cannot downgrade us. The host name goes through the pod's Resolver like every other lookup; the
HTTPS connection is made to that address with the name as SNI and Host.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import httpx

from mailpod.dns import DnsTemporaryError, Resolver, Status
from mailpod.outbound.mx import addresses

log = logging.getLogger("mailpod.outbound.mtasts")

MAX_POLICY_BYTES = 64 * 1024
MAX_AGE_LIMIT = 31_557_600  # one year (§3.2)
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


class Mode(StrEnum):
    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


@dataclass(frozen=True)
class Policy:
    id: str
    mode: Mode
    mx: tuple[str, ...]
    max_age: int

    def matches(self, host: str) -> bool:
        """§4.1: an MX pattern matches the host exactly, or "*.example.com" matches one
        left-most label in front of example.com, and no more."""
        host = host.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, dot, rest = host.partition(".")
                if dot and label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


class PolicyError(ValueError):
    pass


def parse_txt(records: tuple[str, ...]) -> str | None:
    """The policy id of the one STSv1 TXT record, or None (no record, several, or invalid)."""
    found = [r for r in records if r.startswith("v=STSv1")]
    if len(found) != 1:
        return None
    fields = dict(part.strip().partition("=")[::2] for part in found[0].split(";") if part.strip())
    if fields.get("v") != "STSv1":
        return None
    policy_id = fields.get("id", "")
    return policy_id if _ID.match(policy_id) else None


def parse_policy(text: str, policy_id: str) -> Policy:
    version = mode = None
    max_age: int | None = None
    mx: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"bad policy line {line[:60]!r}")
        key, value = key.strip(), value.strip()
        if key == "version":
            version = value
        elif key == "mode":
            mode = value
        elif key == "max_age":
            if not value.isdigit() or len(value) > 10:
                raise PolicyError(f"bad max_age {value!r}")
            max_age = min(int(value), MAX_AGE_LIMIT)
        elif key == "mx":
            mx.append(value.rstrip(".").lower())
        # Unknown keys are ignored (§3.2, extensions).
    if version != "STSv1":
        raise PolicyError("version is not STSv1")
    if mode not in {m.value for m in Mode}:
        raise PolicyError(f"bad mode {mode!r}")
    if max_age is None:
        raise PolicyError("no max_age")
    if mode != Mode.NONE and not mx:
        raise PolicyError("no mx patterns")
    return Policy(policy_id, Mode(mode), tuple(mx), max_age)


@dataclass
class _Cached:
    policy: Policy
    expires: float


class MtaStsClient:
    def __init__(
        self,
        resolver: Resolver,
        *,
        port: int = 443,
        verify: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.resolver = resolver
        self.port = port
        self.verify = verify or ssl.create_default_context()
        self.timeout = timeout
        self.clock = clock
        self._cache: dict[str, _Cached] = {}

    async def policy(self, domain: str) -> Policy | None:
        """The policy in force for `domain`, or None. Never raises for the domain's faults."""
        domain = domain.rstrip(".").lower()
        cached = self._cache.get(domain)
        if cached is not None and cached.expires <= self.clock():
            del self._cache[domain]
            cached = None
        try:
            answer = await self.resolver.query(f"_mta-sts.{domain}", "TXT")
            policy_id = parse_txt(answer.records) if answer.status is Status.FOUND else None
        except DnsTemporaryError:
            policy_id = None
        if policy_id is None:
            return cached.policy if cached else None  # §5.1: keep using a cached policy
        if cached is not None and cached.policy.id == policy_id:
            return cached.policy
        try:
            policy = await self._fetch(domain, policy_id)
        except (PolicyError, httpx.HTTPError, DnsTemporaryError, OSError) as error:
            log.warning(
                "MTA-STS policy fetch failed",
                extra={"domain": domain, "reason": str(error) or repr(error)},
            )
            return cached.policy if cached else None
        if policy.mode is Mode.NONE and policy.max_age == 0:
            self._cache.pop(domain, None)
        else:
            self._cache[domain] = _Cached(policy, self.clock() + policy.max_age)
        return policy

    async def _fetch(self, domain: str, policy_id: str) -> Policy:
        host = f"mta-sts.{domain}"
        found = await addresses(self.resolver, host)
        if not found:
            raise PolicyError(f"{host} has no address")
        last: Exception | None = None
        for address in found:
            netloc = f"[{address}]" if ":" in address else address
            url = f"https://{netloc}:{self.port}/.well-known/mta-sts.txt"
            try:
                async with httpx.AsyncClient(
                    verify=self.verify, timeout=self.timeout, follow_redirects=False
                ) as client:
                    # Connect to the address we resolved; verify the certificate for the name.
                    request = client.build_request(
                        "GET",
                        url,
                        headers={"Host": host if self.port == 443 else f"{host}:{self.port}"},
                        extensions={"sni_hostname": host},
                    )
                    response = await client.send(request, stream=True)
                    try:
                        if response.status_code != 200:
                            raise PolicyError(f"HTTP {response.status_code}")
                        content_type = response.headers.get("content-type", "")
                        if content_type.split(";")[0].strip().lower() != "text/plain":
                            raise PolicyError(f"content type {content_type!r}")
                        body = b""
                        async for chunk in response.aiter_bytes():
                            body += chunk
                            if len(body) > MAX_POLICY_BYTES:
                                raise PolicyError("policy too large")
                    finally:
                        await response.aclose()
                return parse_policy(body.decode("utf-8", "replace"), policy_id)
            except (httpx.HTTPError, OSError) as error:
                last = error
        assert last is not None
        raise last
