"""Monitoring written for PgBouncer works on the proxy: prometheus-pgbouncer-exporter's scrape
(SHOW STATS, POOLS, DATABASES, CONFIG) yields the same series from the proxy as from PgBouncer.

The exporter (2.1.2) pins prometheus_client 0.8 and psycopg2 2.8, which conflict with the
project's own requirements, so it is not in the dev extra. `scrape()` below runs its queries as
it runs them (psycopg2, DictCursor, autocommit) and maps columns to series with its table; when
the exporter itself is importable (`pip install --no-deps prometheus-pgbouncer-exporter`), its
own collector is run too and must agree. The comparison with a real PgBouncer runs where one is
installed, and skips saying so elsewhere.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.extras
import pytest

from tests.support.pg import LocalPostgres
from tests.support.pgbouncer import PgBouncer, pgbouncer_binary
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy

ADMIN = {"admin_users": ["alice"], "stats_users": ["bob"]}

# prometheus-pgbouncer-exporter 2.1.2: query -> (series prefix, column -> series, labels as
# column -> label). pgbouncer_pools_client_maxwait_seconds is maxwait + maxwait_us / 1e6.
EXPORTER: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {
    "SHOW STATS": (
        "pgbouncer_stats_",
        {
            "total_requests": "requests_total",
            "total_xact_count": "transactions_total",
            "total_query_count": "queries_total",
            "total_xact_time": "transactions_duration_microseconds",
            "total_wait_time": "waiting_duration_microseconds",
            "total_query_time": "queries_duration_microseconds",
            "total_received": "received_bytes_total",
            "total_sent": "sent_bytes_total",
        },
        {"database": "database"},
    ),
    "SHOW POOLS": (
        "pgbouncer_pools_",
        {
            "cl_active": "client_active_connections",
            "cl_waiting": "client_waiting_connections",
            "sv_active": "server_active_connections",
            "sv_idle": "server_idle_connections",
            "sv_used": "server_used_connections",
            "sv_tested": "server_testing_connections",
            "sv_login": "server_login_connections",
        },
        {"database": "database", "user": "user"},
    ),
    "SHOW DATABASES": (
        "pgbouncer_databases_",
        {
            "pool_size": "database_pool_size",
            "reserve_pool": "database_reserve_pool_size",
            "current_connections": "database_current_connections",
            "max_connections": "database_max_connections",
        },
        {"name": "database", "database": "backend_database"},
    ),
}
EXPORTER_CONFIG_KEYS = {
    "max_client_conn": "pgbouncer_config_max_client_conn",
    "max_user_connections": "pgbouncer_config_max_user_connections",
}
FAMILIES = ("pgbouncer_config_", "pgbouncer_pools_", "pgbouncer_stats_", "pgbouncer_databases_")

# Column types PgBouncer 1.18 sends (read from a running one): counts int4, statistics numeric,
# SHOW CONFIG text.
INT4, NUMERIC, TEXT = 23, 1700, 25
PGBOUNCER_TYPES = {
    "SHOW STATS": {c: NUMERIC for c in EXPORTER["SHOW STATS"][1] if c != "total_requests"},
    "SHOW POOLS": {c: INT4 for c in [*EXPORTER["SHOW POOLS"][1], "maxwait", "maxwait_us"]},
    "SHOW DATABASES": {c: INT4 for c in EXPORTER["SHOW DATABASES"][1]},
    "SHOW CONFIG": {"key": TEXT, "value": TEXT, "default": TEXT, "changeable": TEXT},
    "SHOW LISTS": {"list": TEXT, "items": INT4},
}

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(dsn: str) -> tuple[bool, Series, dict[str, dict[str, int]]]:
    """(up, series, column types per query) as the exporter's collector gets them: an error or
    an empty result fails the scrape (pgbouncer_up 0)."""
    up = True
    series: Series = {}
    types: dict[str, dict[str, int]] = {}
    conn = psycopg2.connect(dsn, connect_timeout=5)
    conn.set_session(autocommit=True)
    try:
        for query in [*EXPORTER, "SHOW CONFIG", "SHOW LISTS"]:
            cur = conn.cursor(cursor_factory=psycopg2.extras.DictCursor)
            try:
                cur.execute(query)
                rows = cur.fetchall()
                types[query] = {d.name: d.type_code for d in cur.description or ()}
            finally:
                cur.close()
            if not rows:
                up = False
                continue
            if query == "SHOW CONFIG":
                for row in rows:
                    if row["key"] in EXPORTER_CONFIG_KEYS:
                        series[(EXPORTER_CONFIG_KEYS[row["key"]], ())] = int(row["value"])
                continue
            if query == "SHOW LISTS":  # not the exporter's; other PgBouncer exporters read it
                continue
            prefix, columns, labels = EXPORTER[query]
            for row in rows:
                label = tuple(sorted((name, row[col]) for col, name in labels.items()))
                for column, metric in columns.items():
                    if column in row:
                        series[(prefix + metric, label)] = float(row[column])
                if query == "SHOW POOLS":
                    wait = row["maxwait"] + row["maxwait_us"] / 1_000_000
                    series[(prefix + "client_maxwait_seconds", label)] = float(wait)
    finally:
        conn.close()
    return up, series, types


def exporter_collect(dsn: str) -> tuple[float, Series] | None:
    """pgbouncer_up and the series from the exporter's own collector (None: not installed)."""
    if importlib.util.find_spec("prometheus_pgbouncer_exporter") is None:
        return None
    from prometheus_pgbouncer_exporter.collector import PgbouncersMetricsCollector
    from prometheus_pgbouncer_exporter.config import PgbouncerConfig

    collector = PgbouncersMetricsCollector([PgbouncerConfig({"dsn": dsn})])
    up = -1.0
    series: Series = {}
    for family in collector.collect():
        for sample in family.samples:
            if sample.name == "pgbouncer_up":
                up = sample.value
            else:
                series[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return up, series


def names(series: Series) -> set[str]:
    return {name for name, _ in series}


def keys(series: Series) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return set(series)


@pytest.fixture
def exporter_proxy(start_proxy: StartProxy) -> Iterator[ProxyThread]:
    proxy = start_proxy(admin=ADMIN)
    yield proxy


def _with_a_pool(dsn: str) -> Callable[[], None]:
    """Run a query through `dsn` (so a pool exists) and keep the client; returns its closer."""
    conn = psycopg2.connect(dsn)
    conn.set_session(autocommit=True)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    return conn.close


def test_exporter_scrape_of_the_proxy(exporter_proxy: ProxyThread) -> None:
    proxy = exporter_proxy
    close = _with_a_pool(proxy.dsn("alice", "app"))
    try:
        up, series, types = scrape(proxy.dsn("bob", "pgbouncer"))
    finally:
        close()
    # Every query answered with rows (the admin database's own rows make STATS/POOLS non-empty
    # even before any pool exists), so the exporter would report pgbouncer_up 1.
    assert up
    for family in FAMILIES:
        assert any(name.startswith(family) for name in names(series)), family
    assert series[("pgbouncer_config_max_client_conn", ())] == 10000
    assert ("pgbouncer_config_max_user_connections", ()) in series
    app_pool = (("database", "app"), ("user", "alice"))
    admin_pool = (("database", "pgbouncer"), ("user", "pgbouncer"))
    assert series[("pgbouncer_pools_client_active_connections", app_pool)] == 1
    assert series[("pgbouncer_pools_client_active_connections", admin_pool)] == 1
    assert series[("pgbouncer_stats_transactions_total", (("database", "app"),))] >= 1
    app_db = (("backend_database", "app"), ("database", "app"))
    assert series[("pgbouncer_databases_database_pool_size", app_db)] == 5
    # Column types as PgBouncer's, so the exporter's arithmetic sees the same Python types.
    for query, expected in PGBOUNCER_TYPES.items():
        got = {c: types[query][c] for c in expected if c in types[query]}
        assert got == expected, query


def test_exporter_itself_against_the_proxy(exporter_proxy: ProxyThread) -> None:
    proxy = exporter_proxy
    close = _with_a_pool(proxy.dsn("alice", "app"))
    try:
        result = exporter_collect(proxy.dsn("bob", "pgbouncer"))
        if result is None:
            pytest.skip(
                "prometheus-pgbouncer-exporter is not installed (its pins conflict with the "
                "dev extra; pip install --no-deps prometheus-pgbouncer-exporter to run it)"
            )
        up, series = result
        _, ours, _ = scrape(proxy.dsn("bob", "pgbouncer"))
    finally:
        close()
    assert up == 1
    # The exporter's series are the ones scrape() predicts (values move between the two
    # scrapes: its own queries count in the admin database's stats).
    assert {n.removesuffix("_total") for n in names(series)} == {
        n.removesuffix("_total") for n in names(ours)
    }


def test_the_proxy_yields_the_series_pgbouncer_does(
    pg: LocalPostgres, exporter_proxy: ProxyThread
) -> None:
    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip("PgBouncer is not installed on this machine (apt-get install pgbouncer)")
    proxy = exporter_proxy
    with PgBouncer(pg, {"alice": PASSWORDS["alice"], "bob": PASSWORDS["bob"]}, binary) as bouncer:
        scraped: dict[str, tuple[bool, Series, dict[str, dict[str, int]]]] = {}
        collected: dict[str, tuple[float, Series] | None] = {}
        for side, app_dsn, admin_dsn in (
            ("proxy", proxy.dsn("alice", "app"), proxy.dsn("alice", "pgbouncer")),
            ("pgbouncer", bouncer.dsn("alice", "app"), bouncer.dsn("alice", "pgbouncer")),
        ):
            close = _with_a_pool(app_dsn)
            try:
                scraped[side] = scrape(admin_dsn)
                collected[side] = exporter_collect(admin_dsn)
            finally:
                close()
    (p_up, p_series, p_types), (b_up, b_series, b_types) = scraped["proxy"], scraped["pgbouncer"]
    assert p_up and b_up
    # Same series: names and label sets (values differ: two poolers, two histories).
    assert keys(p_series) == keys(b_series)
    for family in FAMILIES:
        assert any(name.startswith(family) for name in names(b_series)), family
    for query, columns in b_types.items():
        shared = {c: t for c, t in p_types[query].items() if c in columns}
        assert shared == {c: columns[c] for c in shared}, query
    proxy_run, bouncer_run = collected["proxy"], collected["pgbouncer"]
    if proxy_run is not None and bouncer_run is not None:
        assert proxy_run[0] == bouncer_run[0] == 1
        assert keys(proxy_run[1]) == keys(bouncer_run[1])


def test_decimal_stats_are_what_the_exporter_adds(exporter_proxy: ProxyThread) -> None:
    """maxwait (int4) plus maxwait_us / 1e6 and the numeric totals come back as PgBouncer's do:
    int and Decimal, which prometheus_client takes as numbers."""
    proxy = exporter_proxy
    conn = psycopg2.connect(proxy.dsn("bob", "pgbouncer"))
    conn.set_session(autocommit=True)
    try:
        cur = conn.cursor(cursor_factory=psycopg2.extras.DictCursor)
        cur.execute("SHOW STATS")
        row: Any = cur.fetchone()
        assert isinstance(row["total_xact_count"], Decimal)
        cur.execute("SHOW POOLS")
        row = cur.fetchone()
        assert isinstance(row["maxwait"], int) and isinstance(row["maxwait_us"], int)
    finally:
        conn.close()
