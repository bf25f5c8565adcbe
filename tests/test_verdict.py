"""RFC 8461 §5: verdicts per mode (checklist items 47-49, corner case C18)."""

from __future__ import annotations

import pytest

from mtasts import Mode, MTASTSError, Policy, ResultType, Verdict, evaluate, parse_policy

TLS_FAILURES = [
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
]


def policy(mode: str) -> Policy:
    return parse_policy(f"version: STSv1\nmode: {mode}\nmx: mx.example.com\nmx: *.example.net\nmax_age: 86400\n")


def test_no_policy_delivers_without_requirements() -> None:
    for failure in [None, *TLS_FAILURES]:
        verdict = evaluate(None, "anything.example", tls_failure=failure)
        assert verdict == Verdict(deliver=True, require_tls=False, result_type=None, policy=None)


def test_mode_none_is_like_no_policy_but_names_it() -> None:
    none = policy("none")
    for host in ["mx.example.com", "elsewhere.example"]:
        for failure in [None, *TLS_FAILURES]:
            verdict = evaluate(none, host, tls_failure=failure)
            assert (verdict.deliver, verdict.require_tls, verdict.result_type) == (True, False, None)
            assert verdict.policy is none


def test_enforce_valid_session_on_matching_mx_delivers_with_tls_required() -> None:
    enforce = policy("enforce")
    verdict = evaluate(enforce, "mx.example.com")
    assert (verdict.deliver, verdict.require_tls, verdict.result_type) == (True, True, None)
    assert verdict.policy is enforce
    assert evaluate(enforce, "mx.example.com") is verdict  # made once per (policy, host), then reused
    assert evaluate(enforce, "MX9.example.net.") == verdict


def test_the_verdict_memo_is_bounded_and_exact() -> None:
    enforce = policy("enforce")
    for i in range(200):
        host = f"mx{i}.example.net" if i % 2 else f"mx{i}.attacker.example"
        assert evaluate(enforce, host).deliver is bool(i % 2)
        assert evaluate(enforce, host).deliver is bool(i % 2)  # the memoized answer is the same answer
    assert len(enforce.verdict_memo) <= 64
    assert evaluate(enforce, b"mx.example.com").deliver is False  # type: ignore[arg-type]  # not a str: no memo


@pytest.mark.parametrize("failure", TLS_FAILURES)
def test_enforce_tls_failure_blocks_delivery(failure: str) -> None:
    verdict = evaluate(policy("enforce"), "mx.example.com", tls_failure=failure)
    assert (verdict.deliver, verdict.require_tls, verdict.result_type) == (False, True, failure)


@pytest.mark.parametrize("failure", [None, *TLS_FAILURES])
def test_enforce_mx_mismatch_blocks_delivery(failure: str | None) -> None:
    verdict = evaluate(policy("enforce"), "mx.attacker.example", tls_failure=failure)
    assert (verdict.deliver, verdict.require_tls) == (False, True)
    assert verdict.result_type == ResultType.VALIDATION_FAILURE
    assert verdict.failure_reason_code == "mx-not-in-sts-policy"


@pytest.mark.parametrize("failure", TLS_FAILURES)
def test_testing_delivers_but_reports(failure: str) -> None:
    verdict = evaluate(policy("testing"), "mx.example.com", tls_failure=failure)
    assert (verdict.deliver, verdict.require_tls, verdict.result_type) == (True, False, failure)


def test_testing_mx_mismatch_delivers_and_reports_validation_failure() -> None:
    verdict = evaluate(policy("testing"), "a.b.example.net")
    assert (verdict.deliver, verdict.require_tls, verdict.result_type) == (True, False, "validation-failure")
    assert verdict.failure_reason_code == "mx-not-in-sts-policy"


def test_testing_valid_session_reports_nothing() -> None:
    verdict = evaluate(policy("testing"), "mx.example.com")
    assert (verdict.deliver, verdict.require_tls, verdict.result_type) == (True, False, None)


def test_dane_result_types_pass_through() -> None:
    verdict = evaluate(policy("enforce"), "mx.example.com", tls_failure="tlsa-invalid")
    assert (verdict.deliver, verdict.result_type) == (False, "tlsa-invalid")


@pytest.mark.parametrize("bad", ["certificate_expired", "", "sts-policy-invalid", "ok"])
def test_unknown_tls_failure_is_a_typed_error(bad: str) -> None:
    with pytest.raises(MTASTSError):
        evaluate(policy("enforce"), "mx.example.com", tls_failure=bad)


def test_verdict_is_frozen() -> None:
    verdict = evaluate(None, "mx.example.com")
    with pytest.raises(AttributeError):
        verdict.deliver = False  # type: ignore[misc]


def test_max_age_zero_policy_still_applies_to_this_decision() -> None:
    zero = Policy(Mode.ENFORCE, ["mx.example.com"], 0)
    assert evaluate(zero, "mx.example.com").deliver
    assert not evaluate(zero, "other.example").deliver


def test_misuse_is_a_usage_error_and_a_value_error() -> None:
    """Issue 14: a caller's own bug is told apart from a failure (``except MTASTSError`` around a delivery should
    not swallow it silently, and ``except ValueError`` catches it)."""
    from mtasts import MTASTSError, PolicyResolver, UsageError, evaluate, parse_policy

    policy = parse_policy("version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 60\n")
    with pytest.raises(UsageError) as raised:
        evaluate(policy, "mx.example.com", tls_failure="bogus")
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, MTASTSError)
    with pytest.raises(ValueError):
        PolicyResolver(fetch_timeout=-1)
    with pytest.raises(ValueError):
        PolicyResolver(dns_error="sometimes")
