"""In-memory TLS handshakes (ssl.MemoryBIO): real OpenSSL certificate checks without any socket."""

from __future__ import annotations

import datetime
import ssl
import tempfile
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


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


def cn_only_cert(ca: trustme.CA, common_name: str) -> tuple[bytes, bytes]:
    """A certificate signed by ``ca`` with CN=common_name and no subjectAltName (RFC 8461 §3.3/§4.2: invalid)."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
