"""Owns the ``[[users]]`` entries: the client logins the proxy accepts, and the forms their
stored passwords may take (plaintext, an md5 hash, a SCRAM verifier) under each auth.type.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, Final

from .core import AuthType, PoolMode
from .schema import BAD, Checker, Key, Kind, check_unique_name, quote

__all__ = [
    "SCRAM_PREFIX",
    "USER_KEYS",
    "UserConfig",
    "build_users",
    "check_user_password",
    "valid_scram_verifier",
]

USER_KEYS: Final[dict[str, Key]] = {
    "name": Key(Kind.STR, nonempty=True),
    "password": Key(Kind.STR, nonempty=True),
    "password_env": Key(Kind.STR, nonempty=True),
    "pool_mode": Key(Kind.ENUM, enum_type=PoolMode),
    "max_user_connections": Key(Kind.INT, lo=0),
    "iam": Key(Kind.BOOL),
}

_MD5_HASH_RE: Final = re.compile(r"md5[0-9a-f]{32}")
SCRAM_PREFIX: Final = "SCRAM-SHA-256$"
_SCRAM_RE: Final = re.compile(
    r"SCRAM-SHA-256\$(?P<iterations>[0-9]+):(?P<salt>[A-Za-z0-9+/=]+)"
    r"\$(?P<stored_key>[A-Za-z0-9+/=]+):(?P<server_key>[A-Za-z0-9+/=]+)"
)


@dataclass(frozen=True, slots=True)
class UserConfig:
    """One ``[[users]]`` entry: a client login the proxy accepts."""

    name: str
    password: str | None = field(default=None, repr=False)
    pool_mode: PoolMode | None = None
    # Server connections as this user across pools, when the proxy logs in as it; None:
    # pool.max_user_connections (0: none).
    max_user_connections: int | None = None
    # Authenticate this user with an AWS IAM token (see [iam]); password is then only what the
    # proxy uses to log into the server.
    iam: bool = False


def build_users(
    checker: Checker, entries: list[tuple[str, dict[str, Any]]], auth_type: AuthType | None
) -> list[UserConfig]:
    """The valid [[users]] entries; duplicates and unusable passwords are problems."""
    users: list[UserConfig] = []
    seen: dict[str, str] = {}
    for path, values in entries:
        check_unique_name(checker, seen, path, values["name"], "user")
        password = values.get("password")
        if password is not BAD and not values.get("iam"):
            check_user_password(checker, path, password, auth_type)
        if any(value is BAD for value in values.values()):
            continue
        users.append(UserConfig(**values))
    return users


def check_user_password(
    checker: Checker, path: str, password: str | None, auth_type: AuthType | None
) -> None:
    """A user's stored password must suit auth.type: present unless trust, a well-formed SCRAM
    verifier, no md5 hash for SCRAM and no SCRAM verifier for md5."""
    if password is None:
        if auth_type is not None and auth_type is not AuthType.TRUST:
            checker.add(
                f"{path}.password",
                f"required when auth.type is {quote(auth_type.value)} "
                "(set password or password_env)",
            )
        return
    if password.startswith(SCRAM_PREFIX):
        if not valid_scram_verifier(password):
            checker.add(
                f"{path}.password",
                "looks like a SCRAM verifier but is malformed; expected "
                "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>",
            )
        elif auth_type is AuthType.MD5:
            checker.add(
                f"{path}.password",
                'a SCRAM verifier cannot answer an md5 challenge with auth.type = "md5"; '
                "store the plaintext password or an md5 hash",
            )
    elif _MD5_HASH_RE.fullmatch(password) and auth_type is AuthType.SCRAM_SHA_256:
        checker.add(
            f"{path}.password",
            'an md5 hash cannot be used with auth.type = "scram-sha-256"; '
            "store the plaintext password or a SCRAM verifier",
        )


def valid_scram_verifier(text: str) -> bool:
    """Whether ``text`` is a well-formed SCRAM-SHA-256 verifier, as pg_authid stores one."""
    match = _SCRAM_RE.fullmatch(text)
    # int() refuses over 4300 digits; PostgreSQL's iteration count is an int32 anyway.
    if match is None or len(match["iterations"]) > 10 or int(match["iterations"]) < 1:
        return False
    try:
        salt = base64.b64decode(match["salt"], validate=True)
        stored_key = base64.b64decode(match["stored_key"], validate=True)
        server_key = base64.b64decode(match["server_key"], validate=True)
    except (binascii.Error, ValueError):
        return False
    # SHA-256 digests: anything else can never match a client proof.
    return bool(salt) and len(stored_key) == 32 and len(server_key) == 32
