"""Which parts run in which role."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .node import Node, Part


def parts_for_role(node: "Node") -> list["Part"]:
    from .edge import EdgePart
    from .origin import OriginPart

    if node.role == "origin":
        return [OriginPart(node)]
    if node.role == "edge":
        return [EdgePart(node)]
    # standalone: origin and edge in one process; the edge reads the origin over the same bus
    # path a remote edge would, so one code path serves both.
    return [OriginPart(node), EdgePart(node)]
