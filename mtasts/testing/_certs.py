"""Certificates for the world: leaf certificates of every kind the tests need, issued on demand and cached.

The CA is a :class:`trustme.CA`; leaves are built here with ``cryptography`` so that one leaf key serves
every certificate of a CA (issuing and loading stays ~1 ms, which matters with 10,000 domains).
"""

from __future__ import annotations

import datetime
import os
import shutil
import ssl
import tempfile
import weakref

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._config import check_cert_kind, name_key

__all__ = ["CertFactory", "cn_only_cert"]

_DAY = datetime.timedelta(days=1)


def _private_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class _Signer:
    """A CA's certificate and key, parsed once, and the one leaf key its certificates use."""

    def __init__(self, ca: trustme.CA) -> None:
        key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):  # trustme's default key type
            raise TypeError("the world's CAs must have ECDSA keys")
        self.key = key
        self.cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf_key_pem = _private_bytes(self.leaf_key)

    def issue(
        self,
        *,
        dns_names: list[str],
        common_name: str | None = None,
        not_before: datetime.datetime,
        not_after: datetime.datetime,
        leaf_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        """A PEM leaf certificate signed by this CA (subjectAltName only when ``dns_names`` is not empty)."""
        key = leaf_key or self.leaf_key
        subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mtasts.testing")]
        if common_name is not None:
            subject.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        if dns_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]), critical=False
            )
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def cn_only_cert(ca: trustme.CA, common_name: str) -> tuple[bytes, bytes]:
    """A certificate signed by ``ca`` with CN=common_name and no subjectAltName (RFC 8461 §3.3/§4.2: invalid).

    Returns ``(cert_pem, key_pem)`` with a fresh key.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert_pem = _Signer(ca).issue(
        dns_names=[], common_name=common_name, not_before=now - _DAY, not_after=now + 30 * _DAY, leaf_key=key
    )
    return cert_pem, _private_bytes(key)


def _remove_directory(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _parent(hostname: str) -> str:
    _, _, parent = hostname.partition(".")
    if not parent:
        raise ValueError(f"a wildcard certificate needs a parent domain: {hostname!r}")
    return parent


class CertFactory:
    """Server :class:`ssl.SSLContext` objects per (host name, certificate kind), issued lazily and cached.

    ``ssl`` loads certificates from files only, so each is written to a private temporary directory that
    :meth:`close` (or garbage collection) removes.
    """

    def __init__(self, ca: trustme.CA, untrusted_ca: trustme.CA) -> None:
        self._cas = {"trusted": ca, "untrusted": untrusted_ca}
        self._signers: dict[str, _Signer] = {}
        self._contexts: dict[tuple[str, str], ssl.SSLContext] = {}
        self._leaves: dict[tuple[str, str], bytes] = {}  # the PEM leaf each cached context presents
        self._dir: str | None = None
        self._cleanup: weakref.finalize[[str], CertFactory] | None = None

    def _signer(self, which: str) -> _Signer:
        signer = self._signers.get(which)
        if signer is None:
            signer = self._signers[which] = _Signer(self._cas[which])
        return signer

    def _directory(self) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="mtasts-testing-certs-")
            self._cleanup = weakref.finalize(self, _remove_directory, self._dir)
        return self._dir

    def context(self, hostname: str, kind: str = "valid") -> ssl.SSLContext:
        """The cached server context presenting a ``kind`` certificate for ``hostname``."""
        check_cert_kind(kind)
        hostname = name_key(hostname)
        context = self._contexts.get((hostname, kind))
        if context is None:
            context = self._contexts[(hostname, kind)] = self.new_context(hostname, kind, _key=(hostname, kind))
        return context

    def leaf_der(self, hostname: str, kind: str = "valid") -> bytes:
        """The DER certificate :meth:`context` presents for ``hostname`` and ``kind`` (issued if need be)."""
        self.context(hostname, kind)
        return x509.load_pem_x509_certificate(self._leaves[(name_key(hostname), kind)]).public_bytes(
            serialization.Encoding.DER
        )

    def issuer_der(self, kind: str = "valid") -> bytes:
        """The DER certificate of the CA that issues ``kind`` certificates."""
        return self._signer("untrusted" if kind == "untrusted" else "trusted").cert.public_bytes(
            serialization.Encoding.DER
        )

    def new_context(self, hostname: str, kind: str = "valid", *, _key: tuple[str, str] | None = None) -> ssl.SSLContext:
        """A new, uncached server context presenting a freshly issued ``kind`` certificate for ``hostname``."""
        check_cert_kind(kind)
        hostname = name_key(hostname)
        now = datetime.datetime.now(datetime.UTC)
        not_before, not_after = now - _DAY, now + 365 * _DAY
        names, common_name = [hostname], None
        signer = self._signer("untrusted" if kind == "untrusted" else "trusted")
        if kind == "expired":
            not_before, not_after = now - 30 * _DAY, now - _DAY
        elif kind == "not-yet-valid":
            not_before, not_after = now + 2 * _DAY, now + 30 * _DAY
        elif kind == "wrong-name":
            names = [f"wrong.{hostname}"]
        elif kind == "wildcard":
            names = [f"*.{_parent(hostname)}"]
        elif kind == "cn-only":
            names, common_name = [], hostname
        cert_pem = signer.issue(dns_names=names, common_name=common_name, not_before=not_before, not_after=not_after)
        if _key is not None:
            self._leaves[_key] = cert_pem
        return self._load(cert_pem, signer, with_issuer=kind != "untrusted")

    def _load(self, cert_pem: bytes, signer: _Signer, *, with_issuer: bool = False) -> ssl.SSLContext:
        directory = self._directory()
        key_path = os.path.join(directory, f"key-{id(signer)}.pem")
        if not os.path.exists(key_path):
            with open(key_path, "wb") as file:
                file.write(signer.leaf_key_pem)
        cert_path = os.path.join(directory, "cert.pem")
        with open(cert_path, "wb") as file:
            # the leaf, then its CA (RFC 7672 §3.1.2: a DANE-TA server sends its trust anchor) — not the untrusted
            # CA, whose certificate would turn "unknown issuer" into "self-signed certificate in chain"
            issuer = signer.cert.public_bytes(serialization.Encoding.PEM) if with_issuer else b""
            file.write(cert_pem + issuer)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        return context

    def close(self) -> None:
        """Remove the temporary directory (contexts already made keep working; new ones recreate it)."""
        if self._cleanup is not None:
            self._cleanup()
        self._dir = self._cleanup = None
