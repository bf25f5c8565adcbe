"""Policy application (RFC 8461 §5): may this message go to this MX over this TLS session?

    1. "enforce": In this mode, Sending MTAs MUST NOT deliver the message to hosts that fail MX matching or
       certificate validation or that do not support STARTTLS.
    2. "testing": ... messages may be delivered as though there were no MTA-STS validation failure.
    3. "none": In this mode, Sending MTAs should treat the Policy Domain as though it does not have any
       active policy.

A failed verdict under enforce means "treat this MX as unreachable and try the next" (§5.1 step 2, §8.4), and
when every MX fails, defer — never bounce — after re-checking the TXT id (§5, §5.1 step 3). Under testing the
verdict still names what failed, for TLS-RPT (RFC 8460). Under none, nothing is reported (§6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from .errors import UsageError
from .policy import Mode, Policy
from .results import MX_NOT_IN_STS_POLICY, SESSION_FAILURES, ResultType

__all__ = ["Verdict", "evaluate"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of :func:`evaluate` for one MX host and one TLS session."""

    #: May the message go to this MX over this session?
    deliver: bool
    #: True only under enforce: TLS with a validated certificate is required; never fall back to plaintext.
    require_tls: bool
    #: The RFC 8460 result type to report (also under testing); None when all is well or nothing is reported.
    result_type: str | None
    #: The policy applied (None when the domain has none).
    policy: Policy | None
    #: RFC 8460 ``failure-reason-code`` detail, e.g. ``mx-not-in-sts-policy`` for an MX that matches no pattern.
    failure_reason_code: str | None = None


_NO_POLICY = Verdict(deliver=True, require_tls=False, result_type=None, policy=None)
_NONE = Mode.NONE
_ENFORCE = Mode.ENFORCE
_VALIDATION_FAILURE = ResultType.VALIDATION_FAILURE
_MEMO_LIMIT = 64  # verdicts remembered per policy (one per MX host name seen; domains have a handful)


def evaluate(policy: Policy | None, mx_host: str, *, tls_failure: str | None = None) -> Verdict:
    """Apply ``policy`` to delivery to ``mx_host`` over a session whose TLS outcome is ``tls_failure``.

    ``tls_failure`` is None when STARTTLS succeeded and the MX certificate validated per §4.2, otherwise an
    RFC 8460 result type (``starttls-not-supported``, ``certificate-host-mismatch``, ``certificate-expired``,
    ``certificate-not-trusted``, ``validation-failure``, or a DANE type passed through). An MX that matches no
    pattern is reported as ``validation-failure`` / ``mx-not-in-sts-policy`` (decisions table, C17), and takes
    precedence over a TLS failure: such an MX is not to be contacted at all under enforce.
    """
    if tls_failure is None:
        if policy is None:
            return _NO_POLICY
        # The hot path: a policy's verdict for a host never changes (both are immutable), so it is made once.
        memo = policy.verdict_memo
        try:
            return cast(Verdict, memo[mx_host])
        except (KeyError, TypeError):
            verdict = _evaluate(policy, mx_host, None)
            if type(mx_host) is str and len(memo) < _MEMO_LIMIT:
                memo[mx_host] = verdict
            return verdict
    if tls_failure not in SESSION_FAILURES:
        raise UsageError(f"tls_failure must be None or an RFC 8460 session result type, not {tls_failure!r}")
    if policy is None:
        return _NO_POLICY
    return _evaluate(policy, mx_host, tls_failure)


def _evaluate(policy: Policy, mx_host: str, tls_failure: str | None) -> Verdict:
    mode = policy.mode
    if mode is _NONE:
        return Verdict(deliver=True, require_tls=False, result_type=None, policy=policy)
    enforce = mode is _ENFORCE
    if not policy.matches(mx_host):
        return Verdict(
            deliver=not enforce,
            require_tls=enforce,
            result_type=_VALIDATION_FAILURE,
            policy=policy,
            failure_reason_code=MX_NOT_IN_STS_POLICY,
        )
    return Verdict(
        deliver=not enforce or tls_failure is None, require_tls=enforce, result_type=tls_failure, policy=policy
    )
