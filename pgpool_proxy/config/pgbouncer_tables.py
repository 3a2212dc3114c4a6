"""The table of PgBouncer settings: what each one becomes in pgpool-proxy's configuration, or
why it has none, and the values the mappers treat as words (booleans, TLS protocol names).

Data only; `pgbouncer_settings` and `pgbouncer_entries` decide with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = [
    "ALWAYS_HARMLESS",
    "FALSE_WORDS",
    "GIB",
    "HARMLESS_VALUES",
    "MIB",
    "PGBOUNCER_DATABASE_PARAMS",
    "PGBOUNCER_SETTINGS",
    "PGBOUNCER_USER_PARAMS",
    "TLS_ORDER",
    "TLS_SHORTCUTS",
    "TRUE_WORDS",
]

MIB: Final = 1024 * 1024
GIB: Final = 1024 * MIB

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
HARMLESS_VALUES: Final[Mapping[str, frozenset[str]]] = {
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
ALWAYS_HARMLESS: Final = frozenset(
    {"track_extra_parameters", "ignore_startup_parameters", "conffile"}
)

TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS: Final = frozenset({"0", "false", "no", "off"})
TLS_ORDER: Final = ("tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3")
TLS_SHORTCUTS: Final[Mapping[str, tuple[str, ...]]] = {
    "all": TLS_ORDER,
    "legacy": TLS_ORDER,
    "secure": ("tlsv1.2", "tlsv1.3"),
    "normal": ("tlsv1.2", "tlsv1.3"),
    "default": ("tlsv1.2", "tlsv1.3"),
}
