"""The client side of the control socket: :class:`ControlClient` sends requests and reads their replies.

Every failure is a :class:`~mtasts.errors.ControlError` with a message fit for one line on a terminal: nothing
listening, no permission, a broken or refused reply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ..errors import ControlError
from .protocol import Request, encode, parse_reply

__all__ = ["ControlClient"]

_REPLY_LIMIT = 4 * 1024 * 1024  # longest reply line read (a show of a 64 KiB policy with every byte escaped fits)


class ControlClient:
    """One connection to the control socket at ``path``: ``async with await ControlClient.connect(path) as c``.

    ``timeout``: seconds to wait for each reply line (a warm reports each domain as its lookup ends).
    """

    def __init__(self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.path = path
        self._reader, self._writer = reader, writer
        self.timeout = timeout

    @classmethod
    async def connect(cls, path: str, *, timeout: float = 120.0) -> ControlClient:
        try:
            async with asyncio.timeout(min(timeout, 10.0)):
                reader, writer = await asyncio.open_unix_connection(path, limit=_REPLY_LIMIT)
        except FileNotFoundError:
            raise ControlError(
                f"no control socket at {path}: is the daemon running (mtasts serve-socketmap --control {path})?"
            ) from None
        except ConnectionRefusedError:
            raise ControlError(f"the daemon is not running: nothing listens on the control socket {path}") from None
        except PermissionError:
            raise ControlError(
                f"no permission to open the control socket {path} (run as the daemon's user, or its group with "
                "control_mode = 0o660)"
            ) from None
        except TimeoutError:
            raise ControlError(f"the control socket {path} did not accept the connection in time") from None
        except OSError as exc:
            raise ControlError(f"cannot connect to the control socket {path}: {exc.strerror or exc}") from None
        return cls(path, reader, writer, timeout)

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def call(self, request: Request, on_item: Callable[[dict[str, Any]], object] | None = None) -> dict[str, Any]:
        """Send ``request``; hand each item of the reply to ``on_item``; return the final ``{"ok": true, ...}``.
        Raises :class:`ControlError` for an error reply (its message) or a broken connection."""
        try:
            self._writer.write(encode(request.to_json()))
            await self._writer.drain()
            while True:
                async with asyncio.timeout(self.timeout):
                    line = await self._reader.readline()
                if not line:
                    raise ControlError(f"the daemon closed the control connection ({self.path}) before replying")
                try:
                    reply = parse_reply(line)
                except ValueError:
                    raise ControlError(f"not a control reply from {self.path}: {line[:100]!r}") from None
                if "item" in reply:
                    if on_item is not None:
                        on_item(reply["item"])
                    continue
                if reply["ok"]:
                    return reply
                raise ControlError(f"the daemon refused the request: {reply.get('error')}")
        except TimeoutError:
            raise ControlError(f"no reply on the control socket {self.path} within {self.timeout:g} s") from None
        except (ConnectionError, OSError) as exc:
            raise ControlError(f"the control connection ({self.path}) failed: {exc.strerror or exc}") from None
        except ValueError:  # a reply line over the limit
            raise ControlError(f"a reply line from {self.path} was too long") from None
