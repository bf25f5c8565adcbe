"""Netstrings, sans-I/O: the framing of Postfix's socketmap protocol (``socketmap_table(5)``).

D. J. Bernstein's definition (https://cr.yp.to/proto/netstrings.txt), as Postfix uses it::

    netstring = length ":" payload ","
    length    = "0" / %x31-39 *DIGIT      ; decimal, no leading zeros, the payload's size in bytes
    payload   = *OCTET                    ; exactly <length> bytes, anything at all

``3:abc,`` carries ``abc``; ``0:,`` carries the empty string. :class:`NetstringDecoder` turns a byte stream,
fed in pieces of any size, into payloads; it holds no socket and does no I/O (like h11), so the asyncio
server (:mod:`mtasts.socketmap`) and the tests drive it the same way.
"""

from __future__ import annotations

from .errors import NetstringError, UsageError

__all__ = ["NetstringDecoder", "NetstringError", "encode"]

_COLON = 0x3A
_COMMA = 0x2C


def encode(payload: bytes) -> bytes:
    """``payload`` as one netstring: ``b"abc"`` → ``b"3:abc,"``."""
    return b"%d:%s," % (len(payload), payload)


class NetstringDecoder:
    """Decode a stream of netstrings, fed in pieces of any size.

    ``feed(data)`` returns the payloads completed by ``data``, in order, and keeps any partial netstring for
    the next call. A payload longer than ``max_length`` is refused as soon as its length is read — so the
    decoder never buffers more than ``max_length`` bytes of payload plus the length's digits. Work is linear
    in the input. After a :class:`NetstringError` the stream cannot be resynchronised: every later ``feed``
    raises again.
    """

    __slots__ = ("_digits", "_error", "_max_length", "_need", "_partial", "_width")

    def __init__(self, max_length: int) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 0:
            raise UsageError(f"max_length must be an integer >= 0, not {max_length!r}")
        self._max_length = max_length
        self._width = len(str(max_length))  # the most digits a valid length can have
        self._digits = b""  # the digits of a length split across feeds (at most _width bytes)
        self._need = -1  # payload bytes still expected (0: only the comma), -1: reading a length
        self._partial = bytearray()  # the payload read so far (at most max_length bytes)
        self._error: NetstringError | None = None

    @property
    def buffered(self) -> int:
        """How many bytes of a partial netstring are held (length digits and payload)."""
        return len(self._digits) + len(self._partial)

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads that ``data`` completes, in order; raises :class:`NetstringError` on malformed input."""
        if self._error is not None:
            raise NetstringError(f"the stream is already broken: {self._error.message}")
        out: list[bytes] = []
        try:
            self._feed(data, out)
        except NetstringError as exc:
            exc.payloads = out
            self._error = exc
            self._digits, self._partial = b"", bytearray()
            raise
        return out

    def _feed(self, data: bytes, out: list[bytes]) -> None:
        if self._digits:  # a length split across feeds: join it to the new data (at most _width bytes copied)
            data, self._digits = self._digits + data, b""
        size, pos = len(data), 0
        width, max_length = self._width, self._max_length
        while pos < size:
            need = self._need
            if need < 0:  # length ":"
                colon = data.find(b":", pos, pos + width + 1)
                if colon < 0:
                    digits = data[pos : pos + width + 1]
                    self._check_digits(digits, complete=False)
                    if len(digits) > width:
                        raise NetstringError(f"netstring length longer than {width} digits (max {max_length})")
                    self._digits = bytes(digits)
                    return
                length = self._check_digits(data[pos:colon], complete=True)
                start, end = colon + 1, colon + 1 + length
                if end < size:  # the whole netstring is here: no copy into the partial buffer
                    if data[end] != _COMMA:
                        raise NetstringError(f"netstring of length {length} not terminated by ','")
                    out.append(data[start:end])
                    pos = end + 1
                    continue
                self._partial += data[start:end]
                self._need = end - min(end, size)
                pos = size
            elif need > 0:  # payload
                end = min(size, pos + need)
                self._partial += data[pos:end]
                self._need = need - (end - pos)
                pos = end
            else:  # ","
                if data[pos] != _COMMA:
                    raise NetstringError(f"netstring of length {len(self._partial)} not terminated by ','")
                out.append(bytes(self._partial))
                self._partial = bytearray()
                self._need = -1
                pos += 1

    def _check_digits(self, digits: bytes, *, complete: bool) -> int:
        """Validate ``length`` (all of it when ``complete``, else a prefix); return its value when complete."""
        if digits and not digits.isdigit():  # bytes.isdigit: ASCII 0-9 only
            bad = next(b for b in digits if not 0x30 <= b <= 0x39)
            raise NetstringError(f"netstring length contains {bytes([bad])!r}, not a digit or ':'")
        if len(digits) > 1 and digits[0] == 0x30:
            raise NetstringError("netstring length with a leading zero")
        if not complete:
            return 0
        if not digits:
            raise NetstringError("netstring with an empty length")
        length = int(digits)
        if length > self._max_length:
            raise NetstringError(f"netstring of {length} bytes, over the limit of {self._max_length}")
        return length
