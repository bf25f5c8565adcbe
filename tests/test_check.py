"""`mtasts check` against the loopback world, in both output modes (issue 7), through the real command line."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest

from mtasts.testing import World

from ._smtp import MailWorld

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.mail.example.com\nmax_age: 604800\n"


async def mtasts(world: World, *args: str, port: int | None = None) -> tuple[int, str, str]:
    world_options = ["--nameserver", f"127.0.0.1:{world.dns_port}", "--cafile", world.ca_pem_path,
                     "--policy-port", str(world.https_port)]  # fmt: skip
    if port is not None:
        world_options += ["--smtp-port", str(port)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtasts", *args, *world_options,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def check_json(world: World, domain: str, *extra: str, port: int | None = None) -> tuple[int, dict[str, Any]]:
    code, out, err = await mtasts(world, "check", domain, "--json", *extra, port=port)
    assert code in (0, 1), err
    report: dict[str, Any] = json.loads(out)
    return code, report


async def good_domain(world: World, mail: MailWorld) -> None:
    world.publish("example.com", ENFORCE, id="20261126")
    world.add_record("_smtp._tls.example.com", "TXT", "v=TLSRPTv1; rua=mailto:tlsrpt@example.com")
    await mail.add_mx("mx1.example.com", "valid")
    await mail.add_mx("a.mail.example.com", "wildcard")
    mail.set_mx("example.com", (10, "mx1.example.com"), (20, "a.mail.example.com"))


async def test_a_good_domain_has_no_problems(world: World, mail: MailWorld) -> None:
    await good_domain(world, mail)
    code, report = await check_json(world, "Example.COM.", "--starttls", port=mail.port)
    assert code == 0 and report["problems"] == []
    assert report["domain"] == "example.com"
    assert report["txt"] == {"name": "_mta-sts.example.com", "status": "found", "records": ["v=STSv1; id=20261126;"],
                             "id": "20261126", "error": None}  # fmt: skip
    assert report["policy"] == {"version": "STSv1", "mode": "enforce", "mx": ["mx1.example.com", "*.mail.example.com"],
                                "max_age": 604800, "extensions": {}}  # fmt: skip
    assert report["fetch"]["status"] == 200 and report["fetch"]["content_type"] == "text/plain"
    assert report["fetch"]["certificate"]["dns_names"] == ["mta-sts.example.com"]
    assert report["policy_url"] == f"https://mta-sts.example.com:{world.https_port}/.well-known/mta-sts.txt"
    assert [(m["host"], m["matches"], m["starttls"]["result_type"]) for m in report["mx"]] == [
        ("mx1.example.com", True, None), ("a.mail.example.com", True, None)]  # fmt: skip
    assert report["tlsrpt"]["rua"] == ["mailto:tlsrpt@example.com"]
    code, out, _ = await mtasts(world, "check", "example.com", "--starttls", port=mail.port)
    assert code == 0 and "no problems found" in out and "mode enforce" in out and "\033[" not in out


async def test_problems_are_listed_with_result_types(world: World, mail: MailWorld) -> None:
    world.publish("example.com", ENFORCE.replace("mx1.example.com", "mx9.example.com"))
    world.add_record("_smtp._tls.example.com", "TXT", "v=TLSRPTv1; rua=ftp://nowhere.example")
    await mail.add_mx("mx1.example.com", "expired")
    mail.set_mx("example.com", (10, "mx1.example.com"))
    code, report = await check_json(world, "example.com", "--starttls", port=mail.port)
    assert code == 1
    kinds = {(p["result_type"], p["detail"].split(":")[0]) for p in report["problems"]}
    assert ("validation-failure", "MX mx1.example.com matches no mx pattern of the policy (mx-not-in-sts-policy)") in {
        (p["result_type"], p["detail"]) for p in report["problems"]}  # fmt: skip
    assert ("certificate-expired", "MX mx1.example.com") in kinds
    assert any(p["detail"].startswith("TLS-RPT record") for p in report["problems"])
    code, out, _ = await mtasts(world, "check", "example.com", "--starttls", port=mail.port)
    assert code == 1 and "problem(s)" in out and "[certificate-expired]" in out


async def test_an_invalid_policy_names_its_line(world: World) -> None:
    world.publish("example.com", "version: STSv1\nmode: enforce\nmx: bad_host.example.com\nmax_age: 1\n")
    code, report = await check_json(world, "example.com")
    assert code == 1
    assert report["policy"] is None and report["policy_error"]["line"] == 3
    assert report["problems"][0]["result_type"] == "sts-policy-invalid"
    _, out, _ = await mtasts(world, "check", "example.com")
    assert "line 3" in out


@pytest.mark.parametrize(
    ("config", "result_type", "words"),
    [
        ({"cert": "expired"}, "sts-webpki-invalid", "certificate"),
        ({"status": 404}, "sts-policy-fetch-error", "HTTP 404"),
        ({"redirect_to": "https://elsewhere.example/"}, "sts-policy-fetch-error", "redirects are not followed"),
        ({"content_type": "text/html"}, "sts-policy-invalid", "text/html"),
    ],
)
async def test_fetch_failures(world: World, config: dict[str, Any], result_type: str, words: str) -> None:
    world.publish("example.com", ENFORCE, **config)
    code, report = await check_json(world, "example.com")
    assert code == 1
    assert report["fetch"]["result_type"] == result_type
    assert any(p["result_type"] == result_type and words in p["detail"] for p in report["problems"])


async def test_no_policy_and_several_records(world: World) -> None:
    world.publish("none.example", None, txt_failure="nxdomain")
    code, report = await check_json(world, "none.example")
    assert code == 1 and report["txt"]["status"] == "nxdomain" and report["txt"]["id"] is None
    assert "publishes no policy" in report["problems"][0]["detail"]
    world.publish("two.example", ENFORCE, txt=["v=STSv1; id=1", "v=STSv1; id=2"])
    code, report = await check_json(world, "two.example")
    assert code == 1 and any("exactly one" in p["detail"] for p in report["problems"])


async def test_usage_errors_exit_2(world: World) -> None:
    code, _, err = await mtasts(world, "check", "[192.0.2.1]")
    assert code == 2 and "address literal" in err
    code, _, err = await mtasts(world, "check", "exa mple.com")
    assert code == 2
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtasts", "check", "example.com", "--nameserver", "not-an-ip",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err_bytes = await process.communicate()
    assert process.returncode == 2 and b"nameserver" in err_bytes
