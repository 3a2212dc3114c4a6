"""Reading PgBouncer configurations: pgbouncer.ini files written from PgBouncer's documented
options (with %include, connection strings, the "*" database, [users] and an auth_file), what
each setting becomes, that nothing is dropped without a note, and that the TOML written for
`pgpool-proxy convert` loads back into the same Config."""

from __future__ import annotations

import dataclasses
import hashlib
import textwrap
import time
from pathlib import Path

import pytest

from pgpool_proxy.config import (
    PGBOUNCER_DATABASE_PARAMS,
    PGBOUNCER_SETTINGS,
    PGBOUNCER_USER_PARAMS,
    SECTIONS,
    AuthType,
    ClientTlsMode,
    Config,
    ConfigError,
    DatabaseConfig,
    PgBouncerConversion,
    PoolMode,
    ServerTlsMode,
    UserConfig,
    convert_pgbouncer_ini,
    looks_like_pgbouncer_ini,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]
SCRAM = (
    "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$"
    "6Z3uyGM2ROYtZ2sFj3JgsJkGA1bsz4c8bF7LOk2pbUI=:"
    "PoaWjqXSKi5ZVMaOLdkm3XGNk4pAquWJRljFeRU4ZBk="
)


def md5_hash(password: str, user: str) -> str:
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def write(tmp_path: Path, files: dict[str, str]) -> Path:
    """Writes each file (dedented) under tmp_path; returns the first one's path."""
    paths = []
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # @TMP@ stands for the test's directory, for absolute paths.
        path.write_text(textwrap.dedent(text).replace("@TMP@", str(tmp_path)))
        paths.append(path)
    return paths[0]


def convert(tmp_path: Path, files: dict[str, str]) -> PgBouncerConversion:
    return convert_pgbouncer_ini(write(tmp_path, files))


def notes_about(conversion: PgBouncerConversion, setting: str) -> list[str]:
    return [str(n) for n in conversion.notes if n.setting == setting]


def round_trip(conversion: PgBouncerConversion) -> Config:
    """The Config from the mapping, checked equal to the one `convert`'s TOML loads into."""
    direct = conversion.config(env={})
    loaded = parse_config(conversion.toml(), source=conversion.source, env={})
    assert loaded == direct
    return direct


# A production-style file: the layout of PgBouncer's own example, split with %include.
TYPICAL = {
    "pgbouncer.ini": """\
        ;; PgBouncer configuration for the app cluster
        [databases]
        app = host=db1.internal port=5433 dbname=app_prod pool_size=40
        reporting = host=db2.internal dbname=reports user=report password='s3cret pw' \
pool_mode=session
        ; forced user with a per-database cap
        billing = host=10.1.2.3 port=5432 dbname=billing user=billing max_db_connections=8

        [users]
        alice = pool_mode=session
        etl = pool_mode=statement

        [pgbouncer]
        listen_addr = 0.0.0.0
        listen_port = 6432
        auth_type = md5
        auth_file = users/userlist.txt
        admin_users = admin
        stats_users = stats, alice
        pool_mode = transaction
        %include conf.d/timeouts.ini
        logfile = /var/log/pgbouncer/pgbouncer.log
        pidfile = /var/run/pgbouncer/pgbouncer.pid
        """,
    "conf.d/timeouts.ini": """\
        # included: still in [pgbouncer]
        max_client_conn = 2000
        default_pool_size = 25
        min_pool_size = 5
        server_lifetime = 1800
        server_idle_timeout = 300
        query_wait_timeout = 45
        server_connect_timeout = 5
        server_login_retry = 2
        client_login_timeout = 20
        server_reset_query = DISCARD ALL
        max_prepared_statements = 500
        """,
    "users/userlist.txt": f"""\
        "alice" "{md5_hash("alice-pw", "alice")}"
        "admin" "admin-pw" extra fields are ignored
        "stats" "{md5_hash("stats-pw", "stats")}"
        "etl" "etl""pw"
        "billing" "billing-pw"
        """,
}


def test_a_typical_file_maps_onto_the_configuration(tmp_path: Path) -> None:
    conversion = convert(tmp_path, TYPICAL)
    config = round_trip(conversion)
    assert (config.proxy.listen_host, config.proxy.listen_port) == ("0.0.0.0", 6432)
    assert config.proxy.pool_mode is PoolMode.TRANSACTION
    assert config.proxy.max_client_conn == 2000
    assert config.proxy.client_login_timeout_s == 20
    pool = config.pool
    assert (pool.default_pool_size, pool.min_pool_size) == (25, 5)
    assert (pool.server_lifetime_s, pool.server_idle_timeout_s) == (1800, 300)
    assert (pool.query_wait_timeout_s, pool.server_connect_timeout_s) == (45, 5)
    assert (pool.server_login_retry_s, pool.max_prepared_statements) == (2, 500)
    assert config.auth.type is AuthType.MD5
    assert config.server_tls.mode is ServerTlsMode.PREFER  # PgBouncer's default
    app, reporting, billing = config.databases
    assert (app.name, app.host, app.port, app.dbname, app.pool_size) == (
        "app",
        "db1.internal",
        5433,
        "app_prod",
        40,
    )
    assert (reporting.user, reporting.password, reporting.pool_mode) == (
        "report",
        "s3cret pw",
        PoolMode.SESSION,
    )
    assert (billing.user, billing.max_db_connections, billing.pool_size) == ("billing", 8, None)
    users = {u.name: u for u in config.users}
    assert users["alice"].password == md5_hash("alice-pw", "alice")
    assert users["alice"].pool_mode is PoolMode.SESSION
    assert users["etl"].password == 'etl"pw'
    assert users["etl"].pool_mode is PoolMode.TRANSACTION
    assert config.admin.admin_users == ("admin",)
    assert config.admin.stats_users == ("stats", "alice")
    ini = tmp_path / "pgbouncer.ini"
    assert notes_about(conversion, "[pgbouncer] logfile") == [
        f"{ini}:21: [pgbouncer] logfile: not converted: pgpool-proxy logs to stderr only; "
        "redirect it or use the service manager's log"
    ]
    assert notes_about(conversion, "[pgbouncer] pidfile")
    (statement,) = notes_about(conversion, "[users] etl: pool_mode")
    assert statement.startswith(f"{ini}:10: ") and "statement pooling is not supported" in statement
    # Nothing else was left behind.
    assert len(conversion.notes) == 3, conversion.notes


def test_pgbouncer_defaults_that_differ_from_ours_are_written_out(tmp_path: Path) -> None:
    conversion = convert(
        tmp_path,
        {
            "pgbouncer.ini": """\
                [databases]
                app = host=127.0.0.1
                [pgbouncer]
                auth_file = userlist.txt
                """,
            "userlist.txt": '"alice" "alice-pw"\n',
        },
    )
    config = round_trip(conversion)
    assert config.proxy.pool_mode is PoolMode.SESSION
    assert config.proxy.max_client_conn == 100
    assert config.proxy.client_login_timeout_s == 60
    assert config.pool.server_login_retry_s == 15
    assert config.auth.type is AuthType.MD5
    assert config.server_tls.mode is ServerTlsMode.PREFER
    # No listen_addr: PgBouncer would listen on its Unix socket only.
    assert (config.proxy.listen_host, config.proxy.listen_port) == ("127.0.0.1", 6432)
    (note,) = notes_about(conversion, "[pgbouncer] listen_addr")
    assert "Unix socket" in note


def test_include_is_relative_to_the_including_file_and_continues_its_section(
    tmp_path: Path,
) -> None:
    conversion = convert(
        tmp_path,
        {
            "etc/pgbouncer.ini": """\
                [pgbouncer]
                %include pools/sizes.ini
                listen_addr = 127.0.0.1
                [databases]
                %include pools/dbs.ini
                """,
            "etc/pools/sizes.ini": """\
                default_pool_size = 7
                %include ../more/last.ini
                """,
            "etc/more/last.ini": "max_client_conn = 77\n",
            "etc/pools/dbs.ini": "app = host=10.0.0.1\nother = host=10.0.0.2\n",
        },
    )
    config = conversion.config(env={})
    assert config.pool.default_pool_size == 7
    assert config.proxy.max_client_conn == 77
    assert [d.name for d in config.databases] == ["app", "other"]


def test_an_include_cycle_stops_at_the_depth_bound_with_one_line(tmp_path: Path) -> None:
    ini = write(tmp_path, {"a.ini": "[pgbouncer]\n%include b.ini\n", "b.ini": "%include a.ini\n"})
    with pytest.raises(ConfigError) as caught:
        convert_pgbouncer_ini(ini)
    (problem,) = caught.value.problems
    assert "nested more than 10 deep" in problem
    assert problem.startswith((f"{tmp_path / 'a.ini'}:2: ", f"{tmp_path / 'b.ini'}:1: "))


def test_every_problem_is_reported_at_once_with_file_and_line(tmp_path: Path) -> None:
    ini = write(
        tmp_path,
        {
            "pgbouncer.ini": """\
                orphan = 1
                [pgbouncer]
                default_pool_size = lots
                this line has no equals sign
                [databases]
                app = host='never closed
                "unterminated = host=x
                %include missing.ini
                [pgbouncer]
                pool_mode = sometimes
                server_idle_timeout = -5
                auth_file = userlist.txt
                """,
            "userlist.txt": '"alice" "pw"\nalice pw\n"bob"\n',
        },
    )
    with pytest.raises(ConfigError) as caught:
        convert_pgbouncer_ini(ini)
    problems = caught.value.problems
    # The file's own syntax first (nothing is mapped from a file that does not parse).
    assert [p.split(": ", 1)[0] for p in problems] == [
        f"{ini}:1",
        f"{ini}:4",
        f"{ini}:7",
        f"{tmp_path / 'missing.ini'}",
    ]
    assert "outside any section" in problems[0]
    assert "cannot read file" in problems[3]
    # Fixed, the values' problems come out together.
    ini.write_text(
        ini.read_text()
        .replace("orphan = 1\n", "")
        .replace("this line has no equals sign\n", "")
        .replace('"unterminated = host=x\n', "")
        .replace("%include missing.ini\n", "")
    )
    with pytest.raises(ConfigError) as caught:
        convert_pgbouncer_ini(ini)
    lines = sorted(caught.value.problems)
    assert lines == sorted(
        [
            f"{ini}:2: [pgbouncer] default_pool_size: expected an integer, got 'lots'",
            f"{ini}:4: [databases] app: unterminated quoted value of host",
            f"{ini}:6: [pgbouncer] pool_mode: expected session, transaction or statement, "
            "got 'sometimes'",
            f"{ini}:7: [pgbouncer] server_idle_timeout: expected a number of seconds >= 0, "
            "got '-5'",
            f'{tmp_path / "userlist.txt"}:2: expected "user" "password" (each in double quotes)',
            f'{tmp_path / "userlist.txt"}:3: expected "user" "password" (each in double quotes)',
        ]
    )


def test_connection_strings_quote_like_libpq(tmp_path: Path) -> None:
    conversion = convert(
        tmp_path,
        {
            "pgbouncer.ini": r"""
                [databases]
                "my db" = host=10.0.0.9 dbname='sales db' password='it''s \'quoted\'' user = bob
                "we""ird" = host=10.0.0.9   port = 6543
                [pgbouncer]
                listen_addr = ::1
                auth_type = trust
                """,
        },
    )
    config = round_trip(conversion)
    first, second = config.databases
    assert (first.name, first.dbname, first.password, first.user) == (
        "my db",
        "sales db",
        "it's 'quoted'",
        "bob",
    )
    assert (second.name, second.port) == ('we"ird', 6543)
    assert config.proxy.listen_host == "::1"
    assert config.auth.type is AuthType.TRUST


def test_the_fallback_database_and_other_unsupported_entries_are_reported(
    tmp_path: Path,
) -> None:
    conversion = convert(
        tmp_path,
        {
            "pgbouncer.ini": """\
                [databases]
                app = host=/var/run/postgresql dbname=app connect_query='SET x = 1' \
client_encoding=UTF8 application_name=batch
                replicas = host=10.0.0.1,10.0.0.2 load_balance_hosts=disable
                legacy =
                * = host=db.internal port=5432 auth_user=pgbouncer
                pgbouncer = host=10.0.0.1
                [peers]
                1 = host=/tmp/pgbouncer1
                2 = host=10.0.0.2 port=6433 pool_size=5
                [pgbouncer]
                auth_type = trust
                peer_id = 1
                max_db_connections = 50
                """,
        },
    )
    config = round_trip(conversion)
    assert [(d.name, d.host) for d in config.databases] == [
        ("app", "127.0.0.1"),
        ("replicas", "10.0.0.1"),
        ("legacy", "127.0.0.1"),
    ]
    (star,) = notes_about(conversion, "[databases] *")
    assert "fallback database is not supported" in star
    assert notes_about(conversion, "[databases] pgbouncer")
    for setting in (
        "[databases] app: host",
        "[databases] app: connect_query",
        "[databases] app: client_encoding",
        "[databases] app: application_name",
        "[databases] replicas: host",
        "[databases] replicas: load_balance_hosts",
        "[databases] legacy",
        "[peers] 1: host",
        "[peers] 1",
        "[peers] 2: pool_size",
    ):
        assert notes_about(conversion, setting), setting
    assert config.proxy.peer_id == 1
    assert [(p.peer_id, p.host, p.port) for p in config.peers] == [(2, "10.0.0.2", 6433)]
    # A cap over a database's user pools, as PgBouncer's.
    assert not notes_about(conversion, "[pgbouncer] max_db_connections")
    assert config.pool.max_db_connections == 50


def test_only_a_fallback_database_cannot_run(tmp_path: Path) -> None:
    conversion = convert(
        tmp_path, {"pgbouncer.ini": "[databases]\n* = host=db\n[pgbouncer]\nauth_type=trust\n"}
    )
    with pytest.raises(ConfigError) as caught:
        conversion.config(env={})
    assert "at least one [[databases]] entry is required" in str(caught.value)


@pytest.mark.parametrize(
    ("auth_type", "secrets", "expected", "kept"),
    [
        ("md5", ["plain", "md5"], AuthType.MD5, {"plain", "md5"}),
        # PgBouncer uses SCRAM for users with SCRAM secrets; with no md5 hash, SCRAM suits all.
        ("md5", ["plain", "scram"], AuthType.SCRAM_SHA_256, {"plain", "scram"}),
        ("md5", ["md5", "scram"], AuthType.MD5, {"md5"}),
        ("scram-sha-256", ["plain", "scram", "md5"], AuthType.SCRAM_SHA_256, {"plain", "scram"}),
        ("trust", ["plain", "empty"], AuthType.TRUST, {"plain", "empty"}),
        ("any", ["plain"], AuthType.TRUST, {"plain"}),
        ("plain", ["plain", "md5"], AuthType.MD5, {"plain", "md5"}),
        ("hba", ["plain", "scram"], AuthType.SCRAM_SHA_256, {"plain", "scram"}),
        ("cert", ["plain"], AuthType.MD5, {"plain"}),
        ("md5", ["plain", "empty"], AuthType.MD5, {"plain"}),
    ],
)
def test_auth_type_and_auth_file_secrets(
    tmp_path: Path, auth_type: str, secrets: list[str], expected: AuthType, kept: set[str]
) -> None:
    values = {"plain": "pw", "md5": md5_hash("pw", "md5"), "scram": SCRAM, "empty": ""}
    userlist = "".join(f'"{name}" "{values[name]}"\n' for name in secrets)
    conversion = convert(
        tmp_path,
        {
            "pgbouncer.ini": f"""\
                [databases]
                app = host=127.0.0.1 user=plain
                [pgbouncer]
                auth_type = {auth_type}
                auth_file = userlist.txt
                """,
            "userlist.txt": userlist,
        },
    )
    config = round_trip(conversion)
    assert config.auth.type is expected
    assert {u.name for u in config.users} == kept
    for name in set(secrets) - kept:
        (note,) = [str(n) for n in conversion.notes if n.setting == f"auth_file user {name}"]
        assert note.startswith(f"{tmp_path / 'userlist.txt'}:{secrets.index(name) + 1}: ")
    if auth_type not in ("md5", "scram-sha-256", "trust"):
        assert notes_about(conversion, "[pgbouncer] auth_type")


def test_users_section_without_an_auth_file_entry(tmp_path: Path) -> None:
    conversion = convert(
        tmp_path,
        {
            "pgbouncer.ini": """\
                [databases]
                app = host=127.0.0.1
                [users]
                ghost = pool_mode=session max_user_connections=5
                [pgbouncer]
                auth_file = userlist.txt
                admin_users = ghost
                """,
            "userlist.txt": '"alice" "pw"\n',
        },
    )
    config = round_trip(conversion)
    assert [u.name for u in config.users] == ["alice"]
    assert config.admin.admin_users == ()
    assert "not in the auth_file" in notes_about(conversion, "[users] ghost: pool_mode")[0]
    assert notes_about(conversion, "[users] ghost: max_user_connections")
    assert "ghost not in the auth_file" in notes_about(conversion, "[pgbouncer] admin_users")[0]


def test_tls_timeouts_and_network_settings(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    for name in ("server.crt", "server.key", "ca.pem"):
        (tmp_path / "tls" / name).write_text("")
    conversion = convert(
        tmp_path,
        {
            "pgbouncer.ini": """\
                [databases]
                app = host=db.internal
                [pgbouncer]
                auth_type = trust
                listen_addr = 10.0.0.5, 10.0.0.6
                listen_port = 7432
                client_tls_sslmode = verify-full
                client_tls_cert_file = tls/server.crt
                client_tls_key_file = @TMP@/tls/server.key
                client_tls_protocols = tlsv1.3
                server_tls_sslmode = allow
                server_tls_ca_file = tls/ca.pem
                server_tls_protocols = all
                so_reuseport = 1
                tcp_keepalive = 1
                tcp_keepidle = 60
                tcp_keepintvl = 10
                tcp_keepcnt = 4
                tcp_user_timeout = 2500
                max_packet_size = 2147483647
                query_timeout = 300
                server_lifetime = 0
                server_check_query =
                verbose = 2
                """,
        },
    )
    config = round_trip(conversion)
    assert (config.proxy.listen_host, config.proxy.listen_port) == ("10.0.0.5", 7432)
    assert config.client_tls.mode is ClientTlsMode.REQUIRE
    assert config.client_tls.cert_file == str(tmp_path / "tls/server.crt")
    assert config.client_tls.key_file == str(tmp_path / "tls/server.key")
    assert config.client_tls.min_version == "TLSv1.3"
    assert config.server_tls.mode is ServerTlsMode.PREFER
    assert config.server_tls.ca_file == str(tmp_path / "tls/ca.pem")
    assert config.server_tls.min_version == "TLSv1.2"
    assert config.proxy.reuse_port is True
    pool = config.pool
    assert (pool.tcp_keepidle_s, pool.tcp_keepintvl_s, pool.tcp_keepcnt) == (60, 10, 4)
    assert pool.tcp_user_timeout_s == 2.5
    assert config.proxy.max_message_size_bytes == 1024**3
    assert pool.query_timeout_s == 300
    # PgBouncer's 0 is "use once"; ours would be "forever".
    assert pool.server_lifetime_s == 0.001
    # An empty server_check_query turns PgBouncer's check off.
    assert pool.server_check_delay_s == 0
    assert pool.server_check_query == ""
    assert config.proxy.log_level == "debug"
    for setting in (
        "listen_addr",
        "client_tls_sslmode",
        "server_tls_sslmode",
        "server_tls_protocols",
        "max_packet_size",
        "server_lifetime",
    ):
        assert notes_about(conversion, f"[pgbouncer] {setting}"), setting


# A value for each PgBouncer setting, as a production file might have it.
SAMPLE_VALUES = {
    "logfile": "/var/log/pgbouncer.log",
    "pidfile": "/run/pgbouncer.pid",
    "listen_addr": "*",
    "listen_port": "6432",
    "unix_socket_dir": "/var/run/postgresql",
    "unix_socket_mode": "0777",
    "unix_socket_group": "postgres",
    "user": "postgres",
    "pool_mode": "transaction",
    "max_client_conn": "500",
    "default_pool_size": "20",
    "min_pool_size": "2",
    "reserve_pool_size": "5",
    "reserve_pool_timeout": "3",
    "max_db_connections": "40",
    "max_db_client_connections": "400",
    "max_user_connections": "30",
    "max_user_client_connections": "300",
    "server_round_robin": "1",
    "track_extra_parameters": "IntervalStyle, search_path",
    "ignore_startup_parameters": "extra_float_digits",
    "peer_id": "1",
    "disable_pqexec": "1",
    "application_name_add_host": "1",
    "conffile": "/etc/pgbouncer/pgbouncer.ini",
    "service_name": "pgbouncer",
    "job_name": "pgbouncer",
    "stats_period": "30",
    "max_prepared_statements": "100",
    "scram_iterations": "8192",
    "auth_type": "md5",
    "auth_hba_file": "/etc/pgbouncer/hba.conf",
    "auth_ident_file": "/etc/pgbouncer/ident.conf",
    "auth_file": "userlist.txt",
    "auth_user": "alice",
    "auth_query": "SELECT usename, passwd FROM pg_shadow WHERE usename=$1",
    "auth_dbname": "app",
    "auth_ldap_options": 'ldapurl="ldap://127.0.0.1/dc=example,dc=net?uid?sub"',
    "syslog": "1",
    "syslog_ident": "pgbouncer",
    "syslog_facility": "daemon",
    "log_connections": "0",
    "log_disconnections": "0",
    "log_pooler_errors": "0",
    "log_stats": "0",
    "verbose": "0",
    "admin_users": "alice",
    "stats_users": "alice",
    "server_reset_query": "DEALLOCATE ALL",
    "server_reset_query_always": "1",
    "server_check_delay": "10",
    "server_check_query": "select 1",
    "server_fast_close": "1",
    "server_lifetime": "3600",
    "server_idle_timeout": "600",
    "server_connect_timeout": "15",
    "server_login_retry": "15",
    "client_login_timeout": "60",
    "autodb_idle_timeout": "3600",
    "pool_idle_timeout": "60",
    "dns_max_ttl": "15",
    "dns_nxdomain_ttl": "15",
    "dns_zone_check_period": "60",
    "resolv_conf": "/etc/pgbouncer/resolv.conf",
    "query_wait_notify": "5",
    "login_notify_message": "hello",
    "client_tls_sslmode": "require",
    "client_tls_key_file": "@TMP@/tls.key",
    "client_tls_cert_file": "tls.crt",
    "client_tls_ca_file": "/etc/pgbouncer/ca.crt",
    "client_tls_protocols": "secure",
    "client_tls_ciphers": "HIGH:!aNULL",
    "client_tls13_ciphers": "TLS_AES_256_GCM_SHA384",
    "client_tls_ecdhcurve": "prime256v1",
    "client_tls_dheparams": "legacy",
    "server_tls_sslmode": "verify-full",
    "server_tls_ca_file": "@TMP@/rds.pem",
    "server_tls_key_file": "/etc/pgbouncer/client.key",
    "server_tls_cert_file": "/etc/pgbouncer/client.crt",
    "server_tls_protocols": "secure",
    "server_tls_ciphers": "HIGH",
    "server_tls13_ciphers": "TLS_AES_128_GCM_SHA256",
    "query_timeout": "0",
    "query_wait_timeout": "120",
    "cancel_wait_timeout": "10",
    "client_idle_timeout": "600",
    "idle_transaction_timeout": "60",
    "transaction_timeout": "600",
    "pkt_buf": "4096",
    "max_packet_size": "67108864",
    "listen_backlog": "128",
    "sbuf_loopcnt": "5",
    "so_reuseport": "0",
    "tcp_defer_accept": "1",
    "tcp_socket_buffer": "65536",
    "tcp_keepalive": "1",
    "tcp_keepcnt": "3",
    "tcp_keepidle": "30",
    "tcp_keepintvl": "10",
    "tcp_user_timeout": "30000",
}


def test_every_pgbouncer_setting_is_mapped_or_reported(tmp_path: Path) -> None:
    assert set(SAMPLE_VALUES) == set(PGBOUNCER_SETTINGS)
    for name in ("tls.key", "tls.crt", "rds.pem"):
        (tmp_path / name).write_text("")
    lines = "".join(f"{name} = {value}\n" for name, value in SAMPLE_VALUES.items())
    conversion = convert(
        tmp_path,
        {
            "pgbouncer.ini": f"[databases]\napp = host=db user=alice\n[pgbouncer]\n{lines}"
            "no_such_setting = 1\n",
            "userlist.txt": '"alice" "pw"\n',
        },
    )
    round_trip(conversion)
    noted = {n.setting.removeprefix("[pgbouncer] ") for n in conversion.notes}
    for name, target in PGBOUNCER_SETTINGS.items():
        if target.startswith("-"):
            assert name in noted, f"{name} is neither mapped nor reported"
    assert "no_such_setting" in noted
    # Each note names where the setting is.
    ini = tmp_path / "pgbouncer.ini"
    for note in conversion.notes:
        if note.setting.startswith("[pgbouncer] "):
            assert note.where.startswith(f"{ini}:"), note


def test_settings_at_values_meaning_our_behaviour_are_only_info(tmp_path: Path) -> None:
    conversion = convert(
        tmp_path,
        {
            "pgbouncer.ini": """\
                [databases]
                app = host=db
                [pgbouncer]
                listen_addr = 127.0.0.1
                auth_type = trust
                reserve_pool_size = 0
                server_round_robin = 0
                ignore_startup_parameters = extra_float_digits,options
                client_tls_ciphers = default
                log_connections = 1
                """,
        },
    )
    assert conversion.notes
    assert {n.severity for n in conversion.notes} == {"info"}


def test_min_pool_size_is_capped_at_the_smallest_pool(tmp_path: Path) -> None:
    conversion = convert(
        tmp_path,
        {
            "pgbouncer.ini": """\
                [databases]
                small = host=db pool_size=3
                big = host=db
                [pgbouncer]
                auth_type = trust
                listen_addr = 127.0.0.1
                min_pool_size = 10
                """,
        },
    )
    assert round_trip(conversion).pool.min_pool_size == 3


def test_toml_output_escapes_what_toml_must(tmp_path: Path) -> None:
    conversion = convert(
        tmp_path,
        {
            "pgbouncer.ini": """\
                [databases]
                app = host=db password='a"b\\\\c\tz'
                [pgbouncer]
                auth_type = trust
                listen_addr = 127.0.0.1
                server_reset_query = SELECT 'x'; DISCARD ALL
                """,
        },
    )
    config = round_trip(conversion)
    assert config.databases[0].password == 'a"b\\c\tz'
    assert config.pool.server_reset_query == "SELECT 'x'; DISCARD ALL"


LONG_LINES = {
    "equals signs": "app = " + "x=" * 200_000,
    "escaped quotes": "app = host='" + "\\'" * 200_000,
    "quotes": "app = " + "'" * 400_000,
    "quoted name": '"' + '""' * 200_000,
    "brackets": "[" * 400_000,
    "long key and value": "k" * 400_000 + " = " + "v" * 400_000,
    "many pairs": "app = " + "host=h " * 100_000,
}


@pytest.mark.parametrize("line", LONG_LINES.values(), ids=LONG_LINES.keys())
def test_parsing_is_linear_in_the_input(tmp_path: Path, line: str) -> None:
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(f"[pgbouncer]\nauth_type = trust\n[databases]\n{line}\n")
    start = time.perf_counter()
    try:
        convert_pgbouncer_ini(ini).config(env={})
    except ConfigError as exc:
        assert all(len(problem) < 1000 for problem in exc.problems)
    assert time.perf_counter() - start < 5


def test_a_long_auth_file_is_linear_too(tmp_path: Path) -> None:
    users = "".join(f'"user{i}" "pw{i}"\n' for i in range(20_000))
    ini = write(
        tmp_path,
        {
            "pgbouncer.ini": "[databases]\napp = host=db\n[pgbouncer]\nauth_file = u.txt\n",
            "u.txt": users + '"' + '""' * 200_000 + "\n",
        },
    )
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        convert_pgbouncer_ini(ini)
    assert time.perf_counter() - start < 5
    assert caught.value.problems == [
        f'{tmp_path / "u.txt"}:20001: expected "user" "password" (each in double quotes)'
    ]


def test_ini_files_are_told_apart_from_toml(tmp_path: Path) -> None:
    ini = write(tmp_path, TYPICAL)
    assert looks_like_pgbouncer_ini(ini)
    assert not looks_like_pgbouncer_ini(REPO / "proxy.example.toml")
    assert not looks_like_pgbouncer_ini(tmp_path / "missing.ini")


def test_the_docs_page_lists_every_setting() -> None:
    page = (REPO / "docs" / "pgbouncer.md").read_text()
    rows = {line.split("|")[1].strip() for line in page.splitlines() if line.startswith("| `")}
    for table, prefix in (
        (PGBOUNCER_SETTINGS, ""),
        (PGBOUNCER_DATABASE_PARAMS, "[databases] "),
        (PGBOUNCER_USER_PARAMS, "[users] "),
    ):
        for name in table:
            assert f"`{prefix}{name}`" in rows, f"{prefix}{name} is not in docs/pgbouncer.md"


def test_the_round_trip_keeps_every_field(tmp_path: Path) -> None:
    conversion = convert(tmp_path, TYPICAL)
    direct = conversion.config(env={})
    loaded = parse_config(conversion.toml(), source="proxy.toml", env={})
    assert dataclasses.replace(loaded, source=direct.source) == direct


def test_every_mapping_target_is_a_real_key() -> None:
    fields = {
        "databases": {f.name for f in dataclasses.fields(DatabaseConfig)},
        "users": {f.name for f in dataclasses.fields(UserConfig)},
    }
    for table in (PGBOUNCER_SETTINGS, PGBOUNCER_DATABASE_PARAMS, PGBOUNCER_USER_PARAMS):
        for name, target in table.items():
            if target.startswith("-") or target == "users":
                continue
            section, key = target.split(".")
            known = SECTIONS[section] if section in SECTIONS else fields[section]
            assert key in known, f"{name} maps to {target}, which is not a key"


def test_without_an_auth_file_nobody_can_log_in_and_it_is_said(tmp_path: Path) -> None:
    conversion = convert(
        tmp_path,
        {
            "pgbouncer.ini": """\
                [databases]
                app = host=db
                [pgbouncer]
                listen_addr = 127.0.0.1
                auth_type = scram-sha-256
                """,
        },
    )
    assert round_trip(conversion).users == ()
    (note,) = notes_about(conversion, "[pgbouncer] auth_type")
    assert "nobody can log in" in note


def test_auth_user_and_auth_query_are_mapped(tmp_path: Path) -> None:
    conversion = convert(
        tmp_path,
        {
            "pgbouncer.ini": """\
                [databases]
                app = host=db
                reports = host=db auth_user=reporter auth_dbname=app \
auth_query='SELECT * FROM lookup($1)'
                [pgbouncer]
                listen_addr = 127.0.0.1
                auth_type = scram-sha-256
                auth_file = userlist.txt
                auth_user = pgbouncer
                auth_query = SELECT usename, passwd FROM pg_shadow WHERE usename=$1
                auth_dbname = app
                """,
            "userlist.txt": '"pgbouncer" "pgb-pw"\n"reporter" "rep-pw"\n',
        },
    )
    config = round_trip(conversion)
    assert [u.name for u in config.users] == ["pgbouncer", "reporter"]
    assert (config.auth.auth_user, config.auth.auth_dbname) == ("pgbouncer", "app")
    assert config.auth.auth_query == "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
    app, reports = config.databases
    assert config.auth_lookup_for(app) == ("pgbouncer", config.auth.auth_query, "app")
    assert config.auth_lookup_for(reports) == ("reporter", "SELECT * FROM lookup($1)", "app")
    assert not [n for n in conversion.notes if "auth" in n.setting]


def test_an_auth_user_missing_from_the_auth_file_names_its_line(tmp_path: Path) -> None:
    conversion = convert(
        tmp_path,
        {
            "pgbouncer.ini": """\
                [databases]
                app = host=db
                [pgbouncer]
                auth_type = md5
                auth_user = pgbouncer
                """,
        },
    )
    assert not notes_about(conversion, "[pgbouncer] auth_type")
    with pytest.raises(ConfigError) as err:
        conversion.config(env={})
    assert f"{tmp_path / 'pgbouncer.ini'}:5: auth.auth_user" in str(err.value)


def test_problems_of_the_result_name_the_ini_line(tmp_path: Path) -> None:
    conversion = convert(
        tmp_path,
        {
            "pgbouncer.ini": """\
                [databases]
                app = host=db
                [pgbouncer]
                listen_addr = 127.0.0.1
                auth_type = scram-sha-256
                auth_file = userlist.txt
                client_tls_sslmode = require
                server_tls_sslmode = verify-full
                """,
            "userlist.txt": f'"alice" "{SCRAM[:-10]}"\n',
        },
    )
    with pytest.raises(ConfigError) as caught:
        conversion.config(env={})
    ini, userlist = tmp_path / "pgbouncer.ini", tmp_path / "userlist.txt"
    problems = caught.value.problems
    assert problems, problems
    for problem in problems:
        assert problem.startswith(
            (f"{ini}:7: client_tls.", f"{ini}:8: server_tls.", f"{userlist}:1: users[0].")
        ), problem
    assert any(
        p.startswith(f"{userlist}:1: users[0].password: looks like a SCRAM") for p in problems
    )


def test_server_check_query_is_mapped(tmp_path: Path) -> None:
    def check(value: str) -> Config:
        ini = (
            "[databases]\napp = host=db\n[pgbouncer]\nauth_file = userlist.txt\n"
            f"server_check_query = {value}\n"
        )
        conversion = convert(tmp_path, {"pgbouncer.ini": ini, "userlist.txt": '"a" "pw"\n'})
        assert not notes_about(conversion, "[pgbouncer] server_check_query")
        return round_trip(conversion)

    pool = check("select 1").pool
    assert (pool.server_check_query, pool.server_check_delay_s) == ("select 1", 30.0)
    # PgBouncer's name for the empty query is pgpool-proxy's default.
    pool = check("<empty>").pool
    assert (pool.server_check_query, pool.server_check_delay_s) == ("", 30.0)


def test_unix_socket_settings_are_mapped(tmp_path: Path) -> None:
    def check(lines: str) -> Config:
        ini = f"[databases]\napp = host=db\n[pgbouncer]\nauth_file = userlist.txt\n{lines}"
        conversion = convert(tmp_path, {"pgbouncer.ini": ini, "userlist.txt": '"a" "pw"\n'})
        assert not [n for n in conversion.notes if "unix_socket" in n.setting]
        return round_trip(conversion)

    # PgBouncer listens on /tmp unless told otherwise; so does the converted configuration.
    proxy = check("").proxy
    assert (proxy.unix_socket_dir, proxy.unix_socket_mode) == ("/tmp", 0o777)
    proxy = check("unix_socket_dir = /var/run/pgbouncer\nunix_socket_mode = 0770\n").proxy
    assert (proxy.unix_socket_dir, proxy.unix_socket_mode) == ("/var/run/pgbouncer", 0o770)
    # Empty turns the socket off in both.
    assert check("unix_socket_dir =\n").proxy.unix_socket_dir == ""


def test_reserve_pool_is_mapped(tmp_path: Path) -> None:
    ini = (
        "[databases]\napp = host=db\n[pgbouncer]\nauth_file = userlist.txt\n"
        "reserve_pool_size = 3\nreserve_pool_timeout = 2.5\n"
    )
    conversion = convert(tmp_path, {"pgbouncer.ini": ini, "userlist.txt": '"a" "pw"\n'})
    assert not [n for n in conversion.notes if "reserve" in n.setting]
    pool = round_trip(conversion).pool
    assert (pool.reserve_pool_size, pool.reserve_pool_timeout_s) == (3, 2.5)


def test_caps_across_pools_and_idle_timeouts_map_onto_ours(tmp_path: Path) -> None:
    conversion = convert(
        tmp_path,
        {
            "pgbouncer.ini": """\
                [databases]
                app = host=db max_db_connections=7
                other = host=db
                [users]
                alice = max_user_connections=3 idle_transaction_timeout=5
                [pgbouncer]
                listen_addr = 127.0.0.1
                auth_file = userlist.txt
                max_db_connections = 40
                max_user_connections = 30
                client_idle_timeout = 600
                idle_transaction_timeout = 60
                """,
            "userlist.txt": '"alice" "pw"\n"bob" "pw"\n',
        },
    )
    config = round_trip(conversion)
    pool = config.pool
    assert (pool.max_db_connections, pool.max_user_connections) == (40, 30)
    assert (pool.client_idle_timeout_s, pool.idle_transaction_timeout_s) == (600, 60)
    app, other = config.databases
    assert (app.max_db_connections, other.max_db_connections) == (7, None)
    assert config.max_db_connections_for(app) == 7
    assert config.max_db_connections_for(other) == 40
    users = {u.name: u for u in config.users}
    assert (users["alice"].max_user_connections, users["bob"].max_user_connections) == (3, None)
    assert config.max_user_connections_for("bob") == 30
    # PgBouncer's per-user timeouts have no per-user equivalent: reported, naming ours.
    (per_user,) = notes_about(conversion, "[users] alice: idle_transaction_timeout")
    assert "pool.idle_transaction_timeout_s applies to every user" in per_user
    assert {n.setting for n in conversion.notes} == {"[users] alice: idle_transaction_timeout"}
