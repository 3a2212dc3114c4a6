"""What PgBouncer's users (auth_type, auth_file, ``[users]``, admin_users), ``[databases]`` and
``[peers]`` become: ``[auth]``, ``[[users]]``, ``[[databases]]``, ``[[peers]]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .ini import IniEntry, PgBouncerNote, cut, parse_params, read_auth_file, shown
from .pgbouncer_mapper import IniMapper
from .pgbouncer_tables import PGBOUNCER_DATABASE_PARAMS, PGBOUNCER_USER_PARAMS

__all__ = ["EntriesMapper"]


def _is_md5_hash(secret: str) -> bool:
    digest = secret[3:]
    return (
        secret.startswith("md5")
        and len(digest) == 32
        and all(c in "0123456789abcdef" for c in digest)
    )


def _is_scram(secret: str) -> bool:
    return secret.startswith("SCRAM-SHA-256$")


class EntriesMapper(IniMapper):
    """Maps users, databases and peers, once ``[pgbouncer]`` has been read into ``settings``."""

    def map_users(self) -> None:
        type_entry = self.settings.get("auth_type")
        pgb_type = type_entry.value.lower() if type_entry is not None else "md5"
        file_entry = self.settings.get("auth_file")
        secrets: dict[str, tuple[str, str]] = {}
        if file_entry is not None and file_entry.value:
            path = self.path(file_entry)
            self.files.append(path)
            secrets = read_auth_file(path, self.problems)
        auth_type = self._auth_type(type_entry, pgb_type, secrets)
        anchor = file_entry or type_entry or next(iter(self.settings.values()), None)
        looked_up = "auth_user" in self.settings or any(
            "auth_user=" in entry.value.replace(" ", "") for entry in self.db_entries.values()
        )
        if not secrets and auth_type != "trust" and anchor is not None and not looked_up:
            self.note(
                anchor,
                f"[pgbouncer] {anchor.key}",
                "no users: without an auth_file (or auth_user for auth_query) nobody can log in",
            )
        for name, (secret, where) in secrets.items():
            entry: dict[str, Any] = {"name": name}
            if secret:
                unusable = (auth_type == "md5" and _is_scram(secret)) or (
                    auth_type == "scram-sha-256" and _is_md5_hash(secret)
                )
                if unusable:
                    kind = "a SCRAM secret" if _is_scram(secret) else "an md5 hash"
                    self.notes.append(
                        PgBouncerNote(
                            where,
                            f"auth_file user {cut(name)}",
                            f"{kind} cannot be used with auth.type = {auth_type!r}; the user "
                            "is left out (store the plaintext password to keep it)",
                        )
                    )
                    continue
                entry["password"] = secret
            elif auth_type != "trust":
                self.notes.append(
                    PgBouncerNote(
                        where,
                        f"auth_file user {cut(name)}",
                        "empty password: the user cannot log in with a password and is left out",
                    )
                )
                continue
            self.origins[f"users[{len(self.users)}]"] = where
            self.origins[f"users.{name}"] = where
            self.users.append(entry)
        self._user_modes(auth_type)
        self._admin_users(pgb_type)

    def _auth_type(
        self, entry: IniEntry | None, pgb_type: str, secrets: Mapping[str, tuple[str, str]]
    ) -> str:
        setting = "[pgbouncer] auth_type"
        md5_hashes = any(_is_md5_hash(s) for s, _ in secrets.values())
        scram = any(_is_scram(s) for s, _ in secrets.values())
        # The one method pgpool-proxy uses for everyone: md5 where the file holds md5 hashes
        # (they cannot do SCRAM), SCRAM where it holds only SCRAM secrets and plaintext.
        by_file = "scram-sha-256" if scram and not md5_hashes else "md5"
        if pgb_type == "scram-sha-256":
            auth_type = "scram-sha-256"
        elif pgb_type == "md5":
            auth_type = by_file
            if scram and entry is not None:
                self.note(
                    entry,
                    setting,
                    "md5 with SCRAM secrets in the auth_file: PgBouncer uses SCRAM for those "
                    f"users; pgpool-proxy uses one method for all: {by_file}",
                )
        elif pgb_type in ("trust", "any"):
            auth_type = "trust"
            if pgb_type == "any" and entry is not None:
                self.note(
                    entry,
                    setting,
                    "any is mapped to trust: clients must still give a user name listed in "
                    "the auth_file, and only admin_users may use the admin console",
                )
        elif pgb_type in ("plain", "hba", "cert", "ldap", "pam"):
            auth_type = by_file
            if entry is not None:
                why = {
                    "plain": "cleartext passwords are not asked for",
                    "hba": "there is no hba file; one method applies to every client",
                    "cert": "client certificates are not verified",
                    "ldap": "there is no LDAP authentication",
                    "pam": "there is no PAM authentication",
                }[pgb_type]
                self.note(entry, setting, f"{pgb_type} is not supported ({why}); {by_file} is used")
        else:
            auth_type = by_file
            if entry is not None:
                self.bad(entry, setting, f"unknown auth_type {shown(entry.value)}")
        self.auth["type"] = auth_type
        return auth_type

    def _user_modes(self, auth_type: str) -> None:
        by_name = {user["name"]: user for user in self.users}
        for name, entry in self.user_entries.items():
            params, problem = parse_params(entry.value)
            if problem:
                self.bad(entry, f"[users] {name}", problem)
                continue
            for key, value in params:
                setting = f"[users] {name}: {key}"
                if key in ("pool_mode", "max_user_connections"):
                    converted: object = (
                        self.pool_mode(entry, value, setting)
                        if key == "pool_mode"
                        else self.integer(entry, value, setting, 0, 2**31 - 1)
                    )
                    user = by_name.get(name)
                    if user is None and auth_type == "trust":
                        user = by_name[name] = {"name": name}
                        self.users.append(user)
                    if user is None:
                        self.note(
                            entry,
                            setting,
                            "the user is not in the auth_file (or was left out); not converted",
                        )
                    elif converted is not None:
                        user[key] = converted
                elif key in PGBOUNCER_USER_PARAMS:
                    reason = PGBOUNCER_USER_PARAMS[key].lstrip("-")
                    self.note(entry, setting, f"not converted: {reason}")
                else:
                    self.note(entry, setting, "not a [users] setting PgBouncer documents; ignored")

    def _admin_users(self, pgb_type: str) -> None:
        known = {user["name"] for user in self.users}
        for key in ("admin_users", "stats_users"):
            entry = self.settings.get(key)
            if entry is None:
                continue
            names = [n.strip() for n in entry.value.split(",") if n.strip()]
            kept = [n for n in names if n in known]
            missing = [n for n in names if n not in known]
            if missing:
                self.note(
                    entry,
                    f"[pgbouncer] {key}",
                    f"{', '.join(missing)} not in the auth_file (console users log in like any "
                    "other user here); left out",
                )
            if kept:
                self.admin[key] = kept

    # [databases]

    def map_databases(self) -> None:
        for name, entry in self.db_entries.items():
            db = self._database(name, entry)
            if db is not None:
                self.origins[f"databases[{len(self.databases)}]"] = entry.where
                self.origins[f"databases.{name}"] = entry.where
                self.databases.append(db)
        self._clamp_min_pool_size()

    def _database(self, name: str, entry: IniEntry) -> dict[str, Any] | None:
        label = f"[databases] {name}"
        if name == "*":
            self.note(
                entry,
                label,
                "the fallback database is not supported: pgpool-proxy serves only the databases "
                "it lists; add an entry for each database name clients use",
            )
            return None
        if name == "pgbouncer":
            self.note(entry, label, "the name is the admin console's; the entry is left out")
            return None
        params, problem = parse_params(entry.value)
        if problem:
            self.bad(entry, label, problem)
            return None
        db: dict[str, Any] = {"name": name}
        for key, value in params:
            setting = f"{label}: {key}"
            if key == "host":
                self._db_host(entry, setting, value, db)
            elif key == "port":
                number = self.integer(entry, value, setting, 1, 65535)
                if number is not None:
                    db["port"] = number
            elif key in ("dbname", "user", "password", "auth_user", "auth_query", "auth_dbname"):
                if value:
                    db[key] = value
            elif key == "pool_size":
                number = self.integer(entry, value, setting, 1, 2**31 - 1)
                if number is not None:
                    db["pool_size"] = number
            elif key == "pool_mode":
                mode = self.pool_mode(entry, value, setting)
                if mode is not None:
                    db["pool_mode"] = mode
            elif key == "max_db_connections":
                number = self.integer(entry, value, setting, 0, 2**31 - 1)
                if number is not None:
                    db["max_db_connections"] = number
            elif key in PGBOUNCER_DATABASE_PARAMS:
                reason = PGBOUNCER_DATABASE_PARAMS[key].lstrip("-")
                self.note(entry, setting, f"not converted: {reason}")
            else:
                self.note(entry, setting, "not a connection parameter PgBouncer documents; ignored")
        if "host" not in db:
            self.note(
                entry,
                label,
                "no host: PgBouncer would use its Unix socket, which pgpool-proxy cannot; "
                "127.0.0.1 is used",
            )
        return db

    def _db_host(self, entry: IniEntry, setting: str, value: str, db: dict[str, Any]) -> None:
        hosts = [h.strip() for h in value.split(",") if h.strip()]
        if not hosts:
            return
        if len(hosts) > 1:
            self.note(
                entry,
                setting,
                f"one host per database: {hosts[0]} is used, {', '.join(hosts[1:])} not "
                "(pgpool-proxy's hosts = [...] tracks the writer instead of round-robin)",
            )
        host = hosts[0]
        if host.startswith(("/", "@")):
            self.note(
                entry,
                setting,
                f"{host} is a Unix socket, which pgpool-proxy cannot use; 127.0.0.1 is used",
            )
            host = "127.0.0.1"
        db["host"] = host

    def _clamp_min_pool_size(self) -> None:
        entry = self.settings.get("min_pool_size")
        wanted = self.pool.get("min_pool_size", 0)
        if entry is None or not wanted:
            return
        sizes = [self.pool.get("default_pool_size", 20)]
        sizes += [db["pool_size"] for db in self.databases if "pool_size" in db]
        if wanted > min(sizes):
            self.pool["min_pool_size"] = min(sizes)
            self.note(
                entry,
                "[pgbouncer] min_pool_size",
                f"{wanted} is more than the smallest pool size; PgBouncer caps it there, so "
                f"{min(sizes)} is used",
                "info",
            )

    # [peers]

    def map_peers(self) -> None:
        """Each ``peer_id = host=... port=...`` entry as a [[peers]] table (TCP peers only)."""
        for entry in self.peer_entries:
            label = f"[peers] {entry.key}"
            peer_id = self.integer(entry, entry.key, label, 1, 16383)
            params, problem = parse_params(entry.value)
            if problem:
                self.bad(entry, label, problem)
                continue
            if peer_id is None:
                continue
            peer: dict[str, Any] = {"peer_id": peer_id, "port": 6432}
            for key, value in params:
                setting = f"{label}: {key}"
                if key == "host":
                    if value.startswith(("/", "@")):
                        self.note(entry, setting, "Unix-socket peers are not supported (TCP only)")
                    elif value:
                        peer["host"] = value
                elif key == "port":
                    number = self.integer(entry, value, setting, 1, 65535)
                    if number is not None:
                        peer["port"] = number
                elif key == "pool_size":
                    self.note(
                        entry, setting, "cancels in flight to one peer are capped at 64", "info"
                    )
                else:
                    self.note(entry, setting, "not a [peers] parameter; not converted")
            if "host" in peer:
                self.origins[f"peers[{len(self.peers)}]"] = entry.where
                self.peers.append(peer)
            else:
                self.note(entry, label, "no TCP host: the peer is left out")
