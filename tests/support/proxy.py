"""Run a real ProxyServer for tests: in a background thread on its own uvloop, or as a subprocess.

A thread keeps the proxy's event loop independent of the test's, so tests may block (psql,
pgbench via subprocess) or drive thousands of asyncpg clients without starving the proxy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import uvloop

from pgpool_proxy.admin import HOOKS
from pgpool_proxy.config import Config, build_config
from pgpool_proxy.runtime.server import ProxyServer

from .pg import LocalPostgres

T = TypeVar("T")

# Passwords of the roles the session fixture creates on the test server.
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}


def make_config(pg: LocalPostgres, **sections: dict[str, Any]) -> Config:
    """A config for the test server: database "app" (plus extras), users alice/bob/carol."""
    data: dict[str, Any] = {
        "proxy": {"listen": "127.0.0.1:0", "client_login_timeout_s": 5},
        "pool": {"default_pool_size": 5, "query_wait_timeout_s": 30},
        "auth": {"type": "scram-sha-256"},
        "databases": [{"name": "app", "host": pg.host, "port": pg.port}],
        "users": [{"name": n, "password": p} for n, p in PASSWORDS.items()],
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return build_config(data, source="<test>")


class ProxyThread:
    """A ProxyServer serving in a daemon thread; `stop()` closes it and joins the thread."""

    def __init__(
        self,
        config: Config,
        server_class: type[ProxyServer] = ProxyServer,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop,
    ) -> None:
        self.config = config
        self.server_class = server_class
        self.loop_factory = loop_factory
        self.server: ProxyServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="proxy", daemon=True)

    def start(self) -> ProxyThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = self.loop_factory()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        self.server = self.server_class(self.config, admin=HOOKS)
        await self.server.start()
        self._ready.set()
        await self._stopped.wait()
        await self.server.close()

    @property
    def host(self) -> str:
        assert self.server is not None
        return str(self.server.host)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.port)

    def dsn(self, user: str = "alice", dbname: str = "app", password: str | None = None) -> str:
        pw = PASSWORDS.get(user, "") if password is None else password
        return f"postgresql://{user}:{pw}@{self.host}:{self.port}/{dbname}"

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn on the proxy's loop (to read its state consistently) and return its result."""
        assert self.loop is not None
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result(10)

    def pool_stats(self, name: str = "app", user: str = "alice") -> dict[str, int]:
        def read() -> dict[str, int]:
            assert self.server is not None
            pool = self.server.pools.get((name, user))
            return pool.stats() if pool else {}

        return self.call(read)

    def stop(self) -> None:
        if self.loop is not None and self._stopped is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(30)

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# The type of the `start_proxy` fixture (tests/conftest.py).
StartProxy = Callable[..., ProxyThread]
