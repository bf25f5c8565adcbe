"""Resource bounds under load (issue 9): 10,000 concurrent lookups, half of them against hung policy hosts.

Memory and open sockets stay bounded by the concurrency limit, and the healthy half answers in time: a hung host
holds a fetch slot only for ``fetch_idle_timeout``, not for the whole ``fetch_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from mtasts.testing import World

POLICY = "version: STSv1\nmode: enforce\nmx: *.example.net\nmax_age: 604800\n"
TARPIT = "127.0.0.9"
ROOT = Path(__file__).resolve().parent.parent


class Tarpit:
    """Accepts TCP connections and never says a word (a TLS handshake that never completes)."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.accepted = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        self._writers.add(writer)
        try:
            await reader.read()  # until the client gives up
        except OSError:
            pass
        finally:
            self.active -= 1
            self._writers.discard(writer)
            writer.close()

    def close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()


async def test_ten_thousand_lookups_half_hung(world: World) -> None:
    tarpit = Tarpit()
    server = await asyncio.start_server(tarpit.handle, TARPIT, world.https_port)
    hung = [f"hung{i}.example" for i in range(5000)]
    healthy = [f"ok{i}.example" for i in range(200)]
    absent = [f"none{i}.example" for i in range(4800)]  # never published: NXDOMAIN
    for name in hung:
        world.publish(name, POLICY, policy_host_addresses=[TARPIT])
    for name in healthy:
        world.publish(name, POLICY)
        world.server_ssl_context(f"mta-sts.{name}")  # issue the certificates now, not during the run
    limit = 256
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests._load_client", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    arguments = {"names": [*hung, *absent, *healthy], "dns_port": world.dns_port, "cafile": world.ca_pem_path,
                 "port": world.https_port, "limit": limit, "fetch_timeout": 10, "idle_timeout": 1.0}  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(json.dumps(arguments).encode()), 300)
    tarpit.close_all()
    server.close()
    await server.wait_closed()
    assert process.returncode == 0, err.decode()[-2000:]
    report = json.loads(out)
    statuses = {name: status for name, (status, _) in report["results"].items()}
    errors = {name: error for name, (_, error) in report["results"].items()}

    assert {statuses[n] for n in hung} == {"fetch-error"}
    assert {statuses[n] for n in absent} == {"no-policy"}
    assert {statuses[n] for n in healthy} == {"fetched"}, {errors[n] for n in healthy if errors[n]}
    # sockets: never more hung connections than fetch slots; the process's descriptors stay bounded
    # (a connection the kernel does not hand to the tarpit within the idle timeout fails at connect: same end)
    assert 0 < tarpit.accepted <= len(hung) and tarpit.peak <= limit
    assert report["fds_peak"] - report["fds_before"] <= limit + 256 + 50, report  # fetches + DNS queries
    # memory grows with the lookups the caller starts (an asyncio task each: ~15 KB in flight), never with what
    # the hosts do: 10,000 lookups in flight at once stay well under 300 MB
    assert report["rss_peak"] - report["rss_before"] < 300, report
    # time: a hung host holds its slot for the idle timeout (1 s: half a second starved the world's own TLS
    # handshakes on a busy 2-core machine), so 5,000 of them queue for about 20 s in all; the healthy domains
    # answer as soon as a slot frees up
    elapsed = report["elapsed"]
    assert elapsed < 90, report["elapsed"]
    print(f"\n10,000 lookups in {elapsed:.1f} s; tarpit peak {tarpit.peak} connections; "
          f"client RSS +{report['rss_peak'] - report['rss_before']:.0f} MB, "
          f"descriptors +{report['fds_peak'] - report['fds_before']}; "
          f"healthy done by {max(report['done_at'][n] for n in healthy):.1f} s")  # fmt: skip
