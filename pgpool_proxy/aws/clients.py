"""Owns how boto3 clients are built: one region and endpoint each, short timeouts, two tries.

The proxy never waits on AWS inline: every call runs in a worker thread and its caller keeps
serving with what it last knew, so failing fast beats botocore's long default retries.
"""

from __future__ import annotations

from typing import Any


def boto_client(service: str, region: str, endpoint_url: str | None, timeout_s: float) -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.session.Session().client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        config=BotoConfig(
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"total_max_attempts": 2, "mode": "standard"},
        ),
    )
