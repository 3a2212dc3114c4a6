"""A PoolSpec for tests that drive a Pool directly (no ProxyServer), with overrides."""

from __future__ import annotations

from typing import Any

from pgpool_proxy.config import PoolMode
from pgpool_proxy.pool.spec import PoolSpec


def pool_spec(**overrides: Any) -> PoolSpec:
    values: dict[str, Any] = {
        "name": "app/u",
        "host": "127.0.0.1",
        "port": 5432,
        "dbname": "app",
        "user": "u",
        "secret": "pw",
        "size": 4,
        "min_size": 0,
        "mode": PoolMode.TRANSACTION,
        "query_wait_timeout_s": 10,
        "idle_timeout_s": 0,
        "lifetime_s": 0,
        "connect_timeout_s": 1,
        "login_retry_s": 1,
        "reset_query": "",
        "max_prepared_statements": 0,
        **overrides,
    }
    return PoolSpec(**values)
