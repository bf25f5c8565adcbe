"""Cache control: the daemon's control socket and ``mtasts cache ...`` (docs/operations.md, "Cache control").

Layers, each a module of this package:

- :mod:`~mtasts.control.protocol` — sans-I/O: the requests and replies (one JSON object per line), the entries'
  and the export's shapes, the warm file, the warm pacing (:class:`~mtasts.control.protocol.Pacer`);
- :mod:`~mtasts.control.warm` — looking a list of domains up with bounded concurrency and rate;
- :mod:`~mtasts.control.server` — :class:`ControlServer`, the Unix socket in the daemon;
- :mod:`~mtasts.control.client` — :class:`ControlClient`, its client;
- :mod:`~mtasts.control.commands` — the ``mtasts cache`` commands (against the daemon, or a store directly).

``ControlServer`` and ``ControlClient`` load on first use: the client side (``mtasts cache`` against a daemon)
imports neither the resolver nor the socketmap. The command line's flags are :mod:`mtasts.cli`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .client import ControlClient
    from .server import ControlServer

__all__ = ["ControlClient", "ControlServer"]


__getattr__, __dir__ = lazy_exports(__name__, {"ControlClient": "client", "ControlServer": "server"})
