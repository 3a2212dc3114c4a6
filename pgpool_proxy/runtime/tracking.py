"""Owns the proxy's topologies: one per distinct set of hosts (or Aurora cluster), its monitor,
and Aurora discovery. Databases listing the same hosts (a writer entry and a reader alias)
share one topology, so each server gets one monitoring connection."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import Config, DatabaseConfig
from ..pool.monitor import MonitorLogin, Spawn, TopologyMonitor
from ..pool.topology import UNKNOWN, Topology

if TYPE_CHECKING:
    from ..aws.discovery import AddressMap, AuroraDiscovery
    from ..pool.spec import CredentialSource
    from .services import Services

log = logging.getLogger("pgpool_proxy.topology")

# A follower waits this much longer than worker 0's own startup probes for their first view.
FOLLOW_MARGIN_S = 2.0


class Tracking:
    """Every topology of one proxy process; `for_database` is what pools attach to."""

    def __init__(
        self,
        config: Config,
        services: Services,
        spawn: Spawn,
        address_map: AddressMap | None = None,
    ) -> None:
        self.config = config
        self.services = services
        self._spawn = spawn
        self.address_map = address_map
        self.topologies: dict[str, Topology] = {}  # by the first database's name
        self._by_key: dict[object, Topology] = {}
        self._by_database: dict[str, Topology] = {}
        self.monitors: list[TopologyMonitor] = []
        self._discoveries: list[tuple[AuroraDiscovery, Topology, TopologyMonitor]] = []
        self._sources: list[tuple[Topology, DatabaseConfig]] = []  # each with its first db
        # False on a worker that follows worker 0's probes (runtime.awscaller) instead.
        self.probing = False
        # A follower's hook: a pool here suspects its server, so worker 0 should probe now.
        self.on_suspect: Callable[[str], None] | None = None
        for db in config.databases:
            if db.tracked:
                self._add(db)

    def _add(self, db: DatabaseConfig) -> None:
        key: object = ("aurora", db.aurora_cluster) if db.aurora_cluster else db.addresses()
        topo = self._by_key.get(key)
        if topo is None:
            addresses = () if db.aurora_cluster else db.addresses()
            topo = Topology(db.name, addresses)
            self._by_key[key] = topo
            self.topologies[db.name] = topo
            self._sources.append((topo, db))
        self._by_database[db.name] = topo

    def _build_monitors(self) -> None:
        """Fresh monitors (a stopped one does not start again) and Aurora discoveries."""
        self.monitors = []
        self._discoveries = []
        for topo, db in self._sources:
            monitor = TopologyMonitor(
                topo,
                self.config.topology,
                db.dbname or db.name,
                self._credentials(db),
                self.services.server_tls,
                self._spawn,
            )
            self.monitors.append(monitor)
            if db.aurora_cluster:
                from ..aws.discovery import AuroraDiscovery

                assert db.aurora_region is not None
                discovery = AuroraDiscovery(
                    db.aurora_cluster,
                    db.aurora_region,
                    db.aurora_endpoint_url,
                    address_map=self.address_map,
                )
                self._discoveries.append((discovery, topo, monitor))

    def _credentials(self, db: DatabaseConfig) -> MonitorLogin:
        config = self.config
        source = self.services.credentials_for(db)
        if source is not None:
            return _SecretLogin(source)
        if db.monitor_user is not None:
            user_cfg = config.user(db.monitor_user)
            assert user_cfg is not None  # checked at load (config.databases.check_monitor_logins)
            return _FixedLogin(user_cfg.name, user_cfg.password)
        assert db.user is not None  # checked at load (config.databases.check_monitor_logins)
        forced = config.user(db.user)
        return _FixedLogin(db.user, db.password or (forced.password if forced else None))

    def for_database(self, db: DatabaseConfig) -> Topology | None:
        return self._by_database.get(db.name)

    async def start(self, probe: bool = True) -> None:
        """Discover Aurora members (once, before listening), then start probing; with `probe`
        False, wait for the views worker 0 pushes instead (runtime.awscaller)."""
        if probe:
            await self.start_probing()
            return
        self.stop_probing()  # installs the suspect hooks
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.topology.probe_timeout_s + FOLLOW_MARGIN_S
        while loop.time() < deadline and self._unknown() and not self.probing:
            await asyncio.sleep(0.01)

    def _unknown(self) -> bool:
        return any(h.role == UNKNOWN for t in self.topologies.values() for h in t.hosts)

    async def start_probing(self) -> None:
        """Probe from this process (always when alone; a follower while worker 0 is away)."""
        if self.probing:
            return
        self.probing = True
        self._build_monitors()
        for discovery, topo, _monitor in self._discoveries:
            try:
                await self._discover(discovery, topo)
            except Exception as exc:
                # The proxy still starts: the discovery loop retries and queued clients get a
                # clear error after failover_timeout_s.
                log.error("topology %s: %s", topo.name, exc)
        for monitor in self.monitors:
            monitor.start()
        # Listen only once every host has answered (or failed) once, so the first clients find
        # the writer known; bounded by probe_timeout_s.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.topology.probe_timeout_s
        while loop.time() < deadline and self._unknown():
            await asyncio.sleep(0.01)
        for discovery, topo, monitor in self._discoveries:
            self._spawn(self._discovery_loop(discovery, topo, monitor), f"discovery:{topo.name}")

    async def _discover(self, discovery: AuroraDiscovery, topo: Topology) -> None:
        members = await discovery.members()
        loop = asyncio.get_running_loop()
        added, removed = topo.set_hosts(
            [(m.host, m.port, m.instance_id) for m in members], loop.time()
        )
        for h in added:
            log.info("topology %s: discovered %s (%s)", topo.name, h.address, h.instance_id)
        for h in removed:
            log.info("topology %s: %s left the cluster", topo.name, h.address)

    async def _discovery_loop(
        self, discovery: AuroraDiscovery, topo: Topology, monitor: TopologyMonitor
    ) -> None:
        from ..aws.discovery import DiscoveryError

        interval = self.config.topology.discovery_interval_s
        while not monitor.stopped:
            await asyncio.sleep(interval)
            before = {h.key: h for h in topo.hosts}
            try:
                await self._discover(discovery, topo)
            except DiscoveryError as exc:
                log.warning("topology %s: %s", topo.name, exc)
                continue
            for h in topo.hosts:
                monitor.watch(h)
            for key, h in before.items():
                if topo.host(*key) is None:
                    monitor.forget(h)

    def stop(self) -> None:
        self.stop_probing()

    def stop_probing(self) -> None:
        """Stop this process's monitors (and discovery loops, which end with them)."""
        self.probing = False
        for monitor in self.monitors:
            monitor.stop()
        for key, topo in self.topologies.items():
            topo.on_fast = functools.partial(self._suspected, key)

    def _suspected(self, key: str) -> None:
        if self.on_suspect is not None:
            self.on_suspect(key)


class _FixedLogin:
    def __init__(self, user: str, password: str | None) -> None:
        self.user, self.password = user, password

    async def candidates(self, failed_password: str | None) -> list[tuple[str, str | None]]:
        return [(self.user, self.password)] if failed_password is None else []

    def succeeded(self, user: str, password: str | None) -> None:
        pass


class _SecretLogin:
    """The database's Secrets Manager credentials, refreshed when the server refuses them."""

    def __init__(self, source: CredentialSource) -> None:
        self.source = source

    async def candidates(self, failed_password: str | None) -> list[tuple[str, str | None]]:
        if failed_password is None:
            return [await self.source.current()]
        return list(await self.source.after_auth_failure(failed_password))

    def succeeded(self, user: str, password: str | None) -> None:
        if password is not None:
            self.source.note_success(user, password)
