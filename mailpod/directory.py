"""Who lives here: recipient resolution (mailboxes, plus-addressing, aliases, catch-all) and
sending rights, from one config snapshot. Immutable: a reload builds a new Directory."""

from __future__ import annotations

from dataclasses import dataclass

from mailpod.config import Mailbox as MailboxConfig
from mailpod.config import MailpodConfig

# Alias chains deeper than this are a configuration loop in all but name.
MAX_ALIAS_DEPTH = 10


@dataclass(frozen=True)
class Resolution:
    """Where mail for one recipient goes: local mailbox addresses and remote addresses."""

    local: tuple[str, ...] = ()
    remote: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        return bool(self.local or self.remote)


def split_address(address: str) -> tuple[str, str]:
    """(local part, domain): domains are case-insensitive; we also fold local parts, as Postfix
    virtual maps and Dovecot do, so Alice@ and alice@ are the same mailbox."""
    local, _, domain = address.rpartition("@")
    return local.lower(), domain.lower()


class Directory:
    def __init__(self, config: MailpodConfig) -> None:
        self.domains = frozenset(config.domains)
        self.mailboxes: dict[str, MailboxConfig] = {m.address.lower(): m for m in config.mailboxes}
        self.aliases: dict[str, tuple[str, ...]] = {
            a.address.lower(): tuple(d.lower() for d in a.destinations) for a in config.aliases
        }
        # Who may send as an alias: every local mailbox it (directly) delivers to.
        self._alias_senders: dict[str, set[str]] = {}
        for alias, destinations in self.aliases.items():
            if not alias.startswith("@"):
                for destination in destinations:
                    if destination in self.mailboxes:
                        self._alias_senders.setdefault(destination, set()).add(alias)

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self.domains

    def mailbox(self, address: str) -> MailboxConfig | None:
        return self.mailboxes.get(address.lower())

    def resolve(self, address: str) -> Resolution:
        """Expand `address` (any case, optional +tag) to its final destinations."""
        local: list[str] = []
        remote: list[str] = []
        self._expand(address.lower(), local, remote, depth=0, seen=set())
        return Resolution(tuple(dict.fromkeys(local)), tuple(dict.fromkeys(remote)))

    def _expand(
        self, address: str, local: list[str], remote: list[str], depth: int, seen: set[str]
    ) -> None:
        if depth > MAX_ALIAS_DEPTH or address in seen:
            return
        seen.add(address)
        local_part, domain = split_address(address)
        if domain not in self.domains:
            remote.append(address)
            return
        base = local_part.split("+", 1)[0] if "+" in local_part else local_part
        for candidate in dict.fromkeys((address, f"{base}@{domain}")):
            if candidate in self.mailboxes:
                local.append(candidate)
                return
            if candidate in self.aliases:
                for destination in self.aliases[candidate]:
                    self._expand(destination, local, remote, depth + 1, seen)
                return
        for destination in self.aliases.get(f"@{domain}", ()):
            self._expand(destination, local, remote, depth + 1, seen)

    def may_send_as(self, user: str, address: str) -> bool:
        """The authenticated `user` may use `address` as envelope sender or From: its own address
        (with any +tag), a send-as address, or an alias that delivers to it."""
        mailbox = self.mailboxes.get(user.lower())
        if mailbox is None:
            return False
        local_part, domain = split_address(address)
        plain = f"{local_part.split('+', 1)[0]}@{domain}"
        owned = {user.lower(), *(a.lower() for a in mailbox.send_as)}
        owned |= self._alias_senders.get(user.lower(), set())
        return address.lower() in owned or plain in owned
