"""The cold lookup's path (issue 16): one TXT + one A + one GET per cold domain, the strict fetch's own HTTP/1.1
client (mtasts.fetch: TLS over memory BIOs, ``ResponseReader``), dnspython's queries on a lean UDP backend.

What the rewrite must not change is pinned here against the loopback world; the hostile hosts of
``test_hostile.py`` and the limits of ``test_limits.py`` run the same code.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dns.asyncresolver
import dns.name
import dns.rdatatype
import dns.resolver
import pytest

from mtasts import LookupStatus, parse_policy
from mtasts.dns import GatedResolver, query_txt
from mtasts.fetch import MAX_FIELDS, MAX_INTERIM, MAX_LINE, BadHttpMessage, ClientPayloadError, ResponseReader
from mtasts.testing import RawServer, World

from .conftest import FakeClock

ROOT = Path(__file__).resolve().parent.parent
POLICY = "version: STSv1\nmode: enforce\nmx: *.example.net\nmax_age: 86400\n"
FETCH_ERROR, INVALID = "sts-policy-fetch-error", "sts-policy-invalid"


# -- the world's counters: exactly one of each per cold domain ----------------------------------------------


async def test_one_txt_one_address_one_get_per_cold_domain(world: World, clock: FakeClock) -> None:
    domains = [f"d{i}.example" for i in range(60)]
    for domain in domains:
        world.publish(domain, POLICY, id="7")
    async with world.policy_resolver(clock=clock) as resolver:
        lookups = await asyncio.gather(*(resolver.lookup(domain) for domain in domains))
    assert {lookup.status for lookup in lookups} == {LookupStatus.FETCHED}
    assert all(lookup.policy == parse_policy(POLICY) for lookup in lookups)
    for domain in domains:
        assert world.queries(f"_mta-sts.{domain}", "TXT") == 1
        assert world.queries(f"mta-sts.{domain}", "A") == 1
        assert world.queries(f"mta-sts.{domain}", "AAAA") == 0  # A first, AAAA only without an A
        assert world.requests(f"mta-sts.{domain}") == 1
    assert sorted(world.sni_names) == sorted(f"mta-sts.{domain}" for domain in domains)  # SNI: the policy host
    assert all(q.transport == "udp" for q in world.dns_log)
    assert not world.errors


async def test_the_request_is_a_strict_get(world: World, clock: FakeClock) -> None:
    """§3.3: GET of the well-known path, Host with the port, no validators, no-cache; nothing else asked."""
    world.publish("example.com", POLICY)
    async with world.policy_resolver(clock=clock) as resolver:
        assert (await resolver.lookup("example.com")).status is LookupStatus.FETCHED
    [request] = world.request_log
    assert (request.method, request.path, request.host) == ("GET", "/.well-known/mta-sts.txt", "mta-sts.example.com")
    headers = request.headers
    assert headers["Host"] == f"mta-sts.example.com:{world.https_port}"
    assert headers["Cache-Control"] == "no-cache" and headers["Accept-Encoding"] == "identity"
    assert headers["Accept"] == "text/plain" and headers["User-Agent"] == "mtasts"
    for validator in ("If-None-Match", "If-Modified-Since", "Cookie", "Authorization"):
        assert validator not in headers


# -- the strict rules, with the new client --------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_refused_and_its_target_never_asked(world: World, clock: FakeClock, status: int) -> None:
    world.publish("target.example", POLICY)
    target = f"https://mta-sts.target.example:{world.https_port}/.well-known/mta-sts.txt"
    world.publish("example.com", POLICY, status=status, redirect_to=target)
    async with world.policy_resolver(clock=clock) as resolver:
        lookup = await resolver.lookup("example.com")
    assert (lookup.status, lookup.result_type) == (LookupStatus.FETCH_ERROR, FETCH_ERROR)
    assert f"HTTP {status} to '{target}' (redirects are not followed)" in (lookup.error or "")
    assert world.requests("mta-sts.target.example") == 0


@pytest.mark.parametrize(
    ("content_type", "result"),
    [("text/html", INVALID), (None, INVALID), ("text/plain; charset=utf-8", None), ("TEXT/PLAIN", None)],
)
async def test_the_media_type_must_be_text_plain(
    world: World, clock: FakeClock, content_type: str | None, result: str | None
) -> None:
    world.publish("example.com", POLICY, content_type=content_type)
    async with world.policy_resolver(clock=clock) as resolver:
        lookup = await resolver.lookup("example.com")
    if result is None:
        assert lookup.status is LookupStatus.FETCHED
    else:
        assert (lookup.status, lookup.result_type) == (LookupStatus.FETCH_ERROR, result)
        assert "expected text/plain" in (lookup.error or "")


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_compressed_policies_are_decoded(world: World, clock: FakeClock, coding: str) -> None:
    world.publish("example.com", POLICY, content_encoding=coding)
    async with world.policy_resolver(clock=clock) as resolver:
        lookup = await resolver.lookup("example.com")
    assert (lookup.status, lookup.policy) == (LookupStatus.FETCHED, parse_policy(POLICY))


@pytest.mark.parametrize(("size", "ok"), [(65_536, True), (65_537, False)])
async def test_the_cap_is_inclusive(world: World, clock: FakeClock, size: int, ok: bool) -> None:
    body = POLICY.encode() + b"x: " + b"y" * (size - len(POLICY) - 4) + b"\n"
    assert len(body) == size
    world.publish("example.com", POLICY, body=body)
    async with world.policy_resolver(clock=clock) as resolver:
        lookup = await resolver.lookup("example.com")
    if ok:
        assert lookup.status is LookupStatus.FETCHED
    else:
        assert (lookup.status, lookup.result_type) == (LookupStatus.FETCH_ERROR, INVALID)
        assert "larger than 65536 bytes" in (lookup.error or "")


@pytest.mark.parametrize("kind", ["wrong-name", "cn-only", "expired", "untrusted"])
async def test_certificates_are_checked_by_dns_id(world: World, clock: FakeClock, kind: str) -> None:
    world.publish("example.com", POLICY, cert=kind)
    async with world.policy_resolver(clock=clock) as resolver:
        lookup = await resolver.lookup("example.com")
    assert (lookup.status, lookup.result_type) == (LookupStatus.FETCH_ERROR, "sts-webpki-invalid")
    assert world.requests("mta-sts.example.com") == 0  # no request over an unverified channel


async def test_an_idle_host_and_the_total_deadline(world: World, clock: FakeClock) -> None:
    world.publish("slow.example", POLICY, delay=2)
    world.publish("dribble.example", POLICY, body_chunk_delay=0.3)
    async with world.policy_resolver(clock=clock, fetch_timeout=1.5, fetch_idle_timeout=0.5) as resolver:
        slow, dribble = await asyncio.gather(resolver.lookup("slow.example"), resolver.lookup("dribble.example"))
    assert "stopped answering (nothing received for 0.5 s)" in (slow.error or "")
    assert "no complete response within 1.5 s" in (dribble.error or "")


async def test_a_refused_address_is_skipped_for_the_next(world: World, clock: FakeClock) -> None:
    world.publish("example.com", POLICY, policy_host_addresses=["127.0.0.9", world.host])
    async with world.policy_resolver(clock=clock) as resolver:
        assert (await resolver.lookup("example.com")).status is LookupStatus.FETCHED


async def test_an_address_whose_tls_fails_is_dropped_for_the_next(world: World, clock: FakeClock) -> None:
    """As aiohttp's connector did: a TLS failure on one address (plaintext HTTP on 443 here) tries the others.
    (The order of the two A records is the world's: over 12 domains the bad one comes first at least once.)"""
    names = [f"d{i}.example" for i in range(12)]
    async with RawServer("127.0.0.8", world.https_port, behaviour="plaintext") as raw:
        for name in names:
            world.publish(name, POLICY, policy_host_addresses=["127.0.0.8", world.host])
        async with world.policy_resolver(clock=clock) as resolver:
            lookups = await asyncio.gather(*(resolver.lookup(name) for name in names))
    assert {lookup.status for lookup in lookups} == {LookupStatus.FETCHED}
    assert 1 <= len(raw.connections) <= len(names)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
async def test_no_connection_is_left_open(world: World, clock: FakeClock) -> None:
    for i in range(20):
        world.publish(f"d{i}.example", POLICY)
    world.publish("bad.example", POLICY, status=500)
    world.publish("wrong.example", POLICY, cert="wrong-name")
    async with world.policy_resolver(clock=clock) as resolver:
        before = open_descriptors()
        for _ in range(3):
            await asyncio.gather(*(resolver.lookup(f"d{i}.example") for i in range(20)),
                                 resolver.recheck("bad.example"), resolver.recheck("wrong.example"))  # fmt: skip
            clock.advance(86_401)  # past max_age: every domain is cold again
        for _ in range(100):  # the world's side of each connection closes a moment after the client's
            if open_descriptors() <= before:
                break
            await asyncio.sleep(0.02)
        assert open_descriptors() <= before
    assert world.requests("mta-sts.d0.example") == 3


# -- DNS: through the caller's dnspython resolver ---------------------------------------------------------


async def test_queries_use_the_lean_udp_backend_and_answer_the_same(world: World) -> None:
    world.publish("example.com", POLICY, id="42")
    plain = world.resolver()
    gated = GatedResolver(plain, 8)
    assert gated._backend is not None  # a dnspython resolver on the selector loop
    via_gate = await query_txt(gated, "_mta-sts.example.com.")
    direct = await query_txt(plain, "_mta-sts.example.com.")
    assert via_gate == direct and via_gate.records == (b"v=STSv1; id=42;",)


async def test_a_resolver_wrapper_without_backend_is_called_as_before(world: World, clock: FakeClock) -> None:
    world.publish("example.com", POLICY)
    calls: list[str] = []

    class Wrapper(dns.asyncresolver.Resolver):
        async def resolve(  # type: ignore[override]
            self,
            qname: dns.name.Name | str,
            rdtype: dns.rdatatype.RdataType | str = dns.rdatatype.A,
            *,
            raise_on_no_answer: bool = True,
            search: bool | None = None,
        ) -> dns.resolver.Answer:
            calls.append(f"{qname} {dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))}")
            return await super().resolve(qname, rdtype, raise_on_no_answer=raise_on_no_answer, search=search)

    wrapper = Wrapper(configure=False)
    wrapper.nameservers = [world.host]
    wrapper.port = world.dns_port
    assert GatedResolver(wrapper, 8)._backend is None  # its own resolve, which may take no backend: none given
    async with world.policy_resolver(clock=clock, dns_resolver=wrapper) as resolver:
        assert (await resolver.lookup("example.com")).status is LookupStatus.FETCHED
    assert calls == ["_mta-sts.example.com. TXT", "mta-sts.example.com. A"]


# -- no aiohttp, and uvloop -------------------------------------------------------------------------------


def test_a_policy_fetch_imports_no_aiohttp() -> None:
    """aiohttp costs a process ~0.25 s to import; the resolver and its fetch need none of it."""
    code = "import sys, mtasts.resolver, mtasts.fetch; print('aiohttp' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"


UVLOOP_SCRIPT = """
import asyncio, json, uvloop
from mtasts.testing import World

async def main():
    async with World() as world:
        names = [f"d{i}.example" for i in range(20)]
        for name in names:
            world.publish(name, "version: STSv1\\nmode: enforce\\nmx: *.example.net\\nmax_age: 86400\\n")
        world.publish("bad.example", None, cert="wrong-name")
        async with world.policy_resolver() as resolver:
            lookups = await asyncio.gather(*(resolver.lookup(n) for n in [*names, "bad.example"]))
        counts = [[world.queries(f"_mta-sts.{n}", "TXT"), world.queries(f"mta-sts.{n}", "A"),
                   world.requests(f"mta-sts.{n}")] for n in names]
        print(json.dumps({"statuses": [lookup.status.value for lookup in lookups], "counts": counts,
                          "bad": lookups[-1].result_type}))

uvloop.run(main())
"""


def test_the_cold_path_on_uvloop() -> None:
    pytest.importorskip("uvloop")
    result = subprocess.run(
        [sys.executable, "-c", UVLOOP_SCRIPT], capture_output=True, text=True, check=False, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["statuses"] == ["fetched"] * 20 + ["fetch-error"]
    assert report["counts"] == [[1, 1, 1]] * 20
    assert report["bad"] == "sts-webpki-invalid"


# -- ResponseReader: RFC 9112 framing, no I/O -------------------------------------------------------------


def read_all(data: bytes, *, step: int | None = None) -> tuple[int, dict[str, str], bytes, bool]:
    """Feed ``data`` (in pieces of ``step`` bytes, else at once); the head's status and fields, the body, and
    whether the response completed."""
    reader = ResponseReader()
    head = None
    body = b""
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        reader.receive(piece)
        if head is None:
            head = reader.head()
        if head is not None:
            body += reader.body()
    assert head is not None
    return head.status, head.fields, body, reader.complete


OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"


@pytest.mark.parametrize("step", [None, 1, 7])
def test_content_length_and_chunked_bodies_byte_by_byte(step: int | None) -> None:
    status, fields, body, complete = read_all(OK_HEAD + b"Content-Length: 5\r\n\r\nhelloEXTRA", step=step)
    assert (status, body, complete) == (200, b"hello", True)
    assert fields["content-type"] == "text/plain"
    chunked = OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n001 \r\n!\r\n0\r\nX-T: y\r\n\r\n"
    assert read_all(chunked, step=step)[2:] == (b"hello!", True)


def test_transfer_encoding_in_an_http_1_0_response_is_faulty_framing() -> None:
    """RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding MUST be treated as faulty framing; HTTP/1.0 with
    Content-Length stays fine."""
    reader = ResponseReader()
    reader.receive(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    with pytest.raises(BadHttpMessage, match=r"HTTP/1\.0"):
        reader.head()
    assert read_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")[2:] == (b"ok", True)


def test_interim_responses_are_skipped_up_to_a_bound() -> None:
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + b"HTTP/1.1 100 Continue\r\n\r\n"
    assert read_all(interim + OK_HEAD + b"Content-Length: 2\r\n\r\nok")[::2] == (200, b"ok")
    with pytest.raises(BadHttpMessage, match="interim"):
        read_all(b"HTTP/1.1 100 Continue\r\n\r\n" * (MAX_INTERIM + 1) + OK_HEAD + b"\r\n")


def test_repeated_fields_are_joined_and_identical_lengths_are_one() -> None:
    repeated = OK_HEAD + b"Content-Length: 2\r\nX-A: 1\r\nx-a: 2\r\ncontent-length: 2\r\n\r\nok"
    _, fields, body, _ = read_all(repeated)
    assert (fields["x-a"], fields["content-length"], body) == ("1, 2", "2, 2", b"ok")


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",  # conflicting lengths
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",  # smuggling shape
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",  # obs-fold
        b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",  # a bare CR inside a value
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",  # bare LF line ends
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
    ],
)
def test_malformed_heads_are_refused(head: bytes) -> None:
    reader = ResponseReader()
    reader.receive(head + b"0" * (MAX_LINE + 10))
    with pytest.raises(BadHttpMessage):
        reader.head()


def test_line_and_field_count_limits() -> None:
    reader = ResponseReader()
    reader.receive(b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * MAX_LINE)  # no CRLF yet, already over the limit
    with pytest.raises(BadHttpMessage, match="longer than 8190"):
        reader.head()
    fine = OK_HEAD + b"X-B: " + b"b" * (MAX_LINE - 5) + b"\r\nContent-Length: 0\r\n\r\n"
    assert read_all(fine)[3] is True  # a line of exactly MAX_LINE bytes is accepted
    reader = ResponseReader()
    reader.receive(b"HTTP/1.1 200 OK\r\n" + b"X-F: 1\r\n" * (MAX_FIELDS + 1))
    with pytest.raises(BadHttpMessage, match="Too many headers"):
        reader.head()


@pytest.mark.parametrize(
    "chunks",
    [b"5\r\nhelloXX0\r\n\r\n", b"zz\r\nhello\r\n", b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n", b"1" * 17 + b"\r\n"],
)
def test_broken_chunks_are_refused(chunks: bytes) -> None:
    with pytest.raises(BadHttpMessage):
        read_all(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)


@pytest.mark.parametrize(
    "cut",
    [
        OK_HEAD + b"Content-Length: 10\r\n\r\nhalf",
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",  # no last chunk
        OK_HEAD + b"Content-Len",  # inside the head
    ],
)
def test_an_early_end_is_a_payload_error(cut: bytes) -> None:
    reader = ResponseReader()
    reader.receive(cut)
    if reader.head() is not None:
        reader.body()
    with pytest.raises(ClientPayloadError):
        reader.end()


def test_a_body_without_framing_reads_until_the_end() -> None:
    """HTTP/1.0 style: the reader frames it (the fetch refuses it, test_hostile.py), ending only at the close."""
    reader = ResponseReader()
    reader.receive(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nversion: STSv1\n")
    head = reader.head()
    assert head is not None and head.length is None and not head.chunked
    assert reader.body() == b"version: STSv1\n" and not reader.complete
    reader.end()


@pytest.mark.parametrize(
    "line",
    [
        b"X:" + b" " * 8000 + b"\x01",  # a run of OWS, then a byte no field may hold
        b"X:" + b" \t" * 4000 + b"a\x01",
        b"HTTP/1.1 200 " + b" " * 8000 + b"\x01",
        b"1;" + b" " * 8000 + b"\x01",  # a chunk-size line
    ],
    ids=["field", "field-tabs", "status", "chunk"],
)
def test_hostile_lines_are_refused_in_linear_time(line: bytes) -> None:
    """No regex backtracking: 128 such lines must not cost a fetch seconds of CPU (each one used to take ~0.2 s)."""
    head = OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" if line.startswith(b"1;") else b"HTTP/1.1 200 OK\r\n"
    data = line + b"\r\n" if line.startswith(b"HTTP") else head + line + b"\r\n"
    start = time.perf_counter()
    for _ in range(20):
        with pytest.raises(BadHttpMessage):
            read_all(data + b"\r\n")
    assert time.perf_counter() - start < 0.5


def test_a_flood_of_tiny_chunks_costs_linear_time() -> None:
    """One-byte chunks, 256 KiB of them per read: the reader drops what it read once per call, not per chunk."""

    def seconds(chunks: int) -> float:
        reader = ResponseReader()
        reader.receive(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        assert reader.head() is not None
        reader.receive(b"1\r\nx\r\n" * chunks)
        start = time.perf_counter()
        assert len(reader.body()) == chunks
        return time.perf_counter() - start

    small, large = min(seconds(10_000) for _ in range(3)), min(seconds(40_000) for _ in range(3))
    assert large < 9 * small + 0.01, (small, large)  # 4x the input: ~4x the time (quadratic would be ~16x)
