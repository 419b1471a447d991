"""Prometheus metrics of a node (served at ``/metrics``).

Every boundary counts what it rejects in :data:`BAD_INPUT` (``boundary`` is one of
``rtmp``, ``bus``, ``http``, ``config``, ``db``, ``pull``; ``reason`` is a short
fixed word such as ``handshake`` or ``oversize``, never peer-supplied text).
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import REGISTRY, CounterMetricFamily, Metric

log = logging.getLogger("mesh.bad_input")

BAD_INPUT = Counter(
    "mesh_bad_input_total", "Inputs rejected at a boundary (the sender got an error or was dropped)",
    ["boundary", "reason"],
)
BUS_GAPS = Counter("mesh_bus_gaps_total", "Sequence gaps seen by subscribers (publisher dropped at its HWM)")
BUS_LOST = Counter("mesh_bus_lost_messages_total", "Messages missing in gaps or discarded until a segment start")
STREAMS = Gauge("mesh_streams", "Streams this node is currently handling", ["role"])
VIEWER_REQUESTS = Counter("mesh_hls_requests_total", "HLS requests served", ["kind", "status"])
RUNGS_DROPPED = Counter("mesh_abr_rungs_dropped_total",
                        "Ladder rungs dropped because the transcoder could not keep real time")
TRANSCODER_LAG = Gauge("mesh_abr_transcoder_lag_seconds", "How far behind real time a stream's ladder is",
                       ["stream"])
RECORD_BYTES = Counter("mesh_record_bytes_total", "Bytes of MP4 recordings written and fsync'd")
RECORD_ERRORS = Counter("mesh_record_errors_total",
                        "Recording failures (disk full, I/O, backlog); the live stream goes on", ["reason"])
HLS_EGRESS_BYTES = Counter("mesh_hls_egress_bytes_total",
                           "Bytes of HLS playlists and segments sent to viewers (updated every heartbeat)")
# Per-stream series carry only streams open on the node: their labels go when the stream closes.
HLS_STREAM_EGRESS_BYTES = Counter("mesh_hls_stream_egress_bytes_total",
                                  "Bytes of HLS sent to viewers, per stream (updated every heartbeat)", ["stream"])
HLS_STREAM_VIEWERS = Gauge("mesh_hls_stream_viewers",
                           "Viewers of a stream on this edge (addresses that asked for a playlist in the "
                           "last 10 s)", ["stream"])
INGEST_BYTES = Counter("mesh_ingest_bytes_total",
                       "Media bytes received from a stream's source on this origin (updated every segment)",
                       ["stream"])
REGISTRY_LINK_LOST = Counter("mesh_registry_link_lost_total",
                             "Times the database driver lost the registry server (marked it unknown and "
                             "dropped its pooled connections); it reconnects by itself")
REGISTRY_WRITE_SECONDS = Histogram("mesh_registry_write_seconds", "Latency of registry (MongoDB) writes",
                                   ["op"], buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))


class SummedCounter:
    """A counter summed at scrape time from live objects' own tallies, for hot paths that must
    not count per packet. Owners register a ``source`` returning their running total."""

    def __init__(self, name: str, documentation: str):
        self.name, self.documentation = name, documentation
        self._sources: list[Callable[[], float]] = []
        REGISTRY.register(self)

    def add_source(self, source: Callable[[], float]) -> None:
        self._sources.append(source)

    def value(self) -> float:
        return float(sum(source() for source in self._sources))

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation)
        family.add_metric([], self.value())
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation)


BUS_SENT = SummedCounter("mesh_bus_messages_sent", "ZeroMQ messages (batches of entries) published on the bus")
BUS_SENT_ENTRIES = SummedCounter("mesh_bus_entries_sent", "Entries (access units, configs, heartbeats) published")
BUS_RECEIVED = SummedCounter("mesh_bus_messages_received", "Bus messages received and decoded by subscribers")
BUS_RECEIVED_ENTRIES = SummedCounter("mesh_bus_entries_received", "Entries received by subscribers")
BUS_SENT_BYTES = SummedCounter("mesh_bus_sent_bytes", "Bytes of bus messages published (all frames)")
BUS_RECEIVED_BYTES = SummedCounter("mesh_bus_received_bytes", "Bytes of bus messages received and decoded")
RTMP_RECEIVED_BYTES = SummedCounter(
    "mesh_rtmp_received_bytes", "Bytes received from RTMP publishers (wire bytes, handshakes included)")


def reject(boundary: str, reason: str, detail: str = "", *args: object) -> None:
    """Count one rejected input and log it at debug level (formatting only if enabled)."""
    BAD_INPUT.labels(boundary, reason).inc()
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s rejected (%s): " + detail, boundary, reason, *args)


def bad_input_count(boundary: str, reason: str | None = None) -> float:
    """Current value of the bad-input counter (summed over reasons when ``reason`` is None)."""
    total = 0.0
    for metric in BAD_INPUT.collect():
        for sample in metric.samples:
            if not sample.name.endswith("_total"):
                continue
            if sample.labels.get("boundary") != boundary:
                continue
            if reason is None or sample.labels.get("reason") == reason:
                total += sample.value
    return total
