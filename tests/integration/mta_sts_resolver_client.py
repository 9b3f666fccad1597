"""Fetch a domain's MTA-STS policy with postfix-mta-sts-resolver, an independent implementation
(the resolver behind many Postfix installs), and print the outcome as JSON.

Run as its own process so its HTTP client is set up the way the daemon's is: the CA bundle comes
from SSL_CERT_FILE and an HTTPS proxy from HTTPS_PROXY, both read at start-up. The only thing
changed inside the library is where its DNS queries go (the test zone lives on a loopback
PowerDNS, not in the public DNS):

    python -m tests.integration.mta_sts_resolver_client DOMAIN NAMESERVER[:PORT] [KNOWN_ID]
"""

from __future__ import annotations

import asyncio
import json
import sys

from postfix_mta_sts_resolver.resolver import STSResolver


async def resolve(domain: str, nameserver: str, known_id: str | None) -> dict[str, object]:
    resolver = STSResolver(loop=asyncio.get_running_loop(), timeout=10)
    resolver._resolver.nameservers = [nameserver]
    status, result = await resolver.resolve(domain, known_id)
    policy_id, policy = result if result is not None else (None, None)
    return {"status": status.name, "id": policy_id, "policy": policy}


def main() -> None:
    domain, nameserver, *rest = sys.argv[1:]
    print(json.dumps(asyncio.run(resolve(domain, nameserver, rest[0] if rest else None))))


if __name__ == "__main__":
    main()
