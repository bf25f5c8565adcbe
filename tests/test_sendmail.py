"""Debian's sendmail 8.17 against our socketmap: ``FEATURE(`sts')`` (docs/sendmail.md), in address test mode.

``sendmail -bt`` with the configuration docs/sendmail.md documents: ``/map sts KEY`` looks a key up in the socket
map exactly as a delivery does, and the sts rulesets (``Set_SNI``, ``STS_secure``, ``STS_Check``, from the cf
tree's proto.m4) run on our answers with the macros a delivery would set. Real deliveries:
tests/test_sendmail_delivery.py. Without the unpacked sendmail (``./run fetch-sendmail``) these tests skip with
the reason.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tomllib
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from mtasts import PolicyResolver
from mtasts.socketmap import SocketmapServer, load_config
from mtasts.testing import World

from ._sendmail import REPO, Sendmail, Tools, build_cf, find_sendmail, instance_mc, sendmail_instance, substitute

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.enforce.example\nmx: *.example.net\nmax_age: 86400\n"
TESTING = "version: STSv1\nmode: testing\nmx: mx.testing.example\nmax_age: 86400\n"
SECURE = "secure match=mx.enforce.example:.example.net servername=hostname"
NOT_FOUND = "no match (68)"  # sendmail's EX_NOTFOUND: the socket map said NOTFOUND
TEMPFAIL = "no match (75)"  # EX_TEMPFAIL: TEMP, TIMEOUT, or no answer at all
TEMP_FAIL_RULE = "$# error $@ 4.7.0 $: 450 STS lookup temp fail"

DOCS = REPO / "docs" / "sendmail.md"
# what the documented .mc names, replaced by the test's own values
DOC_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
DOC_CA_PATH = "`/etc/ssl/certs'"
DOC_ADDRESS = "inet:8461@127.0.0.1"


def documented_block(language: str) -> str:
    """The first ```LANGUAGE fenced block of docs/sendmail.md."""
    match = re.search(rf"^```{language}\n(.*?)^```$", DOCS.read_text(), re.MULTILINE | re.DOTALL)
    assert match, f"no ```{language} block in {DOCS}"
    return match.group(1)


def documented_mc(directory: Path, *, address: str, ca_file: str, mx_port: int = 25) -> str:
    """The test instance's .mc around docs/sendmail.md's block, with our socket map address and trust store."""
    certs = directory / "certs"
    certs.mkdir(exist_ok=True)
    shutil.copyfile(ca_file, certs / "ca.pem")
    body = substitute(
        documented_block("m4"),
        {DOC_CA_FILE: str(certs / "ca.pem"), DOC_CA_PATH: f"`{certs}'", DOC_ADDRESS: address},
    )
    return instance_mc(directory, mx_port=mx_port, body=body)


def squash(text: str) -> str:
    """``text`` without whitespace: sendmail prints a rule's result as tokens ("4 . 7 . 0"), we write "4.7.0"."""
    return re.sub(r"\s+", "", text)


def returns(output: str, ruleset: str) -> list[str]:
    """What ``ruleset`` returned, each time -bt ran it (its trace lines ``NAME   returns: VALUE``)."""
    return re.findall(rf"^(?:> )*{ruleset}\s+returns: (.*)$", output, re.MULTILINE)


# -- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools() -> Tools:
    return find_sendmail()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as w:
        w.publish("enforce.example", ENFORCE)
        w.publish("testing.example", TESTING)
        w.publish("slow.example", ENFORCE, delay=3.0)  # longer than the test that uses it
        # DANE: every MX host with a TLSA record, the zone signed (the world sets AD, tests/test_socketmap_dane.py)
        w.publish("dane.example", ENFORCE.replace("mx.enforce.example", "mx.dane.example"))
        w.add_record("dane.example", "MX", "10 mx.dane.example.")
        w.add_record("mx.dane.example", "A", "127.0.0.2")
        w.tlsa("_25._tcp.mx.dane.example", 3, 1, 1, w.tlsa_data("mx.dane.example"))
        w.sign("dane.example")
        yield w
        assert not w.errors


@pytest.fixture
def sendmail(tools: Tools, world: World) -> Iterator[Sendmail]:
    instance, directory = sendmail_instance(tools)
    try:
        yield instance
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def configure(sendmail: Sendmail, world: World, address: str) -> None:
    sendmail.configure(documented_mc(sendmail.directory, address=address, ca_file=world.ca_pem_path))


class Recorder:
    """A TCP relay in front of the socketmap server: what its clients write, recorded byte for byte."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.received = bytearray()
        self.port = 0

    async def __aenter__(self) -> Recorder:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if record:
                        self.received += data
                    writer.write(data)
                    await writer.drain()
            finally:
                writer.close()

        await asyncio.gather(
            pipe(client_reader, server_writer, True), pipe(server_reader, client_writer, False), return_exceptions=True
        )


# -- the binary and the documented configuration -------------------------------------------------------------------


def listed(output: str, heading: str) -> set[str]:
    """The words of one of ``sendmail -d0.N``'s lists (``Compiled with:``, ``FFR Defines:``): its heading line
    and the tab-indented lines after it."""
    match = re.search(rf"^ *{heading}(.*(?:\n\t.*)*)", output, re.MULTILINE)
    assert match, output
    return set(match.group(1).split())


async def test_debian_sendmail_has_mta_sts_compiled_in(sendmail: Sendmail, world: World) -> None:
    configure(sendmail, world, DOC_ADDRESS)
    _, basic = await sendmail.run("-d0.1", "-bt", stdin=b"")
    compiled = listed(basic, "Compiled with:")
    assert {"SOCKETMAP", "STARTTLS", "MAP_REGEX"} <= compiled, compiled
    # docs/sendmail.md: no DANE in Debian's build, hence never "OK dane-only" on the sts map name
    assert "DANE" not in compiled, compiled
    assert "FFR Defines:" not in basic  # -d0.1 does not show the "for future release" options...
    _, detailed = await sendmail.run("-d0.13", "-bt", stdin=b"")
    assert {"_FFR_MTA_STS", "_FFR_TLS_ALTNAMES"} <= listed(detailed, "FFR Defines:")  # ...level 13 does
    assert re.search(r"^Version 8\.17\.", basic, re.MULTILINE), basic


async def test_the_documented_configuration(tools: Tools, tmp_path: Path) -> None:
    """docs/sendmail.md's .mc lines, as they are, build a .cf with the socket map and the STS options; its TOML
    loads, with a request_timeout below the map's -d timeout."""
    cf = build_cf(tools, instance_mc(tmp_path, mx_port=25, body=documented_block("m4")))
    assert "\nKsts socket -d5 -T<TMPF> inet:8461@127.0.0.1\n" in cf
    for option in ["StrictTransportSecurity=true", "SetCertAltnames=true", f"CACertFile={DOC_CA_FILE}"]:
        assert f"\nO {option}\n" in cf, option
    assert "\nO CACertPath=/etc/ssl/certs\n" in cf
    # the feature's default, documented as a trap (port 5461, not 8461)
    default = build_cf(tools, instance_mc(tmp_path, mx_port=25, body="FEATURE(`sts')dnl"))
    assert "\nKsts socket -d5 -T<TMPF> inet:5461@127.0.0.1\n" in default

    toml = tmp_path / "sendmail.toml"
    toml.write_text(documented_block("toml"))
    config = load_config(toml)
    timeout = re.search(r"\nKsts socket -d(\d+) ", cf)
    assert timeout is not None
    assert config.request_timeout < int(timeout.group(1))
    assert tomllib.loads(documented_block("toml")).keys() == {"request_timeout"}
    command = next(line for line in documented_block("sh").splitlines() if line.startswith("mtasts serve-"))
    assert command.split()[:4] == ["mtasts", "serve-socketmap", "--listen", "127.0.0.1:8461"]


# -- /map sts KEY: what sendmail sends and what it reads -----------------------------------------------------------


async def test_sendmail_asks_the_map_sts_for_the_lowercased_domain(
    sendmail: Sendmail, world: World, resolver: PolicyResolver
) -> None:
    keys = ["enforce.example", "Enforce.EXAMPLE", "testing.example", "unpublished.example", ".enforce.example"]
    async with SocketmapServer(resolver, port=0) as server, Recorder(server.port) as recorder:
        configure(sendmail, world, f"inet:{recorder.port}@127.0.0.1")
        found = await sendmail.map_lookups([*keys, "[192.0.2.1]"])
    assert found == {
        "enforce.example": SECURE,
        "Enforce.EXAMPLE": SECURE,
        "testing.example": NOT_FOUND,  # RFC 8461 §5.2: testing does not change delivery
        "unpublished.example": NOT_FOUND,
        ".enforce.example": NOT_FOUND,  # no parent-domain fallback (§3.4)
        "[192.0.2.1]": NOT_FOUND,  # an address literal has no policy
    }
    # netstrings "<mapname> <key>": the map's name is "sts", sendmail lower-cases the key
    requests = [f"sts {key.lower()}".encode() for key in [*keys, "[192.0.2.1]"]]
    assert bytes(recorder.received) == b"".join(b"%d:%s," % (len(r), r) for r in requests)
    assert server.errors == 0
    assert world.queries("_mta-sts.enforce.example", "TXT") == 1  # the second lookup was a cache hit


async def test_sendmail_over_a_unix_socket(sendmail: Sendmail, world: World, resolver: PolicyResolver) -> None:
    path = sendmail.directory / "mtasts.sock"
    async with SocketmapServer(resolver, unix_path=str(path)):
        configure(sendmail, world, f"local:{path}")
        assert await sendmail.map_lookups(["enforce.example"]) == {"enforce.example": SECURE}


# -- the sts rulesets on our answers -------------------------------------------------------------------------------


async def run_rules(
    sendmail: Sendmail, domain: str, *, server_name: str, cert_altnames: Sequence[str] = (), verify: str = "OK"
) -> str:
    """Sendmail's three sts rulesets for a recipient at ``domain`` on a connection to ``server_name`` whose
    certificate names ``cert_altnames`` and verified as ``verify``, in the order a delivery runs them."""
    lines = [
        f".D{{rcpt_addr}}rcpt@{domain}",
        f".D{{server_name}}{server_name}",
        ".D{cipher_bits}256",
        *(f".C{{cert_altnames}}{name}" for name in cert_altnames),
        "Set_SNI x",  # tls_clt_features, before STARTTLS
        f"STS_secure {verify}",  # tls_server, after STARTTLS: the argument is ${verify}
        f"STS_Check rcpt@{domain}",  # tls_rcpt, before RCPT
    ]
    return await sendmail.bt(lines)


@pytest.mark.parametrize(
    ("server_name", "cert_altnames", "check"),
    [
        pytest.param("mx.enforce.example", ["mx.enforce.example"], "ok", id="listed"),
        pytest.param("mx2.example.net", ["mx2.example.net"], "ok", id="star-pattern"),  # *.example.net
        # sendmail 8.17.1's STS_SAN rule never matches a wildcard certificate name (docs/sendmail.md)
        pytest.param(
            "mx3.example.net",
            ["*.example.net"],
            "$# error $@ 4.7.0 $: 450 mx3.example.net not listed in SANs",
            id="wildcard-certificate",
        ),
        # RFC 8461 §4.1: "*." stands for exactly one label; sendmail's rules agree with ".example.net"
        pytest.param(
            "a.b.example.net",
            ["a.b.example.net"],
            '$# error $@ 4.7.0 $: 450 a.b.example.net not found in " " mx.enforce.example:.example.net',
            id="two-labels-deep",
        ),
        pytest.param(
            "mx.other.example",
            ["mx.other.example"],
            '$# error $@ 4.7.0 $: 450 mx.other.example not found in " " mx.enforce.example:.example.net',
            id="mx-not-in-policy",
        ),
        pytest.param(
            "mx.enforce.example",
            ["other.enforce.example"],
            "$# error $@ 4.7.0 $: 450 mx.enforce.example not listed in SANs",
            id="name-not-in-certificate",
        ),
    ],
)
async def test_the_sts_rules_check_the_mx_against_our_match_list(
    sendmail: Sendmail,
    world: World,
    resolver: PolicyResolver,
    server_name: str,
    cert_altnames: list[str],
    check: str,
) -> None:
    async with SocketmapServer(resolver, port=0) as server:
        configure(sendmail, world, f"inet:{server.port}@127.0.0.1")
        output = await run_rules(sendmail, "enforce.example", server_name=server_name, cert_altnames=cert_altnames)
    # servername=hostname: the MX host name goes out as SNI (Set_SNI sets {sts_sni} and returns the feature)
    assert [squash(r) for r in returns(output, "Set_SNI")] == ["sts=secure;servername=hostname"], output
    assert returns(output, "STS_secure") == ["OK"], output
    assert [squash(r) for r in returns(output, "STS_Check")] == [squash(check)], output


@pytest.mark.parametrize(
    ("verify", "error"),
    [
        ("FAIL", '403 " authentication failed"'),  # the chain does not lead to the trust store
        ("NONE", '403 " other side does not support STARTTLS"'),
        ("NO", '403 " not authenticated"'),  # no certificate verification at all (no trust store)
    ],
)
async def test_the_sts_rules_require_a_verified_certificate(
    sendmail: Sendmail, world: World, resolver: PolicyResolver, verify: str, error: str
) -> None:
    async with SocketmapServer(resolver, port=0) as server:
        configure(sendmail, world, f"inet:{server.port}@127.0.0.1")
        output = await run_rules(
            sendmail, "enforce.example", server_name="mx.enforce.example", cert_altnames=["x"], verify=verify
        )
    assert [squash(r) for r in returns(output, "STS_secure")] == [squash(f"$# error $@ 4.7.0 $: {error}")], output


async def test_without_an_enforce_policy_the_rules_let_everything_pass(
    sendmail: Sendmail, world: World, resolver: PolicyResolver
) -> None:
    async with SocketmapServer(resolver, port=0) as server:
        configure(sendmail, world, f"inet:{server.port}@127.0.0.1")
        output = await run_rules(sendmail, "testing.example", server_name="mx.elsewhere.example", verify="FAIL")
    assert returns(output, "Set_SNI") == ['""'], output  # no SNI feature requested
    assert returns(output, "STS_secure") == ["FAIL"], output  # passed through: ordinary STARTTLS rules apply
    assert returns(output, "STS_Check") == ["ok"], output


async def test_temp_defers_in_every_sts_ruleset(sendmail: Sendmail, world: World, resolver: PolicyResolver) -> None:
    """A lookup still running after request_timeout is TEMP: sendmail's map reports a temporary failure
    (``-T<TMPF>``) and each rule answers ``450 4.7.0`` — deferred, never sent without the policy."""
    async with SocketmapServer(resolver, port=0, request_timeout=0.1) as server:
        configure(sendmail, world, f"inet:{server.port}@127.0.0.1")
        assert await server.answer(b"sts slow.example") == b"TEMP policy lookup in progress"
        assert await sendmail.map_lookups(["slow.example"]) == {"slow.example": TEMPFAIL}
        output = await run_rules(sendmail, "slow.example", server_name="mx.enforce.example")
    for ruleset in ["Set_SNI", "STS_secure", "STS_Check"]:
        assert [squash(r) for r in returns(output, ruleset)] == [squash(TEMP_FAIL_RULE)], (ruleset, output)
        assert re.search(rf"== Ruleset {ruleset} \(\d+\) status 75", output), (ruleset, output)


async def test_an_unreachable_daemon_defers(sendmail: Sendmail, world: World, resolver: PolicyResolver) -> None:
    async with SocketmapServer(resolver, port=0) as server:
        port = server.port  # a port nothing listens on any more
    configure(sendmail, world, f"inet:{port}@127.0.0.1")
    assert await sendmail.map_lookups(["enforce.example"]) == {"enforce.example": TEMPFAIL}
    output = await run_rules(sendmail, "enforce.example", server_name="mx.enforce.example")
    assert [squash(r) for r in returns(output, "STS_Check")] == [squash(TEMP_FAIL_RULE)], output


# -- the sts map name: always the plain answer, whatever tlsrpt and dane say ---------------------------------------


async def test_the_sts_map_never_gets_tlsrpt_attributes(
    sendmail: Sendmail, world: World, resolver: PolicyResolver
) -> None:
    """Postfix 3.10's TLS-RPT attributes after ``servername=hostname`` would glue the last ``match=`` pattern to
    them in sendmail's rules (an MX matching only that pattern deferred): the ``sts`` map name gets the plain answer
    even with ``tlsrpt = true``, so one daemon serves Postfix 3.10 and sendmail. Both MX patterns are checked."""
    async with SocketmapServer(resolver, port=0, tlsrpt=True) as server:
        configure(sendmail, world, f"inet:{server.port}@127.0.0.1")
        assert (await sendmail.map_lookups(["enforce.example"])) == {"enforce.example": SECURE}
        first = await run_rules(
            sendmail, "enforce.example", server_name="mx.enforce.example", cert_altnames=["mx.enforce.example"]
        )
        last = await run_rules(
            sendmail, "enforce.example", server_name="mx2.example.net", cert_altnames=["mx2.example.net"]
        )
        # the same server still gives Postfix (any other map name) its TLS-RPT attributes
        assert (await server.answer(b"postfix enforce.example")).startswith(b"OK secure match=")
        assert b" policy_type=sts " in await server.answer(b"postfix enforce.example")
    assert returns(first, "STS_Check") == ["ok"], first
    assert returns(last, "STS_Check") == ["ok"], last


async def test_the_sts_map_never_gets_dane_only(sendmail: Sendmail, world: World, resolver: PolicyResolver) -> None:
    """``OK dane-only`` has no ``secure`` in it: sendmail (built without DANE) would check nothing for the domain.
    The ``sts`` map name gets the domain's MTA-STS answer even with ``dane = true`` (Postfix, on its own map name,
    still gets ``dane-only``), and the rules check it: a certificate that fails is refused."""
    async with SocketmapServer(resolver, port=0, dane=True) as server:
        configure(sendmail, world, f"inet:{server.port}@127.0.0.1")
        assert await server.answer(b"postfix dane.example") == b"OK dane-only"
        [answer] = (await sendmail.map_lookups(["dane.example"])).values()
        assert answer.startswith("secure match=mx.dane.example"), answer
        checked = await run_rules(sendmail, "dane.example", server_name="mx.elsewhere.example", verify="FAIL")
    assert "authenticationfailed" in squash(returns(checked, "STS_secure")[0]), checked
    assert "450mx.elsewhere.examplenotfoundin" in squash(returns(checked, "STS_Check")[0]), checked


async def test_the_entry_rulesets_with_debians_access_db(
    sendmail: Sendmail, world: World, resolver: PolicyResolver
) -> None:
    """Debian's sendmail.mc has ``FEATURE(`access_db')``, which adds its own TLS rules to ``tls_server`` and
    ``tls_rcpt`` (the rulesets sendmail calls): the sts checks still decide first."""
    async with SocketmapServer(resolver, port=0) as server:
        access = f"FEATURE(`access_db', `hash -o -T<TMPF> {sendmail.directory}/access')dnl\n"
        sendmail.configure(
            instance_mc(
                sendmail.directory,
                mx_port=25,
                body=access + substitute(documented_block("m4"), {DOC_ADDRESS: f"inet:{server.port}@127.0.0.1"}),
            )
        )
        output = await sendmail.bt(
            [
                ".D{rcpt_addr}rcpt@enforce.example",
                ".D{cipher_bits}256",
                ".D{server_name}mx.other.example",
                ".C{cert_altnames}mx.other.example",
                "tls_server OK",
                "tls_rcpt rcpt@enforce.example",  # the MX is not in the policy
                "tls_server FAIL",
                ".D{server_name}mx.enforce.example",
                ".C{cert_altnames}mx.enforce.example",
                "tls_rcpt rcpt@enforce.example",
            ]
        )
    assert [squash(r) for r in returns(output, "tls_server")] == [
        "OK",
        squash('$# error $@ 4.7.0 $: 403 " authentication failed"'),
    ], output
    not_found = '$# error $@ 4.7.0 $: 450 mx.other.example not found in " " mx.enforce.example:.example.net'
    assert [squash(r) for r in returns(output, "tls_rcpt")] == [squash(not_found), "OK"], output
