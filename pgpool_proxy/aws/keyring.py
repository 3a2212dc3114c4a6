"""Owns the `keyring` IAM verifier: SigV4 recomputation for access keys the operator issued."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..auth.iam import IamError, IamIdentity, TokenClaims, TokenKind
from ..errors import SqlState
from .sigv4 import signature_matches


class KeyringError(Exception):
    """The keyring file is unreadable or malformed (a startup error)."""


@dataclass(frozen=True, slots=True)
class KeyringEntry:
    secret_access_key: str = field(repr=False)
    users: tuple[str, ...]


def load_keyring(path: str) -> dict[str, KeyringEntry]:
    """Read ``{"AKID": {"secret_access_key": "...", "users": ["app", ...]}, ...}``."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise KeyringError(f"iam.keyring_file: cannot read {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise KeyringError(f"iam.keyring_file: {path}: expected a JSON object of access keys")
    out: dict[str, KeyringEntry] = {}
    for akid, entry in doc.items():
        secret = entry.get("secret_access_key") if isinstance(entry, dict) else None
        users = entry.get("users") if isinstance(entry, dict) else None
        if (
            not isinstance(secret, str)
            or not secret
            or not isinstance(users, list)
            or not all(isinstance(u, str) and u for u in users)
        ):
            raise KeyringError(
                f"iam.keyring_file: {path}: entry {akid!r} needs a non-empty "
                '"secret_access_key" string and a "users" array of user names'
            )
        out[akid] = KeyringEntry(secret, tuple(users))
    return out


class KeyringVerifier:
    """Checks RDS-style tokens (generate_db_auth_token) against long-term keys in the keyring."""

    token_kind: TokenKind = "rds"
    name = "keyring"

    def __init__(self, keys: dict[str, KeyringEntry]) -> None:
        self.keys = keys

    async def verify(self, claims: TokenClaims, token: str, database: str) -> IamIdentity:
        entry = self.keys.get(claims.access_key_id)
        if entry is None:
            raise IamError(
                SqlState.INVALID_PASSWORD,
                "IAM token is signed with an access key this proxy does not know",
            )
        if claims.has_session_token:
            raise IamError(
                SqlState.INVALID_PASSWORD,
                "the keyring verifier accepts only long-term access keys, not session credentials",
            )
        if not signature_matches(claims, entry.secret_access_key):
            raise IamError(SqlState.INVALID_PASSWORD, "IAM token signature does not match")
        if "*" not in entry.users and claims.db_user not in entry.users:
            raise IamError(
                SqlState.INVALID_AUTHORIZATION,
                f'access key {claims.access_key_id} may not log in as "{claims.db_user}"',
            )
        return IamIdentity(principal=claims.access_key_id, expires_at=claims.expires_at)
