"""Owns ``[[client_rules]]``: the client address allow-list (PgBouncer's hba file, in TOML),
and the linear first-match lookup a login makes against it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .core import AuthType
from .schema import Checker, Key, Kind, all_valid
from .tables import read_entries

__all__ = ["CLIENT_RULE_KEYS", "REJECT", "ClientRule", "build_client_rules", "match_client_rule"]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# A rule's method: refuse the client, or one of the auth types.
REJECT: Final = "reject"
METHODS: Final = (REJECT, *(t.value for t in AuthType))
# Addresses that are not networks: every client, and clients on the Unix socket.
ALL: Final = "all"
LOCAL: Final = "local"

CLIENT_RULE_KEYS: Final[dict[str, Key]] = {
    "address": Key(Kind.STR, nonempty=True),
    "databases": Key(Kind.STRLIST, nonempty=True),
    "users": Key(Kind.STRLIST, nonempty=True),
    "method": Key(Kind.CHOICE, choices=METHODS),
}


@dataclass(frozen=True, slots=True)
class ClientRule:
    """One ``[[client_rules]]`` entry. ``network`` None with ``local`` False matches every
    address; empty ``databases``/``users`` match every name; ``method`` None is auth.type."""

    address: str
    network: IpNetwork | None = None
    local: bool = False
    databases: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    method: str | None = None

    def matches(self, addr: IpAddress | None, user: str, database: str) -> bool:
        """``addr`` None is a Unix-socket client."""
        network = self.network
        if self.local:
            if addr is not None:
                return False
        elif network is not None and (
            addr is None or addr.version != network.version or addr not in network
        ):
            return False
        if self.databases and database not in self.databases:
            return False
        return not self.users or user in self.users


def parse_address(text: str) -> IpNetwork | str:
    """A rule's address: ``all``, ``local``, or a network (a bare address is one host);
    a message when it is none of them."""
    lowered = text.strip().lower()
    if lowered in (ALL, LOCAL):
        return lowered
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        return f"expected a CIDR network (10.0.0.0/8, fd00::/8), an address, all or local: {exc}"


def client_address(host: object) -> IpAddress | None:
    """The address rules see for a peer: IPv4-mapped IPv6 as IPv4 (a dual-stack listener);
    None for a Unix-socket peer or anything unparsable."""
    if not isinstance(host, str) or not host:
        return None
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def match_client_rule(
    rules: Sequence[ClientRule], addr: IpAddress | None, user: str, database: str
) -> ClientRule | None:
    """The first rule matching the client, or None (refused when any rule exists)."""
    for rule in rules:
        if rule.matches(addr, user, database):
            return rule
    return None


def build_client_rules(checker: Checker, raw: object) -> tuple[ClientRule, ...]:
    """The ``[[client_rules]]`` array, in file order."""
    rules: list[ClientRule] = []
    for path, values in read_entries(checker, "client_rules", raw, CLIENT_RULE_KEYS, named=False):
        if "address" not in values:
            checker.add(f"{path}.address", "required")
            continue
        if not all_valid(values):
            continue
        parsed = parse_address(values["address"])
        if isinstance(parsed, str) and parsed not in (ALL, LOCAL):
            checker.add(f"{path}.address", parsed)
            continue
        rules.append(_rule(values, parsed))
    return tuple(rules)


def _rule(values: Mapping[str, Any], parsed: IpNetwork | str) -> ClientRule:
    return ClientRule(
        address=values["address"],
        network=None if isinstance(parsed, str) else parsed,
        local=parsed == LOCAL,
        databases=frozenset(values.get("databases", ())),
        users=frozenset(values.get("users", ())),
        method=values.get("method"),
    )
