"""Prometheus metrics of a node (served at ``/metrics``).

Every boundary counts what it rejects in :data:`BAD_INPUT` (``boundary`` is one of
``rtmp``, ``bus``, ``http``, ``config``, ``db``, ``pull``; ``reason`` is a short
fixed word such as ``handshake`` or ``oversize``, never peer-supplied text).
"""
from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge

log = logging.getLogger("mesh.bad_input")

BAD_INPUT = Counter(
    "mesh_bad_input_total", "Inputs rejected at a boundary (the sender got an error or was dropped)",
    ["boundary", "reason"],
)
BUS_SENT = Counter("mesh_bus_messages_sent_total", "Messages published on the bus", ["kind"])
BUS_RECEIVED = Counter("mesh_bus_messages_received_total", "Bus messages received and accepted", ["kind"])
BUS_GAPS = Counter("mesh_bus_gaps_total", "Sequence gaps seen by subscribers (publisher dropped at its HWM)")
BUS_LOST = Counter("mesh_bus_lost_messages_total", "Messages missing in gaps or discarded until a segment start")
STREAMS = Gauge("mesh_streams", "Streams this node is currently handling", ["role"])
VIEWER_REQUESTS = Counter("mesh_hls_requests_total", "HLS requests served", ["kind", "status"])


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
