"""In-memory TLS handshakes (ssl.MemoryBIO): real OpenSSL certificate checks without any socket."""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

import trustme

from mtasts.testing._certs import cn_only_cert

__all__ = ["client_context", "cn_only_cert", "handshake", "leaf_context", "server_context"]


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A strict client context trusting ``ca`` (TLS >= 1.2, DNS-ID only)."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.hostname_checks_common_name = False
    ca.configure_trust(context)
    return context


def server_context(cert_chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_path.write_bytes(cert_chain_pem)
        key_path.write_bytes(key_pem)
        context.load_cert_chain(cert_path, key_path)
    return context


def leaf_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    return context


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, server_hostname: str) -> BaseException | None:
    """Run a TLS handshake in memory; return the client's exception, or None when it succeeded."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client_obj = client.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server_obj = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(50):
        try:
            client_obj.do_handshake()
            return None
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            return exc
        s_in.write(c_out.read())
        try:
            server_obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            pass
        c_in.write(s_out.read())
    raise AssertionError("handshake did not finish in 50 rounds")
