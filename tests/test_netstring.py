"""mtasts.netstring: the sans-I/O framing of Postfix's socketmap protocol (netstrings, socketmap_table(5))."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtasts.errors import MTASTSError
from mtasts.netstring import NetstringDecoder, NetstringError, encode


@pytest.mark.parametrize(
    ("payload", "wire"),
    [
        (b"", b"0:,"),
        (b"abc", b"3:abc,"),
        (b"postfix example.com", b"19:postfix example.com,"),
        (b"a,b:c", b"5:a,b:c,"),  # the payload may hold ':' and ','
        (b"\x00\xff", b"2:\x00\xff,"),
        (b"x" * 1000, b"1000:" + b"x" * 1000 + b","),
    ],
)
def test_encode_and_decode(payload: bytes, wire: bytes) -> None:
    assert encode(payload) == wire
    assert NetstringDecoder(1000).feed(wire) == [payload]


def test_many_in_one_feed_in_order() -> None:
    payloads = [b"postfix a.example", b"", b"postfix b.example", b"x" * 50]
    assert NetstringDecoder(100).feed(b"".join(encode(p) for p in payloads)) == payloads


def test_byte_by_byte() -> None:
    payloads = [b"postfix example.com", b"", b"12345678901"]
    decoder = NetstringDecoder(64)
    out: list[bytes] = []
    for byte in b"".join(encode(p) for p in payloads):
        out += decoder.feed(bytes([byte]))
    assert out == payloads
    assert decoder.buffered == 0


def test_partial_input_is_kept() -> None:
    decoder = NetstringDecoder(100)
    assert decoder.feed(b"5:hel") == []
    assert decoder.buffered == 3
    assert decoder.feed(b"lo") == []
    assert decoder.feed(b",1") == [b"hello"]
    assert decoder.feed(b"") == []
    assert decoder.feed(b"0:0123456789,3:ab") == [b"0123456789"]
    assert decoder.feed(b"c,") == [b"abc"]


def test_max_length_is_inclusive() -> None:
    assert NetstringDecoder(5).feed(b"5:12345,") == [b"12345"]
    with pytest.raises(NetstringError, match="over the limit"):
        NetstringDecoder(5).feed(b"6:123456,")
    assert NetstringDecoder(0).feed(b"0:,0:,") == [b"", b""]


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b":abc,", "empty length"),
        (b"x:abc,", "not a digit"),
        (b"3x:abc,", "not a digit"),
        (b"-3:abc,", "not a digit"),
        (b" 3:abc,", "not a digit"),
        (b"+3:abc,", "not a digit"),
        (b"03:abc,", "leading zero"),
        (b"00:,", "leading zero"),
        (b"3:abc;", "not terminated"),
        (b"3:abcd,", "not terminated"),  # length too short for the payload
        (b"3:ab,", None),  # too long for the payload: ",3..." fails later
        (b"2000:", "over the limit"),
        (b"99999999999999999999999999:", "digits"),  # absurdly many digits: refused before the colon
        (b"1" * 10_000, "digits"),
        (b"\xd9:abc,", "not a digit"),  # a non-ASCII digit is not a digit
        (b"3:abc,4:abcde,", "not terminated"),  # the second one is broken
        (b"abc", "not a digit"),  # garbage
    ],
)
def test_malformed(wire: bytes, message: str | None) -> None:
    decoder = NetstringDecoder(1024)
    with pytest.raises(NetstringError) as info:
        decoder.feed(wire)
        decoder.feed(b"1:x,")  # for the cases that need more input to fail
    assert isinstance(info.value, MTASTSError)
    if message is not None:
        assert message in str(info.value)


def test_missing_colon_is_caught_within_the_length_width() -> None:
    decoder = NetstringDecoder(1024)
    assert decoder.feed(b"102") == []
    with pytest.raises(NetstringError, match="digits"):
        decoder.feed(b"45")  # five digits and still no ':' — 1024 has four


def test_leading_zero_split_across_feeds() -> None:
    decoder = NetstringDecoder(1024)
    assert decoder.feed(b"0") == []
    with pytest.raises(NetstringError, match="leading zero"):
        decoder.feed(b"1:x,")


def test_error_carries_the_payloads_before_it_and_is_final() -> None:
    decoder = NetstringDecoder(1024)
    with pytest.raises(NetstringError) as info:
        decoder.feed(b"1:a,1:b,junk")
    assert info.value.payloads == [b"a", b"b"]
    with pytest.raises(NetstringError, match="already broken"):
        decoder.feed(b"1:c,")
    assert decoder.buffered == 0


def test_buffer_is_bounded() -> None:
    decoder = NetstringDecoder(1024)
    decoder.feed(b"1024:" + b"x" * 1023)
    assert decoder.buffered == 1023
    assert decoder.feed(b"x,") == [b"x" * 1024]
    # a stream of digits never grows the buffer beyond the width of max_length
    decoder = NetstringDecoder(1024)
    decoder.feed(b"1")
    decoder.feed(b"0")
    assert decoder.buffered == 2
    with pytest.raises(NetstringError):
        decoder.feed(b"000000")


def test_invalid_max_length() -> None:
    for bad in (-1, True, 1.5):
        with pytest.raises(MTASTSError):
            NetstringDecoder(bad)  # type: ignore[arg-type]


# -- properties ------------------------------------------------------------------------------------------------


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=300)
@given(payloads=st.lists(st.binary(max_size=80), max_size=12), cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_round_trip_through_any_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    decoder = NetstringDecoder(80)
    wire = b"".join(encode(p) for p in payloads)
    out: list[bytes] = []
    for chunk in _chunks(wire, cuts):
        out += decoder.feed(chunk)
        assert decoder.buffered <= 80 + 2
    assert out == payloads
    assert decoder.buffered == 0


@settings(max_examples=300)
@given(
    data=st.lists(
        st.one_of(
            st.binary(max_size=40), st.sampled_from([b":", b",", b"0", b"3:", b"12:", b"1:a,", b"00:", b"99999"])
        ),
        max_size=30,
    ),
    max_length=st.integers(0, 64),
)
def test_random_streams_raise_only_netstring_error(data: list[bytes], max_length: int) -> None:
    decoder = NetstringDecoder(max_length)
    width = len(str(max_length))
    try:
        for chunk in data:
            for payload in decoder.feed(chunk):
                assert len(payload) <= max_length
            assert decoder.buffered <= max_length + width
    except NetstringError:
        pass
