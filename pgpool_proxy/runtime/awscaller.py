"""Owns `workers = N`'s one AWS caller per instance: worker 0 talks to AWS, the others ask it.

Worker 0 (the caller) serves a Unix socket in the supervisor's private peer directory
(`aws.sock`). Its siblings ask it, one short connection per question, in length-prefixed JSON
frames (4-byte big-endian length, then a JSON object):

- ``iam``: has a token (by hash: the token itself never leaves the worker that received it)
  been verified? The caller answers with the identity, waits for a verification under way, or
  grants a claim: the asker verifies and reports on the same connection; a claim whose
  connection drops is handed to the next asker.
- ``secret``: the caller's current credentials for a secret ARN, refreshed when due; after a
  refused login, one forced refresh (AWSCURRENT and AWSPENDING) unless the caller already holds
  newer credentials than the refused ones.
- ``topology``: a subscription. The caller alone probes the servers (and asks Aurora for its
  members) and pushes every topology's view (hosts, roles, writer, lag) after each probe; the
  sibling sends ``suspect`` when one of its pools cannot reach its server, so the caller probes
  at the fast pace at once.

Everything here runs off the hot path (logins and refreshes), bounded by timeouts. A worker whose
caller does not answer (restarting, stuck) calls AWS itself, and says so in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from ..auth.iam import IamError, IamIdentity
from .sibling_socket import SiblingSocket

if TYPE_CHECKING:
    from ..aws.iam_cache import Claim, IamAuthenticator
    from ..aws.secrets import DbCredentials, SecretStore
    from .services import Services
    from .tracking import Tracking
    from .workers import WorkerIdentity

log = logging.getLogger("pgpool_proxy.awscaller")

CALLER_INDEX = 0
# A frame is one question or answer: an identity, a secret's two versions.
MAX_FRAME = 1024 * 1024
CONNECT_TIMEOUT_S = 1.0
# Siblings start together: until this long after a worker starts, it waits for the caller's
# socket to appear rather than fetch its secrets itself.
STARTUP_WAIT_S = 15.0
# A follower cut off from the caller tries again this often (probing by itself meanwhile).
FOLLOW_RETRY_S = 1.0
# Answers that may wait on AWS on the caller's side: its own request timeouts plus a margin.
ANSWER_MARGIN_S = 2.0


def caller_socket(identity: WorkerIdentity) -> str:
    assert identity.peer_dir is not None
    return os.path.join(identity.peer_dir, "aws.sock")


def encode_frame(obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    return len(data).to_bytes(4, "big") + data


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """One frame; ValueError when it is too long or not a JSON object, EOFError at the end."""
    header = await reader.readexactly(4)
    size = int.from_bytes(header, "big")
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    found = json.loads(await reader.readexactly(size))
    if not isinstance(found, dict):
        raise ValueError("frame is not a JSON object")
    return found


def _creds_out(c: DbCredentials | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {
        "username": c.username,
        "password": c.password,
        "host": c.host,
        "port": c.port,
        "dbname": c.dbname,
        "version_id": c.version_id,
    }


def _creds_in(d: Any) -> DbCredentials | None:
    from ..aws.secrets import DbCredentials

    if not isinstance(d, dict):
        return None
    return DbCredentials(
        str(d["username"]),
        str(d["password"]),
        d.get("host"),
        d.get("port"),
        d.get("dbname"),
        str(d.get("version_id", "")),
    )


def _answer_timeout(services: Services) -> float:
    cfg = services.config
    return max(cfg.iam.sts_timeout_s, cfg.secrets.request_timeout_s) * 2 + ANSWER_MARGIN_S


# --- the caller's side -------------------------------------------------------------------------


class CallerServer(SiblingSocket):
    """Worker 0's socket: answers its siblings from its own IAM cache and secrets."""

    def __init__(self, services: Services, tracking: Tracking | None, path: str) -> None:
        super().__init__(path, MAX_FRAME)
        self.services = services
        self.tracking = tracking
        self.timeout_s = _answer_timeout(services)
        self.questions = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                req = await read_frame(reader)
            self.questions += 1
            op = req.get("op")
            if op == "iam":
                await self._iam(req, reader, writer)
            elif op == "secret":
                async with asyncio.timeout(self.timeout_s):
                    writer.write(encode_frame(await self._secret(req)))
                    await writer.drain()
            elif op == "topology":
                await self._topology(reader, writer)
            else:
                raise ValueError(f"unknown question {op!r}")
        except (OSError, EOFError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            log.debug("a sibling's question failed: %s", exc)

    async def _iam(
        self, req: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        iam = self.services.iam
        if iam is None:
            raise ValueError("IAM is not enabled here")
        key, user = str(req["key"]), str(req["user"])
        try:
            async with asyncio.timeout(self.timeout_s):
                got = await iam.claim(key, user)
        except IamError as exc:
            writer.write(encode_frame({"refused": [exc.sqlstate, exc.message]}))
            return
        if isinstance(got, IamIdentity):
            writer.write(encode_frame({"identity": [got.principal, got.expires_at]}))
            return
        settled = False
        try:
            writer.write(encode_frame({"claim": True}))
            async with asyncio.timeout(self.timeout_s):
                result = await read_frame(reader)
            identity, error = _outcome(result)
            got.settle(identity, error)
            settled = True
        finally:
            if not settled:
                got.settle(None, None)  # abandoned: the next asker verifies it

    async def _topology(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Push every topology's view whenever it changes (each probe), until the sibling
        leaves; its `suspect` frames put the topology in fast mode."""
        tracking = self.tracking
        if tracking is None or not tracking.topologies:
            raise ValueError("no topology is tracked here")
        topologies = tracking.topologies
        changed = asyncio.Event()
        changed.set()

        def on_change(_topo: object) -> None:
            changed.set()

        async def suspects() -> None:
            while True:
                frame = await read_frame(reader)
                topo = topologies.get(str(frame.get("suspect")))
                if topo is not None:
                    topo.suspect()

        for topo in topologies.values():
            topo.subscribe(on_change)
        listener = asyncio.ensure_future(suspects())
        last = b""
        try:
            while not listener.done():
                waiter = asyncio.ensure_future(changed.wait())
                await asyncio.wait({waiter, listener}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if not changed.is_set():
                    continue
                changed.clear()
                frame = encode_frame({"views": {k: t.view() for k, t in topologies.items()}})
                if frame != last:
                    last = frame
                    writer.write(frame)
                    async with asyncio.timeout(self.timeout_s):
                        await writer.drain()  # a sibling that stops reading is dropped
        finally:
            for topo in topologies.values():
                topo.unsubscribe(on_change)
            listener.cancel()
            with contextlib.suppress(BaseException):
                await listener

    async def _secret(self, req: dict[str, Any]) -> dict[str, Any]:
        store = self.services.secrets
        secret = store.secrets.get(str(req["arn"])) if store is not None else None
        if secret is None:
            return {"error": f"secret {req['arn']} is not configured here"}
        from ..errors import ProxyError

        asked = float(req["asked"])
        try:
            if req.get("force"):
                failed = req.get("failed")
                await secret.forced_refresh(failed if isinstance(failed, str) else None, asked)
            else:
                await secret.settled()  # the caller's own startup fetch, say
                if secret.value is None or time.monotonic() >= secret.next_refresh:
                    await secret.refresh(asked=asked)
        except ProxyError as exc:
            return {"error": exc.message}
        if secret.value is None:
            return {"error": secret.last_error}
        return {
            "value": _creds_out(secret.value),
            "pending": _creds_out(secret.pending),
            "fresh_for": max(0.0, secret.next_refresh - time.monotonic()),
        }


def _outcome(frame: dict[str, Any]) -> tuple[IamIdentity | None, IamError | None]:
    if "identity" in frame:
        principal, expires_at = frame["identity"]
        return IamIdentity(str(principal), float(expires_at)), None
    if "refused" in frame:
        sqlstate, message = frame["refused"]
        return None, IamError(str(sqlstate), str(message))
    return None, None


# --- a sibling's side --------------------------------------------------------------------------


class _SocketClaim:
    """A claim granted over the socket: the outcome goes back on the same connection."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def settle(self, identity: IamIdentity | None, error: IamError | None) -> None:
        if self.writer.is_closing():
            return
        if identity is not None:
            self.writer.write(encode_frame({"identity": [identity.principal, identity.expires_at]}))
        elif error is not None:
            self.writer.write(encode_frame({"refused": [error.sqlstate, error.message]}))
        self.writer.close()


class _NoClaim:
    def settle(self, identity: IamIdentity | None, error: IamError | None) -> None:
        pass


class CallerClient:
    """A sibling worker's way to the caller: a TokenBoard and a SharedSecrets."""

    def __init__(self, path: str, answer_timeout_s: float) -> None:
        self.path = path
        self.answer_timeout_s = answer_timeout_s
        self.started = time.monotonic()
        self.unreachable = False  # logged once per outage
        self.fallbacks = 0  # questions this worker answered by calling AWS itself

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        wait_until = self.started + STARTUP_WAIT_S
        while True:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    conn = await asyncio.open_unix_connection(self.path, limit=MAX_FRAME)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if time.monotonic() < wait_until:
                    # The caller is still starting (or restarting): its socket comes soon.
                    await asyncio.sleep(0.05)
                    continue
                self._lost(exc)
                return None
            except (OSError, TimeoutError) as exc:
                self._lost(exc)
                return None
            if self.unreachable:
                self.unreachable = False
                log.info("the AWS caller (worker %d) answers again", CALLER_INDEX)
            return conn

    def _lost(self, exc: BaseException) -> None:
        self.fallbacks += 1
        if not self.unreachable:
            self.unreachable = True
            log.warning(
                "the AWS caller (worker %d) does not answer (%s); calling AWS from this worker "
                "until it does",
                CALLER_INDEX,
                exc or type(exc).__name__,
            )

    async def claim(self, key: str, user: str) -> IamIdentity | Claim:
        conn = await self._open()
        if conn is None:
            return _NoClaim()
        reader, writer = conn
        keep = False
        try:
            writer.write(encode_frame({"op": "iam", "key": key, "user": user}))
            async with asyncio.timeout(self.answer_timeout_s):
                answer = await read_frame(reader)
            identity, error = _outcome(answer)
            if identity is not None:
                return identity
            if error is not None:
                raise error
            if answer.get("claim"):
                keep = True
                return _SocketClaim(writer)
            raise ValueError("unexpected answer")
        except (OSError, EOFError, TimeoutError, ValueError) as exc:
            self._lost(exc)
            return _NoClaim()
        finally:
            if not keep:
                writer.close()

    async def fetch_shared(
        self, arn: str, with_pending: bool, failed_password: str | None, asked: float
    ) -> tuple[DbCredentials, DbCredentials | None, float] | None:
        from ..aws.secrets import SecretError

        conn = await self._open()
        if conn is None:
            return None
        reader, writer = conn
        try:
            writer.write(
                encode_frame(
                    {
                        "op": "secret",
                        "arn": arn,
                        "force": with_pending,
                        "failed": failed_password,
                        "asked": asked,
                    }
                )
            )
            async with asyncio.timeout(self.answer_timeout_s):
                answer = await read_frame(reader)
            if "error" in answer:
                raise SecretError(str(answer["error"]))
            value = _creds_in(answer.get("value"))
            if value is None:
                raise ValueError("no value")
            return value, _creds_in(answer.get("pending")), float(answer.get("fresh_for", 0.0))
        except (OSError, EOFError, TimeoutError, ValueError, KeyError) as exc:
            self._lost(exc)
            return None
        finally:
            writer.close()


class TopologyFollower:
    """A sibling's topologies, as worker 0 pushes them; while it does not answer, this worker
    probes by itself (and stops again once it is back)."""

    def __init__(self, client: CallerClient, tracking: Tracking) -> None:
        self.client = client
        self.tracking = tracking
        settings = tracking.config.topology
        # Pushes come after each probe: silence this long means the caller is stuck.
        self.silence_s = 2 * (settings.poll_interval_s + settings.probe_timeout_s)
        self.views = 0
        self._writer: asyncio.StreamWriter | None = None
        tracking.on_suspect = self.suspect

    def suspect(self, key: str) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(encode_frame({"suspect": key}))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn = await self.client._open()
            if conn is not None:
                reader, writer = conn
                self._writer = writer
                try:
                    writer.write(encode_frame({"op": "topology"}))
                    while True:
                        async with asyncio.timeout(self.silence_s):
                            frame = await read_frame(reader)
                        views = frame["views"]
                        if self.tracking.probing:
                            self.tracking.stop_probing()
                            log.info("following worker %d's topology probes again", CALLER_INDEX)
                        now = loop.time()
                        for key, view in views.items():
                            topo = self.tracking.topologies.get(key)
                            if topo is not None:
                                topo.apply_view(view, now)
                        self.views += 1
                except (OSError, EOFError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                    self.client._lost(exc)
                finally:
                    self._writer = None
                    writer.close()
            if not self.tracking.probing:
                log.warning(
                    "probing the servers from this worker until worker %d is back", CALLER_INDEX
                )
                await self.tracking.start_probing()
            await asyncio.sleep(FOLLOW_RETRY_S)


# --- wiring ------------------------------------------------------------------------------------


async def start_caller(
    services: Services, tracking: Tracking, identity: WorkerIdentity
) -> tuple[CallerServer | None, TopologyFollower | None]:
    """Worker 0: serve the siblings (before fetching anything, so they wait on it rather than
    call AWS). Any other worker: route its IAM cache and secrets through worker 0, and (the
    caller runs `TopologyFollower.run`) follow its topology probes."""
    if identity.count <= 1 or identity.peer_dir is None:
        return None, None
    if services.iam is None and services.secrets is None and not tracking.topologies:
        return None, None
    path = caller_socket(identity)
    if identity.index == CALLER_INDEX:
        server = CallerServer(services, tracking, path)
        await server.start()
        return server, None
    client = CallerClient(path, _answer_timeout(services))
    attach(client, services.iam, services.secrets)
    follower = TopologyFollower(client, tracking) if tracking.topologies else None
    return None, follower


def attach(client: CallerClient, iam: IamAuthenticator | None, secrets: SecretStore | None) -> None:
    if iam is not None:
        iam.board = client
    if secrets is not None:
        for secret in secrets.secrets.values():
            secret.remote = client
