"""Owns streaming replicas of a LocalPostgres: `pg_basebackup -R` into a new scratch cluster.

Used by the failover tests and benchmark: a primary, a hot standby streaming from it, and
`LocalPostgres.promote()` to turn the standby into the new writer.
"""

from __future__ import annotations

import contextlib

from ._util import PgServerError
from .cluster import LocalPostgres


def start_replica(primary: LocalPostgres) -> LocalPostgres:
    """A running hot standby of ``primary`` on its own port, streaming over the Unix socket.

    The caller owns it (``cleanup()``), as with any LocalPostgres.
    """
    if not primary.running:
        raise PgServerError("cannot copy a server that is not running")
    replica = LocalPostgres(
        bindir=primary._source_bindir,
        superuser=primary.superuser,
        superuser_password=primary.superuser_password,
        host_auth=primary.host_auth,
        settings=primary.settings,
        run_as=primary.run_as,
    )
    try:
        replica._make_work_dir()
        cmd = [
            str(replica.bindir / "pg_basebackup"),
            "-D",
            str(replica.data_dir),
            "-h",
            str(primary.socket_dir),
            "-p",
            str(primary.port),
            "-U",
            primary.superuser,
            "-X",
            "stream",
            "-R",  # standby.signal + primary_conninfo: a standby from its first start
            "--checkpoint=fast",
            "--no-sync",
        ]
        result = replica._run_server_cmd(cmd)
        if result.returncode != 0:
            raise PgServerError(f"pg_basebackup failed (exit {result.returncode}): {result.output}")
        # The copy carries the primary's port and socket directory; the last setting wins.
        replica._append_config(
            {
                "port": str(replica.port),
                "unix_socket_directories": str(replica.socket_dir),
                "hot_standby": "on",
            }
        )
        replica._initialized = True
        replica.start()
    except BaseException:
        with contextlib.suppress(Exception):
            replica.cleanup()
        raise
    return replica


class ReplicatedCluster:
    """A primary with ``replicas`` hot standbys, a login role, a database and a ``writes``
    table. ``sync`` makes every commit wait for a standby, so a commit a client saw survives
    the primary's crash (with asynchronous replication the last ones may be lost, with or
    without a proxy)."""

    def __init__(
        self,
        replicas: int = 1,
        *,
        sync: bool = True,
        user: str = "alice",
        password: str = "alice-pw",
        dbname: str = "app",
    ) -> None:
        self.primary = LocalPostgres(settings={"wal_keep_size": "64MB"})
        self.replicas: list[LocalPostgres] = []
        self.user, self.password, self.dbname = user, password, dbname
        self._n = replicas
        self._sync = sync

    def start(self) -> ReplicatedCluster:
        p = self.primary
        p.start()
        p.create_role(self.user, self.password)
        p.create_database(self.dbname, owner=self.user)
        p.psql(
            "CREATE TABLE writes (id bigint PRIMARY KEY, client int, at timestamptz DEFAULT now())",
            dbname=self.dbname,
            user=self.user,
            password=self.password,
        )
        for _ in range(self._n):
            self.replicas.append(start_replica(p))
        if self._sync:
            p.psql("ALTER SYSTEM SET synchronous_standby_names = '*'")
            p.psql("ALTER SYSTEM SET synchronous_commit = 'on'")
            p.reload()
        return self

    @property
    def servers(self) -> list[LocalPostgres]:
        return [self.primary, *self.replicas]

    def hosts(self) -> list[str]:
        return [f"{s.host}:{s.port}" for s in self.servers]

    def cleanup(self) -> None:
        for s in reversed(self.servers):
            with contextlib.suppress(PgServerError):
                s.cleanup()

    def __enter__(self) -> ReplicatedCluster:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
