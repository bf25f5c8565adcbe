"""The world options every command shares, and the one ``host[:port]`` parser.

``mtasts check``, ``mtasts serve-socketmap`` and ``mtasts tlsrpt send`` run against any world: the system's DNS
and trust store on port 443 (the internet), or a :mod:`mtasts.testing` one given by a name server, a CA file and
a policy port. :class:`WorldOptions` holds those three and builds what the resolver needs from them. Nothing
here knows about argparse: :mod:`mtasts.cli` fills it from flags, :class:`~mtasts.socketmap.ServerConfig` from
its TOML keys; both import this module and it imports neither.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from .errors import UsageError

if TYPE_CHECKING:
    import ssl

    import dns.asyncresolver

__all__ = ["ResolverOptions", "WorldOptions", "format_host_port", "parse_host_port"]

DNS_PORT = 53
#: Seconds a DNS query to ``--nameserver`` may take, retries included (dnspython's ``lifetime``).
DNS_LIFETIME = 10.0


def parse_host_port(
    text: str, *, what: str, default_port: int, ip_only: bool = False, port_zero: bool = False
) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]`` or ``[IPv6]:PORT`` → (host, port), ``default_port`` when none is given.

    ``ip_only``: the host must be an IP address; a bare IPv6 address (``2001:db8::1``) is then read as one,
    with the default port (anything with two colons or more is, so write ``[2001:db8::1]:5353`` for a port).
    Otherwise the host may be a name and an IPv6 address needs its brackets. ``port_zero``: port 0 is allowed
    (a listener: the system picks the port). A bad value raises :class:`UsageError` naming ``what``:

    >>> parse_host_port("[2001:db8::1]:5353", what="--nameserver", default_port=53, ip_only=True)
    ('2001:db8::1', 5353)
    >>> parse_host_port("localhost", what="listen address", default_port=8461)
    ('localhost', 8461)
    """
    host, port_text = text, None
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise UsageError(f"bad {what} {text!r}: use HOST:PORT or [IPv6]:PORT")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text and not ip_only:
        raise UsageError(f"bad {what} {text!r}: write IPv6 addresses as [::1]:{default_port}")
    if not host:
        raise UsageError(f"bad {what} {text!r}: no host")
    if ip_only:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UsageError(f"bad {what} {text!r}: {host!r} is not an IP address") from None
    if port_text is None:
        return host, default_port
    lowest = 0 if port_zero else 1
    if not (port_text.isascii() and port_text.isdigit()) or not lowest <= int(port_text) <= 65535:
        raise UsageError(f"bad port in {what} {text!r}: a port is {lowest} to 65535")
    return host, int(port_text)


def format_host_port(host: str, port: int) -> str:
    """``127.0.0.1:8461``, or ``[::1]:8461`` for an IPv6 address: what :func:`parse_host_port` reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ResolverOptions(TypedDict, total=False):
    """The keyword arguments of :class:`~mtasts.resolver.PolicyResolver` that :class:`WorldOptions` decides."""

    policy_port: int
    dns_resolver: dns.asyncresolver.Resolver
    ssl_context: ssl.SSLContext


@dataclass(frozen=True, slots=True)
class WorldOptions:
    """Where DNS answers come from, which CAs are trusted, the policy hosts' HTTPS port (default: the internet).

    ``nameserver`` is ``IP[:PORT]`` (``[IPv6]:PORT``), ``cafile`` a PEM file; both are read only when the
    resolver's parts are built, so a bad one is an error of the command that uses it (:class:`UsageError`).
    """

    nameserver: str | None = None
    cafile: str | None = None
    policy_port: int = 443

    def nameserver_address(self) -> tuple[str, int] | None:
        """(IP, port) of ``nameserver``, or None for the system's resolver."""
        if not self.nameserver:
            return None
        return parse_host_port(self.nameserver, what="--nameserver", default_port=DNS_PORT, ip_only=True)

    def dns_resolver(self) -> dns.asyncresolver.Resolver | None:
        """A dnspython resolver asking only ``nameserver`` (None: the resolver makes the system's own)."""
        address = self.nameserver_address()
        if address is None:
            return None
        import dns.asyncresolver  # noqa: PLC0415 - loads dnspython only when a world needs it

        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [address[0]]
        resolver.port = address[1]
        resolver.lifetime = DNS_LIFETIME
        return resolver

    def ssl_context(self) -> ssl.SSLContext | None:
        """A strict client context trusting ``cafile`` only (None: the system's trust store)."""
        if not self.cafile:
            return None
        from .tls import create_client_context  # noqa: PLC0415 - loads ssl only when needed

        try:
            return create_client_context(cafile=self.cafile)
        except OSError as exc:
            raise UsageError(f"cannot read --cafile {self.cafile}: {exc.strerror or exc}") from None

    def resolver_kwargs(self) -> ResolverOptions:
        """``PolicyResolver(**options.resolver_kwargs())``: the port, and the DNS resolver and SSL context if set."""
        kwargs: ResolverOptions = {"policy_port": self.policy_port}
        dns_resolver = self.dns_resolver()
        if dns_resolver is not None:
            kwargs["dns_resolver"] = dns_resolver
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        return kwargs
