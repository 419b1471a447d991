"""A test-side bus consumer: records deliveries and lets a test await conditions on them."""
from __future__ import annotations

import asyncio
from typing import Any

from mesh.broker import wire
from mesh.broker.tracker import Gap
from mesh.broker.wire import EOS, MEDIA


class Collector:
    """A sink that records deliveries and lets the test await a condition on them."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.changed = asyncio.Event()

    def __call__(self, deliveries: list[Any]) -> None:
        self.items.extend(deliveries)
        self.changed.set()

    def media(self) -> list[wire.Entry]:
        return [d for d in self.items if not isinstance(d, Gap) and d.kind == MEDIA]

    async def until(self, predicate, timeout: float = 10.0) -> None:
        async def wait() -> None:
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), timeout)

    def entries(self) -> list[wire.Entry]:
        return [d for d in self.items if not isinstance(d, Gap)]

    def ended(self) -> bool:
        return any(e.kind == EOS for e in self.entries())
