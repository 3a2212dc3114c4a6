"""Client compatibility matrix: every client driver x {session, transaction} pool mode.

Each cell runs the same scenario through the proxy: connect; a session setting
(`SET work_mem = '3MB'`, or a startup `-c work_mem=3MB` where the client cannot SET once);
several transactions of prepared/parameterised queries whose results are checked; a failing
statement inside a transaction, ROLLBACK, and recovery, with the setting still in force. The
proxy has 2 server connections that live 0.1 s (`server_lifetime_s`), and the scenario pauses
between transactions, so in transaction mode consecutive transactions of a client run on
different, freshly opened server connections: named statements must be re-prepared there and
settings replayed.

Each cell is a test item of its own (`test_compat_matrix[<driver>-<mode>]`). Java (pgjdbc) and
Node (node-postgres) cells are skipped, with the reason (`pytest -rs` lists them), when their
runtime, the jar or `npm install pg` is unavailable; a skip of any other cell is a failure.
After the module the matrix of the cells that ran is printed as a markdown table (`-s` shows it)
and written to `compat_matrix.md` in a pytest temporary directory.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import json
import logging
import os
import shutil
import subprocess
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pg8000.native
import psycopg
import psycopg2
import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.clients import MODES, client_env, parse_pgbench, start
from tests.support.pg import LocalPostgres
from tests.support.proxy import PASSWORDS, ProxyThread, StartProxy

pytestmark = pytest.mark.timeout(240)

ROUNDS = 4  # transactions per scenario
# Between transactions: longer than server_lifetime_s. These pauses are the scenario, not
# synchronisation: they let the server connection outlive its lifetime, so that the next
# transaction runs on a fresh one (re-prepare, replay of settings).
PAUSE_S = 0.15
WORK_MEM = "3MB"


class Skip(Exception):
    """A cell that cannot run here; the message is the reason shown in the matrix."""


@dataclass
class Ctx:
    pg: LocalPostgres
    proxy: ProxyThread
    mode: str
    tmp: Path
    user: str = "alice"

    @property
    def password(self) -> str:
        return PASSWORDS[self.user]


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(what)


# --------------------------------------------------------------------------------------------
# Python drivers


async def run_asyncpg(ctx: Ctx) -> None:
    conn = await asyncpg.connect(ctx.proxy.dsn(ctx.user))  # statement cache on (default)
    try:
        await conn.execute(f"SET work_mem = '{WORK_MEM}'")
        q1 = await conn.prepare("select $1::int * 2 + $2::int")
        for i in range(ROUNDS):
            async with conn.transaction():
                expect(await q1.fetchval(i, 7) == 2 * i + 7, "q1")
                got = await conn.fetchval("select current_setting($1)", "work_mem")
                expect(got == WORK_MEM, f"work_mem {got}")
            await asyncio.sleep(PAUSE_S)
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.fetchval("select 1 / $1::int", 0)
            raise AssertionError("no error")
        except asyncpg.DivisionByZeroError:
            pass
        await tx.rollback()
        await asyncio.sleep(PAUSE_S)
        expect(await q1.fetchval(100, 1) == 201, "q1 after error")
        got = await conn.fetchval("select current_setting($1)", "work_mem")
        expect(got == WORK_MEM, f"work_mem after error {got}")
    finally:
        await conn.close()


def run_psycopg(ctx: Ctx) -> None:
    with psycopg.connect(
        ctx.proxy.dsn(ctx.user), prepare_threshold=0, sslmode="disable", connect_timeout=10
    ) as conn:
        conn.execute(f"SET work_mem = '{WORK_MEM}'")
        conn.commit()
        for i in range(ROUNDS):
            expect(
                conn.execute("select %s::int * 2 + %s::int", (i, 7)).fetchone() == (2 * i + 7,),
                "q1",
            )
            row = conn.execute("select current_setting(%s)", ("work_mem",)).fetchone()
            expect(row == (WORK_MEM,), f"work_mem {row}")
            conn.commit()
            time.sleep(PAUSE_S)
        try:
            conn.execute("select 1 / %s::int", (0,))
            raise AssertionError("no error")
        except psycopg.errors.DivisionByZero:
            conn.rollback()
        time.sleep(PAUSE_S)
        expect(conn.execute("select %s::int * 2 + %s::int", (100, 1)).fetchone() == (201,), "q1")
        row = conn.execute("select current_setting(%s)", ("work_mem",)).fetchone()
        expect(row == (WORK_MEM,), f"work_mem after error {row}")
        conn.commit()


def run_psycopg2(ctx: Ctx) -> None:
    conn = psycopg2.connect(
        host=ctx.proxy.host, port=ctx.proxy.port, user=ctx.user, password=ctx.password,
        dbname="app", sslmode="disable", connect_timeout=10,
    )  # fmt: skip
    try:
        cur = conn.cursor()
        cur.execute(f"SET work_mem = '{WORK_MEM}'")
        conn.commit()
        for i in range(ROUNDS):
            cur.execute("select %s * 2 + %s, current_setting(%s)", (i, 7, "work_mem"))
            row = cur.fetchone()
            expect(row == (2 * i + 7, WORK_MEM), f"round {i}: {row}")
            conn.commit()
            time.sleep(PAUSE_S)
        try:
            cur.execute("select 1 / %s", (0,))
            raise AssertionError("no error")
        except psycopg2.errors.DivisionByZero:
            conn.rollback()
        time.sleep(PAUSE_S)
        cur.execute("select %s * 2 + %s, current_setting(%s)", (100, 1, "work_mem"))
        row = cur.fetchone()
        expect(row == (201, WORK_MEM), f"after error: {row}")
        conn.commit()
    finally:
        conn.close()


def run_pg8000(ctx: Ctx) -> None:
    conn = pg8000.native.Connection(
        ctx.user, host=ctx.proxy.host, port=ctx.proxy.port, database="app",
        password=ctx.password, timeout=10,
    )  # fmt: skip
    try:
        conn.run(f"SET work_mem = '{WORK_MEM}'")
        q1 = conn.prepare("select cast(:a as int) * 2 + cast(:b as int)")
        q2 = conn.prepare("select current_setting(cast(:n as text))")
        for i in range(ROUNDS):
            conn.run("BEGIN")
            expect(q1.run(a=i, b=7) == [[2 * i + 7]], "q1")
            expect(q2.run(n="work_mem") == [[WORK_MEM]], "work_mem")
            conn.run("COMMIT")
            time.sleep(PAUSE_S)
        conn.run("BEGIN")
        try:
            conn.run("select 1 / cast(:z as int)", z=0)
            raise AssertionError("no error")
        except pg8000.native.DatabaseError as exc:
            expect(exc.args[0].get("C") == "22012", f"sqlstate {exc.args[0]}")
        conn.run("ROLLBACK")
        time.sleep(PAUSE_S)
        expect(q1.run(a=100, b=1) == [[201]], "q1 after error")
        expect(q2.run(n="work_mem") == [[WORK_MEM]], "work_mem after error")
        q1.close()
        q2.close()
    finally:
        conn.close()


async def run_sqlalchemy(ctx: Ctx) -> None:
    url = f"postgresql+asyncpg://{ctx.user}:{ctx.password}@{ctx.proxy.host}:{ctx.proxy.port}/app"
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    q1 = text("select cast(:a as int) * 2 + cast(:b as int)")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f"SET work_mem = '{WORK_MEM}'"))
            await conn.commit()
            for i in range(ROUNDS):
                expect(await conn.scalar(q1, {"a": i, "b": 7}) == 2 * i + 7, "q1")
                got = await conn.scalar(text("select current_setting(:n)"), {"n": "work_mem"})
                expect(got == WORK_MEM, f"work_mem {got}")
                await conn.commit()
                await asyncio.sleep(PAUSE_S)
            try:
                await conn.scalar(text("select 1 / cast(:z as int)"), {"z": 0})
                raise AssertionError("no error")
            except sqlalchemy.exc.DBAPIError as exc:
                expect("division by zero" in str(exc), str(exc))
            await conn.rollback()
            await asyncio.sleep(PAUSE_S)
            expect(await conn.scalar(q1, {"a": 100, "b": 1}) == 201, "q1 after error")
            got = await conn.scalar(text("select current_setting(:n)"), {"n": "work_mem"})
            expect(got == WORK_MEM, f"work_mem after error {got}")
            await conn.commit()
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------------------------
# libpq programs


def run_psql(ctx: Ctx) -> None:
    lines = [f"SET work_mem = '{WORK_MEM}';"]
    for i in range(ROUNDS):
        lines += [
            f"\\set i {i}",
            "BEGIN;",
            "SELECT 'r', :i * 2 + 7, current_setting('work_mem');",
            "COMMIT;",
            f"\\! sleep {PAUSE_S}",
        ]
    lines += [
        "BEGIN;",
        "SELECT 1 / 0;",
        "\\echo sqlstate :LAST_ERROR_SQLSTATE",
        "ROLLBACK;",
        "SELECT 'after', 100 * 2 + 1, current_setting('work_mem');",
    ]
    cmd = [ctx.pg.bin("psql"), "-X", "-At", "-w", "-h", ctx.proxy.host, "-p", str(ctx.proxy.port)]
    cmd += ["-U", ctx.user, "-d", "app", "-f", "-"]
    proc = subprocess.run(
        cmd, input="\n".join(lines) + "\n", capture_output=True, text=True,
        env=client_env(ctx.password), timeout=60, check=False,
    )  # fmt: skip
    out = proc.stdout.splitlines()
    want = [f"r|{2 * i + 7}|{WORK_MEM}" for i in range(ROUNDS)]
    expect([ln for ln in out if ln.startswith("r|")] == want, f"rounds: {out} {proc.stderr}")
    expect("sqlstate 22012" in out, f"no 22012: {out}")
    expect(f"after|201|{WORK_MEM}" in out, f"after error: {out} {proc.stderr}")
    expect("connection" not in proc.stderr.lower(), proc.stderr)


def run_pgbench(ctx: Ctx) -> None:
    # The script checks its own results: a wrong value divides by zero and fails the
    # transaction. The setting comes from a startup option (pgbench cannot SET once per client).
    script = ctx.tmp / f"compat_{ctx.mode}.pgbench"
    script.write_text(
        "\\set i random(1, 1000)\n"
        "BEGIN;\n"
        "SELECT 1 / ((:i * 2 + 7 - 7) / 2 = :i)::int;\n"
        f"SELECT 1 / (current_setting('work_mem') = '{WORK_MEM}')::int;\n"
        "END;\n"
        "\\sleep 30 ms\n"
    )
    clients, per_client = 4, 12
    env = client_env(ctx.password)
    env["PGOPTIONS"] = f"-c work_mem={WORK_MEM}"
    cmd = [ctx.pg.bin("pgbench"), "-h", ctx.proxy.host, "-p", str(ctx.proxy.port), "-U", ctx.user]
    cmd += ["-n", "-M", "prepared", "-c", str(clients), "-j", str(clients)]
    cmd += ["-t", str(per_client), "-f", str(script), "app"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=60, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    expect(proc.returncode == 0, (proc.stdout + proc.stderr)[-600:])
    result = parse_pgbench(proc)
    expect(result.processed == clients * per_client, result.output[-600:])
    expect(result.failed == 0, result.output[-600:])


# --------------------------------------------------------------------------------------------
# pgjdbc

JAVA_SOURCE = r"""
import java.sql.*;

public class PgCompat {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    public static void main(String[] args) throws Exception {
        int rounds = Integer.parseInt(args[3]);
        long pauseMs = Long.parseLong(args[4]);
        try (Connection c = DriverManager.getConnection(args[0], args[1], args[2])) {
            try (Statement s = c.createStatement()) {
                s.execute("SET work_mem = '" + args[5] + "'");
            }
            c.setAutoCommit(false);
            PreparedStatement q1 = c.prepareStatement("select ?::int * 2 + ?::int");
            PreparedStatement q2 = c.prepareStatement("select current_setting(?)");
            for (int i = 0; i < rounds; i++) {
                q1.setInt(1, i);
                q1.setInt(2, 7);
                try (ResultSet r = q1.executeQuery()) {
                    r.next();
                    check(r.getInt(1) == 2 * i + 7, "q1 round " + i + ": " + r.getInt(1));
                }
                q2.setString(1, "work_mem");
                try (ResultSet r = q2.executeQuery()) {
                    r.next();
                    check(args[5].equals(r.getString(1)), "work_mem " + r.getString(1));
                }
                c.commit();
                Thread.sleep(pauseMs);
            }
            // Past prepareThreshold (default 5): pgjdbc uses named server statements now.
            check(q1.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare(),
                  "q1 not server-prepared");
            PreparedStatement bad = c.prepareStatement("select 1 / ?::int");
            bad.setInt(1, 0);
            try {
                bad.executeQuery();
                check(false, "no error");
            } catch (SQLException e) {
                check("22012".equals(e.getSQLState()), "sqlstate " + e.getSQLState());
            }
            c.rollback();
            Thread.sleep(pauseMs);
            q1.setInt(1, 100);
            q1.setInt(2, 1);
            try (ResultSet r = q1.executeQuery()) {
                r.next();
                check(r.getInt(1) == 201, "q1 after error");
            }
            q2.setString(1, "work_mem");
            try (ResultSet r = q2.executeQuery()) {
                r.next();
                check(args[5].equals(r.getString(1)), "work_mem after error " + r.getString(1));
            }
            c.commit();
            System.out.println("OK");
        }
    }
}
"""

_java_build: dict[str, Path | str] = {}


def pgjdbc_jar() -> Path | None:
    repo = Path.home() / ".m2/repository/org/postgresql/postgresql"
    jars = [
        p
        for p in sorted(repo.glob("*/postgresql-*.jar"))
        if not p.name.endswith(("-sources.jar", "-javadoc.jar"))
    ]
    return jars[-1] if jars else None


def build_java(tmp: Path) -> tuple[Path, Path]:
    """Compile PgCompat.java once per test; Skip when java, javac or the jar is missing."""
    if "error" in _java_build:
        raise Skip(str(_java_build["error"]))
    if "classes" in _java_build:
        return Path(_java_build["classes"]), Path(_java_build["jar"])
    try:
        if not shutil.which("java") or not shutil.which("javac"):
            raise Skip("java/javac not installed")
        jar = pgjdbc_jar()
        if jar is None:
            raise Skip("no pgjdbc jar under ~/.m2/repository/org/postgresql/postgresql")
        classes = tmp / "java"
        classes.mkdir(exist_ok=True)
        (classes / "PgCompat.java").write_text(JAVA_SOURCE)
        proc = subprocess.run(
            ["javac", "-cp", str(jar), "-d", str(classes), str(classes / "PgCompat.java")],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(f"javac failed: {proc.stderr[-500:]}")
    except Skip as exc:
        _java_build["error"] = str(exc)
        raise
    _java_build.update(classes=classes, jar=jar)
    return classes, jar


def run_pgjdbc(ctx: Ctx) -> None:
    classes, jar = build_java(ctx.tmp)
    url = f"jdbc:postgresql://{ctx.proxy.host}:{ctx.proxy.port}/app?sslmode=disable"
    cmd = ["java", "-cp", f"{jar}{os.pathsep}{classes}", "PgCompat", url, ctx.user, ctx.password]
    cmd += [str(ROUNDS + 4), str(int(PAUSE_S * 1000)), WORK_MEM]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    expect(proc.returncode == 0 and proc.stdout.strip() == "OK", (proc.stdout + proc.stderr)[-800:])


# --------------------------------------------------------------------------------------------
# node-postgres

NODE_SOURCE = r"""
const { Client } = require('pg');

function check(ok, what) {
  if (!ok) throw new Error(what);
}
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

async function main() {
  const [host, port, user, password, rounds, pauseMs, workMem] = process.argv.slice(2);
  const c = new Client({ host, port: Number(port), user, password, database: 'app' });
  await c.connect();
  try {
    await c.query(`SET work_mem = '${workMem}'`);
    const q1 = (a, b) => ({
      name: 'q1', text: 'select $1::int * 2 + $2::int as v', values: [a, b],
    });
    const q2 = { name: 'q2', text: 'select current_setting($1) as s', values: ['work_mem'] };
    for (let i = 0; i < Number(rounds); i++) {
      await c.query('BEGIN');
      let r = await c.query(q1(i, 7));
      check(r.rows[0].v === 2 * i + 7, `q1 round ${i}: ${JSON.stringify(r.rows)}`);
      r = await c.query(q2);
      check(r.rows[0].s === workMem, `work_mem ${r.rows[0].s}`);
      await c.query('COMMIT');
      await sleep(Number(pauseMs));
    }
    await c.query('BEGIN');
    let failed = false;
    try {
      await c.query({ name: 'bad', text: 'select 1 / $1::int', values: [0] });
    } catch (e) {
      check(e.code === '22012', `sqlstate ${e.code}: ${e.message}`);
      failed = true;
    }
    check(failed, 'no error');
    await c.query('ROLLBACK');
    await sleep(Number(pauseMs));
    let r = await c.query(q1(100, 1));
    check(r.rows[0].v === 201, `q1 after error: ${JSON.stringify(r.rows)}`);
    r = await c.query(q2);
    check(r.rows[0].s === workMem, `work_mem after error ${r.rows[0].s}`);
    console.log('OK');
  } finally {
    await c.end();
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
"""

_node_setup: dict[str, str] = {}


def node_pg_dir() -> Path:
    """node_modules with `pg` installed (cached under the user's cache dir); Skip when node or
    npm are missing or `npm install pg` fails."""
    if "error" in _node_setup:
        raise Skip(_node_setup["error"])
    try:
        if not shutil.which("node") or not shutil.which("npm"):
            raise Skip("node/npm not installed")
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        prefix = cache / "pgpool-proxy-tests" / "node-pg"
        if not (prefix / "node_modules" / "pg" / "package.json").exists():
            prefix.mkdir(parents=True, exist_ok=True)
            try:
                proc = subprocess.run(
                    ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), "pg@8"],
                    capture_output=True, text=True, timeout=180, check=False,
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise Skip("`npm install pg` timed out after 180 s") from exc
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
                raise Skip(f"`npm install pg` failed: {' '.join(tail)[:200]}")
    except Skip as exc:
        _node_setup["error"] = str(exc)
        raise
    return prefix / "node_modules"


def node_pg_version() -> str:
    try:
        pkg = node_pg_dir() / "pg" / "package.json"
        return str(json.loads(pkg.read_text())["version"])
    except (Skip, OSError, KeyError, ValueError):
        return "?"


def run_node_pg(ctx: Ctx) -> None:
    modules = node_pg_dir()
    script = ctx.tmp / "compat.js"
    script.write_text(NODE_SOURCE)
    env = {**os.environ, "NODE_PATH": str(modules)}
    cmd = ["node", str(script), ctx.proxy.host, str(ctx.proxy.port), ctx.user, ctx.password]
    cmd += [str(ROUNDS), str(int(PAUSE_S * 1000)), WORK_MEM]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    expect(proc.returncode == 0 and proc.stdout.strip() == "OK", (proc.stdout + proc.stderr)[-800:])


# --------------------------------------------------------------------------------------------
# The matrix

Scenario = Callable[[Ctx], None] | Callable[[Ctx], Awaitable[None]]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# Each (driver, mode) cell is a test of its own: `pytest -rs` lists the skipped ones and why.
SCENARIOS: dict[str, Scenario] = {
    "asyncpg": run_asyncpg,
    "psycopg": run_psycopg,
    "psycopg2": run_psycopg2,
    "pg8000": run_pg8000,
    "sqlalchemy": run_sqlalchemy,
    "psql": run_psql,
    "pgbench": run_pgbench,
    "pgjdbc": run_pgjdbc,
    "node-postgres": run_node_pg,
}
# Cells that may be skipped when their runtime is missing; any other skip is a failure.
OPTIONAL = {"pgjdbc", "node-postgres"}


def driver_name(driver: str, pg: LocalPostgres) -> str:
    """The driver and its version, as the matrix shows it."""
    pg_version = str(pg.version())
    pg_major = pg_version[:2] if len(pg_version) == 6 else pg_version
    if driver == "pgjdbc":
        jar = pgjdbc_jar()
        return f"pgjdbc {jar.stem.removeprefix('postgresql-') if jar else '?'}"
    if driver == "node-postgres":
        return f"node-postgres {node_pg_version()}"
    if driver == "sqlalchemy":
        return f"SQLAlchemy {sqlalchemy.__version__} + asyncpg"
    if driver in ("psql", "pgbench"):
        return f"{driver} {pg_major}"
    dist = "psycopg2-binary" if driver == "psycopg2" else driver
    return f"{driver} {_version(dist)}"


HOW: dict[Scenario, str] = {
    run_asyncpg: "statement cache (default) + `conn.prepare()`",
    run_psycopg: "`prepare_threshold=0`: every statement prepared",
    run_psycopg2: "client-side parameters (simple protocol)",
    run_pg8000: "`native.Connection.prepare()`: named statements",
    run_sqlalchemy: "async engine; asyncpg's statement cache",
    run_psql: "simple protocol, psql variables",
    run_pgbench: "`-M prepared`, 4 clients, checks inside the script, setting via `PGOPTIONS=-c`",
    run_pgjdbc: "default `prepareThreshold` (5): named statements from the 5th execution on",
    run_node_pg: "named queries `{name, text, values}`",
}


@dataclass
class Cell:
    status: str  # "pass" | "fail" | "skip"
    detail: str = ""
    trace: str = ""


def cell_text(cell: Cell) -> str:
    if cell.status == "pass":
        return "pass"
    return f"{cell.status}: {cell.detail}"


def matrix_markdown(rows: list[tuple[str, str, dict[str, Cell]]]) -> str:
    out = [
        "| client | how it is exercised | session mode | transaction mode |",
        "|---|---|---|---|",
    ]
    for name, how, cells in rows:
        short = {
            m: cell_text(c).replace("|", "\\|").replace("\n", " ")[:160] for m, c in cells.items()
        }
        session, transaction = short.get("session", "-"), short.get("transaction", "-")
        out.append(f"| {name} | {how} | {session} | {transaction} |")
    return "\n".join(out) + "\n"


async def run_cell(scenario: Scenario, ctx: Ctx) -> Cell:
    try:
        if inspect.iscoroutinefunction(scenario):
            await asyncio.wait_for(scenario(ctx), 90)
        else:
            await asyncio.to_thread(scenario, ctx)
        return Cell("pass")
    except Skip as exc:
        return Cell("skip", str(exc))
    except Exception as exc:
        last = traceback.format_exception_only(exc)[-1].strip()
        return Cell("fail", last, traceback.format_exc())


def server_connects(caplog: pytest.LogCaptureFixture) -> int:
    """Server connections the proxies have opened so far (from the pool's log line)."""
    return sum(1 for r in caplog.records if r.getMessage().startswith("server connected"))


@pytest.fixture(scope="module")
def matrix(
    pg: LocalPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[tuple[str, str], Cell]]:
    """The cells run so far; after the module, the matrix (of the cells that ran) is printed
    and written to compat_matrix.md."""
    cells: dict[tuple[str, str], Cell] = {}
    yield cells
    rows = [
        (driver_name(d, pg), HOW[s], {m: cells[(d, m)] for m in MODES if (d, m) in cells})
        for d, s in SCENARIOS.items()
        if any((d, m) in cells for m in MODES)
    ]
    if rows:
        table = matrix_markdown(rows)
        out = tmp_path_factory.mktemp("compat") / "compat_matrix.md"
        out.write_text(table)
        print(f"\nclient compatibility matrix ({out}):\n\n{table}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("driver", list(SCENARIOS))
async def test_compat_matrix(
    driver: str,
    mode: str,
    pg: LocalPostgres,
    start_proxy: StartProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    matrix: dict[tuple[str, str], Cell],
) -> None:
    caplog.set_level(logging.INFO, logger="pgpool_proxy")
    proxy = start(
        start_proxy, mode, size=2, pool={"server_lifetime_s": 0.1, "query_wait_timeout_s": 20}
    )
    ctx = Ctx(pg=pg, proxy=proxy, mode=mode, tmp=tmp_path)
    before = server_connects(caplog)
    cell = await run_cell(SCENARIOS[driver], ctx)
    opened = server_connects(caplog) - before
    if mode == "transaction" and cell.status == "pass" and opened < 2:
        # The scenario must really have moved between server connections.
        cell = Cell("fail", f"only {opened} server connections opened: no reassignment")
    matrix[(driver, mode)] = cell
    if cell.status == "skip":
        if driver in OPTIONAL:
            pytest.skip(cell.detail)
        pytest.fail(f"{driver} must run everywhere but was skipped: {cell.detail}")
    assert cell.status == "pass", f"{cell.detail}\n{cell.trace}"
