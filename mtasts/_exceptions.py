"""Reading exception chains: what a foreign exception wraps, and whether a failure was ours or the peer's.

Libraries wrap the error that matters: aiohttp's ``ClientConnectorError`` keeps the ``OSError`` in
``os_error``, dnspython's ``NoNameservers`` / ``LifetimeTimeout`` keep one error per server in
``kwargs["errors"]``, and every library chains with ``__cause__`` / ``__context__``. This module walks all of
them (duck-typed: nothing is imported) for the boundaries that map foreign exceptions (``dns.py``, ``fetch.py``,
``tls_errors.py``).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

__all__ = ["LOCAL_ERRNOS", "exception_chain", "local_os_error"]

_MAX_LINKS = 32  # links followed at most (cycles are possible)

#: errno values that say *this* machine is short of something — descriptors, kernel buffers, memory, local
#: ports — not that the peer failed. A query or fetch failing with one of these tells nothing about the domain.
LOCAL_ERRNOS: frozenset[int] = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL})


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it wraps: ``__cause__`` / ``__context__``, ``os_error``, per-server ``errors``."""
    seen: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending and len(seen) < _MAX_LINKS:
        link = pending.pop(0)
        if any(link is s for s in seen):
            continue
        seen.append(link)
        yield link
        wrapped = getattr(link, "os_error", None)
        if isinstance(wrapped, BaseException):
            pending.append(wrapped)
        kwargs = getattr(link, "kwargs", None)
        errors = kwargs.get("errors") if isinstance(kwargs, dict) else None
        if isinstance(errors, list):
            for item in errors:
                # dnspython: (server, tcp, port, exception or text, answer)
                inner = item[3] if isinstance(item, tuple) and len(item) > 3 else item
                if isinstance(inner, BaseException):
                    pending.append(inner)
        following = link.__cause__ or link.__context__
        if following is not None:
            pending.append(following)


def local_os_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` in ``exc``'s chain that says this machine ran short (:data:`LOCAL_ERRNOS`), if any."""
    for link in exception_chain(exc):
        if isinstance(link, OSError) and link.errno in LOCAL_ERRNOS:
            return link
    return None
