"""Cache control: the daemon's control socket and ``mtasts cache ...`` (docs/operations.md, "Cache control").

Layers, each a module of this package:

- :mod:`~mtasts.control.protocol` — sans-I/O: the requests and replies (one JSON object per line), the entries'
  and the export's shapes, the warm file, the warm pacing (:class:`~mtasts.control.protocol.Pacer`);
- :mod:`~mtasts.control.warm` — looking a list of domains up with bounded concurrency and rate;
- :mod:`~mtasts.control.server` — :class:`ControlServer`, the Unix socket in the daemon;
- :mod:`~mtasts.control.client` — :class:`ControlClient`, its client;
- :mod:`~mtasts.control.commands` — the ``mtasts cache`` commands (against the daemon, or a store directly).

The command line's flags are :mod:`mtasts.cli`'s.
"""

from __future__ import annotations

from .client import ControlClient
from .server import ControlServer

__all__ = ["ControlClient", "ControlServer"]
