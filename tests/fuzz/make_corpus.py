"""Writes the kept seed corpus (tests/fuzz/corpus/<target>/): small valid examples of each format.

Run from the repository root: `python -m tests.fuzz.make_corpus`. Files are named by content
hash, so a rerun adds nothing twice; inputs a long run found worth keeping (and every input
that once crashed a target) are added to the same directories by hand.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from pgpool_proxy.auth.md5 import md5_response
from pgpool_proxy.auth.scram_client import ScramClient
from pgpool_proxy.auth.scram_server import ScramServer
from pgpool_proxy.protocol import messages as m
from tests.fuzz import fuzz_scram_client, fuzz_scram_server
from tests.fuzz._common import CORPUS_ROOT

F = m.frame


def _client_streams() -> list[bytes]:
    parse = F(b"P", b"\0select $1\0\0\0")
    named = F(b"P", b"s1\0select 1\0\0\0")
    bind = F(b"B", b"\0\0\0\0\0\0\0\0")
    bind_named = F(b"B", b"p1\0s1\0\0\0\0\0\0\0")
    describe = F(b"D", b"Ss1\0")
    execute = F(b"E", b"\0\0\0\0\0")
    sync = F(b"S")
    close = F(b"C", b"Ss1\0")
    return [
        m.query("select 1"),
        m.query("SET search_path = app; select 1"),
        m.query("  /* c */ -- x\n set app.tenant = 'a'"),
        m.query("DEALLOCATE ALL"),
        m.query("select pg_advisory_lock(1)"),
        parse + bind + describe + execute + sync,
        named + bind_named + describe + execute + close + sync,
        F(b"F", b"\0\0\0\x01\0\0\0\0\0\0\0\0"),
        m.query("copy t from stdin") + F(b"d", b"1\n") + F(b"c") + sync,
        F(b"H") + m.TERMINATE,
    ]


def _server_streams() -> list[bytes]:
    rd = m.row_description([("a", m.OID_INT4)])
    row = m.data_row(["1", None])
    ok = m.command_complete("SELECT 1")
    z = m.ready_for_query()
    err = m.error_response("ERROR", "42601", "syntax error")
    return [
        rd + row + ok + z,
        m.parameter_status("TimeZone", "UTC") + z,
        err + m.ready_for_query(ord("E")),
        F(b"1") + F(b"2") + rd + row + ok + F(b"3") + z,
        F(b"G", b"\0\0\0") + m.notice_response("n") + z,
        F(b"n") + F(b"s") + F(b"I") + z,
    ]


def _messages() -> list[bytes]:
    return [
        b"D" + m.data_row(["1", None, "abc"])[5:],
        b"E" + m.error_response("FATAL", "28P01", "no", detail="d", hint="h")[5:],
        b"N" + m.notice_response("hello")[5:],
        b"S" + m.parameter_status("client_encoding", "UTF8")[5:],
        b"R" + m.auth_ok()[5:],
        b"R" + m.auth_md5(b"salt")[5:],
        b"R" + m.auth_sasl(["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"])[5:],
        b"R" + m.auth_sasl_continue(b"r=abc,s=c2FsdA==,i=4096")[5:],
        b"K" + m.backend_key_data(1234, 5678)[5:],
        b"p" + m.password_message("md5abc")[5:],
        b"p" + m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")[5:],
    ]


def _startups() -> list[bytes]:
    return [
        m.startup_message({"user": "alice", "database": "app"}),
        m.startup_message({"user": "a", "options": "-c search_path=x --work-mem=4MB -c a\\ b=c"}),
        m.startup_message({"user": "a", "_pq_.x": "1", "replication": "false"}),
        struct.pack("!II", 8, 80877103),
        struct.pack("!II", 8, 80877104),
        m.cancel_request(1, 2),
    ]


def _scram_server() -> list[bytes]:
    client = ScramClient(fuzz_scram_server.PASSWORD, nonce="CLIENTNONCE")
    server = ScramServer(fuzz_scram_server.VERIFIER, nonce=fuzz_scram_server.SERVER_NONCE)
    first = client.client_first()
    final = client.handle_server_first(server.handle_client_first(first))
    return [first + b"\0" + final, b"y,,n=user,r=x\0c=eSws,r=xSRVNONCE,p=AAAA"]


def _scram_client() -> list[bytes]:
    server = ScramServer(fuzz_scram_server.VERIFIER, nonce="SRV")
    client = ScramClient(
        client_key=fuzz_scram_client.CLIENT_KEY,
        server_key=fuzz_scram_client.SERVER_KEY,
        nonce=fuzz_scram_client.CLIENT_NONCE,
    )
    server_first = server.handle_client_first(client.client_first())
    server_final = server.handle_client_final(client.handle_server_first(server_first))
    return [server_first + b"\0" + server_final, server_first + b"\0e=invalid-proof"]


def _logins() -> list[bytes]:
    out = []
    token = iam_tokens()[0]
    for pad in ("", "x", "xx", "xxx"):  # the harness picks trust/md5/SCRAM/IAM by length mod 4
        params = {"user": "alice", "database": "app", "application_name": pad}
        start = m.startup_message(params)
        first = b"n,,n=,r=CLIENTNONCE"
        out += [
            start,
            struct.pack("!II", 8, 80877103) + start,
            start + m.password_message("md5" + "0" * 32),
            start + m.sasl_initial_response("SCRAM-SHA-256", first) + m.sasl_response(b"c=biws"),
            m.startup_message({"user": "nobody", "database": "nowhere", "options": pad}),
            start + m.frame(b"p", token + b"\0"),
        ]
    return out


def iam_tokens() -> list[bytes]:
    sig = "0" * 64
    common = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLEEXAMPLE12%2F20260101%2F"
        "{region}%2F{service}%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=900"
    )
    rds = (
        "proxy.example:5432/?Action=connect&DBUser=alice&"
        + common.format(region="us-east-1", service="rds-db")
        + f"&X-Amz-SignedHeaders=host&X-Amz-Signature={sig}"
    )
    sts = (
        "sts.us-east-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&"
        + common.format(region="us-east-1", service="sts")
        + "&X-Amz-Security-Token=tok&X-Amz-SignedHeaders=host%3Bx-pgpool-dbuser%3Bx-pgpool-endpoint"
        + f"&X-Amz-Signature={sig}&DBUser=alice&Endpoint=proxy.example%3A5432"
    )
    return [rds.encode(), sts.encode(), ("https://" + rds).encode()]


_SQL = [
    b"select 1",
    b"SET search_path TO app, public; SELECT 1",
    b"\n        SELECT 1",
    b"/* a /* nested */ comment */ reset all",
    b"-- comment\rset role x",
    b"select set_config('app.tenant', 'a', false)",
    b'select U&"set\\005Fconfig"(1)',
    b"create temp table t (a int); drop table t",
    b"discard all; deallocate prepare s1; listen ch; prepare p as select 1",
    b"do $$ begin perform pg_advisory_lock(1); end $$",
]

_ADMIN = [
    b"SHOW POOLS;",
    b"show stats; show config",
    b"SET default_pool_size = 10",
    b"set log_level to 'info'",
    b'PAUSE "my db"; RESUME',
    b"KILL app; RECONNECT; RELOAD; SHUTDOWN",
]

_CONFIG = b"""[proxy]
listen = "127.0.0.1:6432"
[pool]
default_pool_size = 5
[auth]
type = "scram-sha-256"
[[databases]]
name = "app"
host = "127.0.0.1"
port = 5432
[[users]]
name = "alice"
password = "secret"
"""


def _backend_logins() -> list[bytes]:
    welcome = (
        m.parameter_status("server_version", "15.0")
        + m.parameter_status("client_encoding", "UTF8")
        + m.backend_key_data(4242, 99)
        + m.ready_for_query()
    )
    out = []
    for pad in (b"", b"x", b"xx"):  # the harness picks the credentials by length mod 3
        notice = m.notice_response("hello" + pad.decode())
        out += [
            notice + m.auth_ok() + welcome,
            notice + m.auth_md5(b"salt") + m.auth_ok() + welcome,
            notice + F(b"R", struct.pack("!I", 3)) + m.auth_ok() + welcome,
            notice + m.auth_sasl(["SCRAM-SHA-256"]) + m.auth_sasl_continue(b"r=x,s=c2FsdA==,i=1"),
            notice + m.error_response("FATAL", "28P01", "password authentication failed"),
        ]
    return out


def _recvbuffer() -> list[bytes]:
    return [bytes([8, 2, 0, 40, 1, 10, 2, 50, 3, 0, 0, 200, 4, 0, 1, 255, 4, 0]), bytes(range(64))]


def seeds() -> dict[str, list[bytes]]:
    salt = b"s\x00l\xff"
    return {
        "client_scanner": _client_streams(),
        "backend_scanner": _server_streams(),
        "recvbuffer": _recvbuffer(),
        "messages": _messages(),
        "startup": _startups(),
        "login": _logins(),
        "backend_login": _backend_logins(),
        "scram_server": _scram_server(),
        "scram_client": _scram_client(),
        "md5": [salt + md5_response("secret", "alice", salt).encode(), salt + b"md5" + b"0" * 32],
        "iam": iam_tokens(),
        "sqlscan": _SQL,
        "admin": _ADMIN,
        "config": [_CONFIG, (Path(__file__).parents[2] / "proxy.example.toml").read_bytes()],
    }


def write(root: Path = CORPUS_ROOT) -> None:
    for target, inputs in seeds().items():
        d = root / target
        d.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


if __name__ == "__main__":
    write()
