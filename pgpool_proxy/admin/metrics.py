"""Owns the Prometheus view of one proxy process: a collector that reads live objects at scrape.

Nothing here runs per message. Pools, clients, secrets and the IAM cache keep plain ints (see
`counters`); `ProxyCollector.collect` walks them when Prometheus asks and builds the labelled
families then. Every metric name starts with ``pgpool_proxy_`` (the process collector's
``process_*`` aside).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from .. import __version__
from ..counters import WAIT_BOUNDS_S
from ..session.client_state import ClientState
from ..speedups import implementation
from .health import readiness

if TYPE_CHECKING:
    from ..pool.pool import Pool
    from ..runtime.server import ProxyServer

POOL_LABELS = ["database", "user"]

# How a client's state is reported: REPLAYING and PROBING hold a server connection, like ACTIVE.
_CLIENT_STATE = {
    ClientState.LOGIN: "login",
    ClientState.IDLE: "idle",
    ClientState.WAITING: "waiting",
    ClientState.REPLAYING: "active",
    ClientState.ACTIVE: "active",
    ClientState.PROBING: "active",
    ClientState.CHECKING: "active",
}
CLIENT_STATES = ("login", "idle", "waiting", "active")
SERVER_STATES = ("active", "idle", "connecting", "resetting")


class ProxyCollector(Collector):
    """Reads a ProxyServer at scrape time (call `collect` on the server's event loop)."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server

    def describe(self) -> Iterable[Metric]:
        # Registration must not walk the live objects (and names come and go with pools).
        return ()

    def collect(self) -> Iterator[Metric]:
        return iter(proxy_families(self.server))


def build_registry(server: ProxyServer) -> CollectorRegistry:
    """The registry one proxy process serves: its own families plus process_* metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(server))
    # Absent where /proc is not (the collector then yields nothing).
    registry.register(ProcessCollector(registry=None))
    return registry


def _pool_labels(key: tuple[Any, ...]) -> list[str]:
    return [str(key[0]), str(key[1]) if len(key) > 1 else ""]


def proxy_families(server: ProxyServer) -> list[Metric]:
    """Every pgpool_proxy_* family of this process, built from its live objects now."""
    out: list[Metric] = []
    info = GaugeMetricFamily(
        "pgpool_proxy_build_info",
        "pgpool-proxy version and hot-path implementation (always 1)",
        labels=["version", "implementation"],
    )
    info.add_metric([__version__, implementation()], 1)
    out.append(info)
    ready, _why = readiness(server)
    out.append(
        GaugeMetricFamily(
            "pgpool_proxy_ready", "1 when /readyz would answer 200, else 0", value=int(ready)
        )
    )
    out.extend(_client_families(server))
    out.extend(_pool_families(server))
    out.extend(_topology_families(server))
    out.extend(_aws_families(server))
    out.extend(_loop_families(server))
    return out


def _loop_families(server: ProxyServer) -> list[Metric]:
    watch = server.loopwatch
    lag = HistogramMetricFamily(
        "pgpool_proxy_event_loop_lag_seconds",
        "How late a timer due every 50 ms ran: the time the event loop was held by something "
        "else (a slow callback, a blocking call, a starved CPU), which every client waited too",
    )
    lag.add_metric([], watch.cumulative(), watch.sum_s)
    worst = GaugeMetricFamily(
        "pgpool_proxy_event_loop_lag_max_seconds",
        "The longest event loop lag seen since the process started",
        value=watch.max_s,
    )
    return [lag, worst]


# --- clients ---------------------------------------------------------------------------------


def _client_families(server: ProxyServer) -> list[Metric]:
    counters = server.counters
    by_state = dict.fromkeys(CLIENT_STATES, 0)
    for client in server.all_clients():
        name = _CLIENT_STATE.get(client.state)
        if name is not None:
            by_state[name] += 1
    clients = GaugeMetricFamily(
        "pgpool_proxy_client_connections",
        "Client connections by state (login: not logged in yet; active: linked to a server)",
        labels=["state"],
    )
    for state in CLIENT_STATES:
        clients.add_metric([state], by_state[state])
    accepted = CounterMetricFamily(
        "pgpool_proxy_client_accepted",
        "Client connections accepted (cancel requests included)",
        value=counters.accepted,
    )
    logins = CounterMetricFamily(
        "pgpool_proxy_client_logins",
        "Client logins completed, by kind (pool: a database served through a pool; admin: "
        "the admin console)",
        labels=["kind"],
    )
    logins.add_metric(["pool"], counters.logins)
    logins.add_metric(["admin"], counters.admin_logins)
    auth = CounterMetricFamily(
        "pgpool_proxy_auth_failures", "Client logins refused, by reason", labels=["reason"]
    )
    for reason, count in counters.auth_failures.items():
        auth.add_metric([reason], count)
    lookups = CounterMetricFamily(
        "pgpool_proxy_auth_query_lookups",
        "auth_query look-ups sent to PostgreSQL for users not in [[users]], by result (found, "
        "not_found, failed); answers from the cache are not counted",
        labels=["result"],
    )
    for result, count in getattr(counters, "auth_lookups", {}).items():
        lookups.add_metric([result], count)
    gone = CounterMetricFamily(
        "pgpool_proxy_client_disconnects",
        "Client connections closed, by typed reason",
        labels=["reason"],
    )
    for why, count in counters.client_disconnects.items():
        gone.add_metric([why.value], count)
    cancels = CounterMetricFamily(
        "pgpool_proxy_cancel_requests",
        "Cancel requests by result (sent: to the server running the key's query; idle: valid "
        "key, nothing running; unknown_key: no such key or wrong secret; relayed: to another "
        "worker)",
        labels=["result"],
    )
    for result, count in getattr(counters, "cancel_requests", {}).items():
        cancels.add_metric([result], count)
    return [clients, accepted, logins, auth, lookups, gone, cancels]


# --- pools -----------------------------------------------------------------------------------


# (kind, name, help, extra label) of each per-pool family, in the order they are exposed.
_POOL_FAMILIES: tuple[tuple[str, str, str, str | None], ...] = (
    ("gauge", "pgpool_proxy_pool_client_connections", "Logged-in clients of each pool by state",
     "state"),
    ("gauge", "pgpool_proxy_server_connections",
     "Server connections of each pool by state (resetting: between clients, running the "
     "proxy's reset or waiting for a cancel)", "state"),
    ("gauge", "pgpool_proxy_pool_size", "Maximum server connections of each pool", None),
    ("gauge", "pgpool_proxy_pool_max_wait_seconds",
     "How long the oldest queued client of each pool has waited", None),
    ("histogram", "pgpool_proxy_pool_wait_seconds",
     "Time clients waited for a server connection (borrow latency); an idle one taken at "
     "once counts as 0", None),
    ("counter", "pgpool_proxy_transactions",
     "Transactions that returned a server connection to the pool (transaction mode; in "
     "session mode, sessions)", None),
    ("counter", "pgpool_proxy_transaction_seconds",
     "Time server connections spent linked to clients, summed over those transactions", None),
    ("counter", "pgpool_proxy_queries",
     "Queries answered (ReadyForQuery forwarded to a client: one per simple query or Sync)",
     None),
    ("gauge", "pgpool_proxy_pinned_sessions",
     "Clients pinned to their server connection by session state (advisory lock, temp "
     "table, LISTEN, WITH HOLD cursor)", None),
    ("gauge", "pgpool_proxy_prepared_statements",
     "Distinct named prepared statements each pool shares among its clients", None),
    ("counter", "pgpool_proxy_prepared_statement_hits",
     "Uses of a shared prepared statement already prepared on the server connection", None),
    ("counter", "pgpool_proxy_prepared_statement_misses",
     "Uses of a shared prepared statement the proxy first had to prepare on the server "
     "connection", None),
    ("counter", "pgpool_proxy_server_disconnects", "Server connections closed, by typed reason",
     "reason"),
)  # fmt: skip
_FAMILY_TYPES = {
    "gauge": GaugeMetricFamily,
    "counter": CounterMetricFamily,
    "histogram": HistogramMetricFamily,
}


def _clients_by_pool(server: ProxyServer) -> dict[int, list[int]]:
    """One pass over the clients: per pool (by id), [idle, waiting, active, linked servers]."""
    per_pool: dict[int, list[int]] = {id(pool): [0, 0, 0, 0] for pool in server.pools.values()}
    for client in server.all_clients():
        pool = client.pool
        row = per_pool.get(id(pool)) if pool is not None else None
        if row is None:
            continue
        name = _CLIENT_STATE.get(client.state)
        if name == "idle":
            row[0] += 1
        elif name == "waiting":
            row[1] += 1
        elif name == "active":
            row[2] += 1
        if client.backend is not None:
            row[3] += 1
    return per_pool


def _pool_families(server: ProxyServer) -> list[Metric]:
    fams: dict[str, Any] = {
        name: _FAMILY_TYPES[kind](
            name, text, labels=[*POOL_LABELS, extra] if extra else list(POOL_LABELS)
        )
        for kind, name, text, extra in _POOL_FAMILIES
    }
    per_pool = _clients_by_pool(server)
    loop_now: float | None = None
    for key, pool in server.pools.items():
        if loop_now is None:
            loop_now = pool.loop.time()
        _pool_samples(fams, _pool_labels(key), pool, per_pool[id(pool)], loop_now)
    return list(fams.values())


def _pool_samples(
    fams: dict[str, Any], labels: list[str], pool: Pool, clients: list[int], now: float
) -> None:
    idle_c, waiting_c, active_c, linked = clients
    f = fams
    for state, n in (("idle", idle_c), ("waiting", waiting_c), ("active", active_c)):
        f["pgpool_proxy_pool_client_connections"].add_metric([*labels, state], n)
    idle = len(pool.idle)
    other = max(0, pool.total - idle - pool.connecting - linked)
    for state, n in zip(SERVER_STATES, (linked, idle, pool.connecting, other), strict=True):
        f["pgpool_proxy_server_connections"].add_metric([*labels, state], n)
    f["pgpool_proxy_pool_size"].add_metric(labels, pool.spec.size)
    f["pgpool_proxy_pool_max_wait_seconds"].add_metric(labels, _oldest_wait(pool, now))
    f["pgpool_proxy_pool_wait_seconds"].add_metric(labels, _wait_buckets(pool), pool.total_wait_s)
    f["pgpool_proxy_transactions"].add_metric(labels, pool.total_xacts)
    f["pgpool_proxy_transaction_seconds"].add_metric(labels, getattr(pool, "total_xact_s", 0.0))
    f["pgpool_proxy_queries"].add_metric(labels, getattr(pool, "total_queries", 0))
    f["pgpool_proxy_pinned_sessions"].add_metric(labels, pool.pinned)
    registry = pool.registry
    f["pgpool_proxy_prepared_statements"].add_metric(labels, len(registry.by_key))
    f["pgpool_proxy_prepared_statement_hits"].add_metric(labels, getattr(registry, "hits", 0))
    f["pgpool_proxy_prepared_statement_misses"].add_metric(labels, getattr(registry, "misses", 0))
    for why, count in getattr(pool, "server_disconnects", {}).items():
        f["pgpool_proxy_server_disconnects"].add_metric([*labels, why.value], count)


def _oldest_wait(pool: Pool, now: float) -> float:
    for client in pool.waiters:
        if client.is_waiting():
            return max(0.0, now - client.wait_since)
    return 0.0


def _wait_buckets(pool: Pool) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs; instant acquires are waits of zero, in the lowest bucket."""
    counts = list(getattr(pool, "wait_buckets", None) or [0] * (len(WAIT_BOUNDS_S) + 1))
    counts[0] += getattr(pool, "instant_acquires", 0)
    out: list[tuple[str, float]] = []
    total = 0
    for bound, n in zip((*WAIT_BOUNDS_S, float("inf")), counts, strict=True):
        total += n
        out.append(("+Inf" if bound == float("inf") else _le(bound), total))
    return out


def _le(bound: float) -> str:
    return repr(float(bound))


# --- topology --------------------------------------------------------------------------------


def _topology_families(server: ProxyServer) -> list[Metric]:
    """Writer and failovers per database: from its Topology when tracked, else the one host."""
    f_known = GaugeMetricFamily(
        "pgpool_proxy_writer_known",
        "1 when the database's current writer is known, else 0",
        labels=["database"],
    )
    f_writer = GaugeMetricFamily(
        "pgpool_proxy_writer",
        "The database's current writer (value 1; the address is the label)",
        labels=["database", "address"],
    )
    f_failovers = CounterMetricFamily(
        "pgpool_proxy_failovers", "Writer changes seen per database", labels=["database"]
    )
    f_role = GaugeMetricFamily(
        "pgpool_proxy_server_host_role",
        "Role of each server host of a tracked database (value 1; writer, replica, down, unknown)",
        labels=["database", "address", "role"],
    )
    f_lag = GaugeMetricFamily(
        "pgpool_proxy_replica_lag_bytes",
        "Replication lag of each replica host, in bytes of WAL",
        labels=["database", "address"],
    )
    topologies: dict[str, Any] = getattr(server, "topologies", None) or {}
    tracking = getattr(server, "tracking", None)
    for_database = getattr(tracking, "for_database", None)
    named: list[tuple[str, Any]] = []
    seen: set[int] = set()
    for db in server.config.databases:
        # Databases listing the same hosts (a writer and a reader alias) share one topology.
        topology = for_database(db) if callable(for_database) else topologies.get(db.name)
        named.append((db.name, topology if topology is not None else db))
        if topology is not None:
            seen.add(id(topology))
    for key, topology in sorted(topologies.items(), key=lambda kv: str(kv[0])):
        if id(topology) not in seen:
            named.append((str(getattr(topology, "name", key)), topology))
    for name, source in named:
        if not hasattr(source, "writer"):
            # A plain single-host database: its one server is the writer, and never fails over.
            host, port = _first_address(source)
            f_known.add_metric([name], 1)
            f_writer.add_metric([name, f"{host}:{port}"], 1)
            f_failovers.add_metric([name], 0)
            continue
        writer = source.writer
        address = getattr(writer, "address", None) if writer is not None else None
        f_known.add_metric([name], int(address is not None))
        if address is not None:
            f_writer.add_metric([name, str(address)], 1)
        f_failovers.add_metric([name], int(getattr(source, "failovers", 0)))
        for host in list(getattr(source, "hosts", ()) or ()):
            host_address = str(getattr(host, "address", "?"))
            f_role.add_metric([name, host_address, str(getattr(host, "role", "unknown"))], 1)
            lag = getattr(host, "lag_bytes", None)
            if lag is not None:
                f_lag.add_metric([name, host_address], lag)
    return [f_known, f_writer, f_failovers, f_role, f_lag]


def _first_address(db: Any) -> tuple[str, int]:
    addresses = getattr(db, "addresses", None)
    if callable(addresses):
        found = addresses()
        if found:
            host, port = found[0]
            return str(host), int(port)
    return str(db.host), int(db.port)


# --- AWS -------------------------------------------------------------------------------------


def _aws_families(server: ProxyServer) -> list[Metric]:
    services: Any = server.services
    f_refresh = CounterMetricFamily(
        "pgpool_proxy_secret_refreshes",
        "Secrets Manager fetches of each secret (startup, refresh, after a refused login)",
        labels=["secret"],
    )
    f_failed = CounterMetricFamily(
        "pgpool_proxy_secret_refresh_failures",
        "Secrets Manager fetches that failed (the last good value stays in use)",
        labels=["secret"],
    )
    f_age = GaugeMetricFamily(
        "pgpool_proxy_secret_age_seconds",
        "Seconds since each secret was last fetched successfully",
        labels=["secret"],
    )
    store = getattr(services, "secrets", None)
    if store is not None:
        now = time.monotonic()
        for arn, secret in sorted(store.secrets.items()):
            f_refresh.add_metric([arn], secret.fetches)
            f_failed.add_metric([arn], getattr(secret, "failures", 0))
            if secret.value is not None:
                f_age.add_metric([arn], max(0.0, now - secret.fetched_at))
    iam = getattr(services, "iam", None)
    f_verify = CounterMetricFamily(
        "pgpool_proxy_iam_verifications",
        "IAM tokens sent to the verifier (STS, keyring, passthrough)",
        value=getattr(iam, "verifications", 0),
    )
    f_hits = CounterMetricFamily(
        "pgpool_proxy_iam_cache_hits",
        "IAM logins accepted from the verified-token cache",
        value=getattr(iam, "cache_hits", 0),
    )
    return [f_refresh, f_failed, f_age, f_verify, f_hits]
