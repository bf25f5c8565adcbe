"""TLS client contexts for MTA-STS: policy hosts (RFC 8461 §3.3) and MX hosts (§4.2).

Both checks are the same PKIX rules: the certificate chains to a trusted root, is not expired, and carries a
DNS-ID (subjectAltName) matching the name — wildcards only as the whole leftmost label, and *no* fallback to
the subject Common Name (§3.3 "Matching is performed only against the DNS-ID identifiers"; §4.2 "MUST have a
subject alternative name"). Python's default context falls back to the CN (``hostname_checks_common_name``
is True), so mtasts switches it off. TLS 1.2 is the minimum (§7.2; decisions table).
"""

from __future__ import annotations

import ssl

from .errors import UsageError
from .tls_errors import classify_tls_error, failure_reason_code

__all__ = [
    "classify_tls_error",
    "create_client_context",
    "create_opportunistic_context",
    "ensure_strict",
    "failure_reason_code",
]


def create_client_context(
    *, cafile: str | None = None, capath: str | None = None, cadata: str | bytes | None = None
) -> ssl.SSLContext:
    """A client context for MTA-STS: system trust store (or the CA given), TLS >= 1.2, DNS-ID only.

    Use it for policy fetches (``PolicyResolver(ssl_context=...)``) and for STARTTLS to MX hosts
    (pass ``server_hostname=<MX name without trailing dot>`` so SNI and the name check use it, §7.1).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile, capath=capath, cadata=cadata)
    return ensure_strict(context)


def ensure_strict(context: ssl.SSLContext) -> ssl.SSLContext:
    """Check that ``context`` verifies certificates and names, and turn off the CN fallback (in place).

    Raises :class:`MTASTSError` for a context that does not verify: MTA-STS over an unverified channel would
    let anyone on the path rewrite the policy.
    """
    if not isinstance(context, ssl.SSLContext):
        raise UsageError(f"expected an ssl.SSLContext, not {type(context).__name__}")
    if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
        raise UsageError("the SSL context must verify certificates and host names (CERT_REQUIRED, check_hostname)")
    context.hostname_checks_common_name = False
    context.minimum_version = max(context.minimum_version, ssl.TLSVersion.TLSv1_2)
    return context


def create_opportunistic_context() -> ssl.SSLContext:
    """A client context that encrypts without authenticating: for opportunistic TLS when no policy (or a
    testing / none policy) applies and the certificate did not validate. Never use it under enforce."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
