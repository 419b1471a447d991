"""The origin role: bus publisher (media + snapshots); ingest plugs in here."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..broker.publisher import BusPublisher

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("mesh.origin")


class OriginPart:
    name = "origin"

    def __init__(self, node: "Node"):
        self.node = node
        cfg = node.cfg
        assert node.zmq is not None
        snapshot_port = cfg.snapshot_port or (cfg.bus_port + 1 if cfg.bus_port else 0)
        self.bus = BusPublisher(
            node.zmq, bind=cfg.bind, port=cfg.bus_port, snapshot_port=snapshot_port,
            advertise_host=cfg.host, hwm=cfg.bus_hwm, window_segments=cfg.snapshot_segments,
            window_bytes=cfg.snapshot_max_bytes, heartbeat_interval_s=cfg.stream_heartbeat_interval_s)

    async def start(self) -> None:
        await self.bus.start()
        self.node.info.bus_endpoint = self.bus.endpoint
        self.node.info.snapshot_endpoint = self.bus.snapshot_endpoint

    async def stop(self) -> None:
        await self.bus.stop()

    def load(self) -> dict[str, Any]:
        return {"streams": len(self.bus.channels)}

    def listening(self) -> list[tuple[str, str]]:
        return [("bus", f"{self.bus.endpoint} (snapshots {self.bus.snapshot_endpoint})")]
