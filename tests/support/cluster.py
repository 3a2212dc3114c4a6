"""A primary with streaming replicas (pgserver.ReplicatedCluster) and a proxy config for it."""

from __future__ import annotations

from typing import Any

from pgpool_devkit.pgserver import ReplicatedCluster as _Cluster
from pgpool_proxy.config import Config, build_config

USER, PASSWORD, DBNAME = "alice", "alice-pw", "app"


class ReplicatedCluster(_Cluster):
    def config(self, **sections: Any) -> Config:
        """A proxy config: "app" (the writer) and "app-ro" (the replicas) on every host."""
        hosts = self.hosts()
        data: dict[str, Any] = {
            "proxy": {"listen": "127.0.0.1:0", "client_login_timeout_s": 5},
            "pool": {"default_pool_size": 4, "query_wait_timeout_s": 30},
            "auth": {"type": "scram-sha-256"},
            "topology": {"poll_interval_s": 0.5, "fast_poll_interval_s": 0.1},
            "databases": [
                {"name": DBNAME, "hosts": hosts, "user": USER, "password": PASSWORD},
                {
                    "name": f"{DBNAME}-ro",
                    "dbname": DBNAME,
                    "hosts": hosts,
                    "role": "reader",
                    "user": USER,
                    "password": PASSWORD,
                },
            ],
            "users": [{"name": USER, "password": PASSWORD}],
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        return build_config(data, source="<cluster>", env={})
