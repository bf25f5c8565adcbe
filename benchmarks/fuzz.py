"""A long fuzz run of every mtasts parser: a fast mutational generator, each call timed (docs/fuzzing.md).

    python -m benchmarks.fuzz [--inputs 1000000] [--seed N] [--only PARSER ...] [--json PATH] [--jobs N]
                              [--hang-ms 50] [--cap-ms 500]
    python -m benchmarks.fuzz --list
    python -m benchmarks.fuzz --replay benchmarks/results/fuzz-latest.json
    python -m benchmarks.fuzz --atheris [--atheris-seconds 60] [--only PARSER ...]   # coverage-guided

Not part of the test suite (tests/test_fuzz.py is the bounded, hypothesis-driven version that is).

For each parser (``--list`` names them) the run draws ``--inputs`` inputs from a mutational generator seeded with
the RFC vectors of ``tests/vectors/*.json`` and with inputs built from the grammar: stacked random mutations
(insert / delete / duplicate / repeat / swap bytes, case flips, WSP, CR / LF / NUL and non-ASCII injection, grammar
tokens, very long tokens, splices), fresh grammar-built inputs, token soup and random bytes. Each call is timed with
``time.perf_counter`` and classified:

* **accepted** — parsed (or, for functions that never raise: returned a record / True / an ``OK`` reply);
* **rejected** — raised the function's documented :class:`~mtasts.errors.MTASTSError` subclass (or returned
  None / False / ``NOTFOUND`` / ``PERM``);
* **unexpected** — raised anything else, or broke a checked invariant (a parsed policy's ``mx`` not normalised,
  ``mx_matches`` and ``Policy.matches`` disagreeing, a netstring stream decoding differently in other chunks, ...):
  the first reproducers are kept;
* **hangs** — a single call over ``--hang-ms`` (default 50 ms), confirmed by running the same input again (both
  runs over the bound: one preempted run on a busy machine is not a hang). A call still running at ``--cap-ms``
  is interrupted (SIGALRM) and counted as a hang; after 20 confirmed hangs in a parser the cap drops to the bound,
  so a parser that hangs often cannot stall the run.

The cyclic garbage collector is paused while timing and run between inputs every 20,000 inputs, so a
collection is never charged to the parser it interrupted. Everything is deterministic for a given ``--seed``:
``--seed N --only PARSER`` replays a run input for input. Exit status 1 when any parser had an unexpected
exception or a hang.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import base64
import contextlib
import datetime
import gc
import itertools
import json
import os
import platform
import random
import signal
import ssl
import string
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import dns.resolver

from mtasts import _abnf
from mtasts.domain import is_address_literal, normalize_domain
from mtasts.errors import DomainError, MTASTSError, PolicyError, TxtRecordError
from mtasts.matching import mx_matches
from mtasts.netstring import NetstringDecoder, NetstringError, encode
from mtasts.policy import MAX_MAX_AGE, Mode, Policy, normalize_mx_pattern, parse_policy
from mtasts.resolver import PolicyResolver
from mtasts.socketmap import SocketmapServer, parse_key
from mtasts.tlsrpt.record import TlsRptRecordError, parse_tlsrpt_record, select_tlsrpt_record
from mtasts.txt import is_sts_record, parse_txt_record, select_txt_record

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "fuzz-latest.json"
MAX_INPUT = 16_384  # bytes: mutants are cut to this (a TXT RRset or a policy larger than this adds nothing)
KEEP_EXAMPLES = 5  # reproducers kept per parser and kind
FULL_CAP_HANGS = 20  # confirmed hangs timed up to --cap-ms; later ones are interrupted at the hang bound
GC_EVERY = 20_000


class Hang(BaseException):
    """Raised by SIGALRM in the middle of a call that ran past the cap (a BaseException: no ``except Exception``
    in mtasts can swallow it)."""


class Violation(Exception):
    """A checked invariant does not hold: counted as an unexpected exception."""


def _alarm(signum: int, frame: object) -> None:
    raise Hang


# -- raw material: the RFC vectors, grammar fragments, interesting characters ----------------------------------

LETTERS_DIGITS = string.ascii_letters + string.digits
LDH = LETTERS_DIGITS + "-"
INTERESTING_BYTES = b"\x00\t\n\r \x0b\x0c;:=,.*[]-_@/%!#?\\\"'<>\x7f\x80\xa0\xc3\xe2\xef\xff0159azAZ"
UNICODE = [
    "é", "ß", "ü", "Ü", "ẞ", "İ", "ı", "\u212a", "\ufeff", "\u200d", "\u200c", "\u00ad", "\u3002", "\uff0e",
    "\uff61", "\u2028", "\u0085", "\u00a0", "\u0301", "ﬀ", "Ⅸ", "①", "Ａ", "０", "\u0660", "例", "пример",
    "\U0001f642", "\U000e0001", "\ufffd", "\u202e", "ǅ", "ς", "\u0640", "xn--bcher-kva", "bücher",
]  # fmt: skip
UNICODE_BYTES = [u.encode() for u in UNICODE]
WSP_RUNS = [b" ", b"\t", b"  ", b" \t", b"\t\t", b" " * 8, b" \t" * 50, b" " * 1000]
LINE_BREAKS = [b"\r", b"\n", b"\r\n", b"\x00", b"\n\n", b"\r\r\n", b"\n\r", b"\x00\n", b"\x85"]
LONG_CHARS = b"a9-x._=*:;,Z0 \t"
LONG_SIZES = [32, 33, 62, 63, 64, 65, 200, 253, 254, 255, 256, 1000, 4096, 10_000]


def _load(name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def _enc(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


class Mutator:
    """Stacked byte-level mutations of a seed, grammar-aware through a token dictionary."""

    def __init__(self, rng: random.Random, seeds: Sequence[bytes], tokens: Sequence[bytes]) -> None:
        self.rng = rng
        self.seeds = list(seeds) or [b""]
        self.tokens = list(tokens) or [b""]
        self._ops: list[Callable[[bytearray], None]] = [
            self._insert_byte, self._insert_interesting, self._delete, self._replace_byte, self._flip_bit,
            self._duplicate, self._repeat, self._swap, self._case_flip, self._wsp, self._line_break, self._token,
            self._token, self._long_token, self._truncate, self._unicode, self._splice, self._substitute,
        ]  # fmt: skip

    def mutate(self, data: bytes, rounds: int | None = None) -> bytes:
        buf = bytearray(data)
        rng = self.rng
        for _ in range(rounds if rounds is not None else rng.choice((1, 1, 1, 2, 2, 3, 4, 6, 8, 16))):
            rng.choice(self._ops)(buf)
            if len(buf) > MAX_INPUT:
                del buf[MAX_INPUT:]
        return bytes(buf)

    def _pos(self, buf: bytearray) -> int:
        return self.rng.randint(0, len(buf))

    def _span(self, buf: bytearray) -> tuple[int, int]:
        if not buf:
            return 0, 0
        start = self.rng.randrange(len(buf))
        return start, min(len(buf), start + self.rng.choice((1, 1, 2, 3, 4, 8, 16, 32, 64)))

    def _insert_byte(self, buf: bytearray) -> None:
        buf.insert(self._pos(buf), self.rng.randrange(256))

    def _insert_interesting(self, buf: bytearray) -> None:
        buf.insert(self._pos(buf), self.rng.choice(INTERESTING_BYTES))

    def _delete(self, buf: bytearray) -> None:
        start, end = self._span(buf)
        del buf[start:end]

    def _replace_byte(self, buf: bytearray) -> None:
        if buf:
            pos = self.rng.randrange(len(buf))
            buf[pos] = self.rng.choice(INTERESTING_BYTES) if self.rng.random() < 0.6 else self.rng.randrange(256)

    def _flip_bit(self, buf: bytearray) -> None:
        if buf:
            buf[self.rng.randrange(len(buf))] ^= 1 << self.rng.randrange(8)

    def _duplicate(self, buf: bytearray) -> None:
        start, end = self._span(buf)
        buf[end:end] = buf[start:end]

    def _repeat(self, buf: bytearray) -> None:
        start, end = self._span(buf)
        buf[end:end] = buf[start:end] * self.rng.choice((2, 2, 3, 4, 8, 16, 64))

    def _swap(self, buf: bytearray) -> None:
        if len(buf) < 2:
            return
        a, b = sorted(self.rng.sample(range(len(buf)), 2))
        width = min(self.rng.choice((1, 1, 2, 4, 8)), b - a, len(buf) - b)
        buf[a : a + width], buf[b : b + width] = buf[b : b + width], buf[a : a + width]

    def _case_flip(self, buf: bytearray) -> None:
        start, end = self._span(buf)
        buf[start:end] = bytes(buf[start:end]).swapcase()

    def _wsp(self, buf: bytearray) -> None:
        pos = self._pos(buf)
        buf[pos:pos] = self.rng.choice(WSP_RUNS)

    def _line_break(self, buf: bytearray) -> None:
        pos = self._pos(buf)
        buf[pos:pos] = self.rng.choice(LINE_BREAKS)

    def _token(self, buf: bytearray) -> None:
        pos = self._pos(buf)
        buf[pos:pos] = self.rng.choice(self.tokens)

    def _long_token(self, buf: bytearray) -> None:
        pos = self._pos(buf)
        buf[pos:pos] = bytes([self.rng.choice(LONG_CHARS)]) * self.rng.choice(LONG_SIZES)

    def _truncate(self, buf: bytearray) -> None:
        del buf[self._pos(buf) :]

    def _unicode(self, buf: bytearray) -> None:
        pos = self._pos(buf)
        buf[pos:pos] = self.rng.choice(UNICODE_BYTES)

    def _splice(self, buf: bytearray) -> None:
        other = self.rng.choice(self.seeds)
        buf[self._pos(buf) :] = other[self.rng.randint(0, len(other)) :]

    def _substitute(self, buf: bytearray) -> None:
        """Replace one occurrence of a grammar token with another token (``enforce`` → ``none``, ``;`` → ``,``)."""
        old = self.rng.choice(self.tokens)
        at = bytes(buf).find(old) if old else -1
        if at >= 0:
            buf[at : at + len(old)] = self.rng.choice(self.tokens)


class Target:
    """One parser under test: how to make inputs, how to call it, what must hold of the answer."""

    name: ClassVar[str]
    contract: ClassVar[str]
    #: the documented errors (an empty tuple: the function never raises)
    errors: ClassVar[tuple[type[BaseException], ...]] = ()
    tokens: ClassVar[Sequence[bytes]] = ()

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.cpu = 0.0  # the CPU time of the last call (see attempt)
        self.mutator = Mutator(rng, self.seeds(), self.tokens)

    # -- inputs --

    def seeds(self) -> list[bytes]:
        raise NotImplementedError

    def grammar(self) -> bytes:
        """A fresh input built from the grammar (valid or nearly)."""
        raise NotImplementedError

    def raw(self) -> bytes:
        """Bytes from the mix: mutated seeds and grammar inputs, token soup, random bytes."""
        rng = self.rng
        r = rng.random()
        if r < 0.50:
            return self.mutator.mutate(rng.choice(self.mutator.seeds))
        if r < 0.72:
            return self.mutator.mutate(self.grammar())
        if r < 0.86:
            return self.grammar()
        if r < 0.93:
            return b"".join(rng.choice(self.mutator.tokens) for _ in range(rng.randint(0, 30)))
        return rng.randbytes(rng.choice((0, 1, 2, 4, 8, 16, 32, 64, 256, 4096)))

    def text(self, data: bytes) -> str:
        """``data`` as text: strict UTF-8 where it can be, else lone surrogates (surrogateescape) or Latin-1."""
        r = self.rng.random()
        if r < 0.85:
            return data.decode("utf-8", "surrogateescape")
        return data.decode("latin-1")

    def generate(self) -> Any:
        return self.text(self.raw())

    def from_bytes(self, data: bytes) -> Any:
        """An input from raw fuzzer bytes (atheris mode)."""
        return data.decode("utf-8", "surrogateescape")

    # -- the call --

    def call(self, value: Any) -> bool:
        """Call the function (timed): True when accepted; raises one of ``errors`` when rejected."""
        raise NotImplementedError

    def verify(self, value: Any) -> None:
        """After an accepted call (untimed): check the invariants, raise :class:`Violation` if one fails."""

    def verify_error(self, value: Any, exc: BaseException) -> None:
        """After a rejection (untimed)."""

        if not isinstance(exc, MTASTSError) or not isinstance(exc.message, str) or not exc.message:
            raise Violation(f"the error has no message: {exc!r}")

    def reset(self) -> None:
        """Restore a usable state after a call was interrupted."""

    def close(self) -> None:
        pass


class StrOrBytesTarget(Target):
    """A parser that takes ``str | bytes``: fed bytes as often as text, and now and then a value of another type."""

    bytes_share: ClassVar[float] = 0.45
    odd_values: ClassVar[tuple[object, ...]] = (None, 7)

    def generate(self) -> Any:
        data = self.raw()
        r = self.rng.random()
        if r < self.bytes_share:
            return data
        if r < self.bytes_share + 0.02:
            return self.rng.choice([bytearray(data), memoryview(data), *self.odd_values])
        return self.text(data)

    def from_bytes(self, data: bytes) -> Any:
        return data


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise Violation(message)


def _wsp(rng: random.Random) -> str:
    return rng.choice(("", "", "", " ", " ", "\t", "  ", " \t "))


def _alnum(rng: random.Random, size: int) -> str:
    return "".join(rng.choices(LETTERS_DIGITS, k=size))


def _label(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.55:
        return _alnum(rng, rng.choice((1, 2, 3, 4, 5, 8, 12)))
    if r < 0.70:
        inner = "".join(rng.choices(LDH, k=rng.randint(0, 10)))
        return rng.choice(LETTERS_DIGITS) + inner + rng.choice(LETTERS_DIGITS)
    if r < 0.76:
        return "xn--" + _alnum(rng, rng.randint(1, 10)).lower()
    if r < 0.82:
        return _alnum(rng, rng.choice((62, 63, 64)))
    if r < 0.88:
        return "".join(rng.choices(string.digits, k=rng.randint(1, 3)))
    if r < 0.94:
        return rng.choice(["bücher", "пример", "例え", "ß", "münchen", "ǅ", "ï"])
    return rng.choice(["-a", "a-", "a_b", "", "*", "a b", "a..b"])


def _host(rng: random.Random, *, wildcard: float = 0.0) -> str:
    labels = [_label(rng) for _ in range(rng.choice((1, 2, 2, 3, 3, 4, 6)))]
    if rng.random() < 0.05:
        labels = [_alnum(rng, 50) for _ in range(5)]  # near the 253 limit
    name = ".".join(labels)
    if rng.random() < wildcard:
        name = "*." + name
    if rng.random() < 0.1:
        name += "."
    if rng.random() < 0.1:
        name = name.upper() if rng.random() < 0.5 else name.swapcase()
    return name


# -- RFC 8461 §3.1: the TXT record ----------------------------------------------------------------------------

TXT_TOKENS = [
    b"v=STSv1", b"v=STSv1;", b"v=STSv10", b"v=stsv1", b"v=", b"id=", b"id", b"=", b";", b" ", b"\t", b"; ", b" ;",
    b"ext=", b"foo=bar", b"_", b"-", b".", b"20160831085700Z", b"a" * 32, b"a" * 33, b"\x7f", b"\x00", b"\xc3\xa9",
    b"v=spf1 -all", b"id=1", b";id=1",
]  # fmt: skip


def _txt_field(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.45:
        return "id=" + _alnum(rng, rng.choice((1, 1, 4, 8, 14, 31, 32, 32, 33, 40)))
    if r < 0.80:
        name = rng.choice(LETTERS_DIGITS) + "".join(rng.choices(LDH + "_.", k=rng.choice((0, 2, 5, 31, 32))))
        value = "".join(chr(rng.choice(range(0x21, 0x7F))) for _ in range(rng.randint(1, 12)))
        return f"{name}={value.replace('=', 'x').replace(';', 'y')}"
    return rng.choice(["id=", "=x", "id==1", "id=a b", "id=é", "x", "id=a-b", "id=a_b", ""])


def _txt_record(rng: random.Random) -> str:
    fields = [_txt_field(rng) for _ in range(rng.choice((0, 1, 1, 1, 2, 2, 3, 4, 6)))]
    if rng.random() < 0.01:  # a duplicated field (§3.2: the first wins), many times over
        fields.extend([_txt_field(rng)] * rng.choice((2, 3, 5, 8, 12, 16, 24, 40)))
    rng.shuffle(fields)
    version = "v=STSv1" if rng.random() < 0.9 else rng.choice(["v=STSv10", "v=stsv1", "", "v=STSv1 "])
    text = version + "".join(f"{_wsp(rng)};{_wsp(rng)}{f}" for f in fields)
    if rng.random() < 0.4:
        text += _wsp(rng) + ";" + _wsp(rng)
    return text


def _txt_seeds() -> list[bytes]:
    records = [r for vector in _load("txt.json") for r in vector["records"]]
    return [_enc(r) for r in records] + [b"v=STSv1; id=20160831085700Z;", b"v=STSv1 ; id=1 ; x=y ;"]


class TxtTarget(StrOrBytesTarget):
    name = "txt"
    contract = "parse_txt_record(str | bytes) -> TxtRecord, else TxtRecordError"
    errors = (TxtRecordError,)
    tokens = TXT_TOKENS
    odd_values = (None, 7, [b"v=STSv1; id=1"])

    def seeds(self) -> list[bytes]:
        return _txt_seeds()

    def grammar(self) -> bytes:
        return _enc(_txt_record(self.rng))

    def call(self, value: Any) -> bool:
        self.record = parse_txt_record(value)
        return True

    def verify(self, value: Any) -> None:
        record = self.record
        _check(_abnf.sts_id_value.fullmatch(record.id) is not None, f"invalid id {record.id!r}")
        _check(record.id.isascii() and record.id.isalnum() and 1 <= len(record.id) <= 32, f"id {record.id!r}")
        _check("id" not in record.extensions, "id kept as an extension")
        for name, ext in record.extensions.items():
            _check(_abnf.sts_policy_ext_name.fullmatch(name) is not None, f"extension name {name!r}")
            _check(ext.isascii() and ext.isprintable() and " " not in ext and ";" not in ext, f"value {ext!r}")
        other = bytes(value).decode("ascii") if not isinstance(value, str) else value.encode("ascii")
        _check(parse_txt_record(other) == record, "str and bytes forms parse differently")


class TxtSelectTarget(Target):
    name = "txt-select"
    contract = "select_txt_record(records) -> TxtRecord | None, never raises"
    tokens = TXT_TOKENS

    def seeds(self) -> list[bytes]:
        return _txt_seeds()

    def grammar(self) -> bytes:
        return _enc(_txt_record(self.rng))

    def generate(self) -> Any:
        rng = self.rng
        records: list[Any] = []
        for _ in range(rng.choice((0, 1, 1, 1, 2, 2, 3, 4))):
            r = rng.random()
            if r < 0.1:
                records.append(rng.choice([b"v=spf1 -all", "google-site-verification=x", b"", "v=STSv1"]))
            elif r < 0.12:
                records.append(rng.choice([None, 3, bytearray(b"v=STSv1; id=1"), memoryview(b"v=STSv1;id=2")]))
            else:
                data = self.raw()
                records.append(data if rng.random() < 0.5 else self.text(data))
        if records and rng.random() < 0.1:
            records.append(records[0])
        return records if rng.random() < 0.9 else tuple(records)

    def from_bytes(self, data: bytes) -> Any:
        return data.split(b"\x00")

    def call(self, value: Any) -> bool:
        if not isinstance(value, list):
            value = list(value)  # an iterator: keep the items for verify
        self.items = value
        self.record = select_txt_record(value)
        return self.record is not None

    def verify(self, value: Any) -> None:
        candidates = [item for item in self.items if is_sts_record(item)]
        _check(len(candidates) == 1, f"a record chosen among {len(candidates)} STS records")
        _check(parse_txt_record(candidates[0]) == self.record, "the chosen record is not the candidate's parse")

    def verify_error(self, value: Any, exc: BaseException) -> None:
        raise Violation(f"select_txt_record raised {exc!r}")


# -- RFC 8461 §3.2: the policy file ---------------------------------------------------------------------------

POLICY_TOKENS = [
    b"version", b"mode", b"mx", b"max_age", b": ", b":", b"STSv1", b"enforce", b"testing", b"none", b"\n", b"\r\n",
    b"\r", b"*.", b".", b"example.com", b"mail.example.com", b"86400", b"31557600", b"31557601", b"9999999999",
    b"99999999999", b"0", b"\xef\xbb\xbf", b"xn--", b"-", b"_", b"mx: ", b"\nmx: a.example\n", b"version: STSv1\n",
    b"mode: enforce\n", b"max_age: 1\n", b"ext_1: v a l\n", b"\xc3\xa9",
]  # fmt: skip


def _policy_body(rng: random.Random) -> str:
    lines = [
        "version:" + _wsp(rng) + rng.choice(["STSv1"] * 8 + ["STSv2", "stsv1", ""]),
        "mode:" + _wsp(rng) + rng.choice(["enforce", "testing", "none"] * 3 + ["Enforce", "bogus", ""]),
        "max_age:" + _wsp(rng) + rng.choice(["86400", "604800", "0", "31557600", "31557601", "9999999999", "1e3"]),
    ]
    for _ in range(rng.choice((0, 1, 1, 2, 3, 5))):
        lines.append("mx:" + _wsp(rng) + _host(rng, wildcard=0.3))
    for _ in range(rng.choice((0, 0, 0, 1, 2))):
        name = rng.choice(LETTERS_DIGITS) + "".join(rng.choices(LDH + "_.", k=rng.choice((0, 3, 31, 32))))
        value = "".join(rng.choice(string.printable[:94] + " é例") for _ in range(rng.randint(1, 20)))
        lines.append(f"{name}:{_wsp(rng)}{value}")
    if rng.random() < 0.1:
        lines.append(rng.choice(lines))  # a duplicated field: the first wins (§3.2)
    if rng.random() < 0.1:
        lines.append(rng.choice(["", "  ", "\t", "junk", ":", " mode: none", "mode : none"]))
    rng.shuffle(lines)
    lines = [line + _wsp(rng) if rng.random() < 0.2 else line for line in lines]
    newline = rng.choice(["\n", "\n", "\r\n"])
    body = newline.join(lines) + (newline if rng.random() < 0.8 else "")
    return ("\ufeff" + body) if rng.random() < 0.05 else body


class PolicyTarget(StrOrBytesTarget):
    name = "policy"
    contract = "parse_policy(str | bytes) -> Policy, else PolicyError (sts-policy-invalid)"
    errors = (PolicyError,)
    tokens = POLICY_TOKENS
    bytes_share = 0.5
    odd_values = (None, 1.5)

    def seeds(self) -> list[bytes]:
        return [_enc(vector["body"]) for vector in _load("policy.json")]

    def grammar(self) -> bytes:
        return _enc(_policy_body(self.rng))

    def call(self, value: Any) -> bool:
        self.policy = parse_policy(value)
        return True

    def verify(self, value: Any) -> None:
        policy = self.policy
        _check(isinstance(policy.mode, Mode), f"mode {policy.mode!r}")
        _check(0 <= policy.max_age <= MAX_MAX_AGE, f"max_age {policy.max_age}")
        _check(bool(policy.mx) or policy.mode is Mode.NONE, "no mx under enforce or testing")
        for pattern in policy.mx:
            _check(pattern == pattern.lower() and normalize_mx_pattern(pattern) == pattern, f"mx {pattern!r}")
        for newline in ("\n", "\r\n"):
            text = policy.to_text(newline)
            _check(
                parse_policy(text) == policy and parse_policy(text.encode()) == policy, "to_text does not round-trip"
            )

    def verify_error(self, value: Any, exc: BaseException) -> None:
        super().verify_error(value, exc)
        _check(getattr(exc, "result_type", None) == "sts-policy-invalid", f"result_type of {exc!r}")


# -- domain names ---------------------------------------------------------------------------------------------

DOMAIN_TOKENS = [
    b".", b"..", b"xn--", b"xn--bcher-kva", b"-", b"--", b"*", b"*.", b"[", b"]", b":", b"IPv6:", b"127.0.0.1",
    b"::1", b"2001:db8::1", b"\xe3\x80\x82", b"\xc3\x9f", b"example", b"com", b"a" * 63, b"a" * 64, b"_", b"/", b"@",
    b"%", b" ", b"\x00", b"\xef\xbb\xbf", b"1", b"255",
]  # fmt: skip


def _domain_seeds() -> list[bytes]:
    names = {vector["host"] for vector in _load("mx.json")} | {vector["pattern"] for vector in _load("mx.json")}
    names |= {mx for vector in _load("policy.json") for mx in vector.get("mx") or []}
    names |= {"example.com", "EXAMPLE.COM.", "Bücher.example", "例え.テスト", "xn--r8jz45g.xn--zckzah", "[192.0.2.1]"}
    names |= {"[IPv6:2001:db8::1]", "192.0.2.1", "2001:db8::1", "a.b.c.d.e.f.g", "1.2.3.4.example"}
    return sorted(_enc(name) for name in names)


class DomainTarget(Target):
    name = "domain"
    contract = "normalize_domain(str) -> A-label name, else DomainError; is_address_literal never raises"
    errors = (DomainError,)
    tokens = DOMAIN_TOKENS

    def seeds(self) -> list[bytes]:
        return _domain_seeds()

    def grammar(self) -> bytes:
        return _enc(_host(self.rng, wildcard=0.05))

    def generate(self) -> Any:
        if self.rng.random() < 0.01:
            return self.rng.choice([None, b"example.com", 3, ["a"]])
        return self.text(self.raw())

    def call(self, value: Any) -> bool:
        literal = is_address_literal(value)
        if literal is not True and literal is not False:
            raise Violation(f"is_address_literal returned {literal!r}")
        self.result = normalize_domain(value)
        return True

    def verify(self, value: Any) -> None:
        name = self.result
        _check(isinstance(name, str) and name.isascii() and name == name.lower(), f"not lowercase ASCII: {name!r}")
        _check(0 < len(name) <= 253 and not name.endswith("."), f"length or trailing dot: {name!r}")
        _check(all(0 < len(label) <= 63 for label in name.split(".")), f"label length: {name!r}")
        _check(normalize_domain(name) == name, f"not idempotent: {name!r} -> {normalize_domain(name)!r}")


# -- RFC 8461 §4.1: MX matching -------------------------------------------------------------------------------


MX_VECTORS = [(vector["pattern"], vector["host"]) for vector in _load("mx.json")]


class MxTarget(Target):
    name = "mx"
    contract = "mx_matches(pattern, host) and Policy.matches(host) never raise, and agree"
    tokens = DOMAIN_TOKENS

    def seeds(self) -> list[bytes]:
        return _domain_seeds()

    def grammar(self) -> bytes:
        return _enc(_host(self.rng, wildcard=0.4))

    def generate(self) -> Any:
        rng = self.rng
        r = rng.random()
        if r < 0.3:
            pattern, host = rng.choice(MX_VECTORS)
            pattern = self.text(self.mutator.mutate(_enc(pattern))) if rng.random() < 0.5 else pattern
        else:
            pattern = self.text(self.raw()) if rng.random() < 0.5 else _host(rng, wildcard=0.5)
            base = pattern[2:] if pattern.startswith("*.") else pattern
            host = rng.choice([base, f"{_label(rng)}.{base}", f"{_label(rng)}.{_label(rng)}.{base}", _host(rng)])
        if rng.random() < 0.5:
            host = self.text(self.mutator.mutate(_enc(host)))
        if rng.random() < 0.01:
            host = rng.choice([None, b"mail.example.com", 1])
        return pattern, host

    def from_bytes(self, data: bytes) -> Any:
        pattern, _, host = data.partition(b"\x00")
        return pattern.decode("utf-8", "surrogateescape"), host.decode("utf-8", "surrogateescape")

    def call(self, value: Any) -> bool:
        pattern, host = value
        result = mx_matches(pattern, host)
        try:
            policy = Policy(Mode.ENFORCE, [pattern], 1)
        except PolicyError:
            policy = None
        self.agree = policy is None or policy.matches(host) is result
        if result is not True and result is not False:
            raise Violation(f"mx_matches returned {result!r}")
        return result

    def verify(self, value: Any) -> None:
        _check(self.agree, f"mx_matches and Policy.matches disagree on {value!r}")

    def verify_error(self, value: Any, exc: BaseException) -> None:
        raise Violation(f"raised {exc!r}")

    def rejected(self, value: Any) -> None:
        self.verify(value)


# -- socketmap (Postfix): netstrings, keys, answers ------------------------------------------------------------

NETSTRING_TOKENS = [b":", b",", b"0", b"0:", b"0:,", b"1:", b"1:a,", b"3:abc,", b"00", b"01:", b"999999", b"-1:"]


class NetstringTarget(Target):
    name = "netstring"
    contract = "NetstringDecoder.feed over any chunking -> payloads, else NetstringError; chunking-independent"
    errors = (NetstringError,)
    tokens = (*NETSTRING_TOKENS, b"postfix ", b"postfix example.com", b"\x00", b"\xff")

    def seeds(self) -> list[bytes]:
        payloads = [b"", b"abc", b"postfix example.com", b"a,b:c", b"\x00\xff", b"x" * 100, b"postfix [x.example]:25"]
        return [b"".join(encode(p) for p in payloads[:n]) for n in range(1, len(payloads) + 1)]

    def grammar(self) -> bytes:
        rng = self.rng
        payloads = [rng.randbytes(rng.choice((0, 1, 3, 9, 10, 64, 100))) for _ in range(rng.randint(0, 6))]
        return b"".join(encode(p) for p in payloads)

    def _chunks(self, stream: bytes) -> list[bytes]:
        rng = self.rng
        r = rng.random()
        if r < 0.2:
            return [stream]
        if r < 0.3:
            return [stream[i : i + 1] for i in range(len(stream))]
        cuts = sorted(rng.randint(0, len(stream)) for _ in range(rng.randint(1, 8)))
        edges = [0, *cuts, len(stream)]
        chunks = [stream[a:b] for a, b in itertools.pairwise(edges)]
        return chunks if rng.random() < 0.9 else [*chunks, b""]

    def generate(self) -> Any:
        max_length = self.rng.choice((0, 1, 2, 9, 10, 11, 64, 99, 100, 1024, 65536))
        return max_length, self._chunks(self.raw())

    def from_bytes(self, data: bytes) -> Any:
        if len(data) < 2:
            return 10, [data]
        size, stream = data[1] % 17, data[2:]
        chunks = [stream] if size == 0 else [stream[i : i + size] for i in range(0, len(stream), size)]
        return data[0], chunks

    def call(self, value: Any) -> bool:
        max_length, chunks = value
        decoder = NetstringDecoder(max_length)
        self.decoded: list[bytes] = []
        width = len(str(max_length))
        for chunk in chunks:
            try:
                self.decoded += decoder.feed(chunk)
            except NetstringError as exc:
                self.decoded += exc.payloads
                try:
                    decoder.feed(b"1:x,")
                except NetstringError:
                    raise exc from None
                raise Violation("the decoder accepted input after an error") from None
            if decoder.buffered > max_length + width:
                raise Violation(f"buffered {decoder.buffered} > {max_length} + {width}")
        return True

    def _whole(self, value: Any) -> tuple[list[bytes], bool]:
        max_length, chunks = value
        try:
            return NetstringDecoder(max_length).feed(b"".join(chunks)), False
        except NetstringError as exc:
            return exc.payloads, True

    def verify(self, value: Any) -> None:
        payloads, failed = self._whole(value)
        _check(not failed and payloads == self.decoded, "the chunked and the whole stream decode differently")
        _check(all(len(p) <= value[0] for p in payloads), "a payload over max_length")

    def verify_error(self, value: Any, exc: BaseException) -> None:
        super().verify_error(value, exc)
        payloads, failed = self._whole(value)
        _check(failed and payloads == self.decoded, "the chunked and the whole stream fail differently")


SOCKETMAP_TOKENS = [
    b"postfix ", b" ", b"[", b"]", b":", b":25", b":smtp", b":65535", b":99999", b".", b"IPv6:", b"[IPv6:", b"::",
    b"192.0.2.1", b"2001:db8::1", b"enforce.example", b"testing.example", b"\xc3\xa9", b"\xff", b"\x00", b"%",
]  # fmt: skip


def _socketmap_key(rng: random.Random, domains: Sequence[str]) -> str:
    host = rng.choice(domains) if rng.random() < 0.4 else _host(rng)
    if rng.random() < 0.1:
        host = host.upper()
    port = rng.choice(["25", "smtp", "587", "0", "99999", "", "x y", "-1", "a" * 70])
    form = rng.randrange(10)
    if form == 0:
        return f"[{host}]"
    if form == 1:
        return f"[{host}]:{port}"
    if form == 2:
        return f"{host}:{port}"
    if form == 3:
        return "." + host
    if form == 4:
        return rng.choice(["[192.0.2.1]", "[IPv6:2001:db8::1]", "[ipv6:::1]:25", "192.0.2.1", "::1", "192.0.2.1:25"])
    return host


class SocketmapKeyTarget(Target):
    name = "socketmap-key"
    contract = "socketmap.parse_key(str) -> domain | None, else DomainError"
    errors = (DomainError,)
    tokens = SOCKETMAP_TOKENS

    def seeds(self) -> list[bytes]:
        keys = ["example.com", "example.com.", "[example.com]", "[example.com]:25", "example.com:25", ".example.com"]
        keys += ["[192.0.2.1]", "[IPv6:2001:db8::1]", "192.0.2.1", "2001:db8::1", "[example.com", "example.com:x y"]
        return [_enc(k) for k in keys] + _domain_seeds()

    def grammar(self) -> bytes:
        return _enc(_socketmap_key(self.rng, ["example.com", "bücher.example"]))

    def call(self, value: Any) -> bool:
        self.result = parse_key(value)
        return self.result is not None

    def verify(self, value: Any) -> None:
        result = self.result
        _check(isinstance(result, str) and ":" not in result and result in value, f"parse_key gave {result!r}")


class _NxdomainResolver:
    """A DNS resolver that answers NXDOMAIN at once: the socketmap server's lookups need no I/O."""

    queries = 0

    async def resolve(self, qname: Any, rdtype: Any, **kwargs: Any) -> Any:

        self.queries += 1
        raise dns.resolver.NXDOMAIN


SEEDED = {  # domain -> (mode, mx): policies put in the resolver's cache before the run
    "enforce.example": ("enforce", ["mx.enforce.example", "*.mx.example"]),
    "xn--bcher-kva.example": ("enforce", ["mx.xn--bcher-kva.example"]),
    "a.b.c.example": ("enforce", ["mx1.a.b.c.example", "mx2.a.b.c.example"]),
    "testing.example": ("testing", ["mx.testing.example"]),
    "none.example": ("none", []),
}


class SocketmapAnswerTarget(Target):
    name = "socketmap-answer"
    contract = "SocketmapServer.answer(bytes) -> OK/NOTFOUND/TEMP/PERM reply, never raises, as parse_key says"
    tokens = SOCKETMAP_TOKENS

    def __init__(self, rng: random.Random) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reset()
        super().__init__(rng)

    def reset(self) -> None:

        if self.loop is not None:
            self.close()
        self.loop = asyncio.new_event_loop()
        self.resolver = PolicyResolver(dns_resolver=_NxdomainResolver(), ssl_context=ssl.create_default_context())
        self.server = SocketmapServer(self.resolver)
        self.enforce: dict[str, bytes] = {}
        for domain, (mode, mx) in SEEDED.items():
            self.resolver.cache_policy(domain, Policy(mode, mx, 86_400), "seed1")
            if mode == "enforce":
                match = ":".join(p[1:] if p.startswith("*.") else p for p in mx)
                self.enforce[domain] = f"OK secure match={match} servername=hostname".encode()

    def close(self) -> None:
        if self.loop is not None:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.resolver.aclose())
            self.loop.close()
            self.loop = None

    def seeds(self) -> list[bytes]:
        keys = ["enforce.example", "ENFORCE.Example.", "[enforce.example]:25", "enforce.example:smtp", "[192.0.2.1]"]
        keys += [".enforce.example", "bücher.example", "testing.example", "none.example", "unknown.example"]
        return [b"postfix " + _enc(k) for k in keys] + [b"postfix", b" x", b"", b"postfix \xff"]

    def grammar(self) -> bytes:
        name = self.rng.choice([b"postfix", b"postfix", b"x", b"", b"tls_policy"])
        space = b" " if self.rng.random() < 0.95 else self.rng.choice([b"", b"  ", b"\t"])
        return name + space + _enc(_socketmap_key(self.rng, ["enforce.example", "bücher.example", *SEEDED]))

    def generate(self) -> Any:
        return self.raw()

    def from_bytes(self, data: bytes) -> Any:
        return data

    def expected(self, payload: bytes) -> bytes | None:
        """The reply the contract calls for, from the public functions (None: any of OK/NOTFOUND/TEMP)."""
        name, space, raw_key = payload.partition(b" ")
        if not space or not name:
            return b'PERM malformed request: expected "<name> <key>"'
        try:
            domain = parse_key(raw_key.decode())
            if domain is None or is_address_literal(domain):
                return b"NOTFOUND "
            key = normalize_domain(domain)
        except (UnicodeDecodeError, DomainError):
            return b"NOTFOUND "
        return self.enforce.get(key, b"NOTFOUND ")

    def call(self, value: Any) -> bool:
        assert self.loop is not None
        errors = self.server.errors
        self.reply = self.loop.run_until_complete(self.server.answer(value))
        if self.server.errors != errors:
            raise Violation(f"internal error answering {value!r}: {self.reply!r}")
        return self.reply.startswith(b"OK ")

    def verify(self, value: Any) -> None:
        self.rejected(value)

    def rejected(self, value: Any) -> None:
        reply = self.reply
        _check(isinstance(reply, bytes) and reply.startswith((b"OK ", b"NOTFOUND ", b"TEMP ", b"PERM ")), repr(reply))
        expected = self.expected(value)
        _check(expected is None or reply == expected, f"replied {reply!r}, expected {expected!r}")

    def verify_error(self, value: Any, exc: BaseException) -> None:
        raise Violation(f"answer raised {exc!r}")


# -- RFC 8460 §3: the TLS-RPT record --------------------------------------------------------------------------

TLSRPT_TOKENS = [
    b"v=TLSRPTv1", b"v=TLSRPTv1;", b"v=TLSRPTv10", b"rua=", b"mailto:", b"https://", b"http://", b"ftp://", b",",
    b";", b" ", b"\t", b"%2C", b"%3B", b"%21", b"%", b"@", b"/", b"!", b"=", b"ext=1", b"rua=mailto:a@b.example",
    b"example.com", b"\xc3\xa9", b"\x00",
]  # fmt: skip


def _tlsrpt_uri(rng: random.Random) -> str:
    scheme = rng.choice(["mailto:", "https://", "MAILTO:", "HTTPS://", "ftp://", "http://", "x:", ":", "mailto"])
    tail = rng.choice(["reports@example.com", "r.example/v1/tlsrpt?x=1#f", "a@b%21c.example", "[::1]/x", "a!b", ""])
    return scheme + tail


def _tlsrpt_record(rng: random.Random) -> str:
    fields: list[str] = []
    for _ in range(rng.choice((0, 1, 1, 1, 2, 3, 5))):
        if rng.random() < 0.6:
            uris = [_tlsrpt_uri(rng) for _ in range(rng.choice((1, 1, 2, 3)))]
            fields.append("rua=" + "".join(f"{_wsp(rng)},{_wsp(rng)}{u}" for u in uris)[len(",") :].lstrip(" \t,"))
        else:
            fields.append(_txt_field(rng).replace("id=", "ext="))
    if rng.random() < 0.01:  # a duplicated field, many times over
        fields.extend([fields[0] if fields else "rua=mailto:a@b.example"] * rng.choice((2, 3, 5, 8, 12, 16, 24, 40)))
    rng.shuffle(fields)
    version = "v=TLSRPTv1" if rng.random() < 0.9 else rng.choice(["v=TLSRPTv10", "v=tlsrptv1", "", "v=TLSRPTv1 "])
    text = version + "".join(f"{_wsp(rng)};{_wsp(rng)}{f}" for f in fields)
    return text + (_wsp(rng) + ";" + _wsp(rng) if rng.random() < 0.4 else "")


def _tlsrpt_seeds() -> list[bytes]:
    return [
        b"v=TLSRPTv1; rua=mailto:reports@example.com",  # RFC 8460 §3 examples
        b"v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt",
        b"v=TLSRPTv1;rua=mailto:a@b.example,https://r.example/v1",
        b"v=TLSRPTv1 ; rua=mailto:a@b.example , https://r.example/x?y=1 ; ext=1 ;",
        b"v=TLSRPTv1; rua=ftp://x.example, mailto:a@b%21c.example",
        b"v=TLSRPTv1; rua=mailto:a@b.example; rua=https://ignored.example/",
        b"v=TLSRPTv1",
        b"v=TLSRPTv1; ext=1",
    ]


class TlsRptTarget(StrOrBytesTarget):
    name = "tlsrpt"
    contract = "parse_tlsrpt_record(str | bytes) -> TlsRptRecord, else TlsRptRecordError"
    errors = (TlsRptRecordError,)
    tokens = TLSRPT_TOKENS

    def seeds(self) -> list[bytes]:
        return _tlsrpt_seeds()

    def grammar(self) -> bytes:
        return _enc(_tlsrpt_record(self.rng))

    def call(self, value: Any) -> bool:
        self.record = parse_tlsrpt_record(value)
        return True

    def verify(self, value: Any) -> None:
        record = self.record
        _check(bool(record.rua), "no rua")
        _check(all(uri.lower().startswith(("mailto:", "https:")) for uri in record.rua), f"rua {record.rua!r}")
        _check(not any(uri.lower().startswith(("mailto:", "https:")) for uri in record.ignored_rua), "ignored_rua")
        _check(all("," not in uri and ";" not in uri and "!" not in uri for uri in record.rua), f"{record.rua!r}")
        other = bytes(value).decode("ascii") if not isinstance(value, str) else value.encode("ascii")
        _check(parse_tlsrpt_record(other) == record, "str and bytes forms parse differently")


class TlsRptSelectTarget(Target):
    name = "tlsrpt-select"
    contract = "select_tlsrpt_record(records) -> TlsRptRecord | None, never raises"
    tokens = TLSRPT_TOKENS

    def seeds(self) -> list[bytes]:
        return _tlsrpt_seeds()

    def grammar(self) -> bytes:
        return _enc(_tlsrpt_record(self.rng))

    def generate(self) -> Any:
        rng = self.rng
        records: list[Any] = []
        for _ in range(rng.choice((0, 1, 1, 1, 2, 2, 3))):
            if rng.random() < 0.03:
                records.append(rng.choice([None, 5, bytearray(b"v=TLSRPTv1;rua=mailto:a@b.c"), b"v=spf1 -all"]))
            else:
                data = self.raw()
                records.append(data if rng.random() < 0.5 else self.text(data))
        return records

    def from_bytes(self, data: bytes) -> Any:
        return data.split(b"\x00")

    def call(self, value: Any) -> bool:
        return select_tlsrpt_record(value) is not None

    def verify_error(self, value: Any, exc: BaseException) -> None:
        raise Violation(f"select_tlsrpt_record raised {exc!r}")


TARGETS: dict[str, type[Target]] = {
    cls.name: cls
    for cls in (
        TxtTarget, TxtSelectTarget, PolicyTarget, DomainTarget, MxTarget, NetstringTarget, SocketmapKeyTarget,
        SocketmapAnswerTarget, TlsRptTarget, TlsRptSelectTarget,
    )
}  # fmt: skip


# -- the run ----------------------------------------------------------------------------------------------------


def encode_input(value: Any) -> Any:
    """A JSON form of an input that :func:`decode_input` turns back into the same input."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bytes": base64.b64encode(bytes(value)).decode("ascii"), "type": type(value).__name__}
    if isinstance(value, str):
        return {"str": value}
    if isinstance(value, list | tuple):
        return {"list": [encode_input(item) for item in value], "type": type(value).__name__}
    return {"repr": repr(value)}


def decode_input(data: Any) -> Any:
    if "bytes" in data:
        raw = base64.b64decode(data["bytes"])
        return {"bytearray": bytearray, "memoryview": memoryview}.get(data.get("type", ""), bytes)(raw)
    if "str" in data:
        return data["str"]
    if "list" in data:
        items = [decode_input(item) for item in data["list"]]
        return tuple(items) if data.get("type") == "tuple" else items

    return ast.literal_eval(data["repr"])


def _short(value: Any, limit: int = 240) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    inner = [f for f in frames if "/mtasts/" in f.filename] or frames
    if not inner:
        return "?"
    frame = inner[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} ({frame.name})"


def attempt(target: Target, value: Any, cap: float) -> tuple[str, float, BaseException | None]:
    """One timed call: ("accepted" | "rejected" | "unexpected" | "interrupted", seconds, exception).

    The wall time (``perf_counter``) is returned; the thread's CPU time is left in ``target.cpu``: the two differ
    when the process was preempted (a busy machine), and only the CPU time is the parser's own.
    """
    elapsed = target.cpu = cap
    try:
        signal.setitimer(signal.ITIMER_REAL, cap)
        try:
            cpu, start = time.thread_time(), time.perf_counter()
            try:
                accepted = target.call(value)
            finally:
                elapsed = time.perf_counter() - start
                target.cpu = time.thread_time() - cpu
            if accepted:
                target.verify(value)
                return "accepted", elapsed, None
            getattr(target, "rejected", lambda value: None)(value)
            return "rejected", elapsed, None
        except target.errors as exc:
            try:
                target.verify_error(value, exc)
            except Violation as violation:
                return "unexpected", elapsed, violation
            return "rejected", elapsed, None
        except Exception as exc:
            return "unexpected", elapsed, exc
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except Hang:
        target.reset()
        return "interrupted", max(elapsed, cap), None


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_target(
    name: str, inputs: int, seed: int, hang_s: float, cap_s: float, *, quiet: bool = False
) -> dict[str, Any]:
    """Fuzz one parser with ``inputs`` inputs; the statistics and reproducers as a JSON-able dict."""
    started = time.perf_counter()
    target = TARGETS[name](random.Random(f"{seed}/{name}"))
    counts = {"accepted": 0, "rejected": 0, "unexpected": 0, "interrupted": 0}
    hangs = slow_once = 0
    signatures: dict[str, int] = {}
    unexpected: list[dict[str, Any]] = []
    hang_examples: list[dict[str, Any]] = []
    smallest_hang: dict[str, Any] | None = None
    times: list[float] = []
    cpu_times: list[float] = []
    progress = max(inputs // 10, 1)
    previous = signal.signal(signal.SIGALRM, _alarm)
    gc.collect()
    gc.disable()
    try:
        for index in range(inputs):
            if index % GC_EVERY == 0 and index:
                gc.collect()
            if not quiet and index % progress == 0 and index:
                elapsed = time.perf_counter() - started
                print(f"  {name}: {index:,}/{inputs:,} in {elapsed:.0f} s", file=sys.stderr, flush=True)
            value = target.generate()
            cap = cap_s if hangs < FULL_CAP_HANGS else hang_s
            outcome, seconds, exc = attempt(target, value, cap)
            counts[outcome] += 1
            times.append(seconds)
            cpu_times.append(target.cpu)
            if seconds > hang_s:
                again = attempt(target, value, cap)[1]  # confirm: a preempted run is not a hang
                if again > hang_s:
                    hangs += 1
                    example = {
                        "index": index, "ms": [round(seconds * 1e3, 1), round(again * 1e3, 1)],
                        "interrupted": outcome == "interrupted", "length": len(repr(value)),
                        "repr": _short(value), "input": encode_input(value),
                    }  # fmt: skip
                    if len(hang_examples) < KEEP_EXAMPLES:
                        hang_examples.append(example)
                    if smallest_hang is None or example["length"] < smallest_hang["length"]:
                        smallest_hang = example
                else:
                    slow_once += 1
            if exc is not None:
                signature = f"{type(exc).__name__} at {_where(exc)}"
                signatures[signature] = signatures.get(signature, 0) + 1
                if len(unexpected) < KEEP_EXAMPLES or signatures[signature] == 1:
                    unexpected.append(
                        {
                            "index": index,
                            "signature": signature,
                            "error": f"{type(exc).__name__}: {exc}"[:600],
                            "traceback": traceback.format_exception(exc)[-4:],
                            "repr": _short(value),
                            "input": encode_input(value),
                        }
                    )
    finally:
        gc.enable()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        target.close()
    times.sort()
    cpu_times.sort()
    return {
        "parser": name,
        "contract": target.contract,
        "inputs": inputs,
        **counts,
        "hangs": hangs,
        "slow_once": slow_once,
        "mean_us": round(sum(times) / len(times) * 1e6, 2) if times else 0.0,
        "p50_us": round(_percentile(times, 0.5) * 1e6, 2),
        "p99_us": round(_percentile(times, 0.99) * 1e6, 2),
        "p999_us": round(_percentile(times, 0.999) * 1e6, 2),
        "max_ms": round((times[-1] if times else 0.0) * 1e3, 3),
        "cpu_p999_us": round(_percentile(cpu_times, 0.999) * 1e6, 2),
        "cpu_max_ms": round((cpu_times[-1] if cpu_times else 0.0) * 1e3, 3),
        "wall_s": round(time.perf_counter() - started, 1),
        "signatures": signatures,
        "unexpected_examples": unexpected,
        "hang_examples": hang_examples,
        "smallest_hang": smallest_hang,
    }


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(
        cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
    )


def format_table(results: Sequence[dict[str, Any]]) -> str:
    head = ["parser", "inputs", "accepted", "rejected", "unexpected", "hangs", "p50 µs", "p99.9 µs", "max ms"]
    head += ["CPU p99.9 µs", "CPU max ms", "slow once", "wall s"]
    rows = [
        [
            r["parser"],
            f"{r['inputs']:,}",
            f"{r['accepted']:,}",
            f"{r['rejected']:,}",
            f"{r['unexpected']:,}",
            f"{r['hangs']:,}",
            f"{r['p50_us']:.1f}",
            f"{r['p999_us']:.1f}",
            f"{r['max_ms']:.2f}",
            f"{r['cpu_p999_us']:.1f}",
            f"{r['cpu_max_ms']:.2f}",
            f"{r['slow_once']:,}",
            f"{r['wall_s']:.0f}",
        ]
        for r in results
    ]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [_row(head, widths), _row(["-" * w for w in widths], widths)]
    lines += [_row(row, widths) for row in rows]
    return "\n".join(lines)


def _findings(results: Sequence[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        for signature, count in r["signatures"].items():
            lines.append(f"{r['parser']}: {count:,} × {signature}")
        for example in r["unexpected_examples"][:2]:
            lines.append(f"    {example['error'][:200]}\n    input: {example['repr']}")
        if r["hangs"]:
            small = r["smallest_hang"]
            lines.append(f"{r['parser']}: {r['hangs']:,} hangs; smallest: {small['repr']} ({small['ms']} ms)")
    return "\n".join(lines)


def replay(path: Path, cap_s: float) -> int:
    """Re-run the reproducers saved in a results file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    signal.signal(signal.SIGALRM, _alarm)
    status = 0
    for result in data["results"]:
        examples = result["unexpected_examples"] + result["hang_examples"]
        if result["smallest_hang"] and result["smallest_hang"] not in examples:
            examples.append(result["smallest_hang"])
        if not examples:
            continue
        target = TARGETS[result["parser"]](random.Random(0))
        for example in examples:
            outcome, seconds, exc = attempt(target, decode_input(example["input"]), cap_s)
            detail = f"{type(exc).__name__}: {exc}"[:200] if exc is not None else ""
            print(f"{result['parser']} #{example['index']}: {outcome} in {seconds * 1e3:.1f} ms {detail}")
            status |= outcome in ("unexpected", "interrupted") or seconds > data["hang_ms"] / 1e3
        target.close()
    return int(status)


# -- atheris (coverage-guided, optional) ------------------------------------------------------------------------


def atheris_child(name: str, libfuzzer_args: list[str]) -> None:
    """Run one parser under libFuzzer (``--atheris-child``); an unexpected exception is a crash."""
    import atheris  # noqa: PLC0415 - optional: only this mode needs it

    target = TARGETS[name](random.Random(0))
    atheris.instrument_all()

    def one(data: bytes) -> None:
        value = target.from_bytes(data)
        try:
            accepted = target.call(value)
        except target.errors as exc:
            target.verify_error(value, exc)
            return
        if accepted:
            target.verify(value)
        else:
            getattr(target, "rejected", lambda value: None)(value)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()


def run_atheris(names: Sequence[str], seconds: int, seed: int, jobs: int, out: Path) -> list[dict[str, Any]]:
    def one(name: str) -> dict[str, Any]:
        target = TARGETS[name](random.Random(seed))
        artifacts = out / name
        artifacts.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as corpus:
            for i, data in enumerate(target.seeds()):
                Path(corpus, f"seed-{i}").write_bytes(data)
            target.close()
            args = [
                f"-max_total_time={seconds}", "-timeout=1", f"-seed={seed}", "-max_len=8192", "-rss_limit_mb=4096",
                f"-artifact_prefix={artifacts}/", "-print_final_stats=1", corpus,
            ]  # fmt: skip
            command = [sys.executable, "-m", "benchmarks.fuzz", "--atheris-child", name, "--", *args]
            proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
        log = proc.stderr
        runs = [line for line in log.splitlines() if line.startswith("stat::number_of_executed_units")]
        cov = [line for line in log.splitlines() if " cov: " in line]
        status = "ok" if proc.returncode == 0 else "timeout" if "ALARM" in log or "timeout" in log else "crash"
        found = sorted(str(p) for p in artifacts.iterdir())
        (artifacts / "libfuzzer.log").write_text(log, encoding="utf-8")
        return {
            "parser": name, "status": status, "returncode": proc.returncode,
            "runs": int(runs[-1].split(":")[-1]) if runs else None,
            "coverage": cov[-1].split(" cov: ")[1].split()[0] if cov else None,
            "artifacts": [f for f in found if not f.endswith("libfuzzer.log")],
            "tail": log.strip().splitlines()[-12:] if status != "ok" else [],
        }  # fmt: skip

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, names))


# -- command line -----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--atheris-child"]:
        atheris_child(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per parser (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    parser.add_argument("--only", nargs="+", choices=sorted(TARGETS), metavar="PARSER", help="these parsers only")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON})")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parsers fuzzed at once")
    parser.add_argument("--hang-ms", type=float, default=50.0, help="a call slower than this is a hang (50)")
    parser.add_argument("--cap-ms", type=float, default=500.0, help="a call is interrupted after this (500)")
    parser.add_argument("--list", action="store_true", help="list the parsers and their contracts")
    parser.add_argument("--replay", type=Path, metavar="JSON", help="re-run the reproducers in a results file")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided with atheris (libFuzzer) instead")
    parser.add_argument("--atheris-seconds", type=int, default=60, help="per parser, in --atheris mode (60)")
    args = parser.parse_args(argv)
    if args.list:
        for cls in TARGETS.values():
            print(f"{cls.name:17} {cls.contract}")
        return 0
    if args.replay:
        return replay(args.replay, args.cap_ms / 1e3)
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    names = args.only or list(TARGETS)
    if args.atheris:
        results = run_atheris(names, args.atheris_seconds, seed, args.jobs, DEFAULT_JSON.parent / "atheris")
        for r in results:
            print(f"{r['parser']:17} {r['status']:8} runs={r['runs']} cov={r['coverage']} {' '.join(r['artifacts'])}")
            for line in r["tail"]:
                print(f"    {line}")
        return int(any(r["status"] != "ok" for r in results))
    command = "python -m benchmarks.fuzz " + " ".join(argv)
    print(f"fuzzing {len(names)} parsers × {args.inputs:,} inputs, seed {seed}, {args.jobs} jobs", file=sys.stderr)
    started = time.perf_counter()
    hang_s, cap_s = args.hang_ms / 1e3, max(args.cap_ms, args.hang_ms) / 1e3
    slow_first = sorted(names, key=lambda n: n not in ("socketmap-answer", "policy", "domain", "mx"))
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {n: pool.submit(run_target, n, args.inputs, seed, hang_s, cap_s) for n in slow_first}
        results = [futures[n].result() for n in names]
    total = time.perf_counter() - started
    print(format_table(results))
    findings = _findings(results)
    if findings:
        print("\n" + findings)
    print(f"\nseed {seed}; {total:.0f} s in all")
    report = {
        "command": command.strip(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "seed": seed,
        "inputs": args.inputs,
        "hang_ms": args.hang_ms,
        "cap_ms": args.cap_ms,
        "total_s": round(total, 1),
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")
    print(f"results: {args.json}", file=sys.stderr)
    return int(any(r["unexpected"] or r["hangs"] for r in results))


if __name__ == "__main__":
    raise SystemExit(main())
