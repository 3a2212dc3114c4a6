"""Aurora discovery against moto's RDS (server mode), its endpoints mapped to real local servers
(a primary and its streaming replica)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import asyncpg
import boto3
import pytest

from pgpool_proxy.aws.discovery import AuroraDiscovery, DiscoveryError
from pgpool_proxy.runtime.server import ProxyServer
from tests.aws.conftest import REGION
from tests.support.cluster import DBNAME, PASSWORD, USER, ReplicatedCluster
from tests.support.proxy import ProxyThread
from tests.support.waits import wait_for

pytestmark = pytest.mark.usefixtures("aws_env")


def _rds(moto_server: str) -> Any:
    return boto3.client("rds", region_name=REGION, endpoint_url=moto_server)


def _make_cluster(moto_server: str, cluster_id: str, instances: list[str]) -> None:
    rds = _rds(moto_server)
    rds.create_db_cluster(
        DBClusterIdentifier=cluster_id,
        Engine="aurora-postgresql",
        MasterUsername="master",
        MasterUserPassword="master-password",
    )
    for name in instances:
        rds.create_db_instance(
            DBInstanceIdentifier=name,
            DBClusterIdentifier=cluster_id,
            Engine="aurora-postgresql",
            DBInstanceClass="db.r6g.large",
        )


def test_members_writer_first_and_mapped(moto_server: str) -> None:
    _make_cluster(moto_server, "disc-a", ["disc-a-1", "disc-a-2"])
    seen: list[tuple[str, int]] = []

    def mapping(host: str, port: int) -> tuple[str, int]:
        seen.append((host, port))
        return "127.0.0.1", 6000 + len(seen)

    discovery = AuroraDiscovery("disc-a", REGION, moto_server, address_map=mapping)
    members = discovery.fetch()
    assert [m.instance_id for m in members] == ["disc-a-1", "disc-a-2"]
    assert members[0].is_writer and not members[1].is_writer
    assert {m.port for m in members} == {6001, 6002}
    assert all(h.startswith("disc-a-") and h.endswith(".rds.amazonaws.com") for h, _ in seen)
    # AWS moves the writer flag after a failover; discovery reports it writer first.
    _rds(moto_server).failover_db_cluster(
        DBClusterIdentifier="disc-a", TargetDBInstanceIdentifier="disc-a-2"
    )
    assert discovery.fetch()[0].instance_id == "disc-a-2"


def test_unknown_cluster_is_a_clear_error(moto_server: str) -> None:
    discovery = AuroraDiscovery("no-such-cluster", REGION, moto_server)
    with pytest.raises(DiscoveryError, match="no-such-cluster"):
        discovery.fetch()
    assert discovery.failures == 1


@pytest.fixture
def cluster() -> Iterator[ReplicatedCluster]:
    with ReplicatedCluster(replicas=1) as c:
        yield c


async def test_proxy_routes_by_discovered_members_and_follows_failover(
    moto_server: str, cluster: ReplicatedCluster
) -> None:
    _make_cluster(moto_server, "disc-b", ["disc-b-1", "disc-b-2"])
    servers = {"disc-b-1": cluster.primary, "disc-b-2": cluster.replicas[0]}

    def mapping(host: str, port: int) -> tuple[str, int]:
        instance = host.split(".", 1)[0]
        server = servers.get(instance)
        if server is None:
            return "127.0.0.1", 1  # an instance with no server behind it: refused
        return server.host, server.port

    class MappedServer(ProxyServer):
        address_map = staticmethod(mapping)

    config = cluster.config(
        databases=[
            {
                "name": DBNAME,
                "aurora_cluster": "disc-b",
                "aurora_region": REGION,
                "aurora_endpoint_url": moto_server,
                "user": USER,
                "password": PASSWORD,
            }
        ],
        topology={"discovery_interval_s": 1.0, "poll_interval_s": 0.3, "fast_poll_interval_s": 0.1},
    )
    with ProxyThread(config, MappedServer) as proxy:
        dsn = f"postgresql://{USER}:{PASSWORD}@{proxy.host}:{proxy.port}/{DBNAME}"
        conn = await asyncpg.connect(dsn, statement_cache_size=0)
        assert await conn.fetchval("SELECT inet_server_port()") == cluster.primary.port

        def topo_hosts() -> dict[str, str]:
            def read() -> dict[str, str]:
                assert proxy.server is not None
                return {str(h.instance_id): h.role for h in proxy.server.topologies[DBNAME].hosts}

            return proxy.call(read)

        assert topo_hosts() == {"disc-b-1": "writer", "disc-b-2": "replica"}
        # A member added later is picked up by the periodic discovery and probed.
        _rds(moto_server).create_db_instance(
            DBInstanceIdentifier="disc-b-3",
            DBClusterIdentifier="disc-b",
            Engine="aurora-postgresql",
            DBInstanceClass="db.r6g.large",
        )
        await wait_for(
            lambda: topo_hosts().get("disc-b-3") == "down",
            what=lambda: f"disc-b-3 discovered and probed ({topo_hosts()})",
        )

        # Failover: the primary dies, the replica is promoted (AWS flips its flag too).
        await asyncio.to_thread(cluster.primary.stop, "immediate")
        await asyncio.to_thread(cluster.replicas[0].promote)
        _rds(moto_server).failover_db_cluster(
            DBClusterIdentifier="disc-b", TargetDBInstanceIdentifier="disc-b-2"
        )

        async def on_new_writer() -> bool:
            try:
                return bool(await conn.fetchval("SELECT inet_server_port()") == new_port)
            except asyncpg.PostgresError:
                return False

        new_port = cluster.replicas[0].port
        await wait_for(on_new_writer, what="the client served by the new writer", interval=0.1)
        assert not conn.is_closed()
        await conn.close()
