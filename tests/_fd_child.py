"""The process side of test_local_faults' descriptor-exhaustion tests (issue 12).

Runs a resolver (and a socketmap server's answer function) against the test's world, then fills this process's
own descriptor table — under a lowered ``RLIMIT_NOFILE``, so the machine is never exhausted — and reports what
lookups answered. Arguments as JSON on stdin; prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
from typing import Any

import dns.asyncresolver
import dns.name
import dns.rdatatype
import dns.resolver

from mtasts import LookupDeferredError, PolicyResolver
from mtasts.resolver import FetchFailure
from mtasts.socketmap import SocketmapServer
from mtasts.tls import create_client_context


class Descriptors:
    """Fills and frees this process's descriptor table (``/dev/null`` opened read-only)."""

    def __init__(self) -> None:
        self.held: list[int] = []

    def fill(self) -> int:
        while True:
            try:
                self.held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                return len(self.held)

    def free(self, count: int | None = None) -> None:
        count = len(self.held) if count is None else count
        for _ in range(count):
            os.close(self.held.pop())


class FillAfterAddress:
    """The world's resolver, except that right after an address query for a policy host is answered the descriptor
    table is filled: the HTTPS connection that follows cannot get a socket (EMFILE), the DNS query could."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, descriptors: Descriptors) -> None:
        self.resolver = resolver
        self.descriptors = descriptors
        self.armed = False

    async def resolve(
        self,
        qname: dns.name.Name | str,
        rdtype: dns.rdatatype.RdataType | str = dns.rdatatype.A,
        *,
        raise_on_no_answer: bool = True,
        search: bool | None = None,
    ) -> dns.resolver.Answer:
        answer = await self.resolver.resolve(qname, rdtype, raise_on_no_answer=raise_on_no_answer, search=search)
        if self.armed and str(qname).startswith("mta-sts.") and rdtype in (dns.rdatatype.A, "A"):
            self.descriptors.fill()
        return answer


def summary(lookup: Any) -> dict[str, Any]:
    return {"status": lookup.status.value, "defer": lookup.defer, "policy": lookup.policy is not None,
            "error": lookup.error}  # fmt: skip


async def main(args: dict[str, Any]) -> dict[str, Any]:
    world_dns = dns.asyncresolver.Resolver(configure=False)
    world_dns.nameservers = ["127.0.0.1"]
    world_dns.port = args["dns_port"]
    world_dns.lifetime = 5.0
    descriptors = Descriptors()
    dns_resolver = FillAfterAddress(world_dns, descriptors)
    failures: list[FetchFailure] = []
    out: dict[str, Any] = {}
    async with PolicyResolver(
        dns_resolver=dns_resolver,  # type: ignore[arg-type]  # a resolve() wrapper, as DnsResolver describes
        ssl_context=create_client_context(cafile=args["cafile"]),
        policy_port=args["https_port"],
        on_fetch_failure=failures.append,
        txt_check_interval=0.0,  # every lookup of a cached domain checks its TXT record
    ) as resolver:
        server = SocketmapServer(resolver)
        out["warm"] = summary(await resolver.lookup("cached.example"))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, len(os.listdir("/proc/self/fd")) + 64), hard))

        # 1. No descriptor left at all: the TXT query's socket fails with EMFILE.
        out["filled"] = descriptors.fill()
        out["cold"] = summary(await resolver.lookup("cold.example"))
        out["cached"] = summary(await resolver.lookup("cached.example"))
        out["socketmap_cold"] = (await server.answer(b"postfix cold.example")).decode()
        try:
            await resolver.get_policy("cold.example")
            out["get_policy"] = "returned"
        except LookupDeferredError as exc:
            out["get_policy"] = exc.status
        descriptors.free()

        # 2. The TXT and address queries work, the HTTPS connection cannot get a socket.
        dns_resolver.armed = True
        out["fetch_emfile"] = summary(await resolver.lookup("fetch.example"))
        dns_resolver.armed = False
        descriptors.free()
        out["failures_reported"] = len(failures)

        # 3. Descriptors are back: nothing was remembered or backed off, the next lookups fetch at once.
        out["cold_after"] = summary(await resolver.lookup("cold.example"))
        out["fetch_after"] = summary(await resolver.lookup("fetch.example"))
        out["socketmap_after"] = (await server.answer(b"postfix cold.example")).decode()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.stdin.read())))))
