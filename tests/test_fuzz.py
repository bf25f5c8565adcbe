"""Hardening: every parser fuzzed with hypothesis, bounded (the long run is ``python -m benchmarks.fuzz``).

Where tests/test_properties.py feeds the parsers arbitrary text and fragment soup, this file feeds them what a
fuzzer would: mutations of the RFC vectors (tests/vectors/*.json) — bytes inserted, deleted, duplicated and swapped,
case flips, WSP, CR / LF / NUL and non-ASCII injected, grammar tokens, very long tokens — and inputs built from the
grammar whose correct parse is known, so the answer is checked, not only the absence of a crash. The contract
checked everywhere: nothing but the function's documented :class:`~mtasts.errors.MTASTSError` subclass escapes,
and the functions documented as never raising do not raise at all. docs/fuzzing.md has the long run's results.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import ssl
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.resolver
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mtasts import _abnf
from mtasts.domain import is_address_literal, normalize_domain
from mtasts.errors import DomainError, MTASTSError, PolicyError, TxtRecordError
from mtasts.matching import mx_matches
from mtasts.netstring import NetstringDecoder, NetstringError, encode
from mtasts.policy import MAX_MAX_AGE, Mode, Policy, normalize_mx_pattern, parse_policy
from mtasts.resolver import PolicyResolver
from mtasts.socketmap import SocketmapServer, parse_key
from mtasts.tlsrpt import TlsRptRecordError, parse_tlsrpt_record, select_tlsrpt_record
from mtasts.txt import is_sts_record, parse_txt_record, select_txt_record

VECTORS = Path(__file__).resolve().parent / "vectors"


def _vectors(name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


# mutants of valid inputs are near-valid: they reach deeper than mutants of the invalid vectors (test_vectors.py)
TXT_SEEDS = sorted({record for v in _vectors("txt.json") if v["id"] for record in v["records"] if "STS" in record})
POLICY_SEEDS = [v["body"] for v in _vectors("policy.json") if v["valid"]]
MX_VECTORS = [(v["pattern"], v["host"]) for v in _vectors("mx.json")]
HOST_SEEDS = sorted({name for pair in MX_VECTORS for name in pair} | {"[192.0.2.1]", "2001:db8::1", "例え.テスト"})
TLSRPT_SEEDS = [
    "v=TLSRPTv1; rua=mailto:reports@example.com",  # RFC 8460 §3
    "v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt",
    "v=TLSRPTv1 ; rua=mailto:a@b.example , https://r.example/x?y=1 ; ext=1 ;",
    "v=TLSRPTv1; rua=ftp://x.example, mailto:a@b%21c.example",
]

# -- mutations: what a byte-level fuzzer does, as a strategy that shrinks ---------------------------------------

INTERESTING = "\x00\t\n\r\x0b\x0c ;:=,.*[]-_@/%!\x7f\x80\xa0\xff"
UNICODE = ["é", "ß", "İ", "ı", "\u212a", "\ufeff", "\u200d", "\u00ad", "\u3002", "\uff0e", "\u2028", "\u0085", "Ａ"]
WSP_RUNS = [" ", "\t", "  ", " \t ", " " * 100]
BREAKS = ["\r", "\n", "\r\n", "\x00", "\n\n", "\r\r\n"]
LONG = [63, 64, 253, 254, 1000, 5000]


@st.composite
def _mutation(draw: st.DrawFn, tokens: list[str]) -> tuple[str, int, int, str]:
    """One mutation: (kind, position, span, text), positions taken modulo the length when applied."""
    kind = draw(st.sampled_from(["insert", "delete", "duplicate", "swap", "case", "replace"]))
    position, span = draw(st.integers(0, 10_000)), draw(st.integers(1, 16))
    if kind == "insert":
        text = draw(
            st.one_of(
                st.sampled_from(list(INTERESTING)),
                st.sampled_from(UNICODE),
                st.sampled_from(WSP_RUNS),
                st.sampled_from(BREAKS),
                st.sampled_from(tokens),
                st.tuples(st.sampled_from("a9-.x;="), st.sampled_from(LONG)).map(lambda cn: cn[0] * cn[1]),
                st.characters(),
            )
        )
    else:
        text = draw(st.sampled_from(list(INTERESTING)))
    return kind, position, span, text


def _apply(seed: str, mutations: list[tuple[str, int, int, str]]) -> str:
    text = seed
    for kind, position, span, insert in mutations:
        at = position % (len(text) + 1)
        end = min(len(text), at + span)
        if kind == "insert":
            text = text[:at] + insert + text[at:]
        elif kind == "delete":
            text = text[:at] + text[end:]
        elif kind == "duplicate":
            text = text[:end] + text[at:end] + text[end:]
        elif kind == "swap" and text:
            other = (position * 7 + span) % len(text)
            a, b = sorted((at % len(text), other))
            chars = list(text)
            chars[a], chars[b] = chars[b], chars[a]
            text = "".join(chars)
        elif kind == "case":
            text = text[:at] + text[at:end].swapcase() + text[end:]
        elif kind == "replace" and text:
            text = text[: at % len(text)] + insert + text[at % len(text) + 1 :]
    return text


def mutants(seeds: list[str], tokens: list[str], *, also_bytes: bool = True) -> st.SearchStrategy[Any]:
    """Mutants of ``seeds`` (1 to 6 stacked mutations), as str and, when ``also_bytes``, as UTF-8 bytes."""
    texts = st.builds(_apply, st.sampled_from(seeds), st.lists(_mutation(tokens), min_size=1, max_size=6))
    if not also_bytes:
        return texts
    return st.one_of(texts, texts.map(lambda t: t.encode("utf-8", "surrogatepass")))


# -- grammar fragments ------------------------------------------------------------------------------------------

wsp = st.sampled_from(["", "", " ", "\t", "  ", " \t"])
alnum = st.text(string.ascii_letters + string.digits, min_size=1, max_size=40)
ext_name = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
ext_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="=;"), min_size=1)
LDH = string.ascii_letters + string.digits
label = st.from_regex(r"\A[A-Za-z0-9](?:[A-Za-z0-9-]{0,8}[A-Za-z0-9])?\Z")
hostname = st.lists(label, min_size=1, max_size=4).map(".".join).filter(lambda n: not n.rsplit(".", 1)[-1].isdigit())
u_label = st.sampled_from(["bücher", "münchen", "пример", "例え", "ß", "straße", "ǅ"])
any_host = st.lists(st.one_of(label, u_label), min_size=1, max_size=4).map(".".join)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the block if it runs longer than ``seconds`` (the regex engine is interruptible)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- RFC 8461 §3.1: the TXT record ------------------------------------------------------------------------------

TXT_TOKENS = ["v=STSv1", "v=STSv10", "id=", "id=1", ";", "; ", " ;", "=", "ext=v", "a" * 32, "a" * 33, "\x7f", "é"]


def check_txt_record(text: str | bytes) -> None:
    """parse_txt_record's contract on any input, and what a parsed record must look like."""
    try:
        record = parse_txt_record(text)
    except TxtRecordError as exc:
        assert exc.message
        return
    assert _abnf.sts_id_value.fullmatch(record.id) and record.id.isascii(), record.id
    assert "id" not in record.extensions
    for name, value in record.extensions.items():
        assert _abnf.sts_policy_ext_name.fullmatch(name), name
        assert value.isascii() and value.isprintable() and not set(value) & set(" ;="), value
    other = text.encode("ascii") if isinstance(text, str) else bytes(text).decode("ascii")
    assert parse_txt_record(other) == record  # str and bytes agree


@given(mutants(TXT_SEEDS, TXT_TOKENS))
@example("v=STSv1; id=1\x00")
@example(b"v=STSv1;\x0bid=1")
@example("v=STSv1; id=\uff11")  # a fullwidth digit: isalnum() but not ALPHA / DIGIT
def test_txt_mutants_raise_only_txt_record_error(text: str | bytes) -> None:
    check_txt_record(text)


# Fields of a TXT record as (name, value): ids (valid or not) and extensions, in any order. At most 6: each valid
# id field doubled the work of a failing match before the parser went field by field (the linear-time test below),
# and this test is about the answer, not time.
txt_fields = st.lists(
    st.one_of(
        st.tuples(st.just("id"), st.one_of(alnum, st.sampled_from(["a-b", "a_b", "", "é"]))),
        st.tuples(ext_name, ext_value),
    ),
    max_size=6,
)


@given(txt_fields, st.lists(st.tuples(wsp, wsp), min_size=7, max_size=7), st.booleans())
def test_txt_grammar_built_records_parse_to_the_first_id(
    fields: list[tuple[str, str]], spaces: list[tuple[str, str]], final_delimiter: bool
) -> None:
    record = "v=STSv1" + "".join(
        f"{before};{after}{n}={v}" for (n, v), (before, after) in zip(fields, spaces, strict=False)
    )
    if final_delimiter:
        record += spaces[-1][0] + ";" + spaces[-1][1]
    ids = [value for name, value in fields if name == "id"]
    grammar_ok = all(value and value.isascii() for _, value in fields)
    if not grammar_ok or not ids or _abnf.sts_id_value.fullmatch(ids[0]) is None:
        with pytest.raises(TxtRecordError):
            parse_txt_record(record)
        assert select_txt_record([record]) is None
        return
    parsed = parse_txt_record(record)
    assert parsed.id == ids[0]  # the first id wins (§3.2, last paragraph)
    expected: dict[str, str] = {}
    for name, value in fields:
        if name != "id":
            expected.setdefault(name, value)
    assert dict(parsed.extensions) == expected
    assert select_txt_record([b"v=spf1 -all", record.encode()]) == parsed


@given(st.lists(st.one_of(mutants(TXT_SEEDS, TXT_TOKENS), st.sampled_from(TXT_SEEDS), st.binary()), max_size=4))
def test_select_txt_record_on_mutants_picks_the_single_candidate(records: list[str | bytes]) -> None:
    chosen = select_txt_record(records)  # never raises
    if chosen is not None:
        candidates = [record for record in records if is_sts_record(record)]
        assert len(candidates) == 1
        assert parse_txt_record(candidates[0]) == chosen


def test_txt_record_with_many_id_fields_is_rejected_in_linear_time() -> None:
    record = "v=STSv1" + "; id=1" * 40 + "; !"  # 250 characters: fits in one TXT character-string
    with time_limit(1.0), pytest.raises(TxtRecordError):
        parse_txt_record(record)


# -- RFC 8461 §3.2: the policy file -----------------------------------------------------------------------------

POLICY_TOKENS = ["version", "mode", "mx", "max_age", ": ", ":", "STSv1", "enforce", "testing", "none", "\n", "\r\n"]
POLICY_TOKENS += ["*.", "example.com", "86400", "31557601", "9999999999", "99999999999", "\ufeff", "xn--", "mx: a.b\n"]


def check_policy(body: str | bytes) -> None:
    try:
        policy = parse_policy(body)
    except PolicyError as exc:
        assert exc.result_type == "sts-policy-invalid" and exc.message
        return
    assert isinstance(policy.mode, Mode) and 0 <= policy.max_age <= MAX_MAX_AGE
    assert policy.mx or policy.mode is Mode.NONE
    for pattern in policy.mx:
        assert pattern == pattern.lower() and normalize_mx_pattern(pattern) == pattern
    for newline in ("\n", "\r\n"):
        assert parse_policy(policy.to_text(newline)) == policy


@given(mutants(POLICY_SEEDS, POLICY_TOKENS))
@example("version: STSv1\nmode: none\nmax_age: 1\n\x00")
@example("version: STSv1\nmode: none\nmax_age: ١\n")  # an Arabic-Indic digit: isdigit() but not DIGIT
@example(b"\xef\xbb\xbf\xef\xbb\xbfversion: STSv1\nmode: none\nmax_age: 1\n")  # a second BOM is not stripped
def test_policy_mutants_raise_only_policy_error(body: str | bytes) -> None:
    check_policy(body)


@st.composite
def policy_files(draw: st.DrawFn) -> tuple[str | bytes, Policy]:
    """A policy file built from the grammar, in any order and layout, and the policy it must parse to."""
    mode = draw(st.sampled_from(Mode))
    patterns = draw(
        st.lists(st.one_of(hostname, hostname.map("*.".__add__)), min_size=mode is not Mode.NONE, max_size=4)
    )
    max_age = draw(st.integers(0, 9_999_999_999))
    extensions = draw(
        st.dictionaries(ext_name.filter(lambda n: n not in {"version", "mode", "mx", "max_age"}), ext_value, max_size=3)
    )
    # mx values as a publisher might write them: any case, one trailing dot
    written = [draw(st.sampled_from([p, p.upper(), p + ".", p.swapcase()])) for p in patterns]
    lines = [("version", "STSv1"), ("mode", mode.value), ("max_age", str(max_age))]
    lines += list(extensions.items())
    order = draw(st.permutations(range(len(lines) + len(written))))
    slots: list[tuple[str, str]] = []
    mx_lines = iter(written)
    for index in order:  # the mx lines keep their order among themselves: policy.mx is in file order
        slots.append(lines[index] if index < len(lines) else ("mx", next(mx_lines)))
    # later duplicates of a known field are ignored, whatever valid value they hold (§3.2)
    for name in draw(st.lists(st.sampled_from(["version", "mode", "max_age"]), max_size=2)):
        slots.append((name, draw(st.sampled_from(["STSv2", "bogus", "12", "x y"]))))
    text_lines = [f"{name}:{draw(wsp)}{value}{draw(wsp)}" for name, value in slots]
    if draw(st.booleans()):
        text_lines.insert(draw(st.integers(0, len(text_lines))), draw(st.sampled_from(["", " ", "\t "])))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    body = newline.join(text_lines) + draw(st.sampled_from(["", newline]))
    if draw(st.booleans()):
        body = "\ufeff" + body
    expected = Policy(mode, patterns, min(max_age, MAX_MAX_AGE), extensions)
    return (body.encode() if draw(st.booleans()) else body), expected


@given(policy_files())
def test_policy_grammar_built_files_parse_to_the_expected_policy(case: tuple[str | bytes, Policy]) -> None:
    body, expected = case
    policy = parse_policy(body)
    assert policy == expected
    assert policy.mx == expected.mx  # the same order
    assert dict(policy.extensions) == dict(expected.extensions)


# -- domain names -----------------------------------------------------------------------------------------------

DOMAIN_TOKENS = [".", "..", "xn--", "-", "*.", "[", "]", ":", "IPv6:", "127.0.0.1", "::1", "\u3002", "a" * 64, "_"]


def check_domain(name: Any) -> None:
    literal = is_address_literal(name)  # never raises, whatever it is given
    assert literal is True or literal is False
    try:
        normal = normalize_domain(name)
    except DomainError as exc:
        assert exc.message
        return
    assert normal.isascii() and normal == normal.lower() and not normal.endswith(".")
    assert 0 < len(normal) <= 253 and all(0 < len(lbl) <= 63 for lbl in normal.split("."))
    assert all(_abnf.domain.fullmatch(lbl) for lbl in normal.split("."))
    assert normalize_domain(normal) == normal  # idempotent


@given(
    st.one_of(
        st.text(),
        mutants(HOST_SEEDS, DOMAIN_TOKENS, also_bytes=False),
        any_host.map(lambda h: h + "."),
        any_host.map(str.upper),
        st.none(),
        st.binary(max_size=8),
        st.integers(),
    )
)
@example("a" + "\u00ad" * 300)  # soft hyphens map to nothing (UTS #46): a long input, a short name
@example("xn--")
@example("a.\u3002")
def test_normalize_domain_raises_only_domain_error(name: Any) -> None:
    check_domain(name)


# -- RFC 8461 §4.1: MX matching ---------------------------------------------------------------------------------


@st.composite
def pattern_and_hosts(draw: st.DrawFn) -> tuple[str, str]:
    pattern, host = draw(st.sampled_from(MX_VECTORS))
    if draw(st.booleans()):
        pattern = draw(st.one_of(hostname, hostname.map("*.".__add__)))
        base = pattern.removeprefix("*.")
        host = draw(st.one_of(st.just(base), label.map(lambda lbl: f"{lbl}.{base}"), any_host))
    host = draw(st.one_of(st.just(host), mutants([host], DOMAIN_TOKENS, also_bytes=False)))
    return pattern, host


@given(st.one_of(pattern_and_hosts(), st.tuples(st.text(max_size=30), st.text(max_size=30))))
@example(("*.example.com", "\u212a.example.com"))  # the Kelvin sign maps to "k" under UTS #46
@example(("*.example.com", "*.example.com"))
@example(("*.example.com", "a" * 64 + ".example.com"))
def test_mx_matches_and_policy_matches_never_raise_and_agree(case: tuple[str, str]) -> None:
    pattern, host = case
    result = mx_matches(pattern, host)
    assert result is True or result is False
    try:
        policy = Policy(Mode.ENFORCE, [pattern], 1)
    except PolicyError:
        return
    assert policy.matches(host) is result


# -- socketmap: netstrings, keys, answers -----------------------------------------------------------------------


def decode_in_chunks(max_length: int, chunks: list[bytes]) -> tuple[list[bytes], bool]:
    """All payloads decoded (those before an error too), and whether the stream failed."""
    decoder = NetstringDecoder(max_length)
    width = len(str(max_length))
    out: list[bytes] = []
    for chunk in chunks:
        try:
            out += decoder.feed(chunk)
        except NetstringError as exc:
            with pytest.raises(NetstringError):
                decoder.feed(b"0:,")  # the stream stays broken
            return out + exc.payloads, True
        assert decoder.buffered <= max_length + width
    return out, False


@st.composite
def mutated_streams(draw: st.DrawFn) -> tuple[int, bytes, list[int]]:
    payloads = draw(st.lists(st.binary(max_size=20), max_size=5))
    wire = b"".join(encode(p) for p in payloads).decode("latin-1")
    tokens = [":", ",", "0", "0:", "1:", "3:abc,", "00", "99999", "-1:", "1:a,"]
    mutated = draw(st.one_of(st.just(wire), mutants([wire], tokens, also_bytes=False)))
    data = mutated.encode("utf-8") if draw(st.booleans()) else mutated.encode("latin-1", "replace")
    return draw(st.sampled_from([0, 1, 9, 10, 20, 99, 1024])), data, draw(st.lists(st.integers(0, 10_000), max_size=10))


@given(mutated_streams())
@example((1024, b"01", [1]))
@example((9, b"9:123456789,10:", [13, 14]))
def test_netstring_decoding_is_independent_of_chunking(case: tuple[int, bytes, list[int]]) -> None:
    max_length, data, cuts = case
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    edges = [0, *points, len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(edges)]
    whole = decode_in_chunks(max_length, [data])
    assert decode_in_chunks(max_length, chunks) == whole
    assert decode_in_chunks(max_length, [data[i : i + 1] for i in range(len(data))]) == whole
    assert all(len(payload) <= max_length for payload in whole[0])


KEY_TOKENS = ["[", "]", ":", ":25", ":smtp", ".", "IPv6:", "[IPv6:", "::", "192.0.2.1", "\xff", "%", " "]
KEY_SEEDS = ["example.com", "[example.com]", "[example.com]:25", "example.com:smtp", ".example.com", "[192.0.2.1]"]
KEY_SEEDS += ["[IPv6:2001:db8::1]", "2001:db8::1", "192.0.2.1:25", "[example.com", "example.com:x y"]


@given(st.one_of(st.text(), mutants(KEY_SEEDS, KEY_TOKENS, also_bytes=False)))
@example("[]")
@example("[:]")
@example("]:25")
def test_parse_key_raises_only_domain_error(key: str) -> None:
    try:
        domain = parse_key(key)
    except DomainError as exc:
        assert exc.message
        return
    if domain is not None:
        assert ":" not in domain and domain in key and not is_address_literal(domain)


@given(
    any_host.filter(lambda h: not is_address_literal(h)),
    st.sampled_from(["{}", "{}.", "[{}]", "[{}]:25", "[{}]:smtp", "{}:587", ".{}"]),
)
def test_parse_key_documented_forms(host: str, form: str) -> None:
    key = form.format(host)
    if form == ".{}":
        assert parse_key(key) is None  # Postfix's parent-domain lookup: no fallback (§3.4)
    else:
        assert parse_key(key) == (host + "." if form == "{}." else host)


class NxdomainResolver:
    """DNS without I/O: every name is NXDOMAIN. Counts the queries."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    async def resolve(self, qname: Any, rdtype: Any, **kwargs: Any) -> Any:
        self.queries.append(str(qname))
        raise dns.resolver.NXDOMAIN


ENFORCE = {"enforce.example": ["mx.enforce.example", "*.mx.example"], "xn--bcher-kva.example": ["mx.bcher.example"]}
OTHER = {"testing.example": Mode.TESTING, "none.example": Mode.NONE}
PERM = b'PERM malformed request: expected "<name> <key>"'
SSL_CONTEXT = ssl.create_default_context()


def expected_reply(payload: bytes) -> tuple[bytes, str | None]:
    """The reply the socketmap contract calls for, from the public functions; and the domain to look up."""
    name, space, raw_key = payload.partition(b" ")
    if not space or not name:
        return PERM, None
    try:
        domain = parse_key(raw_key.decode())
        if domain is None or is_address_literal(domain):
            return b"NOTFOUND ", None
        key = normalize_domain(domain)
    except (UnicodeDecodeError, DomainError):
        return b"NOTFOUND ", None
    if key in ENFORCE:
        match = ":".join(p.removeprefix("*") for p in ENFORCE[key])
        return f"OK secure match={match} servername=hostname".encode(), None
    return b"NOTFOUND ", None if key in OTHER else key


async def answer_all(payloads: list[bytes]) -> None:
    dns_stub = NxdomainResolver()
    resolver = PolicyResolver(dns_resolver=dns_stub, ssl_context=SSL_CONTEXT)  # type: ignore[arg-type]
    try:
        for domain, patterns in ENFORCE.items():
            resolver.cache_policy(domain, Policy(Mode.ENFORCE, patterns, 86_400), "1")
        for domain, mode in OTHER.items():
            resolver.cache_policy(domain, Policy(mode, ["mx.example"] if mode is Mode.TESTING else [], 86_400), "1")
        server = SocketmapServer(resolver)
        for payload in payloads:
            before = len(dns_stub.queries)
            reply = await server.answer(payload)  # never raises
            assert reply.startswith((b"OK ", b"NOTFOUND ", b"TEMP ", b"PERM ")), reply
            expected, lookup = expected_reply(payload)
            assert reply == expected, payload
            # only a valid, uncached domain reaches DNS, and only for its _mta-sts TXT record
            assert dns_stub.queries[before:] in ([], [f"_mta-sts.{lookup}."]), (payload, dns_stub.queries[before:])
            if lookup is None:
                assert dns_stub.queries[before:] == []
        assert server.errors == 0  # no internal error was swallowed into a TEMP
    finally:
        await resolver.aclose()


ANSWER_SEEDS = [
    "postfix enforce.example",
    "postfix [ENFORCE.example.]:25",
    "postfix .enforce.example",
    "x bücher.example",
]
ANSWER_SEEDS += ["postfix testing.example", "postfix none.example", "postfix unknown.example", "postfix", " x", ""]


@given(
    st.lists(
        st.one_of(
            mutants(ANSWER_SEEDS, [*KEY_TOKENS, "postfix ", "enforce.example"]).map(
                lambda t: t if isinstance(t, bytes) else t.encode("utf-8", "surrogatepass")
            ),
            st.binary(max_size=40),
            st.sampled_from(ANSWER_SEEDS).map(str.encode),
        ),
        max_size=8,
    )
)
@example([b"postfix \xff", b"postfix \xed\xa0\x80.example", b"postfix [enforce.example]:99999x", b"a b c"])
def test_socketmap_answer_never_raises_and_follows_parse_key(payloads: list[bytes]) -> None:
    asyncio.run(answer_all(payloads))


# -- RFC 8460 §3: the TLS-RPT record ----------------------------------------------------------------------------

TLSRPT_TOKENS = ["v=TLSRPTv1", "rua=", "mailto:", "https://", "ftp://", ",", ";", " ", "%2C", "!", "=", "ext=1", "é"]


def check_tlsrpt_record(text: str | bytes) -> None:
    try:
        record = parse_tlsrpt_record(text)
    except TlsRptRecordError as exc:
        assert exc.message
        return
    assert record.rua and all(uri.lower().startswith(("mailto:", "https:")) for uri in record.rua)
    assert not any(uri.lower().startswith(("mailto:", "https:")) for uri in record.ignored_rua)
    assert not any(set(uri) & set(",;! \t") for uri in record.rua + record.ignored_rua)
    other = text.encode("ascii") if isinstance(text, str) else bytes(text).decode("ascii")
    assert parse_tlsrpt_record(other) == record


@given(mutants(TLSRPT_SEEDS, TLSRPT_TOKENS))
@example("v=TLSRPTv1; rua=mailto:a@b.example,")
@example("v=TLSRPTv1; rua=MAILTO:a@b.example")
def test_tlsrpt_mutants_raise_only_tlsrpt_record_error(text: str | bytes) -> None:
    check_tlsrpt_record(text)


uri = st.builds(
    "{}{}".format,
    st.sampled_from(["mailto:", "https://", "MAILTO:", "Https://", "ftp://", "x-y+z:"]),
    st.text(string.ascii_letters + string.digits + "-._~:/?#[]@$&'()*+=%", min_size=1, max_size=20),
)


@given(
    st.lists(uri, min_size=1, max_size=4),
    st.lists(st.tuples(ext_name.filter(lambda n: n != "rua"), ext_value), max_size=3),
    wsp,
    wsp,
)
def test_tlsrpt_grammar_built_records(
    uris: list[str], extensions: list[tuple[str, str]], before: str, after: str
) -> None:
    fields = [f"rua={f'{before},{after}'.join(uris)}"] + [f"{n}={v}" for n, v in extensions]
    record = "v=TLSRPTv1" + "".join(f"{before};{after}{f}" for f in fields)
    supported = tuple(u for u in uris if u.lower().startswith(("mailto:", "https:")))
    if not supported:
        with pytest.raises(TlsRptRecordError):
            parse_tlsrpt_record(record)
        return
    parsed = parse_tlsrpt_record(record)
    assert parsed.rua == supported
    assert parsed.ignored_rua == tuple(u for u in uris if u not in supported)
    assert select_tlsrpt_record(["v=spf1 -all", record]) == parsed


@given(st.lists(st.one_of(mutants(TLSRPT_SEEDS, TLSRPT_TOKENS), st.binary(), st.none(), st.integers()), max_size=4))
def test_select_tlsrpt_record_never_raises(records: list[Any]) -> None:
    select_tlsrpt_record(records)


def test_tlsrpt_record_with_many_rua_fields_is_rejected_in_linear_time() -> None:
    record = "v=TLSRPTv1" + "; rua=mailto:a@b.example" * 40 + "; !"
    with time_limit(1.0), pytest.raises(TlsRptRecordError):
        parse_tlsrpt_record(record)


# -- the long run's harness itself ------------------------------------------------------------------------------


def test_benchmark_fuzzer_runs_every_parser_briefly() -> None:
    """``python -m benchmarks.fuzz`` (docs/fuzzing.md) still runs: 300 inputs a parser, every outcome counted."""
    from benchmarks import fuzz

    for name in fuzz.TARGETS:
        result = fuzz.run_target(name, 300, 1, 0.05, 0.1, quiet=True)
        assert result["accepted"] + result["rejected"] + result["unexpected"] + result["interrupted"] == 300
        assert result["unexpected"] == 0, result["unexpected_examples"]


def test_mtasts_error_is_the_base_of_every_documented_error() -> None:
    for error in (TxtRecordError, PolicyError, DomainError, NetstringError, TlsRptRecordError):
        assert issubclass(error, MTASTSError)
