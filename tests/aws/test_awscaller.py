"""The AWS caller's protocol in one process: a caller (worker 0's CallerServer over a real Unix
socket) and siblings (CallerClient) sharing one IAM verification per token and one Secrets
Manager copy, and a sibling that calls AWS itself when the caller does not answer."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pgpool_proxy.auth.iam import IamError, IamIdentity, TokenClaims
from pgpool_proxy.aws.iam_cache import IamAuthenticator
from pgpool_proxy.aws.secrets import CachedSecret, DbCredentials
from pgpool_proxy.aws.sigv4 import make_sts_token
from pgpool_proxy.config import IamSettings, SecretsSettings
from pgpool_proxy.runtime import awscaller
from pgpool_proxy.runtime.awscaller import CallerClient, CallerServer
from tests.aws.conftest import ENDPOINT_HOST, ENDPOINT_PORT, REGION
from tests.support.waits import wait_for

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf"


class CountingVerifier:
    """Stands in for STS: counts calls, answers after `gate` opens (a slow STS)."""

    token_kind = "sts"
    name = "counting"

    def __init__(self, refuse: bool = False) -> None:
        self.calls = 0
        self.refuse = refuse
        self.gate = asyncio.Event()
        self.gate.set()

    async def verify(self, claims: TokenClaims, token: str, database: str) -> IamIdentity:
        self.calls += 1
        await self.gate.wait()
        if self.refuse:
            raise IamError("28000", "no rule allows this principal")
        return IamIdentity("arn:aws:sts::123456789012:assumed-role/app-fn/s1", time.time() + 600)


def token(expires_s: int = 900) -> str:
    from botocore.credentials import Credentials

    return make_sts_token(
        host=ENDPOINT_HOST,
        port=ENDPOINT_PORT,
        user="alice",
        region=REGION,
        credentials=Credentials("AKIAAPPLAMBDA0000001", "s"),
        sts_url="http://127.0.0.1:9",
        expires_s=expires_s,
    )


def iam_settings() -> IamSettings:
    return IamSettings(endpoint=f"{ENDPOINT_HOST}:{ENDPOINT_PORT}", region=REGION)


class FakeSecretsClient:
    """Secrets Manager's answers for one ARN, counting calls (the caller's side only)."""

    def __init__(self) -> None:
        self.current = ("v1", '{"username": "app", "password": "pw-1"}')
        self.pending: tuple[str, str] | None = None
        self.calls = 0

    def fetch(self, arn: str, stage: str) -> tuple[str, str] | None:
        self.calls += 1
        return self.current if stage == "AWSCURRENT" else self.pending


def spawn_into(tasks: set[asyncio.Task[None]]) -> Any:
    def spawn(coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return spawn


class Instance:
    """A caller and `siblings` workers' IAM authenticators and secrets, on one socket."""

    def __init__(self, path: Path, siblings: int, verifier_refuses: bool = False) -> None:
        self.path = str(path)
        self.tasks: set[asyncio.Task[None]] = set()
        self.sm = FakeSecretsClient()
        self.verifiers = [CountingVerifier(verifier_refuses) for _ in range(siblings + 1)]
        self.iams = [IamAuthenticator(iam_settings(), v) for v in self.verifiers]  # type: ignore[arg-type]
        self.secrets = [
            CachedSecret(ARN, self.sm, SecretsSettings(), spawn_into(self.tasks))  # type: ignore[arg-type]
            for _ in range(siblings + 1)
        ]
        config = SimpleNamespace(iam=iam_settings(), secrets=SecretsSettings())
        services = SimpleNamespace(
            config=config,
            iam=self.iams[0],
            secrets=SimpleNamespace(secrets={ARN: self.secrets[0]}),
        )
        self.server = CallerServer(services, None, self.path)  # type: ignore[arg-type]
        self.clients = [CallerClient(self.path, 5.0) for _ in range(siblings)]
        for i, client in enumerate(self.clients, start=1):
            self.iams[i].board = client
            self.secrets[i].remote = client

    async def close(self) -> None:
        await self.server.close()
        for t in list(self.tasks):
            t.cancel()

    @property
    def verifications(self) -> int:
        return sum(v.calls for v in self.verifiers)


async def test_a_token_is_verified_once_across_workers(tmp_path: Path) -> None:
    inst = Instance(tmp_path / "aws.sock", siblings=3)
    await inst.server.start()
    try:
        for v in inst.verifiers:
            v.gate.clear()  # STS is slow: every worker's logins arrive while it thinks
        tok = token()
        logins = [
            asyncio.ensure_future(inst.iams[i % 4].authenticate(tok, "alice", "app"))
            for i in range(100)
        ]
        await wait_for(lambda: inst.verifications == 1, what="one verification under way")
        for v in inst.verifiers:
            v.gate.set()
        identities = await asyncio.gather(*logins)
        assert {i.principal for i in identities} == {identities[0].principal}
        assert inst.verifications == 1
        # Later logins on any worker: their own cache, or the caller's; no verifier call.
        for iam in inst.iams:
            await iam.authenticate(tok, "alice", "app")
        assert inst.verifications == 1
        # A second token: again one call, whichever worker saw it first.
        tok2 = token(899)
        again = [inst.iams[i % 4].authenticate(tok2, "alice", "app") for i in range(8)]
        await asyncio.gather(*again)
        assert inst.verifications == 2
    finally:
        await inst.close()


async def test_a_refusal_reaches_the_waiting_siblings(tmp_path: Path) -> None:
    inst = Instance(tmp_path / "aws.sock", siblings=2, verifier_refuses=True)
    await inst.server.start()
    try:
        for v in inst.verifiers:
            v.gate.clear()
        tok = token()
        logins = [
            asyncio.ensure_future(inst.iams[i % 3].authenticate(tok, "alice", "app"))
            for i in range(9)
        ]
        await wait_for(lambda: inst.verifications == 1, what="one verification under way")
        for v in inst.verifiers:
            v.gate.set()
        results = await asyncio.gather(*logins, return_exceptions=True)
        assert all(isinstance(r, IamError) and r.sqlstate == "28000" for r in results), results
        assert inst.verifications == 1
    finally:
        await inst.close()


async def test_an_abandoned_claim_passes_to_the_next_worker(tmp_path: Path) -> None:
    inst = Instance(tmp_path / "aws.sock", siblings=2)
    await inst.server.start()
    try:
        inst.verifiers[1].gate.clear()
        tok = token()
        first = asyncio.ensure_future(inst.iams[1].authenticate(tok, "alice", "app"))
        await wait_for(lambda: inst.verifiers[1].calls == 1, what="worker 1 verifying")
        second = asyncio.ensure_future(inst.iams[2].authenticate(tok, "alice", "app"))
        await wait_for(lambda: inst.server.questions == 2, what="worker 2 asking")
        first.cancel()  # worker 1's login (or worker 1) goes away mid-verification
        identity = await second
        assert identity.principal.endswith("app-fn/s1")
        assert inst.verifiers[2].calls == 1
    finally:
        await inst.close()


async def test_secrets_come_from_the_caller(tmp_path: Path) -> None:
    inst = Instance(tmp_path / "aws.sock", siblings=3)
    await inst.server.start()
    try:
        # Startup: every worker gets the credentials, one Secrets Manager call.
        await asyncio.gather(*(s.prime() for s in inst.secrets))
        assert [s.value.password for s in inst.secrets] == ["pw-1"] * 4  # type: ignore[union-attr]
        assert inst.sm.calls == 1
        # A sibling asks again right after the caller's next refresh, not an interval later.
        assert all(s.next_refresh <= inst.secrets[0].next_refresh + 1.1 for s in inst.secrets)
        # Rotation: the server refuses pw-1 everywhere; AWSPENDING holds pw-2.
        inst.sm.pending = ("v2", '{"username": "app", "password": "pw-2"}')
        before = inst.sm.calls
        got = await asyncio.gather(*(s.after_auth_failure("pw-1") for s in inst.secrets[1:]))
        assert all(("app", "pw-2") in g for g in got), got
        # One forced refresh (AWSCURRENT and AWSPENDING) for the three workers.
        assert inst.sm.calls - before == 2
        # A worker whose refusal comes late gets the caller's copy without another call.
        before = inst.sm.calls
        late = await inst.secrets[3].after_auth_failure("pw-1")
        assert ("app", "pw-2") in late
        assert inst.sm.calls == before
        assert [s.fetches for s in inst.secrets[1:]] == [0, 0, 0]
    finally:
        await inst.close()


async def test_without_the_caller_a_worker_calls_aws_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(awscaller, "STARTUP_WAIT_S", 0.0)
    inst = Instance(tmp_path / "aws.sock", siblings=1)  # the caller never starts
    try:
        with caplog.at_level(logging.WARNING, "pgpool_proxy.awscaller"):
            identity = await inst.iams[1].authenticate(token(), "alice", "app")
            await inst.secrets[1].prime()
        assert identity.principal.endswith("app-fn/s1")
        assert inst.verifiers[1].calls == 1
        assert inst.secrets[1].value == DbCredentials("app", "pw-1", version_id="v1")
        assert inst.secrets[1].fetches == 1
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "calling AWS from this worker" in warnings[0]
    finally:
        await inst.close()
