"""What each ``[pgbouncer]`` setting becomes: one small handler per setting, and a note for each
setting without an equivalent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .ini import IniEntry, shown
from .pgbouncer_mapper import IniMapper
from .pgbouncer_tables import (
    ALWAYS_HARMLESS,
    GIB,
    HARMLESS_VALUES,
    MIB,
    PGBOUNCER_SETTINGS,
    TLS_ORDER,
    TLS_SHORTCUTS,
)

__all__ = ["SettingsMapper"]


class SettingsMapper(IniMapper):
    """Maps the ``[pgbouncer]`` section onto ``[proxy]``, ``[pool]``, ``[auth]`` and TLS."""

    def map_settings(self) -> None:
        handlers = self._handlers()
        # Handled with the listener, the users or the databases.
        elsewhere = {
            "listen_addr",
            "listen_port",
            "auth_type",
            "auth_file",
            "admin_users",
            "stats_users",
        }
        self._pgbouncer_defaults()
        self._listen()
        for name, entry in self.settings.items():
            if name in handlers:
                handlers[name](entry)
            elif name not in elsewhere:
                self._unmapped(name, entry)

    def _handlers(self) -> dict[str, Callable[[IniEntry], None]]:
        return {
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

    def _pgbouncer_defaults(self) -> None:
        # PgBouncer's defaults where they differ from pgpool-proxy's: the ini means them.
        self.proxy["pool_mode"] = "session"
        self.proxy["max_client_conn"] = 100
        self.proxy["client_login_timeout_s"] = 60.0
        self.pool["server_login_retry_s"] = 15.0
        self.server_tls["mode"] = "prefer"
        self.proxy["unix_socket_dir"] = "/tmp"

    def _unmapped(self, name: str, entry: IniEntry) -> None:
        setting = f"[pgbouncer] {name}"
        if name in PGBOUNCER_SETTINGS:
            reason = PGBOUNCER_SETTINGS[name].removeprefix("-")
            harmless = name in ALWAYS_HARMLESS or entry.value.lower() in HARMLESS_VALUES.get(
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
                if token in TLS_SHORTCUTS:
                    versions.update(TLS_SHORTCUTS[token])
                elif token in TLS_ORDER:
                    versions.add(token)
                else:
                    self.bad(entry, setting, f"unknown TLS protocol {shown(token)}")
                    return
            if not versions:
                return
            lowest = min(versions, key=TLS_ORDER.index)
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
        bounded = min(max(number, MIB), GIB)
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
