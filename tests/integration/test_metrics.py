"""The metrics endpoint against real traffic: /metrics values move with what clients do, and
/healthz, /readyz and bad requests get the right status codes."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import types
import urllib.error
import urllib.request
from typing import Any

import asyncpg
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgpool_proxy import speedups
from pgpool_proxy.runtime.server import ServerState
from tests.support.pg import LocalPostgres, find_pg_bindir
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy
from tests.support.waits import wait_for, wait_for_sync

METRICS = {"listen": "127.0.0.1:0"}
APP = {"database": "app", "user": "alice"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_port(proxy: ProxyThread) -> int:
    assert proxy.server is not None and proxy.server.metrics_endpoint is not None
    return int(proxy.server.metrics_endpoint.port)


def get(proxy: ProxyThread, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET on the metrics endpoint."""
    url = f"http://127.0.0.1:{metrics_port(proxy)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(proxy: ProxyThread) -> Samples:
    status, ctype, body = get(proxy, "/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def raw_http(proxy: ProxyThread, data: bytes, wait_s: float = 10) -> bytes:
    """Send raw bytes, return everything the server answers before closing."""
    with socket.create_connection(("127.0.0.1", metrics_port(proxy)), timeout=wait_s) as sock:
        if data:
            sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.fixture
def mproxy(start_proxy: StartProxy) -> ProxyThread:
    return start_proxy(metrics=METRICS)


async def test_transactions_queries_and_clients(mproxy: ProxyThread) -> None:
    before = scrape(mproxy)
    conns = [await asyncpg.connect(mproxy.dsn(), statement_cache_size=0) for _ in range(3)]
    try:
        for conn in conns:
            for i in range(10):
                async with conn.transaction():
                    await conn.execute("SELECT 1")
                    await conn.fetchval("SELECT $1::int", i)
        during = scrape(mproxy)
        assert value(during, "pgpool_proxy_client_connections", state="idle") == 3
        assert value(during, "pgpool_proxy_pool_client_connections", **APP, state="idle") == 3
        assert value(during, "pgpool_proxy_client_connections", state="active") == 0
    finally:
        for conn in conns:
            await conn.close()
    terminated = (
        "pgpool_proxy_client_disconnects_total",
        frozenset({("reason", "client_terminate")}),
    )
    await wait_for(
        lambda: scrape(mproxy).get(terminated, 0) - before.get(terminated, 0) == 3,
        what="3 client_terminate disconnects counted",
    )
    after = scrape(mproxy)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("pgpool_proxy_transactions_total", **APP) == 30
    # BEGIN, two statements and COMMIT per transaction, each ending with ReadyForQuery.
    assert delta("pgpool_proxy_queries_total", **APP) >= 4 * 30
    assert delta("pgpool_proxy_client_logins_total", kind="pool") == 3
    assert delta("pgpool_proxy_client_accepted_total") == 3
    assert delta("pgpool_proxy_client_disconnects_total", reason="client_terminate") == 3
    assert value(after, "pgpool_proxy_transaction_seconds_total", **APP) >= 0
    assert value(after, "pgpool_proxy_server_connections", **APP, state="idle") >= 1
    assert value(after, "pgpool_proxy_pool_size", **APP) == 5
    impl = speedups.implementation()
    assert value(after, "pgpool_proxy_build_info", version=_version(), implementation=impl) == 1
    assert value(after, "pgpool_proxy_ready") == 1
    # Every acquire is in the histogram: the instant ones as waits of zero.
    assert delta("pgpool_proxy_pool_wait_seconds_count", **APP) >= 30
    assert value(after, "pgpool_proxy_writer_known", database="app") == 1
    assert value(after, "pgpool_proxy_failovers_total", database="app") == 0
    assert any(k[0] == "process_resident_memory_bytes" for k in after)


def _version() -> str:
    from pgpool_proxy import __version__

    return __version__


async def test_wait_histogram_when_clients_queue(start_proxy: StartProxy) -> None:
    proxy = start_proxy(metrics=METRICS, pool={"default_pool_size": 1})
    conns = [await asyncpg.connect(proxy.dsn(), statement_cache_size=0) for _ in range(4)]
    try:
        before = scrape(proxy)
        # One server connection, four clients each holding it for 100 ms: three of them queue.
        await asyncio.gather(*(c.execute("SELECT pg_sleep(0.1)") for c in conns))
        after = scrape(proxy)
    finally:
        for conn in conns:
            await conn.close()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("pgpool_proxy_pool_wait_seconds_count", **APP) == 4
    # The last one waited about 300 ms, the waits together at least 0.5 s.
    assert delta("pgpool_proxy_pool_wait_seconds_sum", **APP) >= 0.5
    assert delta("pgpool_proxy_pool_wait_seconds_bucket", **APP, le="0.05") <= 1
    assert delta("pgpool_proxy_pool_wait_seconds_bucket", **APP, le="+Inf") == 4
    assert delta("pgpool_proxy_pool_wait_seconds_bucket", **APP, le="1.0") == 4


async def test_max_wait_and_waiting_clients(start_proxy: StartProxy) -> None:
    proxy = start_proxy(metrics=METRICS, pool={"default_pool_size": 1})
    holder = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    waiter = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    try:
        tx = holder.transaction()
        await tx.start()
        queued = asyncio.ensure_future(waiter.fetchval("SELECT 42"))
        await wait_for(
            lambda: (
                value(scrape(proxy), "pgpool_proxy_pool_client_connections", **APP, state="waiting")
                == 1
            ),
            what="a waiting client counted",
        )
        await wait_for(
            lambda: value(scrape(proxy), "pgpool_proxy_pool_max_wait_seconds", **APP) >= 0.25,
            what="max_wait to pass 0.25 s",
        )
        samples = scrape(proxy)
        assert value(samples, "pgpool_proxy_client_connections", state="waiting") == 1
        assert value(samples, "pgpool_proxy_client_connections", state="active") == 1
        assert value(samples, "pgpool_proxy_server_connections", **APP, state="active") == 1
        assert value(samples, "pgpool_proxy_pool_max_wait_seconds", **APP) >= 0.25
        await tx.rollback()
        assert await queued == 42
        assert value(scrape(proxy), "pgpool_proxy_pool_max_wait_seconds", **APP) == 0
    finally:
        await holder.close()
        await waiter.close()


async def test_auth_failures_by_reason(mproxy: ProxyThread) -> None:
    before = scrape(mproxy)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(mproxy.dsn(password="not-the-password"))
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(mproxy.dsn(user="mallory", password="whatever"))
    after = scrape(mproxy)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("pgpool_proxy_auth_failures_total", reason="password") == 1
    assert delta("pgpool_proxy_auth_failures_total", reason="unknown_user") == 1
    assert delta("pgpool_proxy_auth_failures_total", reason="iam") == 0
    assert delta("pgpool_proxy_client_disconnects_total", reason="auth_failed") == 2
    assert delta("pgpool_proxy_client_logins_total", kind="pool") == 0
    assert delta("pgpool_proxy_client_logins_total", kind="admin") == 0


async def test_admin_console_logins_are_counted_apart(start_proxy: StartProxy) -> None:
    proxy = start_proxy(metrics=METRICS, admin={"admin_users": ["alice"]})
    before = scrape(proxy)
    async with await psycopg.AsyncConnection.connect(
        proxy.dsn("alice", "pgbouncer"), autocommit=True
    ) as console:
        await console.execute("SHOW VERSION")
    # Authenticated but not an admin: refused by the console, so not a login.
    with pytest.raises(psycopg.OperationalError, match="not allowed to use the admin console"):
        await psycopg.AsyncConnection.connect(proxy.dsn("bob", "pgbouncer"))
    conn = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    await conn.close()
    after = scrape(proxy)

    def delta(**labels: str) -> float:
        name = "pgpool_proxy_client_logins_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(kind="admin") == 1
    assert delta(kind="pool") == 1


async def test_disconnect_reasons(start_proxy: StartProxy, admin: asyncpg.Connection) -> None:
    proxy = start_proxy(metrics=METRICS, pool={"default_pool_size": 1})
    conn = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    try:
        before = scrape(proxy)
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        # The server connection dies under an idle client: a server-side disconnect; the
        # client's next transaction gets a fresh one.
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        await wait_for(
            lambda: (
                value(
                    scrape(proxy),
                    "pgpool_proxy_server_disconnects_total",
                    **APP,
                    reason="backend_failed",
                )
                > value(
                    before, "pgpool_proxy_server_disconnects_total", **APP, reason="backend_failed"
                )
            ),
            what="a backend_failed disconnect counted",
        )
        assert await conn.fetchval("SELECT 7") == 7
    finally:
        await conn.close()
    # A client that vanishes without Terminate.
    raw = socket.create_connection((proxy.host, proxy.port))
    raw.close()
    await wait_for(
        lambda: (
            value(scrape(proxy), "pgpool_proxy_client_disconnects_total", reason="client_eof")
            > value(before, "pgpool_proxy_client_disconnects_total", reason="client_eof")
        ),
        what="a client_eof disconnect counted",
    )
    after = scrape(proxy)
    assert (
        value(after, "pgpool_proxy_client_disconnects_total", reason="client_terminate")
        - value(before, "pgpool_proxy_client_disconnects_total", reason="client_terminate")
        == 1
    )


async def test_pinned_sessions_in_transaction_mode(mproxy: ProxyThread) -> None:
    conn = await asyncpg.connect(mproxy.dsn(), statement_cache_size=0)
    try:
        assert value(scrape(mproxy), "pgpool_proxy_pinned_sessions", **APP) == 0
        await conn.execute("SELECT pg_advisory_lock(1)")
        # The proxy asks the server what the transaction left behind after the client has its
        # reply: the pin shows up a moment later.
        await wait_for(
            lambda: value(scrape(mproxy), "pgpool_proxy_pinned_sessions", **APP) == 1,
            what="the session counted pinned",
        )
        assert value(scrape(mproxy), "pgpool_proxy_server_connections", **APP, state="active") == 1
        await conn.execute("SELECT pg_advisory_unlock(1)")
        await wait_for(
            lambda: value(scrape(mproxy), "pgpool_proxy_pinned_sessions", **APP) == 0,
            what="the pin counted released",
        )
    finally:
        await conn.close()


async def test_prepared_statement_counts(mproxy: ProxyThread) -> None:
    before = scrape(mproxy)
    conn = await asyncpg.connect(mproxy.dsn())  # asyncpg names and caches its statements
    try:
        stmt = await conn.prepare("SELECT $1::int + 1")
        for i in range(20):
            assert await stmt.fetchval(i) == i + 1
        assert await conn.fetchval("SELECT $1::text", "x") == "x"
    finally:
        await conn.close()
    after = scrape(mproxy)

    def delta(name: str) -> float:
        return value(after, name, **APP) - value(before, name, **APP)

    assert value(after, "pgpool_proxy_prepared_statements", **APP) >= 2
    # Each statement is prepared on the server connection once, then reused.
    assert 1 <= delta("pgpool_proxy_prepared_statement_misses_total") <= 4
    assert delta("pgpool_proxy_prepared_statement_hits_total") >= 20


def test_pgbench_traffic_is_counted(mproxy: ProxyThread, pg: LocalPostgres) -> None:
    pgbench = f"{find_pg_bindir()}/pgbench"
    env = {"PGPASSWORD": PASSWORDS["alice"], "PATH": "/usr/bin:/bin"}
    args = ["-h", mproxy.host, "-p", str(mproxy.port), "-U", "alice"]
    init = subprocess.run(
        [pgbench, "-i", "-q", "-s", "1", *args, "app"], env=env, capture_output=True, text=True
    )
    assert init.returncode == 0, init.stderr
    before = scrape(mproxy)
    run = subprocess.run(
        [pgbench, "-c", "4", "-t", "25", "-S", "-M", "extended", *args, "app"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    after = scrape(mproxy)
    xacts = value(after, "pgpool_proxy_transactions_total", **APP) - value(
        before, "pgpool_proxy_transactions_total", **APP
    )
    # pgbench -S: one statement per transaction, 100 in all (plus its own setup queries).
    assert xacts >= 100


# --- health and HTTP handling ------------------------------------------------------------------


def test_health_endpoints(mproxy: ProxyThread) -> None:
    assert get(mproxy, "/healthz")[::2] == (200, "ok\n")
    assert get(mproxy, "/readyz")[::2] == (200, "ready\n")
    assert get(mproxy, "/metrics?name=x")[0] == 200
    assert get(mproxy, "/nope")[0] == 404
    assert get(mproxy, "/")[0] == 404


def test_readyz_reports_draining_and_unknown_writer(mproxy: ProxyThread) -> None:
    server = mproxy.server
    assert server is not None
    had = getattr(server, "topologies", None)

    def set_attr(name: str, val: Any) -> None:
        mproxy.call(lambda: setattr(server, name, val))

    # The state alone, not a drain: the listener stays open for the probes below.
    set_attr("state", ServerState.DRAINING)
    try:
        status, _, body = get(mproxy, "/readyz")
        assert (status, body) == (503, "draining (shutting down)\n")
        assert get(mproxy, "/healthz")[0] == 200
        assert value(scrape(mproxy), "pgpool_proxy_ready") == 0
    finally:
        set_attr("state", ServerState.SERVING)
    # A tracked database whose writer is not known (yet, or during a failover).
    lost = types.SimpleNamespace(name="app", writer=None, failovers=2, hosts=[])
    set_attr("topologies", {"app": lost})
    try:
        status, _, body = get(mproxy, "/readyz")
        assert (status, body) == (503, "no writer known for app\n")
        samples = scrape(mproxy)
        assert value(samples, "pgpool_proxy_writer_known", database="app") == 0
        assert value(samples, "pgpool_proxy_failovers_total", database="app") == 2
    finally:
        set_attr("topologies", had if had is not None else {})
    assert get(mproxy, "/readyz")[0] == 200


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /metrics\r\n\r\n", 400),  # no version
        (b"GET metrics HTTP/1.1\r\n\r\n", 400),
        (b"get /metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET /metrics HTTP/9.9\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"\xff\xfe\r\n\r\n", 400),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /x HTTP/1.0\r\n\r\n", 404),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    ],
)
def test_bad_requests_get_an_answer(mproxy: ProxyThread, request_bytes: bytes, status: int) -> None:
    assert status_of(raw_http(mproxy, request_bytes)) == status
    # The listener survives whatever came before.
    assert get(mproxy, "/healthz")[0] == 200


def test_oversized_and_slow_requests(start_proxy: StartProxy) -> None:
    proxy = start_proxy(metrics={"listen": "127.0.0.1:0", "request_timeout_s": 0.5})
    huge = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    assert status_of(raw_http(proxy, huge)) == 431
    t0 = time.monotonic()
    assert status_of(raw_http(proxy, b"GET /metrics HTTP/1.1\r\n")) == 408
    # request_timeout_s (0.5 s) is the behaviour: within 5x it.
    assert time.monotonic() - t0 < 2.5
    # A client that connects and says nothing is answered and dropped after the timeout.
    assert status_of(raw_http(proxy, b"")) == 408
    head = raw_http(proxy, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status_of(head) == 200 and head.endswith(b"\r\n\r\n")
    assert get(proxy, "/healthz")[0] == 200


def test_concurrent_connections_are_capped(start_proxy: StartProxy) -> None:
    from pgpool_proxy.admin.http import MAX_CONNECTIONS

    proxy = start_proxy(metrics={"listen": "127.0.0.1:0", "request_timeout_s": 5})
    port = metrics_port(proxy)
    silent = [
        socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(MAX_CONNECTIONS)
    ]
    try:
        endpoint = proxy.server.metrics_endpoint  # type: ignore[union-attr]
        wait_for_sync(
            lambda: proxy.call(lambda: len(endpoint._conns)) >= MAX_CONNECTIONS,
            what="every silent connection accepted",
        )
        # One more is answered at once with 503, not queued behind the silent ones (then it
        # would be served, 200, once they timed out).
        assert status_of(raw_http(proxy, b"GET /healthz HTTP/1.1\r\n\r\n")) == 503
    finally:
        for sock in silent:
            sock.close()
    wait_for_sync(lambda: get(proxy, "/healthz")[0] == 200, what="the endpoint to serve again")


def test_no_endpoint_without_listen(proxy: ProxyThread) -> None:
    assert proxy.server is not None and proxy.server.metrics_endpoint is None


async def test_psycopg_session_mode_counts(start_proxy: StartProxy) -> None:
    proxy = start_proxy(metrics=METRICS, proxy={"pool_mode": "session"})
    with psycopg.connect(proxy.dsn()) as conn:
        for _ in range(3):
            with conn.transaction():
                conn.execute("SELECT 1")
        samples = scrape(proxy)
        assert value(samples, "pgpool_proxy_server_connections", **APP, state="active") == 1
        assert value(samples, "pgpool_proxy_pool_client_connections", **APP, state="active") == 1
    # Session mode gives the server connection back (after its reset query) when the client
    # leaves: one "transaction".
    await wait_for(
        lambda: value(scrape(proxy), "pgpool_proxy_transactions_total", **APP) >= 1,
        what="the session counted as a transaction",
    )
