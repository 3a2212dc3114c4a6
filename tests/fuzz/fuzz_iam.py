"""The IAM token parser: a client's password under IAM auth, then the local checks.

Contract: IamError, nothing else.
"""

from __future__ import annotations

import contextlib

from tests.fuzz._common import instrumented, main

with instrumented("pgpool_proxy.auth.iam", "urllib.parse"):
    from pgpool_proxy.auth.iam import IamError, parse_token, precheck, token_hash

EXPECTED = (IamError,)
NOW = 1_767_225_600.0  # 2026-01-01


def TestOneInput(data: bytes) -> None:
    try:
        token = data.decode("utf-8")  # login decodes the password strictly
    except UnicodeDecodeError:
        return
    token_hash(token)
    try:
        claims = parse_token(token)
    except EXPECTED:
        return
    for kind in ("rds", "sts"):
        with contextlib.suppress(*EXPECTED):
            precheck(
                claims,
                kind=kind,
                user=claims.db_user,
                endpoint=claims.endpoint,
                region=claims.region,
                max_skew_s=60,
                now=NOW,
            )


if __name__ == "__main__":
    main(TestOneInput)
