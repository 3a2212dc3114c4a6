"""Kernel dead-peer detection options (pool.connect.tune_socket) and their config keys."""

from __future__ import annotations

import socket

import pytest

from pgpool_proxy.config import ConfigError, build_config
from pgpool_proxy.net.connect import TcpTuning, tcp_tuning, tune_socket


def _opts(s: socket.socket) -> dict[str, int]:
    out = {"SO_KEEPALIVE": s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)}
    for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT"):
        if hasattr(socket, name):
            out[name] = s.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
    return out


def test_tcp_socket_gets_every_option() -> None:
    with socket.socket() as s:
        tune_socket(s, TcpTuning(True, 11, 4, 6, 12.5))
        got = _opts(s)
    want = {
        "SO_KEEPALIVE": 1,
        "TCP_KEEPIDLE": 11,
        "TCP_KEEPINTVL": 4,
        "TCP_KEEPCNT": 6,
        "TCP_USER_TIMEOUT": 12500,
    }
    assert got == {k: v for k, v in want.items() if k in got}


def test_keepalive_off_still_sets_user_timeout() -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        tune_socket(s, TcpTuning(keepalive=False, user_timeout_s=0))
        got = _opts(s)
    assert got["SO_KEEPALIVE"] == 0
    assert got.get("TCP_USER_TIMEOUT", 0) == 0


def test_non_tcp_sockets_are_left_alone() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        tune_socket(a, TcpTuning())  # would raise on setsockopt(IPPROTO_TCP, ...)
    tune_socket(object(), TcpTuning())


def test_config_keys_and_defaults() -> None:
    cfg = build_config({"databases": [{"name": "app", "host": "h", "port": 1}]}, env={})
    t = tcp_tuning(cfg.pool)
    # A dead idle peer is found within 30 s: 15 + 3 x 5, and unacknowledged data within 30 s.
    assert t.keepidle_s + t.keepcnt * t.keepintvl_s <= 30 and t.user_timeout_s == 30
    assert cfg.pool.query_timeout_s == 0  # off by default, as in PgBouncer
    assert cfg.pool.server_check_delay_s == 30 and cfg.pool.server_check_timeout_s == 10


@pytest.mark.parametrize(
    "key, value",
    [
        ("tcp_keepcnt", 0),
        ("tcp_keepidle_s", 0),
        ("tcp_keepintvl_s", 40000),
        ("server_check_timeout_s", 0),
        ("query_timeout_s", -1),
        ("tcp_user_timeout_s", -1),
        ("tcp_keepalive", "yes"),
    ],
)
def test_bad_values_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(
            {"pool": {key: value}, "databases": [{"name": "app", "host": "h", "port": 1}]},
            source="x.toml",
            env={},
        )
    assert f"pool.{key}" in str(err.value)
