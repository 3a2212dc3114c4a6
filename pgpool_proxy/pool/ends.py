"""The client end of a link as the pool and its server connections see it.

A Protocol, so pool/ never imports the session layer above it: session.client.ClientConnection
satisfies it, and mypy checks that where the session hands a client to the pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from ..errors import DisconnectReason, ProxyError
from ..link.ends import LinkClient

if TYPE_CHECKING:
    from .backend import BackendConnection
    from .pool import Pool


class PoolDirectory(Protocol):
    """Every pool of the process, by (database, server user): where a notification's sender is
    looked up (pool.notify.notifier_pid)."""

    @property
    def pools(self) -> Mapping[tuple[str, str], Pool]: ...


class PoolClient(LinkClient, Protocol):
    """What the pool and a linked server connection read and call on their client."""

    # Rebound by the server end (reported settings, a lost link, the queue), so plain members.
    backend: BackendConnection | None
    params: dict[str, str]
    settings_sig: tuple[object, ...] | None
    wait_since: float

    @property
    def key_pid(self) -> int: ...

    @property
    def release_on_idle(self) -> bool: ...

    @property
    def pinned(self) -> bool: ...

    @property
    def server(self) -> PoolDirectory: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_waiting(self) -> bool: ...

    def is_checking(self) -> bool: ...

    def wants_internal_params(self) -> bool: ...

    def backend_assigned(self, backend: BackendConnection) -> None: ...

    def backend_released(self, backend: BackendConnection | None) -> None: ...

    def check_session(self, backend: BackendConnection) -> None: ...

    def backend_failed(
        self, err: ProxyError, reason: DisconnectReason = DisconnectReason.BACKEND_FAILED
    ) -> None: ...

    def backend_ended(self) -> None: ...

    def pool_failed(self, err: ProxyError, reason: DisconnectReason | None = None) -> None: ...

    def fail(self, err: ProxyError, reason: DisconnectReason) -> None: ...

    def close(self, reason: DisconnectReason) -> None: ...
