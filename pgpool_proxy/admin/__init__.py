"""Operating the proxy: the admin console, Prometheus metrics and health endpoints.

The runtime never imports this package: whoever builds a ProxyServer passes HOOKS (the CLI does),
and the server calls the console and the metrics endpoint through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .console import start_console
from .http import start_metrics_endpoint

if TYPE_CHECKING:
    from ..runtime.server import MetricsListener, ProxyServer
    from ..session.client import ClientConnection


class AdminFeatures:
    """runtime.server.AdminHooks, implemented by this package."""

    def start_console(
        self, server: ProxyServer, client: ClientConnection, params: Mapping[str, str]
    ) -> None:
        start_console(server, client, params)

    async def start_metrics_endpoint(self, server: ProxyServer) -> MetricsListener | None:
        return await start_metrics_endpoint(server)


HOOKS = AdminFeatures()
