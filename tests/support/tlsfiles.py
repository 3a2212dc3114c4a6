"""TLS material for tests: a throwaway CA and certificates, readable by a PostgreSQL server user."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

from pgpool_devkit.tls_material import CertFiles, ThrowawayCA


class TlsDir:
    """A world-traversable temp dir (the test server may run as another OS user); remove()."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="pgpp-tls-"))
        self.path.chmod(0o755)
        self.ca = ThrowawayCA()

    def issue(self, stem: str, hosts: list[str], owner: str | None = None) -> CertFiles:
        """Certificate + key for `hosts`; with `owner`, the key belongs to that OS user (0600),
        as PostgreSQL demands of its ssl_key_file."""
        files = self.ca.issue(self.path, stem, hosts)
        for f in (files.ca_file, files.cert_file):
            f.chmod(0o644)
        if owner is not None and os.geteuid() == 0:
            account = pwd.getpwnam(owner)
            os.chown(files.key_file, account.pw_uid, account.pw_gid)
        return files

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
