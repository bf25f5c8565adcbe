"""``mtasts demo``: a loopback world with a handful of domains, and a table of what mtasts makes of each.

Everything runs offline: a DNS server and an HTTPS policy server on 127.0.0.1 (:mod:`mtasts.testing`), and a
real :class:`~mtasts.resolver.PolicyResolver` pointed at them. ``--static`` (:func:`static_demo`) only evaluates
the RFC's example policy, with the sans-I/O core: no server, and this module imports no part of the async shell
until the live demo runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .policy import parse_policy
from .verdict import Verdict, evaluate

if TYPE_CHECKING:
    from .resolver import PolicyLookup, PolicyResolver

__all__ = ["RFC_EXAMPLE_POLICY", "run", "run_demo", "static_demo"]

#: RFC 8461 §3.2's example policy.
RFC_EXAMPLE_POLICY = """\
version: STSv1
mode: enforce
mx: mail.example.com
mx: *.example.net
mx: backupmx.example.com
max_age: 604800
"""


def run(*, static: bool = False) -> int:
    """``mtasts demo [--static]``; returns the exit status."""
    if static:
        return static_demo()
    import asyncio  # noqa: PLC0415 - the live demo loads the async shell

    return asyncio.run(run_demo())


def static_demo() -> int:
    """Print the RFC's example policy and the verdicts for a few MX hosts and TLS outcomes."""
    policy = parse_policy(RFC_EXAMPLE_POLICY)
    print("RFC 8461 §3.2 example policy:")
    for line in policy.lines():
        print(f"    {line}")
    print()
    cases: list[tuple[str, str | None]] = [
        ("mail.example.com", None),
        ("MX1.example.net.", None),
        ("a.b.example.net", None),
        ("example.net", None),
        ("backupmx.example.com", "certificate-expired"),
        ("mail.example.com", "starttls-not-supported"),
    ]
    header = f"{'MX host':<24} {'TLS session':<24} {'deliver':<8} {'require TLS':<12} result type"
    print(header)
    print("-" * len(header))
    for host, failure in cases:
        verdict = evaluate(policy, host, tls_failure=failure)
        print(
            f"{host:<24} {failure or 'validated':<24} {'yes' if verdict.deliver else 'NO':<8} "
            f"{'yes' if verdict.require_tls else 'no':<12} {verdict.result_type or '-'}"
        )
    return 0


@dataclass(frozen=True)
class _Case:
    domain: str
    what: str
    policy: str | None
    config: dict[str, object]


def _policy(mode: str, domain: str) -> str:
    mx = "" if mode == "none" else f"mx: *.{domain}\n"
    return f"version: STSv1\nmode: {mode}\n{mx}max_age: 604800\n"


CASES = [
    _Case("enforce.example", "enforce", _policy("enforce", "enforce.example"), {}),
    _Case("testing.example", "testing", _policy("testing", "testing.example"), {}),
    _Case("none.example", "mode none", _policy("none", "none.example"), {}),
    _Case("badcert.example", "expired certificate", _policy("enforce", "badcert.example"), {"cert": "expired"}),
    _Case(
        "redirect.example",
        "redirect (301)",
        _policy("enforce", "redirect.example"),
        {"redirect_to": "https://mta-sts.enforce.example/.well-known/mta-sts.txt"},
    ),
    _Case("nopolicy.example", "no TXT record", None, {"txt_failure": "nxdomain"}),
]


def _verdict_text(verdict: Verdict) -> str:
    if not verdict.deliver:
        return f"refuse this MX ({verdict.result_type})"
    if verdict.result_type:
        return f"deliver, report {verdict.result_type}"
    return "deliver, TLS required" if verdict.require_tls else "deliver"


def _policy_text(lookup: PolicyLookup) -> str:
    if lookup.policy is None:
        return f"none ({lookup.status.value}{': ' + lookup.result_type if lookup.result_type else ''})"
    mx = ",".join(lookup.policy.mx) or "-"
    return f"{lookup.policy.mode.value} mx={mx}"


async def run_demo(rounds: int = 20_000) -> int:
    """Start the world, look every domain up cold and cached, print the table. Returns an exit status."""
    try:
        from .testing import World  # noqa: PLC0415 - needs the `testing` extra (trustme)
    except ImportError as exc:  # pragma: no cover - depends on the installation
        print(f"mtasts demo needs the testing extra: pip install 'mtasts[testing]' ({exc})")
        return 1
    async with World() as world:
        for case in CASES:
            world.publish(case.domain, case.policy, id="20261126", **case.config)  # type: ignore[arg-type]
        async with world.policy_resolver(fetch_timeout=5.0) as resolver:
            rows = [await _row(resolver, case, rounds) for case in CASES]
        queries, requests = sum(world.dns_queries.values()), sum(world.http_requests.values())
    header = ("domain", "published", "policy applied", "MX mx1.<domain>", "MX mx.attacker.example", "cold", "cached")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print("MTA-STS against a loopback world (DNS and HTTPS on 127.0.0.1):\n")
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line.format(*row))
    print(f"\n{queries} DNS queries and {requests} HTTPS requests in all; cached lookups made none.")
    print("cold = TXT query + HTTPS fetch + parse; cached = resolver.cached_policy() from memory.")
    return 0


async def _row(resolver: PolicyResolver, case: _Case, rounds: int) -> tuple[str, ...]:
    from .resolver import LookupStatus  # noqa: PLC0415 - the async shell, loaded only by the live demo

    start = time.perf_counter()
    lookup = await resolver.lookup(case.domain)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(rounds):
        resolver.cached_policy(case.domain)
    cached = (time.perf_counter() - start) / rounds
    good = evaluate(lookup.policy, f"mx1.{case.domain}")
    bad = evaluate(lookup.policy, "mx.attacker.example")
    assert lookup.status is not LookupStatus.DNS_ERROR
    return (
        case.domain,
        case.what,
        _policy_text(lookup),
        _verdict_text(good),
        _verdict_text(bad),
        f"{cold * 1000:.1f} ms",
        f"{cached * 1e9:.0f} ns",
    )
