"""Peering: cancel keys that name the instance that issued them, and forwarding a cancel request
for another instance's client to that instance (PgBouncer 1.19+'s peering).

A CancelRequest is a connection of its own, so a load balancer may hand it to any instance. The
key layout (docs/deploying.md):

- pid (31 bits, never negative): bits 24..30 the worker (runtime.workers), bits 0..23 random,
  and at least 2**22 (no server pid is that high, see pool.notify);
- secret (32 bits): bits 18..31 the peer_id, bits 0..17 random; without peering, 32 random bits;
- bit 31 of the pid is never set in a key the proxy hands out. A peer forwarding a cancel sets
  it: a cancel that carries it is handled where it lands and never forwarded again, so peers
  whose lists disagree cannot pass one around in a loop.

Peers come from ``[[peers]]`` (read at each forward, so a reload applies at once) and from
``proxy.peer_dns_name``: its A/AAAA records, resolved off the loop every
``peer_dns_refresh_s``, each asked for its peer_id on ``peer_dns_port`` (a startup packet of
the proxy's own, answered with one ParameterStatus; a peer id is no secret, every key carries
it). A configured peer wins over one found in DNS.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Final

from ..config import Config
from ..protocol import messages as m

log = logging.getLogger("pgpool_proxy.peers")

FORWARDED: Final = 1 << 31
PID_MASK: Final = FORWARDED - 1
PEER_SHIFT: Final = 18
SECRET_RANDOM_MASK: Final = (1 << PEER_SHIFT) - 1
# Cancels in flight to one peer; more are dropped (a cancel is best effort, a burst of them
# when the database is slow must not open thousands of sockets).
PEER_POOL_SIZE: Final = 64
# The longest a peer may take to say its id.
ASK_TIMEOUT_S: Final = 2.0
# Addresses of peer_dns_name asked per round (each is a connection, every round).
MAX_DNS_PEERS: Final = 256
_REPLY_LIMIT: Final = 64


def key_secret(peer_id: int, raw: int) -> int:
    """The secret of a cancel key issued by peer ``peer_id`` from random bits ``raw``."""
    if not peer_id:
        return raw & 0xFFFFFFFF
    return (peer_id << PEER_SHIFT) | (raw & SECRET_RANDOM_MASK)


def key_peer(secret: int) -> int:
    """The peer_id a key's secret names (meaningful only where peering is on)."""
    return (secret >> PEER_SHIFT) & 0x3FFF


def peering_configured(config: Config) -> bool:
    return bool(config.peers or config.proxy.peer_dns_name)


def dns_port(config: Config) -> int:
    return config.proxy.peer_dns_port or config.proxy.listen_port


@dataclass(slots=True)
class PeerStats:
    """One peer as SHOW PEERS lists it."""

    peer_id: int
    host: str
    port: int
    source: str  # "config" or "dns"
    in_flight: int = 0
    forwarded: int = 0
    failed: int = 0
    dropped: int = 0


async def ask_peer_id(host: str, port: int, timeout_s: float = ASK_TIMEOUT_S) -> int | None:
    """The peer_id the proxy at host:port announces; None when it cannot say (down, not a
    proxy, too slow)."""
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(m.peer_id_request())
            data = b""
            while len(data) < _REPLY_LIMIT:
                chunk = await reader.read(_REPLY_LIMIT - len(data))
                if not chunk:
                    break
                data += chunk
            return m.parse_peer_id_reply(data)
    except (OSError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()


async def resolve(name: str, port: int) -> list[tuple[str, int]]:
    """The addresses ``name`` has (A and AAAA), in the resolver's order, without repeats. The
    loop's getaddrinfo runs in a thread: a slow DNS server never holds the loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    found: dict[tuple[str, int], None] = {}
    for _family, _type, _proto, _canon, addr in infos:
        found[(str(addr[0]), int(addr[1]))] = None
    return list(found)


async def discover(name: str, port: int, own_id: int) -> dict[int, tuple[str, int]]:
    """peer_id -> address of every instance behind ``name`` that answers, this one excepted."""
    addresses = await resolve(name, port)
    if len(addresses) > MAX_DNS_PEERS:
        log.warning(
            "peer_dns_name %s has %d addresses; asking the first %d",
            name,
            len(addresses),
            MAX_DNS_PEERS,
        )
        addresses = addresses[:MAX_DNS_PEERS]
    ids = await asyncio.gather(*(ask_peer_id(h, p) for h, p in addresses))
    found: dict[int, tuple[str, int]] = {}
    for address, peer_id in zip(addresses, ids, strict=True):
        if not peer_id or peer_id == own_id:
            continue
        if peer_id in found:
            log.warning(
                "peers %s:%s and %s:%s both announce peer_id %d: give each instance its own",
                *found[peer_id],
                *address,
                peer_id,
            )
            continue
        found[peer_id] = address
    return found


def pick_peer_id(config: Config) -> int:
    """The peer_id of an instance started with peering but ``peer_id = 0``: a random one that no
    configured peer has and no instance behind ``peer_dns_name`` announces right now (two
    instances starting at the same moment may still draw the same one; each logs it when it
    sees the other). Blocking: called once before the event loop (and the workers) start."""
    taken = {p.peer_id for p in config.peers}
    if config.proxy.peer_dns_name:
        try:
            taken |= asyncio.run(discover(config.proxy.peer_dns_name, dns_port(config), 0)).keys()
        except OSError as exc:
            log.warning("peer_dns_name %s: %s", config.proxy.peer_dns_name, exc)
    while True:
        peer_id = 1 + secrets.randbelow((1 << 14) - 1)
        if peer_id not in taken:
            return peer_id


class Peering:
    """This instance's peers and the cancels forwarded to them."""

    def __init__(
        self,
        peer_id: int,
        config: Callable[[], Config],
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
    ) -> None:
        self.peer_id = peer_id
        self._config = config
        self._spawn = spawn
        self._stats: dict[tuple[str, int, str], PeerStats] = {}
        self.dns_peers: dict[int, tuple[str, int]] = {}
        self.dns_ok = False  # a DNS refresh has succeeded at least once
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # With an id, the loop runs even without a name: a reload may set one.
        if self.peer_id:
            self._task = asyncio.get_running_loop().create_task(self._dns_loop(), name="peer-dns")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # --- where a peer is ---------------------------------------------------------------------

    def target(self, peer_id: int) -> PeerStats | None:
        for p in self._config().peers:
            if p.peer_id == peer_id:
                return self._stat(peer_id, p.host, p.port, "config")
        address = self.dns_peers.get(peer_id)
        if address is not None:
            return self._stat(peer_id, address[0], address[1], "dns")
        return None

    def _stat(self, peer_id: int, host: str, port: int, source: str) -> PeerStats:
        st = self._stats.get((host, port, source))
        if st is None or st.peer_id != peer_id:
            st = PeerStats(peer_id, host, port, source)
            self._stats[(host, port, source)] = st
        return st

    def peers(self) -> list[PeerStats]:
        """Every peer known now, by peer_id (SHOW PEERS); this instance's own entry skipped."""
        rows: dict[int, PeerStats] = {}
        for p in self._config().peers:
            if p.peer_id != self.peer_id:
                rows.setdefault(p.peer_id, self._stat(p.peer_id, p.host, p.port, "config"))
        for peer_id, (host, port) in self.dns_peers.items():
            rows.setdefault(peer_id, self._stat(peer_id, host, port, "dns"))
        return [rows[k] for k in sorted(rows)]

    # --- forwarding --------------------------------------------------------------------------

    def forward(
        self, peer_id: int, pid: int, secret: int, done: Callable[[], None] | None = None
    ) -> bool:
        """Pass a cancel on to the peer that issued its key; False when no peer has that id.
        ``done`` runs once the peer has acted on it (or the attempt is given up)."""
        peer = self.target(peer_id) if peer_id != self.peer_id else None
        if peer is None:
            return False
        if peer.in_flight >= PEER_POOL_SIZE:
            peer.dropped += 1
            if done is not None:
                done()
            return True
        peer.in_flight += 1
        self._spawn(self._forward(peer, pid, secret, done), "forward-cancel")
        return True

    async def _forward(
        self, peer: PeerStats, pid: int, secret: int, done: Callable[[], None] | None
    ) -> None:
        writer = None
        try:
            async with asyncio.timeout(self._config().proxy.cancel_wait_timeout_s):
                reader, writer = await asyncio.open_connection(peer.host, peer.port)
                writer.write(m.cancel_request(pid | FORWARDED, secret))
                # The peer acts before it closes; whatever it sends is dropped as it comes.
                while await reader.read(4096):
                    pass
            peer.forwarded += 1
        except (OSError, TimeoutError) as exc:
            peer.failed += 1
            log.warning(
                "could not forward a cancel request to peer %d at %s:%s: %s",
                peer.peer_id,
                peer.host,
                peer.port,
                exc or type(exc).__name__,
            )
        finally:
            peer.in_flight -= 1
            if writer is not None:
                writer.close()
            if done is not None:
                done()

    # --- DNS ---------------------------------------------------------------------------------

    async def _dns_loop(self) -> None:
        while True:
            cfg = self._config()
            name = cfg.proxy.peer_dns_name
            if name:
                await self.refresh(name, dns_port(cfg))
            else:
                self.dns_peers = {}
            await asyncio.sleep(cfg.proxy.peer_dns_refresh_s)

    async def refresh(self, name: str, port: int) -> None:
        """Resolve and ask again; an answer that fails keeps the last good list."""
        try:
            found = await discover(name, port, self.peer_id)
        except OSError as exc:
            log.warning(
                "peer_dns_name %s: %s; keeping %d known peers", name, exc, len(self.dns_peers)
            )
            return
        if found.keys() != self.dns_peers.keys():
            log.info("peers from %s: %s", name, _describe(found.items()))
        self.dns_peers = found
        self.dns_ok = True
        # Counters of peers gone from DNS and config go too (pods come and go with new IPs).
        known = {(p.host, p.port, p.source) for p in self.peers()}
        for key, st in list(self._stats.items()):
            if key not in known and not st.in_flight:
                del self._stats[key]


def _describe(items: Iterable[tuple[int, tuple[str, int]]]) -> str:
    return ", ".join(f"{i}={h}:{p}" for i, (h, p) in sorted(items)) or "none"
