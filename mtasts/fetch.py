"""The strict HTTPS policy fetch (RFC 8461 §3.2, §3.3, §7.1, §8.2): one GET, HTTP/1.1 over TLS, on asyncio.

``GET https://mta-sts.<domain>[:port]/.well-known/mta-sts.txt`` with:

* the host resolved through the caller's dnspython resolver (one world for DNS and HTTPS);
* SNI and the certificate checked for ``mta-sts.<domain>`` (DNS-ID only, §3.3, §7.1: the strict context of
  :mod:`mtasts.tls`, through ``SSLContext.wrap_bio(server_hostname=...)``);
* status 200 only, redirects never followed (§3.3 MUST NOT), no HTTP caching (§3.3, §8.2 MUST NOT: no
  validators are sent, no cache is kept, no proxy is ever used);
* ``Content-Type: text/plain`` (parameters ignored, §3.2 SHOULD; a missing type fails — decisions table);
* a total deadline (connect to last byte, §3.3 MAY; default 60 s), an idle deadline (connect + TLS, then
  between received bytes) and a body cap (default 64 KiB, inclusive), counted on *decoded* bytes: a
  ``Content-Encoding: gzip`` bomb stops at the cap (C14);
* every foreign exception mapped here, once, to :class:`PolicyFetchError` / :class:`PolicyWebPKIError`
  / :class:`PolicyError` with its RFC 8460 result type (decisions table) — or to :class:`LocalError` when the
  failure was this machine's (no free descriptor, buffer or local port; the fetch queue full past its wait),
  which says nothing about the domain.

Why no HTTP library: a policy fetch is one GET of a few hundred bytes on a connection of its own, and a
general client's machinery (sessions, connectors, pools, the asyncio TLS transport with its 256 KiB buffer and
decoded peer certificate) cost more CPU than the TLS handshake it wraps (docs/benchmarks.md, "Cold lookups:
where the time goes"). Here: the TLS record layer is driven through :class:`ssl.MemoryBIO` in one asyncio
:class:`~asyncio.Protocol`, and the response is read by :class:`ResponseReader`, the part of RFC 9112 a
client needs, with no I/O. Each grammar rule is quoted from RFC 9112 / RFC 9110 beside the regex that
implements it; where the reader is stricter than the RFC allows, the comment says so and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, cast

from . import dns as mtasts_dns
from ._exceptions import exception_chain, local_os_error
from ._gate import Gate
from .errors import HostLookupError, LocalError, MTASTSError, PolicyError, PolicyFetchError, PolicyWebPKIError
from .policy import Policy, parse_policy

__all__ = ["BadHttpMessage", "ClientPayloadError", "FetchReport", "PolicyFetcher", "ResponseReader", "policy_url"]

WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"

#: Longest status line, field line, chunk-size line or trailer line (without its CRLF), and most field lines in
#: one head: the limits the fetch kept from aiohttp (docs/security.md).
MAX_LINE: Final = 8190
MAX_FIELDS: Final = 128
#: Interim (1xx) responses skipped before the final one at most (RFC 9110 §15.2 sets no bound; a host
#: sending more is not serving a policy).
MAX_INTERIM: Final = 16
#: RFC 8305 §5 "Connection Attempt Delay": the next address is tried after 250 ms without an answer.
CONNECT_ATTEMPT_DELAY: Final = 0.25
_READ_SIZE = 16_384  # one TLS record's plaintext at most (RFC 8446 §5.1)


def policy_url(domain: str, port: int = 443) -> str:
    """The policy URL for an A-label ``domain`` (§3.2): ``https://mta-sts.<domain>/.well-known/mta-sts.txt``."""
    authority = f"mta-sts.{domain}" if port == 443 else f"mta-sts.{domain}:{port}"
    return f"https://{authority}{WELL_KNOWN_PATH}"


@dataclass
class FetchReport:
    """What a fetch saw, for diagnostics (``mtasts check``): filled in as far as the fetch got."""

    url: str
    status: int | None = None
    content_type: str | None = None
    body: bytes | None = None
    error: MTASTSError | None = None


# -- RFC 9112 / RFC 9110 grammar: the part a client reading one response needs ------------------------------

# RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|"
#                          / "~" / DIGIT / ALPHA ;  token = 1*tchar
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9110 §5.6.3: OWS = *( SP / HTAB )  (stripped from field values with bytes.strip, below)
# RFC 9110 §5.5: field-vchar = VCHAR / obs-text ; field-content = field-vchar [ 1*( SP / HTAB / field-vchar )
#                field-vchar ] ; field-value = *field-content
# RFC 9112 §5: field-line = field-name ":" OWS field-value OWS ; field-name = token (RFC 9110 §5.1).
# Read as: the name before the first ":" is a token; what follows is only SP, HTAB, VCHAR and obs-text; the value
# is that with its OWS stripped (then it starts and ends with a field-vchar, as field-content requires). One
# regex for the whole line would backtrack quadratically on a hostile run of spaces; these two cannot.
# Stricter than §5.2: an obs-fold line (one starting with SP or HTAB) has no token before its ":" and fails the
# response instead of being unfolded — obs-fold is deprecated, and no policy host needs it.
_FIELD_NAME = re.compile(_TOKEN)
_FIELD_REST = re.compile(rb"[ \t\x21-\x7e\x80-\xff]*+")
# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ] ; status-code = 3DIGIT ;
#              reason-phrase = 1*( HTAB / SP / VCHAR / obs-text ) ;  §2.3: HTTP-version = HTTP-name "/" DIGIT "."
#              DIGIT ; HTTP-name = %s"HTTP".  Major version 1 only (a 2 or 3 cannot come over this exchange); the
#              SP before an empty reason phrase may be missing ("a client SHOULD ignore the reason-phrase").
_STATUS_LINE = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: [\t \x21-\x7e\x80-\xff]*+)?")
# RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF ; chunk-size = 1*HEXDIG ; last-chunk =
#                1*("0") [ chunk-ext ] CRLF ; §7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS
#                chunk-ext-val ] ).  Extensions are ignored ("A recipient MUST ignore unrecognized chunk
#                extensions"): anything printable after the ";" is accepted. At most 16 hex digits. (Possessive
#                quantifiers here and in the status line: no backtracking, linear on any input.)
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*+;[\t \x21-\x7e\x80-\xff]*+)?[ \t]*+")
# RFC 9110 §8.6: Content-Length = 1*DIGIT (a list of identical values may be taken as one, see below).
_DIGITS = re.compile(rb"[0-9]{1,18}")
# The policy host: an A-label name (the resolver's normal form), nothing that could split the request.
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*")


class BadHttpMessage(ValueError):
    """The policy host broke HTTP/1.1 (RFC 9112) in the response head or its framing: a malformed or oversized
    line, too many header fields, an invalid Content-Length, broken chunks. (The name, and "Too many headers
    received", are those the fetch reported before it had its own reader: log searches keep working.)"""


class ClientPayloadError(ValueError):
    """The connection ended before the body did (its Content-Length unmet, no last chunk). Named as before, for
    the same reason as :class:`BadHttpMessage`."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A final response's status line and header fields (names lowercase; repeated fields joined by ", ",
    RFC 9110 §5.3)."""

    status: int
    fields: dict[str, str]
    #: the body's length from Content-Length; None when chunked or delimited by the connection's end
    length: int | None
    chunked: bool

    def get(self, name: str) -> str | None:
        return self.fields.get(name)


def _field(line: bytes) -> tuple[bytes, bytes]:
    """A field line's (lowercase name, value without OWS); :class:`BadHttpMessage` if it is not one."""
    name, colon, rest = line.partition(b":")
    if not colon or _FIELD_NAME.fullmatch(name) is None or _FIELD_REST.fullmatch(rest) is None:
        raise BadHttpMessage(f"not a header field line: {line[:80]!r}")
    return name.lower(), rest.strip(b" \t")


# The reader's states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class ResponseReader:
    """One HTTP/1.1 response (RFC 9112), read from bytes as they come; no I/O, no policy decision.

    :meth:`receive` the bytes, then :meth:`head` until it returns the final response head (interim 1xx responses
    are skipped), then :meth:`body` for the decoded-framing body bytes until :attr:`complete`; :meth:`end` when the
    connection ends. Every violation raises :class:`BadHttpMessage` (or :class:`ClientPayloadError` at the end).
    Memory is bounded by the line limit: body bytes are handed out as they arrive. The bytes read so far are
    dropped once per call, not once per line or chunk (a flood of tiny chunks costs linear time).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0  # where the unread bytes of _buffer start
        self._state = _HEAD
        self._status_line: tuple[int, int] | None = None  # (minor version, status) of the head being read
        self._fields: list[tuple[bytes, bytes]] = []
        self._interim = 0
        self._remaining = 0  # bytes left in the body (Content-Length) or in the current chunk
        self._trailer_lines = 0

    @property
    def complete(self) -> bool:
        """The whole response has been read (its body's end was reached by its own framing)."""
        return self._state == _DONE

    def receive(self, data: bytes) -> None:
        self._buffer += data

    def _line(self) -> bytes | None:
        """The next CRLF-terminated line (without its CRLF), or None until it has arrived. Bare CR or LF are
        not line ends (RFC 9112 §2.2 lets a recipient accept a lone LF; this reader does not)."""
        buffer, pos = self._buffer, self._pos
        end = buffer.find(b"\r\n", pos, pos + MAX_LINE + 2)
        if end < 0:
            if len(buffer) - pos > MAX_LINE + 1:
                raise BadHttpMessage(f"a line longer than {MAX_LINE} bytes")
            return None
        self._pos = end + 2
        return bytes(buffer[pos:end])

    def _take(self, size: int) -> bytes:
        """Up to ``size`` of the unread bytes."""
        pos = self._pos
        taken = bytes(self._buffer[pos : pos + size])
        self._pos = pos + len(taken)
        return taken

    def _compact(self) -> None:
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0

    def head(self) -> ResponseHead | None:
        """The final response head once it has arrived (None until then)."""
        try:
            return self._head()
        finally:
            self._compact()

    def _head(self) -> ResponseHead | None:
        while self._state == _HEAD:
            line = self._line()
            if line is None:
                return None
            if self._status_line is None:
                match = _STATUS_LINE.fullmatch(line)
                if match is None:
                    raise BadHttpMessage(f"not an HTTP/1.x status line: {line[:80]!r}")
                self._status_line = (int(match[1]), int(match[2]))
                continue
            if line:
                if len(self._fields) >= MAX_FIELDS:
                    raise BadHttpMessage(f"Too many headers received (more than {MAX_FIELDS} field lines)")
                self._fields.append(_field(line))
                continue
            minor, status = self._status_line  # the empty line: the head is complete
            fields, self._status_line, self._fields = self._fields, None, []
            if 100 <= status < 200 and status != 101:  # RFC 9110 §15.2: skip interim responses
                self._interim += 1
                if self._interim > MAX_INTERIM:
                    raise BadHttpMessage(f"more than {MAX_INTERIM} interim (1xx) responses")
                continue
            return self._final(minor, status, fields)
        return None

    def _final(self, minor: int, status: int, raw: list[tuple[bytes, bytes]]) -> ResponseHead:
        fields: dict[str, str] = {}
        for name, value in raw:
            key = name.decode("ascii")
            text = value.decode("latin-1")
            fields[key] = f"{fields[key]}, {text}" if key in fields else text
        length: int | None = None
        chunked = False
        coding = fields.get("transfer-encoding")
        content_length = fields.get("content-length")
        if coding is not None:
            # RFC 9112 §6.1: "A server or client that receives an HTTP/1.0 message containing a Transfer-Encoding
            # header field MUST treat the message as if the framing is faulty, even if a Content-Length is present".
            if minor == 0:
                raise BadHttpMessage("Transfer-Encoding in an HTTP/1.0 response (RFC 9112 §6.1: faulty framing)")
            # RFC 9112 §6.3 rule 3: both fields "ought to be handled as an error" (request smuggling, §11.2).
            if content_length is not None:
                raise BadHttpMessage("both Transfer-Encoding and Content-Length (RFC 9112 §6.3)")
            # §6.3 rule 4: chunked as the final coding frames the body; other transfer codings are not
            # supported (only chunked is required of an HTTP/1.1 client, §7).
            if [part.strip().lower() for part in coding.split(",")] != ["chunked"]:
                raise BadHttpMessage(f"unsupported Transfer-Encoding {coding[:80]!r}")
            chunked = True
        elif content_length is not None:
            # §6.3 rule 5: an invalid Content-Length is an unrecoverable error. RFC 9110 §8.6 lets a recipient
            # take a list of identical values ("42, 42", or the field repeated) as one.
            values = {part.strip().encode("latin-1") for part in content_length.split(",")}
            if len(values) != 1 or _DIGITS.fullmatch(next(iter(values))) is None:
                raise BadHttpMessage(f"invalid Content-Length {content_length[:80]!r}")
            length = int(next(iter(values)))
        self._state = _CHUNK_SIZE if chunked else _UNTIL_CLOSE if length is None else _LENGTH
        self._remaining = length or 0
        if length == 0:
            self._state = _DONE
        return ResponseHead(status, fields, length, chunked)

    def body(self) -> bytes:
        """The body bytes that have arrived since the last call, with the chunked framing removed."""
        try:
            return self._body()
        finally:
            self._compact()

    def _body(self) -> bytes:
        state = self._state
        if state == _LENGTH:
            taken = self._take(self._remaining)
            self._remaining -= len(taken)
            if not self._remaining:
                self._state = _DONE
            return taken
        if state == _UNTIL_CLOSE:
            return self._take(len(self._buffer))
        if state in (_HEAD, _DONE):
            return b""
        return self._chunks()

    def _chunks(self) -> bytes:
        parts: list[bytes] = []
        buffer = self._buffer
        while True:
            state = self._state
            if state == _CHUNK_DATA:
                taken = self._take(self._remaining)
                if not taken:
                    break
                parts.append(taken)
                self._remaining -= len(taken)
                if self._remaining:
                    break
                self._state = _CHUNK_END
            elif state == _CHUNK_END:  # the CRLF after chunk-data
                pos = self._pos
                if len(buffer) - pos < 2:
                    break
                if buffer[pos : pos + 2] != b"\r\n":
                    raise BadHttpMessage("chunk data not followed by CRLF")
                self._pos = pos + 2
                self._state = _CHUNK_SIZE
            elif state == _CHUNK_SIZE:
                line = self._line()
                if line is None:
                    break
                match = _CHUNK_SIZE_LINE.fullmatch(line)
                if match is None:
                    raise BadHttpMessage(f"not a chunk-size line: {line[:80]!r}")
                self._remaining = int(match[1], 16)
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif state == _TRAILERS:  # RFC 9112 §7.1.2: trailer-section = *( field-line CRLF ), then CRLF
                line = self._line()
                if line is None:
                    break
                if not line:
                    self._state = _DONE
                    break
                self._trailer_lines += 1
                if self._trailer_lines > MAX_FIELDS:
                    raise BadHttpMessage("an oversized trailer section")
                _field(line)  # checked, then ignored (RFC 9112 §7.1.2: trailers are not merged into the head)
            else:
                break
        return b"".join(parts)

    def end(self) -> None:
        """The connection ended: fine once the response is complete; otherwise the response was cut short."""
        if self._state in (_DONE, _UNTIL_CLOSE):
            return
        if self._state == _HEAD:
            raise ClientPayloadError("the connection closed before the end of the response head")
        raise ClientPayloadError("Response payload is not completed (the connection closed before its end)")


# -- the I/O: TCP, TLS over memory BIOs, the request --------------------------------------------------------


class _Exchange(asyncio.Protocol):
    """One TLS connection carrying one GET. The TLS record layer runs through :class:`ssl.MemoryBIO` here
    (no asyncio TLS transport); the response goes to :class:`ResponseReader` as it is decrypted.

    The coroutine awaits :attr:`waiter`: first the handshake (then the request is sent at once, and the idle
    timer starts), then the response (its head handed to ``on_head``, its body to ``on_body``).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        context: ssl.SSLContext,
        host: str,
        *,
        request: bytes,
        idle: float,
        fetch: _Fetch,
    ) -> None:
        self._loop = loop
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # SNI and the name check for `host` (check_hostname of the strict context: DNS-ID only, mtasts.tls).
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=False, server_hostname=host)
        self._request = request
        self._idle = idle
        self._fetch = fetch
        self._transport: asyncio.Transport | None = None
        self._reader = ResponseReader()
        self._head_seen = False
        self._established = False
        self._closed = False
        self._finished = False  # the response was read: the connection is being closed politely
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.waiter: asyncio.Future[bytes | None] = loop.create_future()

    @property
    def connected(self) -> bool:
        """The transport exists (it owns the socket from then on)."""
        return self._transport is not None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's is one without being its subclass)
        self._handshake()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._last_data = self._loop.time()
        self._incoming.write(data)
        if not self._established:
            self._handshake()
            if not self._established:
                return
        self._read()

    def eof_received(self) -> bool:
        self._incoming.write_eof()
        self._ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._ended(exc)
        if self._timer is not None:
            self._timer.cancel()

    # TLS

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self._transport is not None and not self._closed:
            self._transport.write(data)

    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except Exception as exc:  # a certificate or protocol failure: mapped by the fetch
            self._fail(exc)
            return
        self._established = True
        self._tls.write(self._request)
        self._flush()
        self._last_data = self._loop.time()
        self._timer = self._loop.call_at(self._last_data + self._idle, self._check_idle)
        if not self.waiter.done():
            self.waiter.set_result(None)
            self.waiter = self._loop.create_future()

    def _read(self) -> None:
        reader = self._reader
        try:
            while True:
                try:
                    data = self._tls.read(_READ_SIZE)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    data = b""
                if not data:  # close_notify: the TLS stream ended
                    self._flush()
                    self._ended(None)
                    return
                reader.receive(data)
                if not self._head_seen:
                    head = reader.head()
                    if head is None:
                        continue
                    self._head_seen = True
                    self._fetch.on_head(head)
                self._fetch.on_body(reader.body())
                if reader.complete:
                    self._fetch.on_complete()
                    self._succeed()
                    return
        except Exception as exc:  # HTTP, TLS or policy-level failure of the response
            self._fail(exc)
            return
        self._flush()  # (TLS 1.3 post-handshake messages may need an answer)

    def _ended(self, exc: Exception | None) -> None:
        """The byte stream ended (TCP FIN, TLS close_notify, reset or error) before the response completed."""
        if self.waiter.done():
            return
        if not self._established:
            self._fail(exc or ConnectionResetError("the connection closed during the TLS handshake"))
            return
        try:
            self._reader.end()
        except ClientPayloadError as cut:  # a body cut short; before the head, the reset itself says more
            self._fail(cut if self._head_seen or exc is None else exc)
            return
        self._fail(exc or ClientPayloadError("the connection closed before the response ended"))

    # the outcome

    def _check_idle(self) -> None:
        if self.waiter.done():
            return
        due = self._last_data + self._idle
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_idle)
            return
        self._fail(_StoppedAnswering(f"nothing received for {self._idle:g} s"))

    def _succeed(self) -> None:
        if not self.waiter.done():
            self.waiter.set_result(self._fetch.result())
        self._finished = True
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()  # our close_notify (RFC 8446 §6.1); the peer's is not waited for
        self._flush()
        self.close()

    def _fail(self, exc: BaseException) -> None:
        if not self.waiter.done():
            self.waiter.set_exception(exc)
        self.abort()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once (a failure, a timeout, a cancelled fetch); nothing once it is finished."""
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None and not self._finished:
            self._transport.abort()
        if self.waiter.done() and not self.waiter.cancelled():
            self.waiter.exception()  # retrieved: a failure after the fetch gave up is not "never retrieved"


class _StoppedAnswering(Exception):
    """The policy host sent nothing for the idle timeout."""


class _Fetch:
    """The fetch-level checks of one response, called by :class:`_Exchange` as the response arrives."""

    def __init__(self, url: str, max_size: int, report: FetchReport | None) -> None:
        self.url = url
        self._limit = max_size + 1
        self._max_size = max_size
        self._report = report
        self._decoder: _Decoder | None = None
        self._body = bytearray()

    def on_head(self, head: ResponseHead) -> None:
        url = self.url
        content_type = head.get("content-type")
        if self._report is not None:
            self._report.status = head.status
            self._report.content_type = content_type
        if head.status != 200:
            where = head.get("location")
            detail = f" to {where[:200]!r} (redirects are not followed)" if where else ""
            raise PolicyFetchError(f"{url}: HTTP {head.status}{detail} (RFC 8461 §3.3: 200 only)")
        _check_content_type(url, content_type)
        if head.length is None and not head.chunked:
            # The body's end must be knowable: a Content-Length or chunked transfer coding (decisions table). A
            # body delimited only by the connection closing (HTTP/1.0 style) cannot be told from one an attacker
            # cut short with a TCP FIN or RST, and a cut ``max_age: 86400`` reads as a valid ``max_age: 8`` (RFC
            # 9112 §9.8: such a response is incomplete).
            raise PolicyFetchError(f"{url}: a body without Content-Length or chunked coding (truncation undetectable)")
        self._decoder = _Decoder((head.get("content-encoding") or "").strip().lower())

    def on_body(self, chunk: bytes) -> None:
        """Decode ``chunk`` under the cap; one byte more than ``max_size`` is an error (never truncate-then-parse)."""
        if chunk:
            assert self._decoder is not None
            body = self._body
            body += self._decoder.decode(chunk, self._limit - len(body))
            if len(body) >= self._limit:
                raise PolicyError(f"{self.url}: the policy is larger than {self._max_size} bytes")

    def on_complete(self) -> None:
        assert self._decoder is not None
        self._decoder.finish()

    def result(self) -> bytes:
        return bytes(self._body)


def _is_certificate_error(exc: BaseException) -> bool:
    return any(isinstance(link, ssl.SSLCertVerificationError) for link in exception_chain(exc))


@contextlib.contextmanager
def _map_exceptions(url: str, timeout: float) -> Iterator[None]:
    """The one place where ssl / socket / HTTP-framing / zlib exceptions become mtasts errors."""
    try:
        yield
    except MTASTSError:
        raise
    except _StoppedAnswering as exc:
        raise PolicyFetchError(f"{url}: the host stopped answering ({exc})") from None
    except TimeoutError:
        raise PolicyFetchError(f"{url}: no complete response within {timeout:g} s") from None
    except (OSError, ValueError, EOFError, zlib.error) as exc:  # ssl.SSLError is an OSError
        local = local_os_error(exc)
        if local is not None:
            raise LocalError(f"{url}: a local resource ran out: {local.strerror or local}") from None
        detail = f"{url}: {type(exc).__name__}: {exc}"
        if _is_certificate_error(exc):
            raise PolicyWebPKIError(detail) from None
        raise PolicyFetchError(detail) from None


class _Decoder:
    """Content-Encoding decoding with a bound on the output (a decompression bomb stops at the cap)."""

    def __init__(self, encoding: str) -> None:
        self._zlib: Any = None
        if encoding in ("", "identity"):
            return
        if encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header, auto-detected
        else:
            raise PolicyFetchError(f"unsupported Content-Encoding {encoding!r}")

    def decode(self, chunk: bytes, limit: int) -> bytes:
        """Decode ``chunk``, producing at most ``limit`` bytes (more input may remain unconsumed)."""
        if self._zlib is None:
            return chunk[:limit]
        return bytes(self._zlib.decompress(chunk, limit))

    def finish(self) -> None:
        """The body ended: a compressed stream must have ended too, with nothing after it (never parse a prefix)."""
        if self._zlib is not None and (not self._zlib.eof or self._zlib.unused_data):
            raise PolicyFetchError("the compressed body is truncated or followed by other data")


async def _connect_one(loop: asyncio.AbstractEventLoop, address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect_tcp(loop: asyncio.AbstractEventLoop, addresses: list[str], port: int) -> tuple[socket.socket, str]:
    """A TCP connection to the first of two or more ``addresses`` that accepts, in order; the next one is also
    tried after :data:`CONNECT_ATTEMPT_DELAY` without an answer, or at once after a failure (RFC 8305 §5).
    Raises the last failure when none accepts."""
    waiting = list(addresses)
    attempts: dict[asyncio.Task[socket.socket], str] = {}
    last: BaseException | None = None
    try:
        while waiting or attempts:
            if waiting:
                address = waiting.pop(0)
                attempts[loop.create_task(_connect_one(loop, address, port))] = address
            done, _ = await asyncio.wait(
                attempts, timeout=CONNECT_ATTEMPT_DELAY if waiting else None, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                address = attempts.pop(task)
                error = task.exception()
                if error is None:
                    return task.result(), address
                last = error
    finally:
        for task in attempts:  # the attempts that lost: cancelled, or their socket closed if one connected
            task.cancel()
            task.add_done_callback(_close_connected)
    assert last is not None
    raise last


def _close_connected(task: asyncio.Task[socket.socket]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()


class PolicyFetcher:
    """Fetches and parses policies over HTTPS: one TLS connection per fetch, bounded concurrency.

    Create inside a running event loop and close with :meth:`aclose`.
    """

    def __init__(
        self,
        *,
        dns_resolver: mtasts_dns.DnsResolver,
        ssl_context: ssl.SSLContext,
        port: int = 443,
        timeout: float = 60.0,
        idle_timeout: float = 15.0,
        max_size: int = 65_536,
        max_concurrent: int = 512,
        queue_timeout: float = 30.0,
        user_agent: str = "mtasts",
    ) -> None:
        self._dns_resolver = dns_resolver
        self._ssl_context = ssl_context
        self._port = port
        self._timeout = timeout
        # A host that sends nothing for idle_timeout (no TCP/TLS connection, no response, a stalled body) is given
        # up before the total deadline: hung hosts hold a fetch slot for seconds, not a minute (docs/security.md).
        self._idle = min(idle_timeout, timeout)
        self._max_size = max_size
        self._gate = Gate(max_concurrent, queue_timeout, "policy fetch")
        # No validators (If-None-Match, If-Modified-Since) and no-cache: nothing on the path may answer from a
        # cache (§3.3, §8.2). identity: a compressed answer is still accepted and decoded under the cap.
        self._fields = (
            f"User-Agent: {user_agent}\r\nAccept: text/plain\r\nAccept-Encoding: identity\r\n"
            "Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
        )

    async def aclose(self) -> None:
        """Nothing to close between fetches (every connection ends with its fetch); kept for the lifecycle."""
        return None

    async def fetch(self, domain: str) -> Policy:
        """Fetch and parse the policy of the A-label ``domain``.

        Raises :class:`PolicyFetchError` (``sts-policy-fetch-error``), :class:`PolicyWebPKIError`
        (``sts-webpki-invalid``) or :class:`PolicyError` (``sts-policy-invalid``).
        """
        return parse_policy(await self.fetch_body(domain))

    async def fetch_body(self, domain: str, report: FetchReport | None = None) -> bytes:
        """Fetch the raw policy body (decoded, at most ``max_size`` bytes) after every HTTP-level check."""
        url = policy_url(domain, self._port)
        async with self._gate:
            with _map_exceptions(url, self._timeout):
                async with asyncio.timeout(self._timeout):
                    return await self._get(domain, url, report)

    async def fetch_report(self, domain: str) -> FetchReport:
        """Fetch like :meth:`fetch_body`, never raising: the status, media type, certificate, body or error."""
        report = FetchReport(policy_url(domain, self._port))
        try:
            report.body = await self.fetch_body(domain, report)
        except MTASTSError as exc:
            report.error = exc
        return report

    async def _get(self, domain: str, url: str, report: FetchReport | None) -> bytes:
        host = f"mta-sts.{domain}"
        if _HOST_NAME.fullmatch(host) is None:
            raise PolicyFetchError(f"{url}: not a host name")
        authority = host if self._port == 443 else f"{host}:{self._port}"
        request = f"GET {WELL_KNOWN_PATH} HTTP/1.1\r\nHost: {authority}\r\n{self._fields}".encode("ascii")
        loop = asyncio.get_running_loop()
        fetch = _Fetch(url, self._max_size, report)
        exchange: _Exchange | None = None
        connect = asyncio.timeout(self._idle)  # DNS, TCP and TLS: what aiohttp's connect timeout covered
        try:
            async with connect:
                try:
                    addresses = await mtasts_dns.resolve_addresses(self._dns_resolver, host)
                except HostLookupError as exc:  # the policy host: a fetch failure (decisions table)
                    raise PolicyFetchError(exc.message) from None
                exchange = await self._establish(loop, host, addresses, request, fetch)
            body = await exchange.waiter
        except TimeoutError:
            if connect.expired():
                raise _StoppedAnswering(f"no TLS connection within {self._idle:g} s") from None
            raise
        finally:
            if exchange is not None:
                exchange.abort()
        assert body is not None
        return body

    async def _establish(
        self, loop: asyncio.AbstractEventLoop, host: str, addresses: list[str], request: bytes, fetch: _Fetch
    ) -> _Exchange:
        """TCP to the first address that accepts, then TLS; an address whose TLS fails is dropped and the others
        are tried (as aiohttp's connector did). The request is on its way when this returns."""
        last: OSError | None = None
        while addresses:
            if len(addresses) == 1:  # the common case: the loop connects (in C, on uvloop)
                address, sock = addresses[0], None
            else:
                sock, address = await _connect_tcp(loop, addresses, self._port)  # raises when none accepts
            exchange = _Exchange(loop, self._ssl_context, host, request=request, idle=self._idle, fetch=fetch)
            try:
                if sock is None:
                    await loop.create_connection(lambda: exchange, address, self._port)  # noqa: B023 - awaited
                else:
                    await loop.create_connection(lambda: exchange, sock=sock)  # noqa: B023 - awaited here
                await exchange.waiter
            except OSError as exc:  # refused, ssl.SSLError (a certificate too), a reset during the handshake
                exchange.abort()
                if not exchange.connected:
                    if sock is not None:
                        sock.close()
                    raise  # no connection at all (the last address refused): nothing else to try
                last = exc
                addresses = [a for a in addresses if a != address]
                continue
            except BaseException:
                exchange.abort()
                if sock is not None and not exchange.connected:
                    sock.close()
                raise
            return exchange
        assert last is not None
        raise last


def _check_content_type(url: str, content_type: str | None) -> None:
    """§3.2: "senders SHOULD validate that the media type is "text/plain"" — parameters are ignored."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "text/plain":
        shown = "no Content-Type" if content_type is None else f"Content-Type {content_type[:80]!r}"
        raise PolicyError(f"{url}: {shown}, expected text/plain (RFC 8461 §3.2)")
