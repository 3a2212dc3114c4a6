"""More attacks on session isolation in transaction mode (second round, branch `hostile`).

Same set-up as test_session_attacks.py, whose helpers this file reuses: client A runs the attack
on a proxy with one server connection, client B (or A itself, for its own settings) then reads
the session, and the oracle is a fresh direct PostgreSQL session (or A's direct session).

Every `test_leak2_*` here failed against the code it was written against; all pass now except
three strict xfails, each a known limit of docs/behaviour.md named in its reason.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import pytest

from pgpool_proxy.protocol import deallocate, sqlscan, sqltables
from pgpool_proxy.protocol import messages as m
from tests.integration.test_session_attacks import (
    _cost,
    a_then_b,
    direct_dsn,
    one_connection,
    view,
)
from tests.support import extproto as x
from tests.support.pg import LocalPostgres
from tests.support.proxy import StartProxy
from tests.support.rawpg import RawError

pytestmark = pytest.mark.timeout(60)


async def _setting(dsn: str, name: str) -> Any:
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        # nullif: a placeholder set and reset reads '' (behaviour.md, known limits), not a leak.
        return await conn.fetchval("SELECT nullif(current_setting($1, true), '')", name)
    finally:
        await conn.close()


# --- lexer: a comment that makes a call look like a column list -------------------------------


HIDDEN_CALLS = {
    # _word_before() reads the raw bytes before the name, comments included: a line comment
    # ending in `as` (or into, with, table, type...) makes the call a "column list".
    "set_config": "SELECT --as\nset_config('app.tenant', 'A', false)",
    "advisory-lock": "SELECT 1, -- into\n pg_advisory_lock(42)",
    "user-function": "SELECT -- with\n atk.set_tenant('A')",
}


@pytest.mark.parametrize("sql", HIDDEN_CALLS.values(), ids=HIDDEN_CALLS.keys())
async def test_leak2_line_comment_ending_in_a_list_word_hides_the_call(
    atk: LocalPostgres, start_proxy: StartProxy, sql: str
) -> None:
    await a_then_b(atk, start_proxy, sql)


# --- SET grammar the head reader does not follow ----------------------------------------------


async def test_leak2_set_session_session_characteristics(
    atk: LocalPostgres, start_proxy: StartProxy
) -> None:
    """`SET SESSION set_rest` where set_rest is itself `SESSION CHARACTERISTICS AS TRANSACTION
    ...`: PostgreSQL's grammar takes it; the head reader sees SESSION twice and reads back a
    setting named `session`, not the defaults it changed. B's transactions become read only."""
    fresh = await _setting(direct_dsn(atk), "default_transaction_read_only")
    proxy = one_connection(start_proxy)
    a = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    try:
        await a.execute("SET SESSION SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        assert await a.fetchval("SHOW default_transaction_read_only") == "on"
        assert await _setting(proxy.dsn(), "default_transaction_read_only") == fresh
    finally:
        await a.close()


# --- statements run by name, bypassing the flags of their text -------------------------------


@pytest.mark.parametrize(
    "runner",
    ["EXPLAIN ANALYZE EXECUTE {}", "CREATE TABLE atk.ctas AS EXECUTE {}"],
    ids=["explain-analyze", "create-table-as"],
)
async def test_leak2_sql_execute_of_a_protocol_statement(
    atk: LocalPostgres, start_proxy: StartProxy, runner: str
) -> None:
    """A protocol Parse is judged only when a Bind runs it; SQL EXECUTE of its server-side
    name (read from pg_prepared_statements) inside EXPLAIN ANALYZE or CREATE TABLE AS is judged
    by the outer statement (pins only). The SQL PREPARE case is handled; this one is not."""
    fresh = await view(direct_dsn(atk))
    proxy = one_connection(start_proxy)
    a = await x.raw_login(proxy)
    try:
        r = await x.roundtrip(
            a, x.parse("mine", "SELECT set_config('app.tenant', 'A', false)"), x.SYNC
        )
        assert r.kinds == ["1", "Z:I"]
        rows = await a.simple_query(
            "SELECT name FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql"
        )
        server_name = rows[0][0]
        assert server_name is not None
        await a.simple_query(runner.format(server_name))
        await a.simple_query("DROP TABLE IF EXISTS atk.ctas")
        assert await view(proxy.dsn()) == fresh
    finally:
        await a.close()
        atk.psql("DROP TABLE IF EXISTS atk.ctas", dbname="app")


# --- the client's own settings ----------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known limit (docs/behaviour.md): one check reads at most 64 settings by name; custom "
        "settings past that are lost after a full check"
    ),
)
async def test_leak2_full_check_drops_custom_settings_past_the_read_limit(
    atk: LocalPostgres, start_proxy: StartProxy
) -> None:
    """A client with more than 62 custom settings (set 30 per text, each text read back in full)
    runs one text that needs a full check (RESET of anything, DO, CALL): the check reads only
    MAX_READ (64) names, and _adopt_settings(full=True) keeps only what it read. The rest are
    gone from the client's settings: after B used the connection (and it was reset), A's next
    transaction is replayed without them. Direct PostgreSQL keeps them all."""
    proxy = one_connection(start_proxy)
    a = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    try:
        for chunk in range(3):
            await a.execute(
                "; ".join(f"SET own.s{i} = 'v{i}'" for i in range(chunk * 30, chunk * 30 + 30))
            )
        await a.execute("RESET work_mem")
        b = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
        try:
            assert await b.fetchval("SELECT current_setting('own.s89', true)") in (None, "")
        finally:
            await b.close()
        got = await a.fetch(
            "SELECT i, current_setting('own.s' || i, true) AS v FROM generate_series(0, 89) i"
        )
        lost = [r["i"] for r in got if r["v"] != f"v{r['i']}"]
        assert lost == [], f"{len(lost)} of A's own settings lost: {lost[:5]}..."
    finally:
        await a.close()


# --- cost of hostile texts on the event loop --------------------------------------------------


LOOKAHEAD_SHAPES = {
    # Each name followed by a comment makes _after_comments() look at up to 256 tokens; the
    # main pass then takes the same comments in one C-speed run, charging one event. Each `;`
    # does the same in _head(). Work is events x 256 tokens, not bounded by MAX_EVENTS alone.
    "name-then-comments": ((b"SELECT a" + b"--\n" * 128) * 100)[:16000],
    "semicolon-then-comments": ((b";" + b"--\n" * 128 + b"x") * 100)[:16000],
    "set-then-comments": ((b"SET a.b=1;" + b"--\n" * 126 + b"x") * 100)[:16000],
}


@pytest.mark.parametrize("text", LOOKAHEAD_SHAPES.values(), ids=LOOKAHEAD_SHAPES.keys())
def test_leak2_lookahead_over_comments_costs_the_loop(text: bytes) -> None:
    """The worst shape of test_hostile_texts_cost_little_proxy_time costs ~5 ms here; these
    cost 15-25 ms for 16 KiB on the same machine (budget of that test: 10 ms)."""
    reference = _cost(b"SELECT " + b"a." * 8000 + b"b(1)")
    cost = _cost(text)
    # Before: 17-75 ms. The bound leaves room for a loaded machine (both are wall clock).
    assert cost < max(0.015, 2 * reference), (
        f"{cost * 1000:.1f} ms (reference shape {reference * 1000:.1f} ms)"
    )


# --- the random generator is shared by the clients of one server connection -------------------

_M64 = (1 << 64) - 1


def _rotl(v: int, k: int) -> int:
    return ((v << k) | (v >> (64 - k))) & _M64


def _xoroshiro_step(s0: int, s1: int) -> tuple[int, int, int]:
    """PostgreSQL's pg_prng (xoroshiro128**): (output, new s0, new s1)."""
    val = (_rotl((s0 * 5) & _M64, 7) * 9) & _M64
    sv = s1 ^ s0
    return val, _rotl(s0, 24) ^ sv ^ ((sv << 16) & _M64), _rotl(sv, 37)


def _recover_prng(outs: list[int]) -> tuple[int, int] | None:
    """The generator state before three random() outputs (52 high bits each): the scrambler
    is invertible, so each output leaves 4,096 candidates for s0; two consecutive s0 determine
    s1; the third output picks the one. numpy does the 16M candidate pairs in about a second."""
    np = pytest.importorskip("numpy")
    inv9 = pow(9, -1, 1 << 64)
    inv5 = pow(5, -1, 1 << 64)

    def s0_candidates(o: int) -> Any:
        v = np.uint64(o << 12) | np.arange(4096, dtype=np.uint64)
        x = v * np.uint64(inv9)
        y = (x >> np.uint64(7)) | (x << np.uint64(57))
        return y * np.uint64(inv5)

    def rotl(v: Any, k: int) -> Any:
        return (v << np.uint64(k)) | (v >> np.uint64(64 - k))

    first, second = s0_candidates(outs[0]), s0_candidates(outs[1])
    with np.errstate(over="ignore"):
        for s0 in first:
            c = second ^ rotl(s0, 24)  # = t ^ (t << 16), t = s0 ^ s1
            t = c ^ (c << np.uint64(16)) ^ (c << np.uint64(32)) ^ (c << np.uint64(48))
            s1a = rotl(t, 37)
            sv = s1a ^ second
            s0b = rotl(second, 24) ^ sv ^ (sv << np.uint64(16))
            val3 = rotl(s0b * np.uint64(5), 7) * np.uint64(9)
            hit = np.nonzero((val3 >> np.uint64(12)) == np.uint64(outs[2]))[0]
            if len(hit):
                return int(s0), int(t[hit[0]]) ^ int(s0)
    return None


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known limit (docs/behaviour.md): random()'s state passes with the server connection "
        "unless the last client's code was opaque (then it is reseeded)"
    ),
)
async def test_leak2_random_state_recovered_predicts_the_next_clients_random(
    atk: LocalPostgres, start_proxy: StartProxy
) -> None:
    """random() draws from one generator per server process, seeded once at its first use.
    Without setseed() (which the proxy handles), three outputs give away the whole state of
    xoroshiro128**: A predicts every random() of the next client on its server connection (and,
    running the generator backwards, what the previous one drew). Direct PostgreSQL seeds each
    session's generator apart, so another session's draws cannot be known."""
    proxy = one_connection(start_proxy)
    a = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    try:
        draws = await a.fetch("SELECT random() AS r FROM generate_series(1, 3)")
        outs = [int(r["r"] * (1 << 52)) for r in draws]
        state = _recover_prng(outs)
        assert state is not None, "state not recovered (generator changed?)"
        s0, s1 = state
        for _ in range(3):
            _, s0, s1 = _xoroshiro_step(s0, s1)
        predicted = _xoroshiro_step(s0, s1)[0] >> 12
        b = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
        try:
            theirs = int(await b.fetchval("SELECT random()") * (1 << 52))
        finally:
            await b.close()
        assert theirs != predicted, "A predicted B's random() exactly"
    finally:
        await a.close()


# --- the proxy's own statements, dropped where it cannot see -----------------------------------


async def test_leak2_opaque_code_deallocates_another_clients_statement(
    atk: LocalPostgres, start_proxy: StartProxy
) -> None:
    """SQL DEALLOCATE of the server-side name is flagged SQL_DEALLOCATE (the check then lists the
    statements the session holds). The same DEALLOCATE run by DO (or any function) is flagged
    SQL_ALL, which lacks SQL_DEALLOCATE: the proxy still believes the statement is there and
    binds B's next use of its own statement to a name the server no longer has (26000)."""
    proxy = one_connection(start_proxy)
    b = await x.raw_login(proxy, user="alice")
    a = await x.raw_login(proxy, user="alice")
    try:
        r = await x.roundtrip(b, x.parse("q", "SELECT 42"), x.bind("q"), x.execute(), x.SYNC)
        assert r.rows == [["42"]]
        await a.simple_query(
            "DO $$BEGIN EXECUTE 'DEALLOCATE ' || (SELECT name FROM pg_prepared_statements"
            " WHERE NOT from_sql LIMIT 1); END$$"
        )
        r = await x.roundtrip(b, x.bind("q"), x.execute(), x.SYNC)
        assert r.errors == [] and r.rows == [["42"]], r.errors
    finally:
        await a.close()
        await b.close()


# --- reply counting: a server connection held by a client outside any transaction --------------


async def test_leak2_query_skipped_after_an_extended_error_holds_the_connection(
    atk: LocalPostgres, start_proxy: StartProxy
) -> None:
    """After an error in an extended-protocol batch the server skips every message up to Sync,
    a simple Query included (no ReadyForQuery for it). The proxy counted the Query as owing one:
    it waits forever for a ReadyForQuery that never comes, and A, idle and outside any
    transaction, keeps the server connection. One 30-byte message per server connection starves
    the pool; with PostgreSQL directly, A holds nothing of anyone's."""
    proxy = one_connection(start_proxy, query_wait_timeout_s=2)
    a = await x.raw_login(proxy)
    try:
        a.send(x.parse("", "SELEC bad") + m.query("SELECT 1") + x.SYNC)
        kinds: list[bytes] = []
        while True:
            t, _ = await a.read_message(5)
            kinds.append(t)
            if t == b"Z":
                break
        assert kinds == [b"E", b"Z"]  # what PostgreSQL answers
        assert await a.simple_query("SELECT 2") == [["2"]]  # A is idle, outside a transaction
        b = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
        try:
            assert await b.fetchval("SELECT 1") == 1
        finally:
            await b.close()
    finally:
        await a.close()


# --- another client's statement texts ----------------------------------------------------------


async def test_leak2_other_users_statement_texts_in_pg_prepared_statements(
    atk: LocalPostgres, start_proxy: StartProxy
) -> None:
    """Statements are shared per server connection, and the identity reset between client users
    of one server login keeps them: user bob reads, in pg_prepared_statements, the texts alice
    prepared (drivers that inline values, or ORMs' literals, put data there). A direct session
    sees only its own statements."""
    proxy = start_proxy(
        pool={"default_pool_size": 1, "query_wait_timeout_s": 20},
        databases=[{"name": "app", "host": atk.host, "port": atk.port, "user": "alice"}],
    )
    a = await x.raw_login(proxy)
    try:
        secret = "SELECT 'alice-ssn-078-05-1120' AS s"
        r = await x.roundtrip(a, x.parse("mine", secret), x.bind("mine"), x.execute(), x.SYNC)
        assert r.rows == [["alice-ssn-078-05-1120"]]
        b = await asyncpg.connect(proxy.dsn(user="bob"), statement_cache_size=0)
        try:
            seen = await b.fetch("SELECT statement FROM pg_catalog.pg_prepared_statements")
        finally:
            await b.close()
        assert [r["statement"] for r in seen] == []
    finally:
        await a.close()


# --- the client's own settings, as replayed on another server connection -----------------------


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known limit (docs/behaviour.md): real-valued settings read back with 6 significant digits"
    ),
)
async def test_leak2_real_settings_lose_precision_in_the_replay(
    atk: LocalPostgres, start_proxy: StartProxy
) -> None:
    """PostgreSQL shows real settings with %g (6 significant digits): the proxy reads back
    cpu_tuple_cost = 0.01000001 as '0.01' and replays that wherever the client goes next, so the
    client's plans (and costs) change under it once another client used its connection."""
    sql = "SET cpu_tuple_cost = 0.01000001"
    plan = "EXPLAIN SELECT * FROM generate_series(1, 100000000)"
    d = await asyncpg.connect(direct_dsn(atk), statement_cache_size=0)
    try:
        await d.execute(sql)
        want = await d.fetchval(plan)
    finally:
        await d.close()
    proxy = one_connection(start_proxy)
    a = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    try:
        await a.execute(sql)
        assert await a.fetchval(plan) == want  # still on the server connection it set it on
        b = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
        try:
            await b.fetchval("SELECT 1")
        finally:
            await b.close()
        assert await a.fetchval(plan) == want
    finally:
        await a.close()


async def test_leak2_any_function_containing_advisory_counts_only_pins(
    atk: LocalPostgres, start_proxy: StartProxy
) -> None:
    """_call_site takes any name containing `advisory` for an advisory-lock function: a call of
    `public.tenant_advisory(...)` (not a built-in's name, not a keyword) is judged "pins only",
    not opaque, and the setting it makes goes to B. Same precondition as docs/behaviour.md's limit
    on user functions (CREATE on a schema of the path), but wider than "named like a built-in"."""
    atk.psql(
        "CREATE OR REPLACE FUNCTION public.tenant_advisory(t text) RETURNS text"
        " LANGUAGE plpgsql AS $$BEGIN PERFORM set_config('app.tenant', t, false);"
        " RETURN t; END$$; GRANT EXECUTE ON FUNCTION public.tenant_advisory(text) TO alice",
        dbname="app",
    )
    try:
        await a_then_b(atk, start_proxy, "SELECT tenant_advisory('A')")
    finally:
        atk.psql("DROP FUNCTION public.tenant_advisory(text)", dbname="app")


@pytest.mark.parametrize("sql", ["SELECT 1/0; DEALLOCATE ALL", "SELECT 1; DISCARD ALL"])
async def test_leak2_failed_deallocate_all_desyncs_the_statement_cache(
    atk: LocalPostgres, start_proxy: StartProxy, sql: str
) -> None:
    """drops_all_statements() makes the proxy forget every statement of the server connection
    before the server runs the text; here the server never gets to DEALLOCATE ALL / DISCARD ALL
    (an error first, or `cannot run inside a transaction block`) and keeps them all. The check
    afterwards only removes names the server lacks, never re-adds: B's next use of its own
    statement is re-Parsed under a name the server still has (42P05)."""
    proxy = one_connection(start_proxy)
    b = await x.raw_login(proxy)
    a = await x.raw_login(proxy)
    try:
        r = await x.roundtrip(b, x.parse("q", "SELECT 42"), x.bind("q"), x.execute(), x.SYNC)
        assert r.rows == [["42"]]
        a.send(m.query(sql))
        while (await a.read_message())[0] != b"Z":
            pass
        r = await x.roundtrip(b, x.bind("q"), x.execute(), x.SYNC)
        assert r.errors == [] and r.rows == [["42"]], r.errors
    finally:
        await a.close()
        await b.close()


async def test_leak2_deallocate_refused_in_an_aborted_transaction_still_forgets(
    atk: LocalPostgres, start_proxy: StartProxy
) -> None:
    """`DEALLOCATE mine` in an aborted transaction: PostgreSQL refuses it (25P02) and `mine`
    still works after ROLLBACK. The proxy forgets `mine` (and that the server holds its
    statement) before the server answers: A's Bind of `mine` then fails (26000), and the next
    Parse of that text by anyone on this connection collides with the name the server still
    has (42P05)."""
    proxy = one_connection(start_proxy)
    a = await x.raw_login(proxy)
    try:
        r = await x.roundtrip(a, x.parse("mine", "SELECT 43"), x.SYNC)
        assert r.kinds == ["1", "Z:I"]
        await a.simple_query("BEGIN")
        with pytest.raises(RawError):
            await a.simple_query("SELECT 1/0")
        with pytest.raises(RawError):
            await a.simple_query("DEALLOCATE mine")  # 25P02, as PostgreSQL answers
        await a.simple_query("ROLLBACK")
        r = await x.roundtrip(a, x.bind("mine"), x.execute(), x.SYNC)
        errors = [e.get("C") for e in r.errors]
        b = await x.raw_login(proxy)
        try:
            for name in ("q1", "q2"):  # every later Parse of that text fails, not only the first
                r = await x.roundtrip(
                    b, x.parse(name, "SELECT 43"), x.bind(name), x.execute(), x.SYNC
                )
                errors += [e.get("C") for e in r.errors]
        finally:
            await b.close()
        assert errors == [], errors  # observed: ['26000', '42P05', '42P05']
    finally:
        await a.close()


def _deallocate_path_cost(text: bytes) -> float:
    """What the loop does for one Query naming DEALLOCATE in transaction mode: the client scanner's
    classify, then session.statements.inspect (deallocate.deallocation lexes the text once,
    with the client scanner's flags), then setting_names. Before: parse_deallocate and
    drops_all_statements each tokenized the text, and classify ran twice."""
    best = 1.0
    for _ in range(5):
        sqlscan.clear_cache()
        t0 = time.perf_counter()
        flags = sqlscan.classify(text, 0, len(text))
        if flags & sqltables.SQL_DEALLOCATE:
            deallocate.deallocation(text.decode("utf-8", "replace"))
        if flags & sqltables.SQL_SETTINGS:
            sqlscan.setting_names(text, 0, len(text))
        best = min(best, time.perf_counter() - t0)
    return best


DEALLOCATE_SHAPES = {
    "set-then-comments": (b"DEALLOCATE x;" + (b"SET a.b=1;" + b"--\n" * 126 + b"x") * 100)[:16000],
    "words": (b"DEALLOCATE x;" + b"a " * 8000)[:16000],
}


@pytest.mark.parametrize("text", DEALLOCATE_SHAPES.values(), ids=DEALLOCATE_SHAPES.keys())
def test_leak2_deallocate_text_is_lexed_four_times(text: bytes) -> None:
    """Measured 25-55 ms per 16 KiB Query (reference shape ~6 ms): a client pipelining 1 MB of
    these holds the event loop for seconds."""
    reference = _cost(b"SELECT " + b"a." * 8000 + b"b(1)")
    cost = _deallocate_path_cost(text)
    # Before: 17-75 ms. The bound leaves room for a loaded machine (both are wall clock).
    assert cost < max(0.015, 2 * reference), (
        f"{cost * 1000:.1f} ms (reference shape {reference * 1000:.1f} ms)"
    )


# --- setting names outside ASCII in a client_encoding other than UTF8 ---------------------------


async def test_leak2_non_ascii_setting_name_in_latin1_is_never_read_back(
    atk: LocalPostgres, start_proxy: StartProxy
) -> None:
    """Values are read back as hex of UTF-8 for non-UTF8 clients; names are not. A LATIN1 client's
    `SET "app.\\xe9" = 'A'` is named by setting_names() as 'app.\\ufffd' (its bytes decoded as
    UTF-8), the check asks for that name, in UTF-8 bytes the server reads as LATIN1, gets NULL,
    and takes the setting for unset: B (UTF8) reads A's value."""
    fresh = await _setting(direct_dsn(atk), "app.\u00e9")
    proxy = one_connection(start_proxy)
    a = await x.raw_login(proxy, client_encoding="LATIN1")
    try:
        a.send(m.frame(b"Q", b"SET \"app.\xe9\" = 'A'\x00"))  # LATIN1 bytes
        while (await a.read_message())[0] != b"Z":
            pass
        assert await a.simple_query("SELECT 1") == [["1"]]
        assert await _setting(proxy.dsn(), "app.\u00e9") == fresh
    finally:
        await a.close()


async def test_leak2_non_ascii_setting_name_in_gbk_fails_the_check_and_drops_the_session(
    atk: LocalPostgres, start_proxy: StartProxy
) -> None:
    """The same for a GBK client, whose name ends in the GBK character E4 B8: decoded as UTF-8 it
    is one U+FFFD (EF BF BD), which the server, reading the check in GBK, takes for EF BF and
    BD followed by a quote (22P05: no UTF8 equivalent). The check fails, the proxy closes the
    server connection, and the client loses its pinned session (here an advisory lock it holds;
    a temporary table the same). Direct PostgreSQL keeps both the setting and the lock."""
    proxy = one_connection(start_proxy)
    a = await x.raw_login(proxy, client_encoding="GBK")
    try:
        await a.simple_query("SELECT pg_advisory_lock(77)")
        a.send(m.frame(b"Q", b"SET \"app.\xe4\xb8\" = 'A'\x00"))
        while (await a.read_message())[0] != b"Z":
            pass
        rows = await a.simple_query(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert rows == [["1"]]
    finally:
        await a.close()


# --- the check under the client's own timeouts ----------------------------------------------------


async def test_leak2_statement_timeout_still_fails_the_settings_read_and_drops_the_pin(
    atk: LocalPostgres, start_proxy: StartProxy
) -> None:
    """The fix for statement_timeout = 1 left the first statement of the check (the settings
    read, pg_settings for a full check) under the client's timeout, on the grounds that it is
    quick. Under 1 ms it is not always: a pinned client doing RESET (a full check) now and then
    gets 57014 on the check, the proxy closes the server connection, and the client's advisory
    lock is gone. Direct PostgreSQL: the lock stays."""
    proxy = one_connection(start_proxy)
    a = await x.raw_login(proxy)
    try:
        await a.simple_query("SELECT pg_advisory_lock(5)")
        await a.simple_query("SET statement_timeout = 1")
        for _ in range(30):
            await a.simple_query("RESET work_mem")
        await a.simple_query("SET statement_timeout = 0")
        rows = await a.simple_query(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert rows == [["1"]]
    finally:
        await a.close()


async def test_leak2_non_ascii_upper_case_setting_name_is_folded_by_python(
    atk: LocalPostgres, start_proxy: StartProxy
) -> None:
    """PostgreSQL folds setting names in ASCII only (guc_name_compare); the proxy lower-cases
    them with str.lower(). `SET "app.\\u00c9" = 'A'` (UTF8 client) is read back as
    current_setting('app.\\u00e9'): NULL, taken for unset. B reads A's value."""
    name = "app.\u00c9"
    fresh = await _setting(direct_dsn(atk), name)
    proxy = one_connection(start_proxy)
    a = await asyncpg.connect(proxy.dsn(), statement_cache_size=0)
    try:
        await a.execute(f"SET \"{name}\" = 'A'")
        await a.fetchval("SELECT 1")
        assert await _setting(proxy.dsn(), name) == fresh
    finally:
        await a.close()


# --- transaction mode without statement renaming (max_prepared_statements = 0) -----------------


async def test_leak2_named_statement_bound_later_without_renaming(
    atk: LocalPostgres, start_proxy: StartProxy
) -> None:
    """With pool.max_prepared_statements = 0 named Parse messages go to the server as they are
    and are judged at Parse time only. A Bind of the same name in a later transaction (on the
    same server connection, as with a pool of 1) is judged by nobody: the setting goes to B."""
    fresh = await view(direct_dsn(atk))
    proxy = start_proxy(
        pool={"default_pool_size": 1, "query_wait_timeout_s": 20, "max_prepared_statements": 0}
    )
    a = await x.raw_login(proxy)
    try:
        r = await x.roundtrip(
            a, x.parse("s", "SELECT set_config('app.tenant', 'A', false)"), x.SYNC
        )
        assert r.kinds == ["1", "Z:I"]
        r = await x.roundtrip(a, x.bind("s"), x.execute(), x.SYNC)
        assert r.rows == [["A"]]
        assert await view(proxy.dsn()) == fresh
    finally:
        await a.close()


async def test_leak2_next_client_runs_the_unnamed_statement_left_by_the_last(
    atk: LocalPostgres, start_proxy: StartProxy
) -> None:
    """The unnamed statement is not renamed and outlives the transaction when no check follows
    (a harmless text): B's Bind of "" without a Parse of its own runs A's last unnamed statement
    (Describe shows its columns, Execute its literals). Direct PostgreSQL answers 26000."""
    proxy = one_connection(start_proxy)
    a = await x.raw_login(proxy)
    b = await x.raw_login(proxy, user="alice")
    try:
        r = await x.roundtrip(
            a, x.parse("", "SELECT 'alice-secret' AS s"), x.bind(""), x.execute(), x.SYNC
        )
        assert r.rows == [["alice-secret"]]
        r = await x.roundtrip(b, x.bind(""), x.execute(), x.SYNC)
        assert r.rows == [] and [e.get("C") for e in r.errors] == ["26000"], r.rows
    finally:
        await a.close()
        await b.close()
