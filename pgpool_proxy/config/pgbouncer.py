"""Owns reading a PgBouncer configuration (pgbouncer.ini, its ``%include`` files and its
``auth_file``) and mapping it onto pgpool-proxy's configuration.

`convert_pgbouncer_ini` returns the mapping in the layout `build_config` takes, plus a note for
every PgBouncer setting that has no equivalent (never dropped silently). Problems that make
the file unusable (a malformed line, a bad number, a missing include) are collected and raised
together as one `ConfigError`, one ``FILE:LINE: ...`` line each.

Reading the files is `ini`'s part; this module decides what each setting becomes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .build import build_config
from .ini import (
    IniEntry,
    IniFiles,
    PgBouncerNote,
    cut,
    parse_params,
    read_auth_file,
    read_ini,
    shown,
)
from .model import Config
from .schema import ConfigError
from .tomlwrite import toml_text

__all__ = [
    "PGBOUNCER_DATABASE_PARAMS",
    "PGBOUNCER_SETTINGS",
    "PGBOUNCER_USER_PARAMS",
    "PgBouncerConversion",
    "convert_pgbouncer_ini",
    "load_pgbouncer_config",
]

_MIB: Final = 1024 * 1024
_GIB: Final = 1024 * _MIB

# What each PgBouncer setting becomes: the pgpool-proxy key it maps to ("section.key"), or,
# starting with "-", why it has no equivalent. docs/pgbouncer.md has the same table for people.
PGBOUNCER_SETTINGS: Final[Mapping[str, str]] = {
    # generic
    "logfile": "-pgpool-proxy logs to stderr only; redirect it or use the service manager's log",
    "pidfile": "-pgpool-proxy does not daemonize; run it under systemd, a container or similar",
    "listen_addr": "proxy.listen",
    "listen_port": "proxy.listen",
    "unix_socket_dir": "proxy.unix_socket_dir",
    "unix_socket_mode": "proxy.unix_socket_mode",
    "unix_socket_group": "-the socket file gets the proxy user's group; use a setgid directory",
    "user": "-pgpool-proxy does not switch users; start it as the user it should run as",
    "pool_mode": "proxy.pool_mode",
    "max_client_conn": "proxy.max_client_conn",
    "default_pool_size": "pool.default_pool_size",
    "min_pool_size": "pool.min_pool_size",
    "reserve_pool_size": "pool.reserve_pool_size",
    "reserve_pool_timeout": "pool.reserve_pool_timeout_s",
    "max_db_connections": "pool.max_db_connections",
    "max_db_client_connections": "-no per-database client limit; proxy.max_client_conn limits all",
    "max_user_connections": "pool.max_user_connections",
    "max_user_client_connections": "-no per-user client limit; proxy.max_client_conn limits all",
    "server_round_robin": "-server connections are always reused last-in first-out",
    "track_extra_parameters": "-not needed: every setting a client changes is tracked",
    "ignore_startup_parameters": "-not needed: every startup parameter is accepted and applied",
    "peer_id": "proxy.peer_id",
    "disable_pqexec": "-the simple query protocol cannot be turned off",
    "application_name_add_host": "-the application_name a client sends is passed on unchanged",
    "conffile": "-the file is the one given on the command line",
    "service_name": "-Windows services are not supported",
    "job_name": "-Windows services are not supported",
    "stats_period": "-SHOW STATS averages and /metrics have no configurable period",
    "max_prepared_statements": "pool.max_prepared_statements",
    "scram_iterations": "-the SCRAM iteration count for plaintext passwords is not configurable",
    # authentication
    "auth_type": "auth.type",
    "auth_hba_file": "-the hba file is not read: write its lines as [[client_rules]]",
    "auth_ident_file": "-no ident maps",
    "auth_file": "users",
    "auth_user": "auth.auth_user",
    "auth_query": "auth.auth_query",
    "auth_dbname": "auth.auth_dbname",
    "auth_ldap_options": "-no LDAP authentication",
    # logging
    "syslog": '-pgpool-proxy logs to stderr only (proxy.log_format = "json" for collectors)',
    "syslog_ident": "-no syslog",
    "syslog_facility": "-no syslog",
    "log_connections": "-logins are always logged (at info level)",
    "log_disconnections": "-disconnections are always logged (at info level)",
    "log_pooler_errors": "-no switch: a session the proxy ends is logged with its reason",
    "log_stats": "-no periodic statistics in the log; read SHOW STATS or /metrics",
    "verbose": "proxy.log_level",
    # console
    "admin_users": "admin.admin_users",
    "stats_users": "admin.stats_users",
    # sanity checks and timeouts
    "server_reset_query": "pool.server_reset_query",
    "server_reset_query_always": "-transaction mode restores session state itself; the reset "
    "query runs when a session-mode client leaves",
    "server_check_delay": "pool.server_check_delay_s",
    "server_check_query": "pool.server_check_query",
    "server_fast_close": "-session-mode clients keep their server connection until they leave",
    "server_lifetime": "pool.server_lifetime_s",
    "server_idle_timeout": "pool.server_idle_timeout_s",
    "server_connect_timeout": "pool.server_connect_timeout_s",
    "server_login_retry": "pool.server_login_retry_s",
    "client_login_timeout": "proxy.client_login_timeout_s",
    "autodb_idle_timeout": '-no automatically created databases (the "*" entry)',
    "pool_idle_timeout": "-pools are kept; their idle server connections close after "
    "pool.server_idle_timeout_s",
    "dns_max_ttl": "-host names are resolved by the system on every connect",
    "dns_nxdomain_ttl": "-host names are resolved by the system on every connect",
    "dns_zone_check_period": "-host names are resolved by the system on every connect",
    "resolv_conf": "-host names are resolved by the system resolver",
    "query_wait_notify": "-queued clients are not sent a notice",
    "login_notify_message": "-no login notice",
    # TLS
    "client_tls_sslmode": "client_tls.mode",
    "client_tls_key_file": "client_tls.key_file",
    "client_tls_cert_file": "client_tls.cert_file",
    "client_tls_ca_file": "-client certificates are not verified",
    "client_tls_protocols": "client_tls.min_version",
    "client_tls_ciphers": "-ciphers are Python's ssl defaults",
    "client_tls13_ciphers": "-ciphers are Python's ssl defaults",
    "client_tls_ecdhcurve": "-key exchange is Python's ssl defaults",
    "client_tls_dheparams": "-key exchange is Python's ssl defaults",
    "server_tls_sslmode": "server_tls.mode",
    "server_tls_ca_file": "server_tls.ca_file",
    "server_tls_key_file": "-no client certificate towards the server",
    "server_tls_cert_file": "-no client certificate towards the server",
    "server_tls_protocols": "server_tls.min_version",
    "server_tls_ciphers": "-ciphers are Python's ssl defaults",
    "server_tls13_ciphers": "-ciphers are Python's ssl defaults",
    # dangerous timeouts
    "query_timeout": "pool.query_timeout_s",
    "query_wait_timeout": "pool.query_wait_timeout_s",
    "cancel_wait_timeout": "proxy.cancel_wait_timeout_s",
    "client_idle_timeout": "pool.client_idle_timeout_s",
    "idle_transaction_timeout": "pool.idle_transaction_timeout_s",
    "transaction_timeout": "-transactions have no time limit in the proxy",
    # low-level network
    "pkt_buf": "-buffers are sized by the proxy",
    "max_packet_size": "proxy.max_message_size_bytes",
    "listen_backlog": "-the listen backlog is the runtime's default",
    "sbuf_loopcnt": "-large results are streamed without a loop count",
    "so_reuseport": "proxy.reuse_port",
    "tcp_defer_accept": "-TCP_DEFER_ACCEPT is not set",
    "tcp_socket_buffer": "-socket buffers are the kernel's defaults",
    "tcp_keepalive": "pool.tcp_keepalive",
    "tcp_keepcnt": "pool.tcp_keepcnt",
    "tcp_keepidle": "pool.tcp_keepidle_s",
    "tcp_keepintvl": "pool.tcp_keepintvl_s",
    "tcp_user_timeout": "pool.tcp_user_timeout_s",
}

# Connection string parameters of a [databases] entry.
PGBOUNCER_DATABASE_PARAMS: Final[Mapping[str, str]] = {
    "dbname": "databases.dbname",
    "host": "databases.host",
    "port": "databases.port",
    "user": "databases.user",
    "password": "databases.password",
    "auth_user": "databases.auth_user",
    "auth_query": "databases.auth_query",
    "auth_dbname": "databases.auth_dbname",
    "pool_size": "databases.pool_size",
    "min_pool_size": "-pool.min_pool_size applies to every database",
    "reserve_pool_size": "-pool.reserve_pool_size applies to every database",
    "reserve_pool": "-pool.reserve_pool_size applies to every database",
    "connect_query": "-no query on new server connections; use ALTER ROLE/DATABASE ... SET",
    "pool_mode": "databases.pool_mode",
    "query_wait_timeout": "-pool.query_wait_timeout_s applies to every database",
    "load_balance_hosts": "-one host per database (hosts = [...] tracks the writer instead)",
    "target_session_attrs": '-use hosts = [...] with role = "writer" or "reader" instead',
    "max_db_connections": "databases.max_db_connections",
    "max_db_client_connections": "-no per-database client limit",
    "server_lifetime": "-pool.server_lifetime_s applies to every database",
    "client_encoding": "-server settings come from the client; use ALTER ROLE/DATABASE ... SET",
    "datestyle": "-server settings come from the client; use ALTER ROLE/DATABASE ... SET",
    "timezone": "-server settings come from the client; use ALTER ROLE/DATABASE ... SET",
    "application_name": "-server settings come from the client; use ALTER ROLE/DATABASE ... SET",
}

# Settings of a [users] entry.
PGBOUNCER_USER_PARAMS: Final[Mapping[str, str]] = {
    "pool_mode": "users.pool_mode",
    "pool_size": "-pool sizes are per database (databases.pool_size)",
    "reserve_pool_size": "-pool.reserve_pool_size applies to every user",
    "max_user_connections": "users.max_user_connections",
    "max_user_client_connections": "-no per-user client limit",
    "query_timeout": "-pool.query_timeout_s applies to every user",
    "query_wait_timeout": "-pool.query_wait_timeout_s applies to every user",
    "idle_transaction_timeout": "-pool.idle_transaction_timeout_s applies to every user",
    "transaction_timeout": "-transactions have no time limit in the proxy",
    "client_idle_timeout": "-pool.client_idle_timeout_s applies to every user",
}

# Values of an unmapped setting that mean what pgpool-proxy does anyway: noted at info level.
_HARMLESS: Final[Mapping[str, frozenset[str]]] = {
    "reserve_pool_size": frozenset({"0"}),
    "max_db_client_connections": frozenset({"0"}),
    "max_user_client_connections": frozenset({"0"}),
    "server_round_robin": frozenset({"0", "false", "no", "off"}),
    "disable_pqexec": frozenset({"0", "false", "no", "off"}),
    "application_name_add_host": frozenset({"0", "false", "no", "off"}),
    "transaction_timeout": frozenset({"0", "0.0"}),
    "server_fast_close": frozenset({"0", "false", "no", "off"}),
    "server_reset_query_always": frozenset({"0", "false", "no", "off"}),
    "client_tls_ciphers": frozenset({"default", "secure", "fast", "normal"}),
    "server_tls_ciphers": frozenset({"default", "secure", "fast", "normal"}),
    "client_tls13_ciphers": frozenset({""}),
    "server_tls13_ciphers": frozenset({""}),
    "client_tls_ecdhcurve": frozenset({"auto"}),
    "client_tls_dheparams": frozenset({"auto"}),
    "log_connections": frozenset({"1", "true", "yes", "on"}),
    "log_disconnections": frozenset({"1", "true", "yes", "on"}),
    "syslog": frozenset({"0", "false", "no", "off"}),
    "track_extra_parameters": frozenset(),
    "ignore_startup_parameters": frozenset(),
    "conffile": frozenset(),
}
# Unmapped settings that never need attention, whatever their value.
_ALWAYS_HARMLESS: Final = frozenset(
    {"track_extra_parameters", "ignore_startup_parameters", "conffile"}
)

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_TLS_ORDER: Final = ("tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3")
_TLS_SHORTCUTS: Final[Mapping[str, tuple[str, ...]]] = {
    "all": _TLS_ORDER,
    "legacy": _TLS_ORDER,
    "secure": ("tlsv1.2", "tlsv1.3"),
    "normal": ("tlsv1.2", "tlsv1.3"),
    "default": ("tlsv1.2", "tlsv1.3"),
}


@dataclass(frozen=True, slots=True)
class PgBouncerConversion:
    """A converted PgBouncer configuration: ``data`` in `build_config`'s layout, the notes on
    what was not converted, and the ini file it came from."""

    data: dict[str, Any]
    notes: tuple[PgBouncerNote, ...]
    source: str
    # "section.key", "databases[0]", "users[1]" -> "FILE:LINE" it came from.
    origins: Mapping[str, str] = field(default_factory=dict)

    def config(self, env: Mapping[str, str] | None = None) -> Config:
        """The validated `Config`; raises `ConfigError` when invalid, each problem naming the
        ini (or auth_file) line the offending value came from where it is known."""
        try:
            return build_config(self.data, source=self.source, env=env)
        except ConfigError as exc:
            raise ConfigError([self._locate(problem) for problem in exc.problems]) from None

    def _locate(self, problem: str) -> str:
        prefix = f"{self.source}: "
        if not problem.startswith(prefix):
            return problem
        path, sep, message = problem[len(prefix) :].partition(": ")
        # The most precise origin known: databases[1].pool_size, then databases[1].
        key = path.partition(" (")[0]
        while key:
            if key in self.origins:
                return f"{self.origins[key]}: {path}{sep}{message}"
            key = key.rpartition(".")[0]
        return problem

    def toml(self) -> str:
        """The configuration as a TOML file for ``pgpool-proxy run --config``."""
        header = [
            f"Converted from {self.source} by pgpool-proxy convert.",
            "It holds the auth_file's passwords: keep it as private as the auth_file.",
        ]
        if self.notes:
            header.append("Not converted, or not exactly (also printed on stderr):")
            header.extend(f"  {note}" for note in self.notes)
        return toml_text(self.data, header)


# --- mapping ----------------------------------------------------------------------------------


def _is_md5_hash(secret: str) -> bool:
    digest = secret[3:]
    return (
        secret.startswith("md5")
        and len(digest) == 32
        and all(c in "0123456789abcdef" for c in digest)
    )


def _is_scram(secret: str) -> bool:
    return secret.startswith("SCRAM-SHA-256$")


class _Mapper:
    """Turns parsed ini entries into pgpool-proxy's configuration layout, noting the rest."""

    def __init__(self, ini: IniFiles) -> None:
        self.problems = ini.problems
        self.notes = ini.notes
        self.files = ini.files
        self.origins: dict[str, str] = {}
        self.proxy: dict[str, Any] = {}
        self.pool: dict[str, Any] = {}
        self.auth: dict[str, Any] = {}
        self.client_tls: dict[str, Any] = {}
        self.server_tls: dict[str, Any] = {}
        self.admin: dict[str, Any] = {}
        self.databases: list[dict[str, Any]] = []
        self.users: list[dict[str, Any]] = []
        # The last value of each [pgbouncer] setting wins, as in PgBouncer.
        self.settings: dict[str, IniEntry] = {}
        self.db_entries: dict[str, IniEntry] = {}
        self.user_entries: dict[str, IniEntry] = {}
        self.peer_entries: list[IniEntry] = []
        self.peers: list[dict[str, Any]] = []
        for entry in ini.entries:
            if entry.section == "pgbouncer":
                self.settings[entry.key.lower()] = entry
            elif entry.section == "databases":
                self.db_entries[entry.key] = entry
            elif entry.section == "users":
                self.user_entries[entry.key] = entry
            else:
                self.peer_entries.append(entry)

    # helpers

    def note(self, entry: IniEntry, setting: str, message: str, severity: str = "warning") -> None:
        self.notes.append(PgBouncerNote(entry.where, cut(setting), message, severity))

    def bad(self, entry: IniEntry, setting: str, message: str) -> None:
        self.problems.append(f"{entry.where}: {cut(setting)}: {message}")

    def integer(self, entry: IniEntry, value: str, setting: str, lo: int, hi: int) -> int | None:
        text = value.strip()
        digits = text.removeprefix("-")
        if not digits.isdigit() or not digits.isascii() or len(digits) > 18:
            self.bad(entry, setting, f"expected an integer, got {shown(value)}")
            return None
        number = int(text)
        if not lo <= number <= hi:
            self.bad(entry, setting, f"must be between {lo} and {hi}, got {number}")
            return None
        return number

    def seconds(self, entry: IniEntry, setting: str) -> float | None:
        try:
            number = float(entry.value) if len(entry.value) <= 40 else float("nan")
        except ValueError:
            number = float("nan")
        if number != number or number in (float("inf"), float("-inf")) or number < 0:
            self.bad(entry, setting, f"expected a number of seconds >= 0, got {shown(entry.value)}")
            return None
        return number

    def boolean(self, entry: IniEntry, setting: str) -> bool | None:
        lowered = entry.value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        self.bad(entry, setting, f"expected 0 or 1, got {shown(entry.value)}")
        return None

    def path(self, entry: IniEntry) -> str:
        # PgBouncer expands ~ in file names, as a shell would.
        return os.path.normpath(os.path.join(entry.base, os.path.expanduser(entry.value)))

    def pool_mode(self, entry: IniEntry, value: str, setting: str) -> str | None:
        lowered = value.lower()
        if lowered in ("session", "transaction"):
            return lowered
        if lowered == "statement":
            self.note(
                entry,
                setting,
                "statement pooling is not supported; transaction pooling is used (it runs "
                "every workload statement pooling accepts)",
            )
            return "transaction"
        self.bad(entry, setting, f"expected session, transaction or statement, got {shown(value)}")
        return None

    # [pgbouncer]

    def map_settings(self) -> None:
        handlers: dict[str, Callable[[IniEntry], None]] = {
            "pool_mode": self._pool_mode,
            "max_client_conn": self._int_to(self.proxy, "max_client_conn", 1, 2**31 - 1),
            "default_pool_size": self._int_to(self.pool, "default_pool_size", 1, 2**31 - 1),
            "min_pool_size": self._int_to(self.pool, "min_pool_size", 0, 2**31 - 1),
            "max_prepared_statements": self._max_prepared_statements,
            "verbose": self._verbose,
            "server_reset_query": self._server_reset_query,
            "server_check_delay": self._server_check_delay,
            "reserve_pool_size": self._int_to(self.pool, "reserve_pool_size", 0, 2**31 - 1),
            "reserve_pool_timeout": self._seconds_to(self.pool, "reserve_pool_timeout_s"),
            "unix_socket_dir": self._unix_socket_dir,
            "unix_socket_mode": self._unix_socket_mode,
            "server_check_query": self._server_check_query,
            "server_lifetime": self._server_lifetime,
            "server_idle_timeout": self._seconds_to(self.pool, "server_idle_timeout_s"),
            "server_connect_timeout": self._positive_seconds_to(
                self.pool, "server_connect_timeout_s"
            ),
            "server_login_retry": self._positive_seconds_to(self.pool, "server_login_retry_s"),
            "client_login_timeout": self._positive_seconds_to(self.proxy, "client_login_timeout_s"),
            "query_timeout": self._seconds_to(self.pool, "query_timeout_s"),
            "query_wait_timeout": self._seconds_to(self.pool, "query_wait_timeout_s"),
            "peer_id": self._int_to(self.proxy, "peer_id", 0, 16383),
            "cancel_wait_timeout": self._positive_seconds_to(self.proxy, "cancel_wait_timeout_s"),
            "client_idle_timeout": self._seconds_to(self.pool, "client_idle_timeout_s"),
            "idle_transaction_timeout": self._seconds_to(self.pool, "idle_transaction_timeout_s"),
            "max_db_connections": self._int_to(self.pool, "max_db_connections", 0, 2**31 - 1),
            "max_user_connections": self._int_to(self.pool, "max_user_connections", 0, 2**31 - 1),
            "client_tls_sslmode": self._client_tls_mode,
            "client_tls_key_file": self._path_to(self.client_tls, "key_file"),
            "client_tls_cert_file": self._path_to(self.client_tls, "cert_file"),
            "client_tls_protocols": self._tls_protocols(self.client_tls),
            "server_tls_sslmode": self._server_tls_mode,
            "server_tls_ca_file": self._path_to(self.server_tls, "ca_file"),
            "server_tls_protocols": self._tls_protocols(self.server_tls),
            "max_packet_size": self._max_packet_size,
            "so_reuseport": self._bool_to(self.proxy, "reuse_port"),
            "tcp_keepalive": self._bool_to(self.pool, "tcp_keepalive"),
            "tcp_keepcnt": self._int_to(self.pool, "tcp_keepcnt", 1, 127),
            "tcp_keepidle": self._int_to(self.pool, "tcp_keepidle_s", 1, 32767),
            "tcp_keepintvl": self._int_to(self.pool, "tcp_keepintvl_s", 1, 32767),
            "tcp_user_timeout": self._tcp_user_timeout,
            "auth_user": self._text_to(self.auth, "auth_user"),
            "auth_query": self._text_to(self.auth, "auth_query"),
            "auth_dbname": self._text_to(self.auth, "auth_dbname"),
        }
        # Handled with the listener, the users or the databases.
        elsewhere = {
            "listen_addr",
            "listen_port",
            "auth_type",
            "auth_file",
            "admin_users",
            "stats_users",
        }
        # PgBouncer's defaults where they differ from pgpool-proxy's: the ini means them.
        self.proxy["pool_mode"] = "session"
        self.proxy["max_client_conn"] = 100
        self.proxy["client_login_timeout_s"] = 60.0
        self.pool["server_login_retry_s"] = 15.0
        self.server_tls["mode"] = "prefer"
        self.proxy["unix_socket_dir"] = "/tmp"
        self._listen()
        for name, entry in self.settings.items():
            setting = f"[pgbouncer] {name}"
            if name in handlers:
                handlers[name](entry)
            elif name in elsewhere:
                continue
            elif name in PGBOUNCER_SETTINGS:
                reason = PGBOUNCER_SETTINGS[name].removeprefix("-")
                harmless = name in _ALWAYS_HARMLESS or entry.value.lower() in _HARMLESS.get(
                    name, frozenset()
                )
                if harmless:
                    message = f"same as pgpool-proxy's behaviour ({reason})"
                    self.note(entry, setting, message, "info")
                else:
                    self.note(entry, setting, f"not converted: {reason}")
            else:
                self.note(
                    entry,
                    setting,
                    "not a PgBouncer setting this converter knows (misspelt, or newer than "
                    "it); not converted",
                )

    def _int_to(
        self, table: dict[str, Any], key: str, lo: int, hi: int
    ) -> Callable[[IniEntry], None]:
        def apply(entry: IniEntry) -> None:
            number = self.integer(entry, entry.value, f"[pgbouncer] {entry.key}", lo, hi)
            if number is not None:
                table[key] = number

        return apply

    def _seconds_to(self, table: dict[str, Any], key: str) -> Callable[[IniEntry], None]:
        def apply(entry: IniEntry) -> None:
            number = self.seconds(entry, f"[pgbouncer] {entry.key}")
            if number is not None:
                table[key] = number

        return apply

    def _positive_seconds_to(self, table: dict[str, Any], key: str) -> Callable[[IniEntry], None]:
        def apply(entry: IniEntry) -> None:
            setting = f"[pgbouncer] {entry.key}"
            number = self.seconds(entry, setting)
            if number == 0:
                table.pop(key, None)
                self.note(
                    entry,
                    setting,
                    f"0 cannot turn this off here; {key} keeps pgpool-proxy's default",
                )
            elif number is not None:
                table[key] = number

        return apply

    def _bool_to(self, table: dict[str, Any], key: str) -> Callable[[IniEntry], None]:
        def apply(entry: IniEntry) -> None:
            value = self.boolean(entry, f"[pgbouncer] {entry.key}")
            if value is not None:
                table[key] = value

        return apply

    def _path_to(self, table: dict[str, Any], key: str) -> Callable[[IniEntry], None]:
        def apply(entry: IniEntry) -> None:
            table[key] = self.path(entry) if entry.value else ""

        return apply

    def _listen(self) -> None:
        addr_entry = self.settings.get("listen_addr")
        port_entry = self.settings.get("listen_port")
        port = 6432
        if port_entry is not None:
            number = self.integer(port_entry, port_entry.value, "[pgbouncer] listen_port", 0, 65535)
            port = 6432 if number is None else number
        host = "127.0.0.1"
        if addr_entry is None or not addr_entry.value:
            where = addr_entry or port_entry or next(iter(self.settings.values()), None)
            if where is not None:
                self.note(
                    where,
                    "[pgbouncer] listen_addr",
                    "not set: PgBouncer would listen on its Unix socket only; pgpool-proxy "
                    "always listens on TCP too, on 127.0.0.1 (the Unix socket is kept)",
                )
        else:
            addresses = [a.strip() for a in addr_entry.value.split(",") if a.strip()]
            host = addresses[0]
            if host == "*":
                host = "0.0.0.0"
                self.note(
                    addr_entry,
                    "[pgbouncer] listen_addr",
                    '"*" is mapped to 0.0.0.0: every IPv4 address (not IPv6; use "[::]" for that)',
                )
            if len(addresses) > 1:
                self.note(
                    addr_entry,
                    "[pgbouncer] listen_addr",
                    f"pgpool-proxy listens on one address; {host} is used, "
                    f"{', '.join(addresses[1:])} not",
                )
            if ":" in host:
                host = f"[{host}]"
        self.proxy["listen"] = f"{host}:{port}"

    def _text_to(self, table: dict[str, Any], key: str) -> Callable[[IniEntry], None]:
        def apply(entry: IniEntry) -> None:
            if entry.value:
                table[key] = entry.value

        return apply

    def _pool_mode(self, entry: IniEntry) -> None:
        mode = self.pool_mode(entry, entry.value, "[pgbouncer] pool_mode")
        if mode is not None:
            self.proxy["pool_mode"] = mode

    def _max_prepared_statements(self, entry: IniEntry) -> None:
        setting = "[pgbouncer] max_prepared_statements"
        number = self.integer(entry, entry.value, setting, 0, 2**31 - 1)
        if number is not None and number > 100_000:
            self.note(entry, setting, f"{number} is above pgpool-proxy's limit; 100000 is used")
            number = 100_000
        if number is not None:
            self.pool["max_prepared_statements"] = number

    def _verbose(self, entry: IniEntry) -> None:
        number = self.integer(entry, entry.value, "[pgbouncer] verbose", 0, 100)
        if number is not None:
            self.proxy["log_level"] = "debug" if number > 0 else "info"

    def _unix_socket_dir(self, entry: IniEntry) -> None:
        # Empty turns the socket off in both.
        self.proxy["unix_socket_dir"] = entry.value

    def _unix_socket_mode(self, entry: IniEntry) -> None:
        text = entry.value.strip()
        if not text or len(text) > 6 or any(c not in "01234567" for c in text):
            self.bad(entry, "[pgbouncer] unix_socket_mode", f"expected octal, got {shown(text)}")
        elif int(text, 8) > 0o777:
            self.bad(entry, "[pgbouncer] unix_socket_mode", f"must be at most 0777, got {text}")
        else:
            self.proxy["unix_socket_mode"] = int(text, 8)

    def _server_reset_query(self, entry: IniEntry) -> None:
        self.pool["server_reset_query"] = entry.value

    def _server_check_delay(self, entry: IniEntry) -> None:
        setting = "[pgbouncer] server_check_delay"
        number = self.seconds(entry, setting)
        if number == 0:
            self.note(
                entry,
                setting,
                "0 (check before every reuse) has no equivalent: pgpool-proxy checks idle "
                "server connections in the background; pool.server_check_delay_s keeps its "
                "default",
            )
        elif number is not None and "server_check_delay_s" not in self.pool:
            self.pool["server_check_delay_s"] = number

    def _server_check_query(self, entry: IniEntry) -> None:
        if entry.value == "":
            # An empty value turns PgBouncer's check off.
            self.pool["server_check_delay_s"] = 0.0
        elif entry.value.lower() != "<empty>":
            # "<empty>" is PgBouncer's name for the empty query, pgpool-proxy's default.
            self.pool["server_check_query"] = entry.value

    def _server_lifetime(self, entry: IniEntry) -> None:
        setting = "[pgbouncer] server_lifetime"
        number = self.seconds(entry, setting)
        if number == 0:
            # PgBouncer's 0 means "use once"; pgpool-proxy's 0 means "forever".
            self.pool["server_lifetime_s"] = 0.001
            self.note(
                entry,
                setting,
                "0 (use each server connection once) is mapped to 0.001 s, since "
                "pgpool-proxy's 0 means no limit",
                "info",
            )
        elif number is not None:
            self.pool["server_lifetime_s"] = number

    def _client_tls_mode(self, entry: IniEntry) -> None:
        setting = "[pgbouncer] client_tls_sslmode"
        mode = entry.value.lower()
        mapped = {"disable": "disable", "allow": "allow", "prefer": "allow", "require": "require"}
        if mode in mapped:
            self.client_tls["mode"] = mapped[mode]
        elif mode in ("verify-ca", "verify-full"):
            self.client_tls["mode"] = "require"
            self.note(
                entry,
                setting,
                f"{mode}: client certificates are not verified; TLS is required (require)",
            )
        else:
            self.bad(entry, setting, f"unknown mode {shown(entry.value)}")

    def _server_tls_mode(self, entry: IniEntry) -> None:
        setting = "[pgbouncer] server_tls_sslmode"
        mode = entry.value.lower()
        if mode in ("disable", "prefer", "require", "verify-ca", "verify-full"):
            self.server_tls["mode"] = mode
        elif mode == "allow":
            self.server_tls["mode"] = "prefer"
            self.note(entry, setting, "allow is mapped to prefer (TLS when the server offers it)")
        else:
            self.bad(entry, setting, f"unknown mode {shown(entry.value)}")

    def _tls_protocols(self, table: dict[str, Any]) -> Callable[[IniEntry], None]:
        def apply(entry: IniEntry) -> None:
            setting = f"[pgbouncer] {entry.key}"
            versions: set[str] = set()
            for token in entry.value.replace(",", " ").replace(":", " ").lower().split():
                if token in _TLS_SHORTCUTS:
                    versions.update(_TLS_SHORTCUTS[token])
                elif token in _TLS_ORDER:
                    versions.add(token)
                else:
                    self.bad(entry, setting, f"unknown TLS protocol {shown(token)}")
                    return
            if not versions:
                return
            lowest = min(versions, key=_TLS_ORDER.index)
            if lowest in ("tlsv1.0", "tlsv1.1"):
                self.note(entry, setting, "TLS below 1.2 is not offered; the minimum is TLSv1.2")
                lowest = "tlsv1.2"
            table["min_version"] = "TLSv1.3" if lowest == "tlsv1.3" else "TLSv1.2"
            if "tlsv1.3" not in versions:
                self.note(entry, setting, "TLS 1.3 cannot be turned off; it stays allowed")

        return apply

    def _max_packet_size(self, entry: IniEntry) -> None:
        setting = "[pgbouncer] max_packet_size"
        number = self.integer(entry, entry.value, setting, 0, 2**31 - 1)
        if number is None:
            return
        bounded = min(max(number, _MIB), _GIB)
        if bounded != number:
            self.note(
                entry,
                setting,
                f"{number} is outside pgpool-proxy's range (1 MiB .. 1 GiB); {bounded} is used",
            )
        self.proxy["max_message_size_bytes"] = bounded

    def _tcp_user_timeout(self, entry: IniEntry) -> None:
        number = self.integer(entry, entry.value, "[pgbouncer] tcp_user_timeout", 0, 2**31 - 1)
        if number is not None:
            self.pool["tcp_user_timeout_s"] = number / 1000

    # authentication and users

    def map_users(self) -> None:
        type_entry = self.settings.get("auth_type")
        pgb_type = type_entry.value.lower() if type_entry is not None else "md5"
        file_entry = self.settings.get("auth_file")
        secrets: dict[str, tuple[str, str]] = {}
        if file_entry is not None and file_entry.value:
            path = self.path(file_entry)
            self.files.append(path)
            secrets = read_auth_file(path, self.problems)
        auth_type = self._auth_type(type_entry, pgb_type, secrets)
        anchor = file_entry or type_entry or next(iter(self.settings.values()), None)
        looked_up = "auth_user" in self.settings or any(
            "auth_user=" in entry.value.replace(" ", "") for entry in self.db_entries.values()
        )
        if not secrets and auth_type != "trust" and anchor is not None and not looked_up:
            self.note(
                anchor,
                f"[pgbouncer] {anchor.key}",
                "no users: without an auth_file (or auth_user for auth_query) nobody can log in",
            )
        for name, (secret, where) in secrets.items():
            entry: dict[str, Any] = {"name": name}
            if secret:
                unusable = (auth_type == "md5" and _is_scram(secret)) or (
                    auth_type == "scram-sha-256" and _is_md5_hash(secret)
                )
                if unusable:
                    kind = "a SCRAM secret" if _is_scram(secret) else "an md5 hash"
                    self.notes.append(
                        PgBouncerNote(
                            where,
                            f"auth_file user {cut(name)}",
                            f"{kind} cannot be used with auth.type = {auth_type!r}; the user "
                            "is left out (store the plaintext password to keep it)",
                        )
                    )
                    continue
                entry["password"] = secret
            elif auth_type != "trust":
                self.notes.append(
                    PgBouncerNote(
                        where,
                        f"auth_file user {cut(name)}",
                        "empty password: the user cannot log in with a password and is left out",
                    )
                )
                continue
            self.origins[f"users[{len(self.users)}]"] = where
            self.origins[f"users.{name}"] = where
            self.users.append(entry)
        self._user_modes(auth_type)
        self._admin_users(pgb_type)

    def _auth_type(
        self, entry: IniEntry | None, pgb_type: str, secrets: Mapping[str, tuple[str, str]]
    ) -> str:
        setting = "[pgbouncer] auth_type"
        md5_hashes = any(_is_md5_hash(s) for s, _ in secrets.values())
        scram = any(_is_scram(s) for s, _ in secrets.values())
        # The one method pgpool-proxy uses for everyone: md5 where the file holds md5 hashes
        # (they cannot do SCRAM), SCRAM where it holds only SCRAM secrets and plaintext.
        by_file = "scram-sha-256" if scram and not md5_hashes else "md5"
        if pgb_type == "scram-sha-256":
            auth_type = "scram-sha-256"
        elif pgb_type == "md5":
            auth_type = by_file
            if scram and entry is not None:
                self.note(
                    entry,
                    setting,
                    "md5 with SCRAM secrets in the auth_file: PgBouncer uses SCRAM for those "
                    f"users; pgpool-proxy uses one method for all: {by_file}",
                )
        elif pgb_type in ("trust", "any"):
            auth_type = "trust"
            if pgb_type == "any" and entry is not None:
                self.note(
                    entry,
                    setting,
                    "any is mapped to trust: clients must still give a user name listed in "
                    "the auth_file, and only admin_users may use the admin console",
                )
        elif pgb_type in ("plain", "hba", "cert", "ldap", "pam"):
            auth_type = by_file
            if entry is not None:
                why = {
                    "plain": "cleartext passwords are not asked for",
                    "hba": "there is no hba file; one method applies to every client",
                    "cert": "client certificates are not verified",
                    "ldap": "there is no LDAP authentication",
                    "pam": "there is no PAM authentication",
                }[pgb_type]
                self.note(entry, setting, f"{pgb_type} is not supported ({why}); {by_file} is used")
        else:
            auth_type = by_file
            if entry is not None:
                self.bad(entry, setting, f"unknown auth_type {shown(entry.value)}")
        self.auth["type"] = auth_type
        return auth_type

    def _user_modes(self, auth_type: str) -> None:
        by_name = {user["name"]: user for user in self.users}
        for name, entry in self.user_entries.items():
            params, problem = parse_params(entry.value)
            if problem:
                self.bad(entry, f"[users] {name}", problem)
                continue
            for key, value in params:
                setting = f"[users] {name}: {key}"
                if key == "pool_mode":
                    mode = self.pool_mode(entry, value, setting)
                    user = by_name.get(name)
                    if user is None and auth_type == "trust":
                        user = by_name[name] = {"name": name}
                        self.users.append(user)
                    if user is None:
                        self.note(
                            entry,
                            setting,
                            "the user is not in the auth_file (or was left out); not converted",
                        )
                    elif mode is not None:
                        user["pool_mode"] = mode
                elif key == "max_user_connections":
                    number = self.integer(entry, value, setting, 0, 2**31 - 1)
                    user = by_name.get(name)
                    if user is None and auth_type == "trust":
                        user = by_name[name] = {"name": name}
                        self.users.append(user)
                    if user is None:
                        self.note(
                            entry,
                            setting,
                            "the user is not in the auth_file (or was left out); not converted",
                        )
                    elif number is not None:
                        user["max_user_connections"] = number
                elif key in PGBOUNCER_USER_PARAMS:
                    reason = PGBOUNCER_USER_PARAMS[key].lstrip("-")
                    self.note(entry, setting, f"not converted: {reason}")
                else:
                    self.note(entry, setting, "not a [users] setting PgBouncer documents; ignored")

    def _admin_users(self, pgb_type: str) -> None:
        known = {user["name"] for user in self.users}
        for key in ("admin_users", "stats_users"):
            entry = self.settings.get(key)
            if entry is None:
                continue
            names = [n.strip() for n in entry.value.split(",") if n.strip()]
            kept = [n for n in names if n in known]
            missing = [n for n in names if n not in known]
            if missing:
                self.note(
                    entry,
                    f"[pgbouncer] {key}",
                    f"{', '.join(missing)} not in the auth_file (console users log in like any "
                    "other user here); left out",
                )
            if kept:
                self.admin[key] = kept

    # [databases]

    def map_databases(self) -> None:
        for name, entry in self.db_entries.items():
            db = self._database(name, entry)
            if db is not None:
                self.origins[f"databases[{len(self.databases)}]"] = entry.where
                self.origins[f"databases.{name}"] = entry.where
                self.databases.append(db)
        self._clamp_min_pool_size()

    def _database(self, name: str, entry: IniEntry) -> dict[str, Any] | None:
        label = f"[databases] {name}"
        if name == "*":
            self.note(
                entry,
                label,
                "the fallback database is not supported: pgpool-proxy serves only the databases "
                "it lists; add an entry for each database name clients use",
            )
            return None
        if name == "pgbouncer":
            self.note(entry, label, "the name is the admin console's; the entry is left out")
            return None
        params, problem = parse_params(entry.value)
        if problem:
            self.bad(entry, label, problem)
            return None
        db: dict[str, Any] = {"name": name}
        for key, value in params:
            setting = f"{label}: {key}"
            if key == "host":
                self._db_host(entry, setting, value, db)
            elif key == "port":
                number = self.integer(entry, value, setting, 1, 65535)
                if number is not None:
                    db["port"] = number
            elif key in ("dbname", "user", "password", "auth_user", "auth_query", "auth_dbname"):
                if value:
                    db[key] = value
            elif key == "pool_size":
                number = self.integer(entry, value, setting, 1, 2**31 - 1)
                if number is not None:
                    db["pool_size"] = number
            elif key == "pool_mode":
                mode = self.pool_mode(entry, value, setting)
                if mode is not None:
                    db["pool_mode"] = mode
            elif key == "max_db_connections":
                number = self.integer(entry, value, setting, 0, 2**31 - 1)
                if number is not None:
                    db["max_db_connections"] = number
            elif key in PGBOUNCER_DATABASE_PARAMS:
                reason = PGBOUNCER_DATABASE_PARAMS[key].lstrip("-")
                self.note(entry, setting, f"not converted: {reason}")
            else:
                self.note(entry, setting, "not a connection parameter PgBouncer documents; ignored")
        if "host" not in db:
            self.note(
                entry,
                label,
                "no host: PgBouncer would use its Unix socket, which pgpool-proxy cannot; "
                "127.0.0.1 is used",
            )
        return db

    def _db_host(self, entry: IniEntry, setting: str, value: str, db: dict[str, Any]) -> None:
        hosts = [h.strip() for h in value.split(",") if h.strip()]
        if not hosts:
            return
        if len(hosts) > 1:
            self.note(
                entry,
                setting,
                f"one host per database: {hosts[0]} is used, {', '.join(hosts[1:])} not "
                "(pgpool-proxy's hosts = [...] tracks the writer instead of round-robin)",
            )
        host = hosts[0]
        if host.startswith(("/", "@")):
            self.note(
                entry,
                setting,
                f"{host} is a Unix socket, which pgpool-proxy cannot use; 127.0.0.1 is used",
            )
            host = "127.0.0.1"
        db["host"] = host

    def _clamp_min_pool_size(self) -> None:
        entry = self.settings.get("min_pool_size")
        wanted = self.pool.get("min_pool_size", 0)
        if entry is None or not wanted:
            return
        sizes = [self.pool.get("default_pool_size", 20)]
        sizes += [db["pool_size"] for db in self.databases if "pool_size" in db]
        if wanted > min(sizes):
            self.pool["min_pool_size"] = min(sizes)
            self.note(
                entry,
                "[pgbouncer] min_pool_size",
                f"{wanted} is more than the smallest pool size; PgBouncer caps it there, so "
                f"{min(sizes)} is used",
                "info",
            )

    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "proxy": self.proxy,
            "pool": self.pool,
            "auth": self.auth,
        }
        for name, table in (
            ("client_tls", self.client_tls),
            ("server_tls", self.server_tls),
            ("admin", self.admin),
        ):
            if table:
                data[name] = table
        data["databases"] = self.databases
        data["users"] = self.users
        if self.peers:
            data["peers"] = self.peers
        return data

    # [peers]

    def map_peers(self) -> None:
        """Each ``peer_id = host=... port=...`` entry as a [[peers]] table (TCP peers only)."""
        for entry in self.peer_entries:
            label = f"[peers] {entry.key}"
            peer_id = self.integer(entry, entry.key, label, 1, 16383)
            params, problem = parse_params(entry.value)
            if problem:
                self.bad(entry, label, problem)
                continue
            if peer_id is None:
                continue
            peer: dict[str, Any] = {"peer_id": peer_id, "port": 6432}
            for key, value in params:
                setting = f"{label}: {key}"
                if key == "host":
                    if value.startswith(("/", "@")):
                        self.note(entry, setting, "Unix-socket peers are not supported (TCP only)")
                    elif value:
                        peer["host"] = value
                elif key == "port":
                    number = self.integer(entry, value, setting, 1, 65535)
                    if number is not None:
                        peer["port"] = number
                elif key == "pool_size":
                    self.note(
                        entry, setting, "cancels in flight to one peer are capped at 64", "info"
                    )
                else:
                    self.note(entry, setting, "not a [peers] parameter; not converted")
            if "host" in peer:
                self.origins[f"peers[{len(self.peers)}]"] = entry.where
                self.peers.append(peer)
            else:
                self.note(entry, label, "no TCP host: the peer is left out")


def convert_pgbouncer_ini(path: str | os.PathLike[str]) -> PgBouncerConversion:
    """Read a pgbouncer.ini (with its includes and auth_file) and map it onto pgpool-proxy's
    configuration. Raises `ConfigError` listing every problem that makes the files unusable;
    what has no equivalent comes back as notes."""
    source = os.fspath(path)
    ini = read_ini(source)
    if ini.problems:
        raise ConfigError(ini.problems)
    mapper = _Mapper(ini)
    mapper.map_settings()
    mapper.map_users()
    mapper.map_databases()
    mapper.map_peers()
    if mapper.problems:
        raise ConfigError(mapper.problems)
    # Notes are made section by section; a reader wants them in the order of the files.
    rank = {path: i for i, path in enumerate(ini.files)}

    def file_order(note: PgBouncerNote) -> tuple[int, int]:
        path, _, line = note.where.rpartition(":")
        return rank.get(path, len(rank)), int(line) if line.isdigit() else 0

    notes = tuple(sorted(mapper.notes, key=file_order))
    for name, entry in mapper.settings.items():
        target = PGBOUNCER_SETTINGS.get(name, "-")
        if not target.startswith("-") and target.partition(".")[0] not in ("databases", "users"):
            mapper.origins.setdefault(target, entry.where)
            # A key the ini did not set (a missing cert_file) is named at its section's line.
            mapper.origins.setdefault(target.partition(".")[0], entry.where)
    return PgBouncerConversion(mapper.data(), notes, source, mapper.origins)


def load_pgbouncer_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> tuple[Config, tuple[PgBouncerNote, ...]]:
    """The `Config` a pgbouncer.ini describes, and the notes on what was not converted; raises
    `ConfigError` when the files are unusable or the result is invalid."""
    conversion = convert_pgbouncer_ini(path)
    return conversion.config(env), conversion.notes
