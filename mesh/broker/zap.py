"""Who may connect to an origin's bus: a ZAP handler (RFC 27) admitting CURVE keys of alive nodes.

libzmq asks the ZAP handler of the socket's context (``inproc://zeromq.zap.01``) about every
CURVE handshake. :class:`KeyGate` is the decision as data: the set of admitted public keys, when
to ask the registry again (at a handshake when the set is older than ``refresh_interval_s``, and at
once, but at most every ``miss_refresh_s``, when an unknown key knocks: a node that registered a
moment ago gets in at its first try). The set is refreshed only when someone knocks: an idle
origin asks the registry nothing (handshakes are rare; polling cost two queries a second). :class:`ZapHandler` is the small asyncio driver: one REP socket per context,
one gate per ZAP domain (one domain per publisher), so two publishers in one process do not
share a key set.

A CURVE server socket must never be bound before the handler is: libzmq admits every key when
nobody answers on the ZAP endpoint. :meth:`ZapHandler.acquire` binds first, synchronously.

Connections already made stay up when a key leaves the set (ZAP runs at the handshake only).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Iterable

import zmq
import zmq.asyncio
from zmq.utils import z85

from .. import metrics
from .keys import is_z85_key

log = logging.getLogger("mesh.bus")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
KeyProvider = Callable[[], Awaitable[Iterable[bytes | str]]]


def _as_key(value: bytes | str) -> bytes | None:
    key = value.encode("ascii", "replace") if isinstance(value, str) else value
    return key if is_z85_key(key) else None


class KeyGate:
    """The admitted keys of one CURVE server. Pure: the caller passes ``now`` and does the I/O."""

    def __init__(self, always: Iterable[bytes] = (), refresh_interval_s: float = 1.0,
                 miss_refresh_s: float = 0.25):
        self.always = frozenset(k for k in map(_as_key, always) if k)
        self.keys: frozenset[bytes] = self.always
        self.refresh_interval_s = refresh_interval_s
        self.miss_refresh_s = miss_refresh_s
        self.refreshed_at = float("-inf")
        self.admitted = 0
        self.refused = 0

    def allows(self, key: bytes) -> bool:
        return key in self.keys

    def due(self, now: float) -> bool:
        return now - self.refreshed_at >= self.refresh_interval_s

    def due_on_miss(self, now: float) -> bool:
        return now - self.refreshed_at >= self.miss_refresh_s

    def update(self, keys: Iterable[bytes | str], now: float) -> None:
        self.keys = self.always | frozenset(k for k in map(_as_key, keys) if k)
        self.refreshed_at = now


class _Domain:
    def __init__(self, gate: KeyGate, provider: KeyProvider | None):
        self.gate = gate
        self.provider = provider
        self._refreshing: asyncio.Task[None] | None = None
        self._failing = False

    async def refresh(self) -> None:
        """Ask the provider once; concurrent callers share the one request."""
        if self.provider is None:
            return
        if self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        task = self._refreshing
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._refreshing is task:
                self._refreshing = None

    async def _refresh(self) -> None:
        assert self.provider is not None
        loop = asyncio.get_running_loop()
        try:
            keys = await asyncio.wait_for(self.provider(), 2.0)
        except Exception as exc:  # the registry is away: keep the last set, say so once
            if not self._failing:
                log.warning("cannot refresh the bus's admitted keys (%s); keeping the last %d",
                            exc, len(self.gate.keys))
            self._failing = True
            self.gate.refreshed_at = loop.time()  # do not hammer a database that is down
            return
        if self._failing:
            log.info("bus admitted keys refreshed again")
        self._failing = False
        self.gate.update(keys, loop.time())


class ZapHandler:
    """The ZAP handler of one ZeroMQ context, shared by that context's CURVE servers."""

    _by_context: dict[int, "ZapHandler"] = {}

    def __init__(self, ctx: zmq.asyncio.Context):
        self.ctx = ctx
        self.domains: dict[bytes, _Domain] = {}
        self._sock = ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(ZAP_ENDPOINT)
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="bus-zap")

    @classmethod
    def acquire(cls, ctx: zmq.asyncio.Context, domain: bytes, gate: KeyGate,
                provider: KeyProvider | None) -> "ZapHandler":
        """The context's handler (bound now if it was not), with ``domain`` answered by ``gate``."""
        handler = cls._by_context.get(id(ctx))
        if handler is None or handler.ctx is not ctx:
            handler = cls._by_context[id(ctx)] = cls(ctx)
        if domain in handler.domains:
            raise RuntimeError(f"ZAP domain {domain!r} is already in use")
        handler.domains[domain] = _Domain(gate, provider)
        return handler

    async def release(self, domain: bytes) -> None:
        self.domains.pop(domain, None)
        if self.domains:
            return
        if self._by_context.get(id(self.ctx)) is self:
            del self._by_context[id(self.ctx)]
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._sock.close(linger=0)

    async def refresh(self, domain: bytes) -> None:
        d = self.domains.get(domain)
        if d is not None:
            await d.refresh()

    async def _serve(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            try:
                reply = await self._answer(frames)
            except Exception:  # a bug here must not leave every handshake waiting forever
                log.exception("ZAP handler failed; refusing this handshake")
                reply = [b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"internal error", b"", b""]
            await self._sock.send_multipart(reply)

    async def _answer(self, frames: list[bytes]) -> list[bytes]:
        loop = asyncio.get_running_loop()
        if len(frames) < 6:  # not a ZAP request; REP must still answer something
            return [b"1.0", b"", b"500", b"malformed", b"", b""]
        request_id, domain, mechanism = frames[1], frames[2], frames[5]
        d = self.domains.get(domain)
        ok = False
        key = b""
        if d is not None and mechanism == b"CURVE" and len(frames) >= 7 and len(frames[6]) == 32:
            key = z85.encode(frames[6])
            if d.gate.due(loop.time()):
                await d.refresh()  # a key set older than refresh_interval_s: nodes may have died
            ok = d.gate.allows(key)
            if not ok and d.gate.due_on_miss(loop.time()):
                await d.refresh()  # a node that registered a moment ago
                ok = d.gate.allows(key)
        if ok:
            d.gate.admitted += 1  # type: ignore[union-attr]
            return [b"1.0", request_id, b"200", b"OK", key, b""]
        if d is not None:
            d.gate.refused += 1
        metrics.reject("bus", "auth", "%s from %s refused (key %s)", mechanism.decode(
            "ascii", "replace")[:16], frames[3].decode("ascii", "replace")[:64],
            key.decode("ascii", "replace"))
        return [b"1.0", request_id, b"400", b"not a registered, alive node of this cluster", b"", b""]
