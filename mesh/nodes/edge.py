"""The edge role: bus subscriber; the HLS window plugs in here."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..broker.subscriber import BusSubscriber

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("mesh.edge")


class EdgePart:
    name = "edge"

    def __init__(self, node: "Node"):
        self.node = node
        assert node.zmq is not None
        self.bus = BusSubscriber(node.zmq)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self.bus.stop()

    def load(self) -> dict[str, Any]:
        return {"viewers": 0}
