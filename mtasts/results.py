"""RFC 8460 §4.3 result types, and the failure-reason codes mtasts adds to them.

The values are the exact registry strings (RFC 8460 §6.6); :class:`ResultType` members are ``str``, so they
compare equal to the plain strings users pass around.
"""

from __future__ import annotations

import enum

__all__ = ["MX_NOT_IN_STS_POLICY", "ResultType"]


class ResultType(enum.StrEnum):
    """Result types of RFC 8460 §4.3 (registry: §6.6)."""

    # §4.3.1 Negotiation failures
    STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
    CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
    CERTIFICATE_EXPIRED = "certificate-expired"
    CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
    VALIDATION_FAILURE = "validation-failure"
    # §4.3.2.1 DANE-specific policy failures
    TLSA_INVALID = "tlsa-invalid"
    DNSSEC_INVALID = "dnssec-invalid"
    DANE_REQUIRED = "dane-required"
    # §4.3.2.2 MTA-STS-specific policy failures
    STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
    STS_POLICY_INVALID = "sts-policy-invalid"
    STS_WEBPKI_INVALID = "sts-webpki-invalid"


#: failure-reason-code for an MX host that matches none of the policy's ``mx`` patterns. RFC 8460 has no
#: result type for it; we report ``validation-failure`` with this code (decisions table, corner case C17).
MX_NOT_IN_STS_POLICY = "mx-not-in-sts-policy"

#: The result types a TLS session can fail with (the values ``evaluate(..., tls_failure=...)`` accepts).
SESSION_FAILURES: frozenset[str] = frozenset(
    {
        ResultType.STARTTLS_NOT_SUPPORTED,
        ResultType.CERTIFICATE_HOST_MISMATCH,
        ResultType.CERTIFICATE_EXPIRED,
        ResultType.CERTIFICATE_NOT_TRUSTED,
        ResultType.VALIDATION_FAILURE,
        ResultType.TLSA_INVALID,
        ResultType.DNSSEC_INVALID,
        ResultType.DANE_REQUIRED,
    }
)
