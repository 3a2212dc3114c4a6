"""Owns Aurora topology discovery: a DB cluster identifier -> its instances' endpoints.

`describe_db_clusters` names the members and which one AWS considers the writer;
`describe_db_instances` gives each member's endpoint. The writer flag is only a hint for the
order of hosts: AWS updates it seconds after a failover, while the probes see the promotion
itself, so the probes decide. boto3 blocks, so calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .clients import boto_client

log = logging.getLogger("pgpool_proxy.discovery")


class DiscoveryError(Exception):
    """The cluster could not be described; the message says why."""


class AuroraMember:
    __slots__ = ("host", "instance_id", "is_writer", "port")

    def __init__(self, instance_id: str, host: str, port: int, is_writer: bool) -> None:
        self.instance_id = instance_id
        self.host = host
        self.port = port
        self.is_writer = is_writer

    def __repr__(self) -> str:
        role = "writer" if self.is_writer else "reader"
        return f"<aurora {self.instance_id} {self.host}:{self.port} {role}>"


# Maps an endpoint AWS reports to the address to connect to (tests: moto hosts -> local ports;
# deployments reaching instances through a tunnel or a local DNS name).
AddressMap = Callable[[str, int], tuple[str, int]]


class AuroraDiscovery:
    """Reads one cluster's members; `members()` is safe to call from the event loop."""

    def __init__(
        self,
        cluster_id: str,
        region: str,
        endpoint_url: str | None = None,
        timeout_s: float = 5.0,
        address_map: AddressMap | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.region = region
        self.endpoint_url = endpoint_url
        self.timeout_s = timeout_s
        self.address_map = address_map
        self._client: Any = None
        self.calls = 0
        self.failures = 0

    def _rds(self) -> Any:
        if self._client is None:
            self._client = boto_client("rds", self.region, self.endpoint_url, self.timeout_s)
        return self._client

    def fetch(self) -> list[AuroraMember]:
        """Blocking: the cluster's members with endpoints, writer first."""
        from botocore.exceptions import BotoCoreError, ClientError

        self.calls += 1
        try:
            rds = self._rds()
            clusters = rds.describe_db_clusters(DBClusterIdentifier=self.cluster_id)
            cluster = clusters["DBClusters"][0]
            writers = {
                m["DBInstanceIdentifier"]: bool(m.get("IsClusterWriter"))
                for m in cluster.get("DBClusterMembers", [])
            }
            members: list[AuroraMember] = []
            for instance_id, is_writer in writers.items():
                inst = rds.describe_db_instances(DBInstanceIdentifier=instance_id)["DBInstances"][0]
                endpoint = inst.get("Endpoint") or {}
                host, port = endpoint.get("Address"), endpoint.get("Port")
                if not host or not port:
                    continue  # still being created: no endpoint yet
                if self.address_map is not None:
                    host, port = self.address_map(host, int(port))
                members.append(AuroraMember(instance_id, host, int(port), is_writer))
        except ClientError as exc:
            self.failures += 1
            code = exc.response.get("Error", {}).get("Code", "")
            raise DiscoveryError(
                f"describing Aurora cluster {self.cluster_id} failed: {code}"
            ) from None
        except (BotoCoreError, KeyError, IndexError) as exc:
            self.failures += 1
            raise DiscoveryError(
                f"describing Aurora cluster {self.cluster_id} failed: {exc}"
            ) from None
        members.sort(key=lambda m: not m.is_writer)
        return members

    async def members(self) -> list[AuroraMember]:
        return await asyncio.to_thread(self.fetch)
