"""A loopback MTA-STS world for tests: test a sending MTA against MTA-STS domains without the internet.

.. code-block:: python

    from mtasts.testing import World

    async with World() as world:
        world.publish("example.com", "version: STSv1\\nmode: enforce\\nmx: mx.example.com\\nmax_age: 86400\\n")
        resolver = world.resolver()            # dnspython, asking the world's DNS server
        context = world.client_ssl_context()   # trusts world.ca only
        # GET https://mta-sts.example.com:{world.https_port}/.well-known/mta-sts.txt

The world publishes RFC 8461 §3.1 TXT records and serves §3.3 policy files, and misbehaves on request
(:class:`DomainConfig`, :data:`HOSTILE_KINDS`; :class:`RawServer` below HTTP). See ``docs/testing.md``.
"""

from __future__ import annotations

from ._config import (
    CERT_KINDS,
    FAILURE_KINDS,
    HOSTILE_KINDS,
    DomainConfig,
    DomainOptions,
    QueryRecord,
    RequestRecord,
    ResponseRecord,
)
from ._raw import RAW_BEHAVIOURS, RawConnection, RawServer
from ._world import World

__all__ = [
    "CERT_KINDS",
    "FAILURE_KINDS",
    "HOSTILE_KINDS",
    "RAW_BEHAVIOURS",
    "DomainConfig",
    "DomainOptions",
    "QueryRecord",
    "RawConnection",
    "RawServer",
    "RequestRecord",
    "ResponseRecord",
    "World",
]
