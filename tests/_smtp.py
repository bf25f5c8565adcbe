"""Real SMTP servers for delivery tests: aiosmtpd on loopback addresses (127.0.0.2, 127.0.0.3, ...), one port.

Each MX host gets its own address and its own certificate kind from the world's CA, and records what it
received (and over which kind of session) in a shared :class:`Inbox`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mtasts.testing import World


@dataclass
class Received:
    mx: str
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool


@dataclass
class Inbox:
    messages: list[Received] = field(default_factory=list)
    connections: dict[str, int] = field(default_factory=dict)

    def to(self, mx: str) -> list[Received]:
        return [m for m in self.messages if m.mx == mx]


class _Handler:
    def __init__(self, inbox: Inbox, mx: str, rcpt_reply: str | None) -> None:
        self.inbox, self.mx, self.rcpt_reply = inbox, mx, rcpt_reply

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        self.inbox.messages.append(
            Received(self.mx, str(envelope.mail_from), list(envelope.rcpt_tos), content, session.ssl is not None)
        )
        return "250 Message accepted"


def free_port(host: str = "127.0.0.2") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class MailWorld:
    """MX servers on loopback; DNS records for them go into the MTA-STS world."""

    def __init__(self, world: World, port: int) -> None:
        self.world, self.port = world, port
        self.inbox = Inbox()
        self._servers: list[asyncio.Server] = []
        self._next_ip = 2

    async def add_mx(
        self, name: str, cert: str | None = "valid", *, rcpt_reply: str | None = None, ip: str | None = None
    ) -> str:
        """Start an MX server for ``name``; ``cert`` None means no STARTTLS offered. Returns its address."""
        if ip is None:
            ip = f"127.0.0.{self._next_ip}"
            self._next_ip += 1
        self.world.add_record(name, "A", ip)
        context = self.world.server_ssl_context(name, cert) if cert is not None else None
        handler = _Handler(self.inbox, name, rcpt_reply)

        def factory() -> SMTP:
            self.inbox.connections[name] = self.inbox.connections.get(name, 0) + 1
            return SMTP(handler, tls_context=context, hostname=name, ident="test MX")

        server = await asyncio.get_running_loop().create_server(factory, host=ip, port=self.port)
        self._servers.append(server)
        return ip

    def set_mx(self, domain: str, *hosts: tuple[int, str]) -> None:
        self.world.remove_records(domain, "MX")
        for preference, host in hosts:
            self.world.add_record(domain, "MX", f"{preference} {host}.")

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()


@asynccontextmanager
async def mail_world(world: World, **kwargs: Any) -> AsyncIterator[MailWorld]:
    mail = MailWorld(world, free_port())
    try:
        yield mail
    finally:
        await mail.close()
