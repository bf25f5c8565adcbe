"""classify_tls_error: real OpenSSL verification failures (in-memory handshakes) → RFC 8460 §4.3.1 result types."""

from __future__ import annotations

import datetime
import ssl

import aiosmtplib
import pytest
import trustme

from mtasts import MTASTSError, PolicyWebPKIError, classify_tls_error, failure_reason_code

from ._tls import client_context, cn_only_cert, handshake, leaf_context, server_context

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_good_certificate_and_wildcard_pass(ca: trustme.CA) -> None:
    client = client_context(ca)
    assert handshake(client, leaf_context(ca.issue_cert("mx.example.com")), "mx.example.com") is None
    assert handshake(client, leaf_context(ca.issue_cert("*.example.com")), "mx.example.com") is None


@pytest.mark.parametrize(
    ("make_cert", "hostname", "expected"),
    [
        (lambda ca: ca.issue_cert("other.example.com"), "mx.example.com", "certificate-host-mismatch"),
        (lambda ca: ca.issue_cert("*.example.com"), "a.b.example.com", "certificate-host-mismatch"),
        (lambda ca: ca.issue_cert("*.example.com"), "example.com", "certificate-host-mismatch"),
        (
            lambda ca: ca.issue_cert(
                "mx.example.com",
                not_before=NOW - datetime.timedelta(days=30),
                not_after=NOW - datetime.timedelta(days=1),
            ),
            "mx.example.com",
            "certificate-expired",
        ),
        (lambda ca: trustme.CA().issue_cert("mx.example.com"), "mx.example.com", "certificate-not-trusted"),
        (
            lambda ca: ca.issue_cert("mx.example.com", not_before=NOW + datetime.timedelta(days=2)),
            "mx.example.com",
            "validation-failure",
        ),
    ],
    ids=["wrong-name", "wildcard-two-labels", "wildcard-bare-parent", "expired", "untrusted-ca", "not-yet-valid"],
)
def test_verification_failures_are_classified(ca: trustme.CA, make_cert: object, hostname: str, expected: str) -> None:
    cert = make_cert(ca)  # type: ignore[operator]
    error = handshake(client_context(ca), leaf_context(cert), hostname)
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert classify_tls_error(error) == expected
    assert failure_reason_code(error) == error.verify_message


def test_common_name_without_san_is_rejected(ca: trustme.CA) -> None:
    """RFC 8461 §3.3 ("only against the DNS-ID identifiers") and §4.2: no CN fallback (C24)."""
    cert_pem, key_pem = cn_only_cert(ca, "mx.example.com")
    error = handshake(client_context(ca), server_context(cert_pem, key_pem), "mx.example.com")
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert classify_tls_error(error) == "certificate-host-mismatch"


def test_wrapped_errors_are_classified_through_the_chain(ca: trustme.CA) -> None:
    error = handshake(client_context(ca), leaf_context(ca.issue_cert("other.example")), "mx.example.com")
    assert error is not None
    try:
        try:
            raise error
        except ssl.SSLError as exc:
            raise aiosmtplib.SMTPConnectError("wrapped") from exc
    except aiosmtplib.SMTPConnectError as wrapper:
        assert classify_tls_error(wrapper) == "certificate-host-mismatch"
        assert "mismatch" in failure_reason_code(wrapper).lower()


def test_starttls_not_supported_from_aiosmtplib() -> None:
    exc = aiosmtplib.SMTPException("SMTP STARTTLS extension not supported by server.")
    assert classify_tls_error(exc) == "starttls-not-supported"


def test_other_errors_are_validation_failures() -> None:
    assert classify_tls_error(ssl.SSLError(1, "[SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] alert")) == "validation-failure"
    assert classify_tls_error(ConnectionResetError()) == "validation-failure"
    assert failure_reason_code(ConnectionResetError()) == "ConnectionResetError"


def test_mtasts_errors_keep_session_result_types_only() -> None:
    assert classify_tls_error(MTASTSError("x", result_type="certificate-expired")) == "certificate-expired"
    assert classify_tls_error(PolicyWebPKIError("policy host")) == "validation-failure"


def test_cyclic_exception_chain_terminates() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert classify_tls_error(a) == "validation-failure"
