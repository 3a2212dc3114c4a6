"""The throwaway CA and the TLS contexts built from config (no sockets: in-memory handshakes)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from pgpool_devkit.tls_material import ThrowawayCA
from pgpool_proxy.config import ClientTlsMode, ClientTlsSettings, ServerTlsMode, ServerTlsSettings
from pgpool_proxy.net.tls import TlsSetupError, client_side_context, server_side_context


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str) -> None:
    """A full TLS handshake through memory BIOs; raises ssl.SSLError on failure."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(10):
        for i, (obj, out, peer_in) in enumerate(((client, c_out, s_in), (server, s_out, c_in))):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done):
            return
    raise AssertionError("handshake did not finish")


def test_issued_certificate_verifies_for_its_names(tmp_path: Path) -> None:
    ca = ThrowawayCA()
    files = ca.issue(tmp_path, "proxy", ["127.0.0.1", "db.example.test"])
    assert oct(files.key_file.stat().st_mode & 0o777) == "0o600"
    server = client_side_context(
        ClientTlsSettings(ClientTlsMode.REQUIRE, str(files.cert_file), str(files.key_file))
    )
    assert server is not None
    full = server_side_context(ServerTlsSettings(ServerTlsMode.VERIFY_FULL, str(files.ca_file)))
    assert full is not None
    handshake(server, full, "db.example.test")
    handshake(server, full, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, full, "other.example.test")
    # verify-ca checks the chain only; a CA that did not sign it fails even so.
    ca_only = server_side_context(ServerTlsSettings(ServerTlsMode.VERIFY_CA, str(files.ca_file)))
    assert ca_only is not None
    handshake(server, ca_only, "other.example.test")
    other = ThrowawayCA().issue(tmp_path / "other", "x", ["127.0.0.1"])
    wrong = server_side_context(ServerTlsSettings(ServerTlsMode.VERIFY_CA, str(other.ca_file)))
    assert wrong is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, wrong, "127.0.0.1")
    # require: encrypted, server not authenticated.
    req = server_side_context(ServerTlsSettings(ServerTlsMode.REQUIRE))
    assert req is not None and req.verify_mode == ssl.CERT_NONE
    handshake(server, req, "anything")


def test_disabled_and_broken_material(tmp_path: Path) -> None:
    assert client_side_context(ClientTlsSettings()) is None
    assert server_side_context(ServerTlsSettings()) is None
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(TlsSetupError, match=r"client_tls\.cert_file"):
        client_side_context(ClientTlsSettings(ClientTlsMode.ALLOW, str(bad), str(bad)))
    with pytest.raises(TlsSetupError, match=r"server_tls\.ca_file"):
        server_side_context(ServerTlsSettings(ServerTlsMode.VERIFY_CA, str(bad)))
