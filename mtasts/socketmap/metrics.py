"""The daemon's Prometheus metrics: a custom collector that reads, at scrape time, what the parts already count.

Nothing is counted for the metrics on a cache hit: :class:`DaemonCollector` reads the socketmap server's counters
(:meth:`SocketmapServer.answers`, :meth:`SocketmapServer.latency`: :mod:`mtasts.socketmap.tally`), the
resolver's (:class:`~mtasts.stats.ResolverStats`), its cache (per mode, from the policy table: O(distinct
policies)) and its store's outage state, each time ``GET /metrics`` asks — into its own
:class:`~prometheus_client.CollectorRegistry` (:func:`metrics_registry`), never the library's global one.
Every metric is listed in docs/operations.md, "Metrics". Needs ``prometheus-client`` (the ``metrics`` extra).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .. import __version__
from ..policy import Mode
from .tally import ANSWERS

if TYPE_CHECKING:
    from ..resolver import PolicyResolver
    from .server import SocketmapServer

__all__ = ["DaemonCollector", "metrics_registry"]

_STORE_OPERATIONS = ("read", "write")


class DaemonCollector:
    """The metrics of one ``serve-socketmap``: its resolver's from the start, its server's once :attr:`server`
    is set (it listens only after the store is restored)."""

    def __init__(self, resolver: PolicyResolver, *, event_loop: str) -> None:
        self.resolver = resolver
        self.event_loop = event_loop
        self.server: SocketmapServer | None = None

    def collect(self) -> Iterator[Metric]:
        yield self._build_info()
        if self.server is not None:
            yield from self._server_metrics(self.server)
        yield from self._resolver_metrics(self.resolver)
        yield from self._store_metrics(self.resolver)

    def _build_info(self) -> Metric:
        info = GaugeMetricFamily(
            "mtasts_build_info", "mtasts's version, Python's and the event loop (value 1)",
            labels=["version", "python", "implementation", "event_loop"],
        )  # fmt: skip
        info.add_metric([__version__, platform.python_version(), platform.python_implementation(), self.event_loop], 1)
        return info

    @staticmethod
    def _server_metrics(server: SocketmapServer) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "mtasts_socketmap_requests", "socketmap requests answered, by answer", labels=["answer"]
        )
        answers = server.answers()
        for kind in ANSWERS:
            requests.add_metric([kind], answers[kind])
        yield requests
        bounds, cumulative, seconds = server.latency()
        buckets = [(repr(bound), count) for bound, count in zip(bounds, cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        yield HistogramMetricFamily(
            "mtasts_socketmap_request_duration_seconds",
            "time from a request to its answer: answers from memory in the first bucket (as 0 s), lookups as measured",
            buckets=buckets,
            sum_value=seconds,
        )
        for name, documentation, value in [
            ("mtasts_socketmap_connections", "client connections admitted", server.connections),
            ("mtasts_socketmap_connections_evicted", "idle connections closed to make room", server.evicted),
            ("mtasts_socketmap_connections_refused", "connections closed at once: every one busy", server.rejected),
            ("mtasts_socketmap_errors", "malformed requests and internal errors", server.errors),
            ("mtasts_socketmap_timeouts", "TEMP answers: a lookup outlasted request_timeout", server.timeouts),
            ("mtasts_socketmap_deferred", "TEMP answers: a local fault, a DNS failure under dns_error = defer",
             server.deferred),
        ]:  # fmt: skip
            yield CounterMetricFamily(name, documentation, value=value)
        yield GaugeMetricFamily(
            "mtasts_socketmap_connections_open", "client connections open now", value=server.open_connections
        )
        overrides = CounterMetricFamily(
            "mtasts_socketmap_overrides", "requests answered by a TOML override, by kind", labels=["kind"]
        )
        for kind, count in server.overrides_used.items():
            overrides.add_metric([kind], count)
        yield overrides

    @staticmethod
    def _resolver_metrics(resolver: PolicyResolver) -> Iterator[Metric]:
        stats = resolver.stats
        lookups = CounterMetricFamily(
            "mtasts_resolver_lookups",
            "lookups that went to DNS or HTTPS (one per domain in flight), by kind and outcome",
            labels=["kind", "status"],
        )
        for (kind, status), count in sorted(stats.lookups.items()):
            lookups.add_metric([kind, status], count)
        yield lookups
        fetches = CounterMetricFamily(
            "mtasts_policy_fetches",
            "policy fetches, by result (success, an RFC 8460 result type, local-error) and the mode cached then",
            labels=["result", "cached_mode"],
        )
        for (result, mode), count in sorted(stats.fetches.items()):
            fetches.add_metric([result, mode], count)
        yield fetches
        changes = CounterMetricFamily(
            "mtasts_policy_changes", "cached policies added, replaced (new id, mode, content) or expired",
            labels=["change"],
        )  # fmt: skip
        for change, count in sorted(stats.changes.items()):
            changes.add_metric([change], count)
        yield changes
        entries = GaugeMetricFamily("mtasts_cache_entries", "domains with a cached policy, by mode", labels=["mode"])
        policies = GaugeMetricFamily("mtasts_cache_policies", "distinct cached policies, by mode", labels=["mode"])
        census = resolver.cache_by_mode()
        for mode in Mode:
            domains, distinct = census.get(mode, (0, 0))
            entries.add_metric([mode.value], domains)
            policies.add_metric([mode.value], distinct)
        yield entries
        yield policies
        yield GaugeMetricFamily(
            "mtasts_cache_negative_entries",
            "domains whose no-policy (or failure) answer is remembered",
            value=resolver.negative_cache_size,
        )

    @staticmethod
    def _store_metrics(resolver: PolicyResolver) -> Iterator[Metric]:
        link = resolver.store_link
        if link is None:
            return
        up = GaugeMetricFamily(
            "mtasts_store_up", "1 unless the store's last reads (or writes) failed: an outage", labels=["operation"]
        )
        down = link.down
        for operation in _STORE_OPERATIONS:
            up.add_metric([operation], 0 if operation in down else 1)
        yield up
        errors = CounterMetricFamily(
            "mtasts_store_errors",
            "store trouble: outages begun, damaged rows read, reads refused by a limit here, invalid rows skipped",
            labels=["error"],
        )
        for error, count in [
            ("outage", link.outages), ("damaged-row", link.damaged), ("busy", link.busy), ("invalid-row", link.skipped)
        ]:  # fmt: skip
            errors.add_metric([error], count)
        yield errors
        yield CounterMetricFamily("mtasts_store_rows_written", "rows written to the store", value=link.written)
        yield GaugeMetricFamily("mtasts_store_pending_writes", "rows waiting to be written", value=link.pending)


def metrics_registry(collector: DaemonCollector) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one) with ``collector`` and the process's metrics
    (``process_open_fds``, ``process_resident_memory_bytes``, CPU seconds...; on Linux)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry
