"""A Postfix socketmap server answering ``smtp_tls_policy_maps`` from MTA-STS policies (docs/postfix.md).

Postfix (``socketmap_table(5)``) sends one netstring per lookup, ``<name> <key>``, and reads one netstring
back: ``OK <data>``, ``NOTFOUND `` (note the trailing space), ``TEMP <reason>`` or ``PERM <reason>``.

For a domain with a valid ``mode: enforce`` policy the answer is ``OK secure match=<p1>:<p2>...
servername=hostname`` — the policy's ``mx`` patterns in order, ``*.example.net`` written ``.example.net`` as
Postfix expects (RFC 8461 §4.1, TLS_README "secure"). Everything else is ``NOTFOUND ``: no policy, ``testing``
(RFC 8461 §5.2: it must not stop delivery) and ``none``, failed lookups, invalid names, address literals
(§3.4), and Postfix's parent-domain lookups ``.example.com`` (§3.4: no parent-zone fallback). A lookup still
running after ``request_timeout`` is answered ``TEMP`` so Postfix defers rather than sends in plaintext; the
shared lookup goes on and the retry is answered from the cache.

On the map name ``QUERYwithTLSRPT`` (every name with ``tlsrpt = true``) an enforce answer also carries the
policy for Postfix >= 3.10's TLS-RPT support (:func:`format_tlsrpt`): ``policy_type=sts policy_domain=D
mx_host_pattern=P... { policy_string = LINE }...``.

Layers, each a module of this package:

- :mod:`~mtasts.socketmap.answers` — sans-I/O: :func:`format_policy`, :func:`format_tlsrpt`, :func:`parse_key`,
  the replies (framing: :mod:`mtasts.netstring`);
- :mod:`~mtasts.socketmap.server` — the asyncio protocol, :class:`SocketmapServer` (one request → one reply,
  pipelining, ordering, back-pressure, connection bounds);
- :mod:`~mtasts.socketmap.config` — :class:`ServerConfig`, its TOML file (:func:`load_config`), the descriptor
  plan (:func:`plan_descriptors`);
- :mod:`~mtasts.socketmap.overrides` — sans-I/O: the per-domain :class:`Override` (TOML ``[overrides]``);
- :mod:`~mtasts.socketmap.reload` — sans-I/O: what a SIGHUP may change live (:func:`~.reload.plan_reload`);
- :mod:`~mtasts.socketmap.systemd` — sd_notify (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``), socket activation;
- :mod:`~mtasts.socketmap.privileges` — ``--user``/``--group``: dropping root after binding;
- :mod:`~mtasts.socketmap.daemon` — :func:`serve`: the descriptor limit, the store, signals, reload, shutdown;
- :mod:`~mtasts.socketmap.exim_answers` (sans-I/O) and :mod:`~mtasts.socketmap.exim` — the ``exim`` map that Exim's
  ``${readsocket}`` asks: the MX hosts an enforce policy allows (docs/exim.md).

The command line (``mtasts serve-socketmap``) is :mod:`mtasts.cli`'s.
"""

from __future__ import annotations

from .answers import (
    NOTFOUND,
    PERM_REQUEST,
    TEMP_DNS,
    TEMP_INTERNAL,
    TEMP_LOCAL,
    TEMP_PENDING,
    TLSRPT_MAP_NAME,
    format_policy,
    format_tlsrpt,
    parse_key,
    policy_reply,
    tlsrpt_reply,
)
from .config import (
    DESCRIPTOR_RESERVE,
    LOG_LEVELS,
    TOML_KEYS,
    DescriptorPlan,
    ServerConfig,
    load_config,
    override,
    parse_listen,
    plan_descriptors,
)
from .daemon import raise_nofile_limit, run, serve
from .overrides import Override
from .server import SocketmapServer

__all__ = [
    "DESCRIPTOR_RESERVE",
    "LOG_LEVELS",
    "NOTFOUND",
    "PERM_REQUEST",
    "TEMP_DNS",
    "TEMP_INTERNAL",
    "TEMP_LOCAL",
    "TEMP_PENDING",
    "TLSRPT_MAP_NAME",
    "TOML_KEYS",
    "DescriptorPlan",
    "Override",
    "ServerConfig",
    "SocketmapServer",
    "format_policy",
    "format_tlsrpt",
    "load_config",
    "override",
    "parse_key",
    "parse_listen",
    "plan_descriptors",
    "policy_reply",
    "raise_nofile_limit",
    "run",
    "serve",
    "tlsrpt_reply",
]
