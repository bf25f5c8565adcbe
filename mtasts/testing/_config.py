"""The world's data: :class:`DomainConfig` (one published domain, mutable) and the request/query records."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypedDict

import idna

__all__ = [
    "CERT_KINDS",
    "FAILURE_KINDS",
    "HOSTILE_KINDS",
    "DomainConfig",
    "DomainOptions",
    "QueryRecord",
    "RequestRecord",
    "ResponseRecord",
    "name_key",
]

#: Certificate kinds for :meth:`World.server_ssl_context` and :attr:`DomainConfig.cert`.
CERT_KINDS: Final = frozenset({"valid", "expired", "wrong-name", "untrusted", "cn-only", "wildcard", "not-yet-valid"})
#: DNS failure kinds for :attr:`DomainConfig.txt_failure`, :attr:`DomainConfig.policy_host_failure`,
#: :meth:`World.set_failure`.
FAILURE_KINDS: Final = frozenset({"nxdomain", "servfail", "timeout", "nodata", "refused"})
#: Answers of a hostile (or broken) DNS server, accepted wherever :data:`FAILURE_KINDS` are: the true answer
#: under another message id (``"wrong-id"``) or for another question (``"wrong-question"``), and a CNAME loop
#: carried in the answer itself (``"cname-loop"``) instead of the world's own SERVFAIL for loops.
HOSTILE_KINDS: Final = frozenset({"wrong-id", "wrong-question", "cname-loop"})


def name_key(name: str) -> str:
    """The world's key for a DNS name: A-labels (UTS #46) when non-ASCII, lowercase, no trailing dot.

    Unlike :func:`mtasts.normalize_domain` nothing is rejected: a test world may hold ``_mta-sts`` labels or
    deliberately odd names.
    """
    if not name.isascii():
        name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def check_failure(kind: str | None, what: str) -> None:
    """Raise ValueError unless ``kind`` is None or one of :data:`FAILURE_KINDS` or :data:`HOSTILE_KINDS`."""
    if kind is not None and kind not in FAILURE_KINDS and kind not in HOSTILE_KINDS:
        kinds = sorted(FAILURE_KINDS | HOSTILE_KINDS)
        raise ValueError(f"{what} must be None or one of {kinds}, not {kind!r}")


def check_cert_kind(kind: str) -> None:
    """Raise ValueError unless ``kind`` is one of :data:`CERT_KINDS`."""
    if kind not in CERT_KINDS:
        raise ValueError(f"certificate kind must be one of {sorted(CERT_KINDS)}, not {kind!r}")


def _default_addresses() -> list[str]:
    return ["127.0.0.1"]


@dataclass(slots=True)
class DomainConfig:
    """How the world serves one published domain; change a field and the next query or request sees it.

    DNS (RFC 8461 §3.1): ``_mta-sts.<domain>`` TXT and ``mta-sts.<domain>`` A/AAAA. HTTPS (§3.3): the
    response to ``GET https://mta-sts.<domain>/.well-known/mta-sts.txt``.
    """

    policy: str | bytes | None = None
    id: str = "1"
    txt: list[str | list[str]] | None = None
    txt_failure: str | None = None
    txt_cname: str | None = None
    status: int = 200
    redirect_to: str | None = None
    content_type: str | None = "text/plain"
    content_encoding: str | None = None
    body: bytes | None = None
    delay: float = 0
    body_chunk_delay: float = 0
    close_mid_body: bool = False
    reset_mid_body: bool = False
    http10: bool = False
    endless_headers: float | None = None
    precompressed: bool = False
    cert: str = "valid"
    policy_host_addresses: list[str] = field(default_factory=_default_addresses)
    policy_host_failure: str | None = None

    def __setattr__(self, name: str, value: object) -> None:
        # Typos in the enumerated fields fail here, not as a puzzling answer later.
        if name in ("txt_failure", "policy_host_failure"):
            check_failure(value, name)  # type: ignore[arg-type]
        elif name == "cert":
            check_cert_kind(value)  # type: ignore[arg-type]
        elif name == "policy_host_addresses":
            for address in value:  # type: ignore[attr-defined]
                ipaddress.ip_address(address)
        elif name == "endless_headers" and value is not None and not (isinstance(value, int | float) and value >= 0):
            raise ValueError(f"endless_headers must be None or seconds >= 0, not {value!r}")
        object.__setattr__(self, name, value)

    def txt_records(self) -> list[str | list[str]]:
        """The TXT records served at ``_mta-sts.<domain>``: :attr:`txt`, or the one record ``id`` implies."""
        return [f"v=STSv1; id={self.id};"] if self.txt is None else self.txt

    def body_bytes(self) -> bytes | None:
        """The body before any content coding: :attr:`body`, else the policy (UTF-8), else None."""
        if self.body is not None:
            return self.body
        if isinstance(self.policy, str):
            return self.policy.encode("utf-8")
        return self.policy


class DomainOptions(TypedDict, total=False):
    """The keyword arguments :meth:`World.publish` accepts besides ``policy`` and ``id``."""

    txt: list[str | list[str]] | None
    txt_failure: str | None
    txt_cname: str | None
    status: int
    redirect_to: str | None
    content_type: str | None
    content_encoding: str | None
    body: bytes | None
    delay: float
    body_chunk_delay: float
    close_mid_body: bool
    reset_mid_body: bool
    http10: bool
    endless_headers: float | None
    precompressed: bool
    cert: str
    policy_host_addresses: list[str]
    policy_host_failure: str | None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One HTTP request the world's HTTPS server received.

    ``host`` is the Host header's host (lowercase, no port); ``path`` the request target as sent (with any
    query string); ``headers`` the request headers, looked up case-insensitively.
    """

    host: str
    method: str
    path: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class QueryRecord:
    """One DNS query the world's DNS server received: name (lowercase, no trailing dot), type, transport."""

    name: str
    rdtype: str
    transport: Literal["udp", "tcp"]


@dataclass(frozen=True, slots=True)
class ResponseRecord:
    """How one policy response of the world's HTTPS server ended (RFC 8461 §3.3 fetches, seen from the server).

    ``size`` is the body's length on the wire (after any content coding; None for ``endless_headers``),
    ``sent`` how many of its bytes were handed to the connection (header-line bytes for ``endless_headers``),
    ``complete`` whether the response went out whole — False when the client went away first (a body cap
    reached, a deadline) or a misbehaviour cut it. ``sent`` counts what the server wrote, which may sit
    unread in socket buffers: a few MB on loopback.
    """

    host: str
    status: int
    size: int | None
    sent: int
    complete: bool
