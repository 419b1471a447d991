"""Pulled sources outlive their origin: live origins adopt the pulled streams of dead ones.

Every few seconds each origin asks the registry for pulled streams (REST-created, with a
``streamUrl``) whose origin is dead, ranks the alive origins by load (streams, then node id, so
every origin computes the same ranking) and deals the orphans out over them in that order. It
creates the pulls dealt to itself, through the same path as a REST create: the claim is atomic and
fenced (a live owner is never robbed, and two origins that disagree about the ranking cannot both
win), the numbering continues with a discontinuity. With no origin alive nothing happens; the
first origin to join finds the orphans on its first scan.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Protocol

from ..errors import MeshError
from ..timers import sleep_to_grid

log = logging.getLogger("mesh.pull")

# Orphans appear only when an origin's streams are marked (every 5 s, after it was dead for the
# dead-node bound): scanning more often than they can appear is a registry query a second for
# nothing, on every origin (one pymongo read costs an idle origin ~1 ms of CPU).
SCAN_INTERVAL_S = 5.0

CreatePull = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class Records(Protocol):
    async def orphaned_pulls(self, app: str) -> list[dict[str, Any]]: ...

    async def list_nodes(self, offset: int = 0, size: int = 1000) -> list[Any]: ...


def deal(orphans: list[str], origins: list[tuple[int, str]]) -> dict[str, str]:
    """Orphan stream id -> the origin that adopts it: least loaded first, round robin."""
    ranked = [node for _, node in sorted(origins)]
    return {sid: ranked[i % len(ranked)] for i, sid in enumerate(orphans)} if ranked else {}


class Adopter:
    def __init__(self, records: Records, node_id: str, app: str, create_pull: CreatePull,
                 is_live: Callable[[str], bool], interval_s: float = SCAN_INTERVAL_S):
        self._records = records
        self.node_id = node_id
        self.app = app
        self._create = create_pull
        self._is_live = is_live
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.adopted = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pull-adopter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await sleep_to_grid(self.interval_s)  # with the node's other timers
            try:
                await self.scan()
            except Exception as exc:  # the registry away: try again next time
                log.debug("orphaned pulls not scanned: %s", exc)

    async def scan(self) -> int:
        """Adopt the orphaned pulls dealt to this origin; how many were adopted."""
        orphans = [d for d in await self._records.orphaned_pulls(self.app) if not self._is_live(d["_id"])]
        if not orphans:
            return 0
        origins = []
        for view in await self._records.list_nodes():
            if view.alive and view.role in ("origin", "standalone"):
                load = view.doc.get("load") if isinstance(view.doc.get("load"), dict) else {}
                streams = load.get("streams")
                origins.append((streams if type(streams) is int else 0, view.node_id))
        mine = [sid for sid, node in deal([d["_id"] for d in orphans], origins).items() if node == self.node_id]
        adopted = 0
        for doc in orphans:
            if doc["_id"] not in mine:
                continue
            url = doc.get("settings", {}).get("streamUrl")
            try:
                await self._create(self.app, {"streamId": doc["_id"], "streamUrl": url})
            except MeshError as exc:
                log.info("could not adopt the pulled stream %s: %s", doc["_id"], exc.message)
                continue
            adopted += 1
            self.adopted += 1
            log.info("adopted the pulled stream %s of %s (%s)", doc["_id"], doc.get("origin_node"), url)
        return adopted
