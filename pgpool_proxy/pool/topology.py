"""Owns the decision of which server is the writer, from probe observations (sans-IO).

The monitor (pool.monitor) feeds `Topology.observe`/`observe_failure` with what each host said;
this module turns those into a writer, a list of usable replicas and change notifications for
the pools. Nothing here does I/O or reads a clock: callers pass ``now``.

Rules:
- a host is a writer candidate when its last probe succeeded and it is not in recovery;
- two candidates (an old primary restarted without pg_rewind next to the promoted replica): the
  higher timeline wins, and a primary on a timeline lower than the highest one ever seen is never
  chosen again, so writes never go back to it;
- a writer that fails a probe definitively (refused, connection lost, now in recovery) is dropped
  at once; a slow answer only after two misses in a row, so one hiccup does not retire the pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

# HostState.role values.
WRITER: Final = "writer"
REPLICA: Final = "replica"
DOWN: Final = "down"
UNKNOWN: Final = "unknown"
STALE: Final = "stale"  # claims to be primary on an old timeline: never written to

# Misses in a row (timeouts, query errors) before a host that still holds its connection counts
# as down.
SOFT_FAILURES_DOWN: Final = 2


class ProbeResult:
    """What one probe of one host returned."""

    __slots__ = ("in_recovery", "instance_id", "lsn", "timeline", "writer_instance_id")

    def __init__(
        self,
        in_recovery: bool,
        timeline: int | None = None,
        lsn: int | None = None,
        instance_id: str | None = None,
        writer_instance_id: str | None = None,
    ) -> None:
        self.in_recovery = in_recovery
        self.timeline = timeline
        self.lsn = lsn
        # Aurora: this instance's identifier and the one aurora_replica_status() names writer.
        self.instance_id = instance_id
        self.writer_instance_id = writer_instance_id


class HostState:
    """One server of a topology as the proxy last saw it."""

    __slots__ = (
        "address",
        "error",
        "failures",
        "host",
        "instance_id",
        "lag_bytes",
        "last_ok_at",
        "lsn",
        "port",
        "probes",
        "role",
        "timeline",
    )

    def __init__(self, host: str, port: int, instance_id: str | None = None) -> None:
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.role = UNKNOWN
        self.timeline: int | None = None
        self.lsn: int | None = None
        self.lag_bytes: int | None = None
        self.last_ok_at: float | None = None
        self.failures = 0
        self.probes = 0  # attempts so far (metrics; bounds the probing cost)
        self.error = ""
        self.instance_id = instance_id

    @property
    def key(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __repr__(self) -> str:
        return f"<host {self.address} {self.role} tl={self.timeline}>"


Listener = Callable[["Topology"], None]


class Topology:
    """The servers behind one set of hosts and which of them is the writer now."""

    def __init__(self, name: str, addresses: Iterable[tuple[str, int]]) -> None:
        self.name = name
        self.hosts: list[HostState] = [HostState(h, p) for h, p in addresses]
        self.writer: HostState | None = None
        self.last_writer: HostState | None = None
        self.failovers = 0
        self.max_timeline = 0
        # Fast polling: something failed and no writer is confirmed yet (or a pool suspects).
        self.fast = True
        self.writer_lost_at: float | None = None
        self.named_writer: str | None = None  # Aurora: the writer aurora_replica_status names
        self._listeners: list[Listener] = []
        # Set by the monitor: wakes its probe loops at once (fast mode entered).
        self.on_fast: Callable[[], None] | None = None

    # --- wiring ------------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def host(self, host: str, port: int) -> HostState | None:
        for h in self.hosts:
            if h.host == host and h.port == port:
                return h
        return None

    def set_hosts(
        self, members: Sequence[tuple[str, int, str | None]], now: float
    ) -> tuple[list[HostState], list[HostState]]:
        """Replace the host list (discovery): returns (added, removed). Known hosts keep their
        state; a removed writer is dropped like a failed one."""
        old = {h.key: h for h in self.hosts}
        new: list[HostState] = []
        for host, port, instance_id in members:
            state = old.pop((host, port), None) or HostState(host, port, instance_id)
            state.instance_id = instance_id or state.instance_id
            new.append(state)
        added = [h for h in new if h.key not in {s.key for s in self.hosts}]
        removed = list(old.values())
        self.hosts = new
        if removed or added:
            self._decide(now)
        return added, removed

    # --- observations ------------------------------------------------------------------------

    def observe(self, state: HostState, result: ProbeResult, now: float) -> None:
        """A probe of ``state`` succeeded."""
        state.last_ok_at = now
        state.failures = 0
        state.error = ""
        if result.instance_id:
            state.instance_id = result.instance_id
        if result.writer_instance_id:
            self.named_writer = result.writer_instance_id
            if not self._named_writer_agrees():
                # Aurora names a different writer than the one we route to: confirm quickly.
                self._go_fast()
        state.lsn = result.lsn
        if result.in_recovery:
            state.role = REPLICA
            state.timeline = result.timeline
        else:
            state.timeline = result.timeline
            tl = result.timeline or 0
            if tl and tl < self.max_timeline:
                state.role = STALE
            else:
                state.role = WRITER
                if tl > self.max_timeline:
                    self.max_timeline = tl
        self._decide(now)

    def observe_failure(self, state: HostState, error: str, now: float, definitive: bool) -> None:
        """A probe of ``state`` failed: refused or lost (definitive) or slow/erroring (soft)."""
        was = state.role
        state.failures += 1
        state.error = error
        if definitive or state.failures >= SOFT_FAILURES_DOWN:
            state.role = DOWN
        if was not in (DOWN, STALE) or state is self.writer:
            # Something changed: look at every host now. A host that stays down does not
            # keep the others at the fast pace.
            self._go_fast()
        self._decide(now)

    def suspect(self) -> None:
        """A pool could not reach its server: probe everything at the fast pace now."""
        self._go_fast()

    def _go_fast(self) -> None:
        if not self.fast:
            self.fast = True
            if self.on_fast is not None:
                self.on_fast()

    # --- decisions ---------------------------------------------------------------------------

    def _decide(self, now: float) -> None:
        # A primary that fell behind the highest timeline is stale from now on.
        for h in self.hosts:
            if h.role == WRITER and (h.timeline or 0) and (h.timeline or 0) < self.max_timeline:
                h.role = STALE
        candidates = [h for h in self.hosts if h.role == WRITER]
        current = self.writer
        chosen: HostState | None
        if not candidates:
            chosen = None
        elif current in candidates:
            best = max(h.timeline or 0 for h in candidates)
            chosen = current if (current.timeline or 0) == best else None
            if chosen is None:
                chosen = next(h for h in candidates if (h.timeline or 0) == best)
        else:
            best = max(h.timeline or 0 for h in candidates)
            chosen = next(h for h in candidates if (h.timeline or 0) == best)
        writer_lsn = chosen.lsn if chosen is not None else None
        for h in self.hosts:
            if h.role == REPLICA and writer_lsn is not None and h.lsn is not None:
                h.lag_bytes = max(0, writer_lsn - h.lsn)
            elif h.role != REPLICA:
                h.lag_bytes = None
        changed = chosen is not current
        if changed:
            self.writer = chosen
            if chosen is None:
                self.writer_lost_at = now
            else:
                if self.last_writer is not None and self.last_writer is not chosen:
                    self.failovers += 1
                self.last_writer = chosen
                self.writer_lost_at = None
        if (
            chosen is not None
            and all(h.role != UNKNOWN and (h.failures == 0 or h.role == DOWN) for h in self.hosts)
            and self._named_writer_agrees()
        ):
            # Back to the steady pace once the writer is confirmed and every host answered
            # (or is known to be down: those are retried at the steady pace).
            self.fast = False
        # Pools re-check on every observation: replica lag moves without any role change.
        for listener in list(self._listeners):
            listener(self)

    def _named_writer_agrees(self) -> bool:
        """False while Aurora names as writer a known instance other than ours."""
        named, writer = self.named_writer, self.writer
        if named is None or writer is None or writer.instance_id in (None, named):
            return True
        return not any(h.instance_id == named for h in self.hosts)

    # --- another process's view (workers = N: one process probes, the others follow) --------

    def view(self) -> dict[str, object]:
        """What the probing process knows, as plain JSON-able values."""
        writer = self.writer
        return {
            "hosts": [
                [
                    h.host,
                    h.port,
                    h.instance_id,
                    h.role,
                    h.timeline,
                    h.lsn,
                    h.lag_bytes,
                    h.failures,
                    h.error,
                    h.probes,
                ]
                for h in self.hosts
            ],
            "writer": list(writer.key) if writer is not None else None,
            "fast": self.fast,
            "failovers": self.failovers,
            "max_timeline": self.max_timeline,
            "named_writer": self.named_writer,
        }

    def apply_view(self, view: dict[str, Any], now: float) -> None:
        """Take the probing process's view as this topology's (it decided; nothing is
        re-decided here), then tell the pools as an observation would."""
        old = {h.key: h for h in self.hosts}
        hosts: list[HostState] = []
        for host, port, instance_id, role, tl, lsn, lag, failures, error, probes in view["hosts"]:
            h = old.get((host, int(port))) or HostState(str(host), int(port), instance_id)
            h.instance_id = instance_id
            h.role, h.timeline, h.lsn, h.lag_bytes = str(role), tl, lsn, lag
            h.failures, h.error, h.probes = int(failures), str(error), int(probes)
            if failures == 0 and role != UNKNOWN:
                h.last_ok_at = now
            hosts.append(h)
        self.hosts = hosts
        key = view["writer"]
        chosen = self.host(str(key[0]), int(key[1])) if key is not None else None
        if chosen is not self.writer:
            self.writer = chosen
            if chosen is None:
                self.writer_lost_at = now
            else:
                self.last_writer = chosen
                self.writer_lost_at = None
        self.failovers = int(view["failovers"])
        self.max_timeline = int(view["max_timeline"])
        self.named_writer = view["named_writer"]
        self.fast = bool(view["fast"])
        for listener in list(self._listeners):
            listener(self)

    # --- queries -----------------------------------------------------------------------------

    def replicas(self) -> list[HostState]:
        return [h for h in self.hosts if h.role == REPLICA]

    def describe(self) -> str:
        """One line for errors and logs: every host with its role."""
        return ", ".join(
            f"{h.address} {h.role}" + (f" ({h.error})" if h.error and h.role == DOWN else "")
            for h in self.hosts
        )
