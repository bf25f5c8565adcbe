"""`mtasts check` against the loopback world, in both output modes (issue 7), through the real command line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import pytest

from mtasts.testing import World

from ._smtp import MailWorld
from .conftest import world_flags

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.mail.example.com\nmax_age: 604800\n"


async def mtasts(world: World, *args: str, port: int | None = None) -> tuple[int, str, str]:
    world_options = world_flags(world)
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
                             "id": "20261126", "error": None, "detail": None}  # fmt: skip
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


# -- issue 13: honest and fast when DNS fails, one definition of the TXT rule, usage errors ------------------------


class BlackHoleDNS:
    """A DNS server on loopback that never answers: UDP datagrams are read and dropped, TCP connections are
    accepted and held open in silence."""

    def __init__(self) -> None:
        self.udp_transport: asyncio.DatagramTransport | None = None
        self.tcp_server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.datagrams = 0

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        black_hole = self

        class Drop(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                black_hole.datagrams += 1

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)
            await reader.read()

        self.tcp_server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port: int = self.tcp_server.sockets[0].getsockname()[1]
        self.udp_transport, _ = await loop.create_datagram_endpoint(Drop, local_addr=("127.0.0.1", port))
        return port

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        assert self.udp_transport is not None and self.tcp_server is not None
        self.udp_transport.close()
        self.tcp_server.close()
        await self.tcp_server.wait_closed()


async def run_mtasts(*args: str, timeout: float = 60) -> tuple[int, str, str, float]:
    loop = asyncio.get_running_loop()
    began = loop.time()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtasts", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode(), loop.time() - began


async def test_dead_dns_is_reported_fast_and_briefly() -> None:
    dead = BlackHoleDNS()
    port = await dead.start()
    try:
        code, out, err, elapsed = await run_mtasts(
            "check", "example.com", "--json", "--nameserver", f"127.0.0.1:{port}", "--timeout", "2"
        )
        _, human, _, _ = await run_mtasts("check", "example.com", "--nameserver", f"127.0.0.1:{port}", "--timeout", "2")
    finally:
        await dead.stop()
    assert code == 1, err
    assert elapsed < 2 * 2 + 3, elapsed  # about 2x --timeout (plus the interpreter's start), not a minute
    report = json.loads(out)
    assert dead.datagrams > 0  # it really asked the black hole
    expected = f"DNS timeout after 2 s asking 127.0.0.1:{port} for _mta-sts.example.com TXT"
    assert report["txt"]["status"] == "error" and report["txt"]["error"] == expected
    # a DNS failure is a failure for every record kind, never "no record"
    assert report["tlsrpt"]["status"] == "error"
    error = f"DNS timeout after 2 s asking 127.0.0.1:{port} for _smtp._tls.example.com TXT"
    assert report["tlsrpt"]["error"] == error
    assert report["mx_error"] is not None and "DNS timeout after 2 s" in report["mx_error"]
    assert all(len(p["detail"]) < 200 for p in report["problems"]), report["problems"]
    assert "Server Do53" not in out and "lifetime expired" not in out
    assert "no record" not in human and human.count(expected) == 2  # the TXT line, and the list of problems


async def test_a_tlsrpt_dns_failure_is_not_an_absent_record(world: World) -> None:
    world.publish("example.com", ENFORCE)
    world.set_failure("_smtp._tls.example.com", "servfail")
    _, report = await check_json(world, "example.com")
    error = "no DNS server answered _smtp._tls.example.com TXT"
    assert report["tlsrpt"]["status"] == "error" and report["tlsrpt"]["error"].startswith(error)
    assert any(p["detail"].startswith(error) for p in report["problems"])
    assert not any("no TLS-RPT record" in note for note in report["notes"])
    _, out, _ = await mtasts(world, "check", "example.com")
    assert f"TLS-RPT _smtp._tls.example.com: FAIL {error}" in out


async def test_mode_none_is_a_withdrawn_policy_with_nothing_to_match(world: World, mail: MailWorld) -> None:
    world.publish("example.com", "version: STSv1\nmode: none\nmax_age: 86400\n")
    await mail.add_mx("mx1.example.com", "valid")
    mail.set_mx("example.com", (10, "mx1.example.com"))
    _, report = await check_json(world, "example.com")
    assert [(m["host"], m["matches"]) for m in report["mx"]] == [("mx1.example.com", None)]
    assert any("withdrawn" in note for note in report["notes"])
    assert not any("not enforced" in note for note in report["notes"])
    _, out, _ = await mtasts(world, "check", "example.com")
    assert "FAIL" not in out and "withdrawn" in out and "reported, not enforced" not in out


async def test_records_that_are_not_sts_records_are_discarded_by_the_resolvers_rule(world: World) -> None:
    world.publish("example.com", ENFORCE, txt=["v=STSv10; id=1"])
    _, report = await check_json(world, "example.com")
    assert report["txt"]["id"] is None
    details = [p["detail"] for p in report["problems"]]
    assert any("publishes no policy" in d for d in details), details
    assert not any("invalid" in d for d in details), details
    world.publish("sts.example", ENFORCE, txt=["v=STSv1 ; id=1"])  # erratum 6285: still an STS record
    _, report = await check_json(world, "sts.example")
    assert report["txt"]["id"] == "1"
    world.publish("bad.example", ENFORCE, txt=["v=STSv1; id=not_valid"])
    _, report = await check_json(world, "bad.example")
    assert any("invalid MTA-STS TXT record" in p["detail"] for p in report["problems"])


@pytest.mark.parametrize(
    "args",
    [
        ["check", "example.com", "--policy-port", "99999"],
        ["check", "example.com", "--policy-port", "http"],
        ["check", "example.com", "--timeout", "-1"],
        ["check", "example.com", "--timeout", "0"],
        ["check", "example.com", "--timeout", "nan"],
        ["check", "example.com", "--timeout", "inf"],
        ["check", "exa mple.com"],
        ["check", "[192.0.2.1]"],
        ["serve-socketmap", "--store", "bogus"],
        ["serve-socketmap", "--max-connections", "0"],
        ["check", "example.com", "--no-such-flag"],
    ],
)
async def test_usage_errors_are_one_line_and_exit_2(args: list[str]) -> None:
    code, out, err, _ = await run_mtasts(*args)
    assert code == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert out == ""
    code, out, err, _ = await run_mtasts(*args, "--json")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert json.loads(out)["exit"] == 2 and json.loads(out)["error"]


async def test_starttls_without_the_smtp_extra_is_a_usage_error(world: World) -> None:
    # the smtp extra missing: aiosmtplib cannot be imported in the child
    program = "import sys; sys.modules['aiosmtplib'] = None; from mtasts.cli import main; sys.exit(main())"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", program, "check", "example.com", "--starttls", "--json",
        "--nameserver", f"127.0.0.1:{world.dns_port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2, err
    assert b"mtasts[smtp]" in err and b"Traceback" not in err
    assert json.loads(out) == {"error": "--starttls needs the smtp extra: pip install 'mtasts[smtp]'", "exit": 2}
    assert world.dns_queries == {}  # refused before any lookup


@pytest.mark.parametrize("args", [["demo", "--static"], ["check", "example.com"]])
async def test_a_closed_pipe_ends_quietly(world: World, args: list[str]) -> None:
    world.publish("example.com", ENFORCE)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before a byte is written: `... | head -1` at its most abrupt
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mtasts", *args, "--nameserver", f"127.0.0.1:{world.dns_port}",
            "--cafile", world.ca_pem_path, "--policy-port", str(world.https_port),
            stdout=write_end, stderr=asyncio.subprocess.PIPE,
        ) if args[0] == "check" else await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mtasts", *args, stdout=write_end, stderr=asyncio.subprocess.PIPE
        )  # fmt: skip
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert err == b"", err.decode()
    assert process.returncode == 1
