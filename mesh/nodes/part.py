"""What a role part is, and what the node hands it: the seam between the node and its parts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

import zmq.asyncio
from aiohttp import web

from ..config import NodeConfig
from ..http.app import HttpServer
from ..registry import NodeInfo, Registry

#: ``create(app, body) -> stream document``: start a pull source (origins only).
CreatePull = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class Part(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def load(self) -> dict[str, Any]: ...

    def listening(self) -> list[tuple[str, str]]: ...


@dataclass(frozen=True)
class Shared:
    """What the node owns and lends to its parts; each part takes only the fields it needs."""

    cfg: NodeConfig
    registry: Registry
    zmq: zmq.asyncio.Context
    info: NodeInfo  # this node's registry entry (parts fill in their endpoints at start)
    app: web.Application
    http: HttpServer
