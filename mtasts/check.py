"""``mtasts check DOMAIN``: what a sending MTA makes of a domain's MTA-STS (and TLS-RPT) setup, step by step.

Looks everything up live (or in any world given by ``--nameserver`` / ``--cafile`` / ``--policy-port``): the
``_mta-sts`` TXT record(s) (RFC 8461 §3.1), the policy URL, HTTP status, media type and certificate (§3.3), the
parsed policy or the exact parse error with its line (§3.2), the MX hosts and whether each matches (§4.1), with
``--starttls`` a STARTTLS certificate check on each MX (§4.2), and the ``_smtp._tls`` record (RFC 8460 §3).

``--json`` prints one object (documented in docs/cli.md; keys are only ever added). Exit status: 0 no problems,
1 problems found, 2 usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import dns.asyncresolver

from . import dns as mtasts_dns
from ._checks import check_seconds
from .domain import is_address_literal, normalize_domain
from .errors import MTASTSError, PolicyError, UsageError
from .fetch import FetchReport, PolicyFetcher
from .options import WorldOptions
from .policy import Mode, Policy, parse_policy
from .results import MX_NOT_IN_STS_POLICY, ResultType
from .tls import create_client_context
from .tlsrpt.record import explain_tlsrpt_records, is_tlsrpt_record
from .txt import explain_txt_records, is_sts_record

__all__ = ["check_domain", "render", "run"]


def _problem(problems: list[dict[str, Any]], detail: str, result_type: str | None = None) -> None:
    problems.append({"result_type": result_type, "detail": detail})


def _certificate(cert: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parts of ``ssl.getpeercert()`` an operator reads."""
    if not cert:
        return None

    def name(rdns: Any) -> str:
        return ", ".join(f"{k}={v}" for rdn in rdns or () for k, v in rdn)

    return {
        "subject": name(cert.get("subject")),
        "issuer": name(cert.get("issuer")),
        "not_before": cert.get("notBefore"),
        "not_after": cert.get("notAfter"),
        "dns_names": [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"],
    }


def _policy_json(policy: Policy) -> dict[str, Any]:
    return {
        "version": policy.version,
        "mode": policy.mode.value,
        "mx": list(policy.mx),
        "max_age": policy.max_age,
        "extensions": dict(policy.extensions),
    }


async def check_domain(
    domain: str,
    *,
    dns_resolver: dns.asyncresolver.Resolver | None = None,
    ssl_context: Any = None,
    policy_port: int = 443,
    starttls: bool = False,
    smtp_port: int = 25,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Check ``domain``; returns the report ``mtasts check --json`` prints (see docs/cli.md).

    ``timeout`` bounds every network step — each DNS query, the policy fetch, each SMTP step — and the
    independent steps (the ``_mta-sts`` and ``_smtp._tls`` TXT queries, the MX query, the policy fetch) run at
    the same time, so a domain whose DNS is dead is reported within about twice ``timeout``.
    """
    timeout = check_seconds("timeout", timeout, positive=True)
    if starttls:
        _require_smtp()
    if is_address_literal(domain):
        raise UsageError(f"{domain!r} is an address literal: MTA-STS does not apply (RFC 8461 §3.4)")
    key = normalize_domain(domain)
    if dns_resolver is None:
        dns_resolver = dns.asyncresolver.Resolver()
        dns_resolver.lifetime = timeout
    resolver = dns_resolver
    context = ssl_context or create_client_context()
    problems: list[dict[str, Any]] = []
    notes: list[str] = []
    report: dict[str, Any] = {"domain": key, "input": domain, "problems": problems, "notes": notes}

    async def txt(name: str) -> mtasts_dns.TxtAnswer:
        try:
            async with asyncio.timeout(timeout):
                return await mtasts_dns.query_txt(resolver, name + ".")
        except TimeoutError:
            return mtasts_dns.TxtAnswer(
                mtasts_dns.TxtStatus.ERROR, error=mtasts_dns.timeout_message(resolver, name, "TXT", timeout)
            )

    async def mx() -> tuple[list[str], str | None]:
        try:
            async with asyncio.timeout(timeout):
                return await mtasts_dns.find_mx_hosts(resolver, key), None
        except TimeoutError:
            return [], mtasts_dns.timeout_message(resolver, key, "MX", timeout)
        except MTASTSError as exc:
            return [], exc.message

    async def fetch() -> FetchReport:
        fetcher = PolicyFetcher(dns_resolver=resolver, ssl_context=context, port=policy_port, timeout=timeout)
        try:
            return await fetcher.fetch_report(key)
        finally:
            await fetcher.aclose()

    name = f"_mta-sts.{key}"
    answer, tls_answer, (mx_hosts, mx_error), fetched, certificate = await asyncio.gather(
        txt(name),
        txt(f"_smtp._tls.{key}"),
        mx(),
        fetch(),
        _host_certificate(resolver, f"mta-sts.{key}", policy_port, context, timeout),
    )

    # §3.1 the TXT record: the resolver's own rule (txt.explain_txt_records)
    records = [r.decode("ascii", "replace") for r in answer.records]
    record, why = explain_txt_records(answer.records) if answer.status is mtasts_dns.TxtStatus.FOUND else (None, None)
    report["txt"] = {"name": name, "status": answer.status.value, "records": records,
                     "id": record.id if record else None, "error": answer.error, "detail": why}  # fmt: skip
    if answer.status in (mtasts_dns.TxtStatus.ERROR, mtasts_dns.TxtStatus.LOCAL_ERROR):
        _problem(problems, answer.error or f"{name} TXT: DNS lookup failed")  # the error names the query
    elif record is None:
        if why is None or not any(is_sts_record(r) for r in answer.records):
            _problem(problems, f"no MTA-STS TXT record at {name}: the domain publishes no policy")
        else:
            _problem(problems, f"{name}: {why}")

    # §3.2, §3.3 the policy
    policy: Policy | None = None
    report["policy_url"] = fetched.url
    report["fetch"] = {
        "status": fetched.status, "content_type": fetched.content_type,
        "bytes": len(fetched.body) if fetched.body is not None else None,
        "certificate": _certificate(certificate),
        "error": fetched.error.message if fetched.error else None,
        "result_type": fetched.error.result_type if fetched.error else None,
    }  # fmt: skip
    report["policy_error"] = None
    if fetched.error is not None:
        if record is not None or fetched.status is not None:
            _problem(problems, fetched.error.message, fetched.error.result_type)
    elif fetched.body is not None:
        try:
            policy = parse_policy(fetched.body)
        except PolicyError as exc:
            report["policy_error"] = {"line": exc.line, "message": exc.message}
            _problem(problems, f"the policy is invalid: {exc.message}", ResultType.STS_POLICY_INVALID)
    if policy is not None and record is None and answer.status is mtasts_dns.TxtStatus.FOUND:
        _problem(problems, "a policy is served, but without a valid TXT record senders never fetch it")
    report["policy"] = _policy_json(policy) if policy is not None else None
    withdrawn = policy is not None and policy.mode is Mode.NONE
    if withdrawn:
        notes.append("mode none: the domain has withdrawn its policy — senders treat it as having none "
                     "(RFC 8461 §5), so there is nothing to match")  # fmt: skip
    elif policy is not None and policy.mode is Mode.TESTING:
        notes.append("mode testing: failures are reported (TLS-RPT), not enforced")

    # §4.1 MX hosts (matched only against a policy in force: enforce or testing)
    report["mx"], report["mx_error"] = [], mx_error
    if mx_error is not None:
        _problem(problems, mx_error)
    probes = await _probe_all(mx_hosts, resolver, context, smtp_port, timeout) if starttls else {}
    for host in mx_hosts:
        matches = policy.matches(host) if policy is not None and not withdrawn else None
        entry: dict[str, Any] = {"host": host, "matches": matches, "starttls": probes.get(host)}
        report["mx"].append(entry)
        if matches is False:
            _problem(problems, f"MX {host} matches no mx pattern of the policy ({MX_NOT_IN_STS_POLICY})",
                     ResultType.VALIDATION_FAILURE)  # fmt: skip
        probe = probes.get(host)
        if probe is not None and (probe["result_type"] or probe["ip"] is None):
            _problem(problems, f"MX {host}: {probe['detail']}", probe["result_type"])

    # RFC 8460 §3 the TLS-RPT record: a failed query is a failure, not an absent record
    tls_name = f"_smtp._tls.{key}"
    tls_records = [r.decode("ascii", "replace") for r in tls_answer.records]
    report["tlsrpt"] = {"name": tls_name, "status": tls_answer.status.value, "records": tls_records, "rua": [],
                        "error": None}  # fmt: skip
    if tls_answer.status in (mtasts_dns.TxtStatus.ERROR, mtasts_dns.TxtStatus.LOCAL_ERROR):
        report["tlsrpt"]["error"] = tls_answer.error or f"{tls_name} TXT: DNS lookup failed"
        _problem(problems, report["tlsrpt"]["error"])
    elif any(is_tlsrpt_record(r) for r in tls_answer.records):
        found, reason = explain_tlsrpt_records(tls_answer.records)
        if found is not None:
            report["tlsrpt"]["rua"] = list(found.rua)
        else:
            report["tlsrpt"]["error"] = reason
            _problem(problems, f"TLS-RPT record at {tls_name}: {reason}")
    else:
        notes.append("no TLS-RPT record: the domain gets no reports of TLS failures (RFC 8460)")
    return report


async def _host_certificate(
    resolver: dns.asyncresolver.Resolver, host: str, port: int, context: Any, timeout: float
) -> dict[str, Any] | None:
    """The certificate ``host`` presents, if it validates (a diagnostic connection of its own)."""
    try:
        async with asyncio.timeout(timeout):
            address = (await mtasts_dns.resolve_addresses(resolver, host))[0]
            _, writer = await asyncio.open_connection(address, port, ssl=context, server_hostname=host)
    except (MTASTSError, OSError, TimeoutError):
        return None  # the fetch's own error says why
    try:
        certificate = writer.get_extra_info("peercert")
        return certificate if isinstance(certificate, dict) else None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _require_smtp() -> None:
    try:
        import aiosmtplib  # noqa: F401, PLC0415 - the smtp extra
    except ImportError:
        raise UsageError("--starttls needs the smtp extra: pip install 'mtasts[smtp]'") from None


async def _probe_all(
    mx_hosts: list[str], resolver: dns.asyncresolver.Resolver, context: Any, port: int, timeout: float
) -> dict[str, Any]:
    from .delivery import probe_starttls  # noqa: PLC0415 - needs the smtp extra (checked by _require_smtp)

    probes = await asyncio.gather(
        *(probe_starttls(mx, resolver=resolver, port=port, tls_context=context, timeout=timeout) for mx in mx_hosts)
    )
    return {
        p.mx: {"ip": p.ip, "result_type": p.result_type, "detail": p.detail, "certificate": _certificate(p.certificate)}
        for p in probes
    }


# -- the command (its flags: mtasts.cli) ----------------------------------------------------------------------


def run(
    options: WorldOptions,
    domain: str,
    *,
    as_json: bool = False,
    starttls: bool = False,
    smtp_port: int = 25,
    timeout: float = 30.0,
) -> int:
    """``mtasts check``: check ``domain`` in the world ``options`` names, print the report; 1 if it has problems."""
    world = options.resolver_kwargs()
    dns_resolver = world.get("dns_resolver")
    if dns_resolver is not None:  # --timeout bounds every DNS query too
        dns_resolver.lifetime = timeout
        dns_resolver.timeout = min(dns_resolver.timeout, timeout)
    report = asyncio.run(
        check_domain(
            domain,
            dns_resolver=dns_resolver,
            ssl_context=world.get("ssl_context"),
            policy_port=world["policy_port"],
            starttls=starttls,
            smtp_port=smtp_port,
            timeout=timeout,
        )
    )
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render(report, color=sys.stdout.isatty()))
    return 1 if report["problems"] else 0


def render(report: dict[str, Any], *, color: bool = False) -> str:
    """The human-readable report."""

    def paint(text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if color else text

    ok, bad, info = paint("ok", "32"), paint("FAIL", "31;1"), paint("--", "33")
    lines = [paint(f"MTA-STS check for {report['domain']}", "1"), ""]
    txt = report["txt"]
    lines.append(f"  TXT {txt['name']:<40} {ok if txt['id'] else bad}  {txt['status']}"
                 + (f", id={txt['id']}" if txt["id"] else ""))  # fmt: skip
    lines.extend(f"      {r}" for r in txt["records"])
    if txt["error"] or txt.get("detail"):
        lines.append(f"      {txt['error'] or txt['detail']}")
    fetch = report["fetch"]
    status = fetch["status"] if fetch["status"] is not None else "-"
    lines.append(f"  GET {report['policy_url']:<40} {ok if report['policy'] else bad}  HTTP {status}"
                 f", {fetch['content_type'] or 'no Content-Type'}")  # fmt: skip
    if fetch["certificate"]:
        cert = fetch["certificate"]
        lines.append(
            f"      certificate: {', '.join(cert['dns_names'])}; issuer {cert['issuer']}; until {cert['not_after']}"
        )
    if fetch["error"]:
        lines.append(f"      {fetch['error']} [{fetch['result_type']}]")
    if report["policy_error"]:
        lines.append(f"      {report['policy_error']['message']}")
    policy = report["policy"]
    if policy:
        lines.append(
            f"  policy: mode {policy['mode']}, max_age {policy['max_age']}, mx {', '.join(policy['mx']) or '-'}"
        )
        if policy["mode"] == "none":
            lines.append("      withdrawn: senders treat the domain as having no policy (RFC 8461 §5)")
    lines.append("")
    if report["mx"]:
        lines.append("  MX host                                   matches  STARTTLS")
        for mx in report["mx"]:
            match = "-" if mx["matches"] is None else (ok if mx["matches"] else bad)
            probe = mx["starttls"]
            if probe is None:
                tls = "not checked"
            elif not probe["result_type"] and probe["ip"]:
                tls = ok
            else:
                tls = f"{bad} {probe['result_type'] or ''} {probe['detail'] or ''}"
            lines.append(f"  {mx['host']:<40}  {match:<7}  {tls}")
    elif report["mx_error"]:
        lines.append(f"  MX: {bad} {report['mx_error']}")
    tlsrpt = report["tlsrpt"]
    if tlsrpt["rua"]:
        rua = ", ".join(tlsrpt["rua"])
    elif tlsrpt["error"]:
        rua = f"{bad} {tlsrpt['error']}"
    else:
        rua = "no record"
    lines.append(f"  TLS-RPT {tlsrpt['name']}: {rua}")
    lines.append("")
    for note in report["notes"]:
        lines.append(f"  {info} {note}")
    if report["problems"]:
        lines.append(paint(f"{len(report['problems'])} problem(s):", "31;1"))
        for problem in report["problems"]:
            kind = f"[{problem['result_type']}] " if problem["result_type"] else ""
            lines.append(f"  - {kind}{problem['detail']}")
    else:
        lines.append(paint("no problems found", "32;1"))
    return "\n".join(lines)
