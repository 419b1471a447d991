"""The registry: the only code that talks to MongoDB.

Two collections (DESIGN §4):

- ``nodes``: one document per node, heartbeated about every second with ``$currentDate``. Liveness
  is judged on the **database server's clock**: readers ask the server for its time (``hello``'s
  ``localTime``) and compare it with ``last_seen``, so clock skew between hosts cannot mark a live
  node dead. TTL indexes are never relied on (SecantusDB sweeps them once a minute).
- ``streams``: the authoritative origin map. A publish *claims* its stream with one atomic
  conditional update that succeeds only if the stream is not broadcasting, is already ours, or its
  owner is dead; it increments ``epoch``, the fencing token every bus packet carries. Later writes
  by an origin are conditioned on its epoch, so a deposed origin learns it lost the stream
  (:class:`Fenced`) instead of overwriting its successor.

Segment numbers are **reserved** before they are used, so a takeover can never reuse one (DESIGN
§3, "same name, same bytes"): ``sequence_reserved`` is the first number the owner may *not* use.
A claim starts its epoch at ``max(media_sequence, sequence_reserved)`` (above anything the old
owner could have listed, whenever it died) and reserves ``reserve_segments`` more; the owner
extends its reservation with every fenced ``media_sequence`` write and never cuts a segment
beyond it (:mod:`mesh.ingest.segmenter`). A takeover therefore skips at most a reservation's
worth of numbers, and edges show it as one discontinuity (:mod:`mesh.hls.window`). The
reservations live in the database: once a registry finds the database restored (its ``meta``
incarnation changed), every claim also starts above wall-clock floors (:func:`sequence_floor`,
:func:`epoch_floor`), so a stream re-created by another origin never restarts at 0.

The database may be away: every call fails fast (``op_timeout_s``) with
:class:`RegistryUnavailable`, a domain :class:`~mesh.errors.Unavailable` the HTTP rooms turn into a
503 with ``Retry-After``. Heartbeats upsert the whole node document, and an origin re-creates a
stream document that vanished (a database restored empty) with its own epoch and numbering
(:meth:`Registry.restore_stream`), so a cluster repopulates an empty database by itself.

Change streams are not used: a plain ``mongod`` has no replica set.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, TypeVar
from urllib.parse import unquote, unquote_plus, urlsplit

import pymongo
import pymongo.errors
from pymongo import AsyncMongoClient, ReturnDocument, UpdateOne, monitoring

from . import metrics
from .errors import Unavailable

log = logging.getLogger("mesh.registry")

BROADCASTING = "broadcasting"
CREATED = "created"
FINISHED = "finished"
TERMINATED = "terminated_unexpectedly"
STREAM_STATUSES = (CREATED, BROADCASTING, FINISHED, TERMINATED)
CLOCK_REFRESH_S = 30.0  # how long the server's clock offset is trusted (see Registry.server_time)
RESERVE_SEGMENTS = 16  # numbers an owner reserves ahead: with 2 s segments, 32 s without the DB
RETRY_AFTER_S = 2  # what a 503 for an unavailable registry tells clients
# The time floor for segment numbers in a database that was found restored (see sequence_floor).
FLOOR_BASE_S = 1_767_225_600  # 2026-01-01T00:00:00Z
FLOOR_PER_S = 2  # numbers per second: one per segment at the shortest segment target (0.5 s)
FLOOR_CAP = 900_000_000  # reached in 2040; leaves 10^8 numbers below the 9 digits of DESIGN §6


def epoch_floor(unix_s: float) -> int:
    """The epoch (and discontinuity sequence) a stream re-created in a restored database starts
    above: seconds since 2026. Edges follow only higher epochs, and both numbers grow by at most
    one per claim, so this is above what the lost document held unless the stream was claimed
    more than once a second on average since 2026."""
    return max(0, int(unix_s - FLOOR_BASE_S))


def sequence_floor(unix_s: float) -> int:
    """The first segment number a stream re-created in a restored database may use at wall-clock
    ``unix_s``: two numbers per second since 2026, so above anything a stream that started on
    the floor could have reached by cutting segments no shorter than the shortest allowed target
    (0.5 s). Names keep their 9 digits (DESIGN §6): the floor stops at :data:`FLOOR_CAP`."""
    return max(0, min(FLOOR_CAP, int((unix_s - FLOOR_BASE_S) * FLOOR_PER_S)))


class RegistryError(RuntimeError):
    """The database cannot be used; the message is one line that says what to do."""


class StreamBusy(RuntimeError):
    """Another live origin owns the stream."""

    def __init__(self, stream_id: str, origin: str, epoch: int):
        self.stream_id, self.origin, self.epoch = stream_id, origin, epoch
        super().__init__(f"stream {stream_id} is already being published on {origin} (epoch {epoch}); "
                         f"stop that publisher or use another stream id")


class Fenced(RuntimeError):
    """This origin no longer owns the stream (a newer epoch claimed it)."""



_W = TypeVar("_W", bound=Callable[..., Awaitable[Any]])


def _timed_write(fn: _W) -> _W:
    """Observe the write's latency in ``mesh_registry_write_seconds{op=<method name>}``."""
    observe = metrics.REGISTRY_WRITE_SECONDS.labels(fn.__name__).observe

    @functools.wraps(fn)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            observe(time.perf_counter() - start)
    return timed  # type: ignore[return-value]


class RegistryUnavailable(Unavailable):
    """The database did not answer in time (paused, restarting, cut off)."""

    reason = "registry"

    def __init__(self, message: str = "the cluster registry (database) is unavailable; "
                                      f"try again in {RETRY_AFTER_S} s"):
        super().__init__(message)


_OUTAGE = (pymongo.errors.ConnectionFailure, pymongo.errors.ExecutionTimeout,
           pymongo.errors.WTimeoutError)
_T = TypeVar("_T")


def _fails_fast(method: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
    """Turn the database being away into :class:`RegistryUnavailable` (no pymongo traceback)."""
    @functools.wraps(method)
    async def call(self: "Registry", *args: Any, **kwargs: Any) -> _T:
        try:
            return await method(self, *args, **kwargs)
        except _OUTAGE as exc:
            log.debug("registry call %s failed: %s", method.__name__, exc)
            raise RegistryUnavailable() from None
    return call


@dataclass(frozen=True)
class Claim:
    stream_id: str
    epoch: int
    media_sequence: int  # number of the first segment this origin will cut
    discontinuity_sequence: int
    takeover: bool  # the previous owner was another (dead) node mid-broadcast
    reserved: int = 0  # first segment number this epoch may not use until it extends its reservation


@dataclass
class NodeInfo:
    node_id: str
    role: str
    host: str
    http_url: str = ""
    bus_endpoint: str = ""
    snapshot_endpoint: str = ""
    rtmp_url: str = ""
    version: str = ""
    bus_public_key: str = ""  # the node's CURVE public key (Z85); "" with bus_security = "none"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class NodeView:
    """A node as readers see it, liveness judged on the server's clock."""

    node_id: str
    role: str
    host: str
    alive: bool
    last_seen: dt.datetime | None
    age_s: float | None
    doc: dict[str, Any]


def _redact(uri: str) -> str:
    try:
        parts = urlsplit(uri)
        return f"{parts.hostname or '?'}:{parts.port or 27017}"
    except ValueError:
        return "?"


def _user(uri: str) -> str:
    try:
        return urlsplit(uri).username or ""
    except ValueError:
        return ""


def _scrub(text: str, uri: str) -> str:
    """``text`` (e.g. a driver's error message) with the URI's password, raw or decoded, as ``***``."""
    rest = uri.split("://", 1)[-1]
    if "@" not in rest:
        return text
    creds = rest.rsplit("@", 1)[0]
    if ":" not in creds:
        return text
    password = creds.split(":", 1)[1]
    for secret in sorted({password, unquote_plus(password), unquote(password)}, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def _node_fields(info: NodeInfo) -> dict[str, Any]:
    return {"role": info.role, "host": info.host, "http_url": info.http_url,
            "bus_endpoint": info.bus_endpoint, "snapshot_endpoint": info.snapshot_endpoint,
            "rtmp_url": info.rtmp_url, "version": info.version, "bus_public_key": info.bus_public_key,
            **info.extra}


def _aware(value: Any) -> dt.datetime | None:
    if not isinstance(value, dt.datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


class _LinkWatch(monitoring.ServerListener):
    """Says when the driver loses the database server and when it answers again, counting each
    loss in ``mesh_registry_link_lost_total``. Between the two, pymongo has dropped its pooled
    connections and every question first waits for a new one; without this a flapping link shows
    only as requests that were slow or failed now and then."""

    def __init__(self, uri: str):
        self.uri = uri
        self.watching = False  # set once connect() succeeded: its own failures are reported by it
        self._lost_at: dict[Any, float] = {}

    def opened(self, event: monitoring.ServerOpeningEvent) -> None:
        pass

    def closed(self, event: monitoring.ServerClosedEvent) -> None:
        pass

    def description_changed(self, event: monitoring.ServerDescriptionChangedEvent) -> None:
        was = event.previous_description.is_server_type_known
        now = event.new_description.is_server_type_known
        host, port = event.server_address
        if was and not now and self.watching:
            self._lost_at[event.server_address] = time.monotonic()
            metrics.REGISTRY_LINK_LOST.inc()
            error = _scrub(str(event.new_description.error), self.uri)
            log.warning("registry: lost the database server %s:%s (%s); reconnecting", host, port, error)
        elif now and not was and event.server_address in self._lost_at:
            down = time.monotonic() - self._lost_at.pop(event.server_address)
            log.info("registry: the database server %s:%s answers again (lost for %.1f s)", host, port, down)


class Registry:
    """Async access to the ``nodes`` and ``streams`` collections."""

    def __init__(self, uri: str, db_name: str = "mesh", *, node_dead_after_s: float = 4.0,
                 timeout_s: float = 5.0, op_timeout_s: float = 1.5,
                 reserve_segments: int = RESERVE_SEGMENTS):
        self.uri = uri
        self.node_dead_after_s = node_dead_after_s
        self.reserve_segments = reserve_segments
        self._timeout_ms = int(timeout_s * 1000)  # how long connect() keeps trying at start
        # Every later call fails within about op_timeout_s: a viewer or a REST client waiting on
        # a paused database gets a quick 503, never a hang.
        # timeoutMS bounds a whole operation, its retry included.
        op_ms = int(op_timeout_s * 1000)
        self._watch = _LinkWatch(uri)
        try:
            self._client: AsyncMongoClient = AsyncMongoClient(
                uri, serverSelectionTimeoutMS=op_ms, connectTimeoutMS=op_ms, socketTimeoutMS=op_ms * 2,
                timeoutMS=op_ms * 2, tz_aware=True, appname="mesh", event_listeners=[self._watch])
        except (pymongo.errors.PyMongoError, ValueError) as exc:
            raise RegistryError(f"MongoDB URI is not usable: {_scrub(str(exc), uri)}; fix --mongo / "
                                f"MESH_MONGO (user and password percent-encoded)") from None
        self._db = self._client[db_name]
        self.nodes = self._db["nodes"]
        self.streams = self._db["streams"]
        self._clock: tuple[float, dt.timedelta] | None = None  # (monotonic when read, server - ours)
        self.meta = self._db["meta"]
        self._incarnation: str | None = None  # the database this registry first connected to

    # -- lifecycle -------------------------------------------------------------------------
    async def connect(self) -> None:
        """Check the server answers and the credentials work; create indexes. One clear line on failure."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_ms / 1000
        try:
            while True:  # the server may still be starting: keep asking until the start timeout
                try:
                    await self._db.command("ping")
                    break
                except (pymongo.errors.ServerSelectionTimeoutError, pymongo.errors.AutoReconnect):
                    if loop.time() >= deadline:
                        raise
                    await asyncio.sleep(0.2)
            await self.nodes.create_index([("role", 1), ("last_seen", -1)])
            await self.streams.create_index([("status", 1), ("origin_node", 1)])
            await self.streams.create_index([("app", 1), ("updated_at", -1)])
            await self._numbering_floor()
            self._watch.watching = True  # from here a lost server is news (not a failed start)
        except pymongo.errors.OperationFailure as exc:
            if exc.code in (18, 13) or "auth" in str(exc).lower():
                who = f"user {_user(self.uri)!r}" if _user(self.uri) else "an anonymous client"
                raise RegistryError(
                    f"MongoDB at {_redact(self.uri)} refused {who} (authentication failed); "
                    f"check the user and password in --mongo / MESH_MONGO") from None
            detail = str(exc.details.get("errmsg", exc) if exc.details else exc)
            raise RegistryError(f"MongoDB at {_redact(self.uri)} refused a command: "
                                f"{_scrub(detail, self.uri)}") from None
        except pymongo.errors.ConfigurationError as exc:
            raise RegistryError(f"MongoDB URI is not usable: {_scrub(str(exc), self.uri)}") from None
        except pymongo.errors.PyMongoError:
            raise RegistryError(
                f"cannot reach MongoDB at {_redact(self.uri)} within {self._timeout_ms / 1000:.0f} s; "
                f"is it running? start one with `mesh db` or fix --mongo / MESH_MONGO") from None

    async def close(self) -> None:
        await self._client.close()

    async def _numbering_floor(self) -> int:
        """0 in a database that was never restored; :func:`sequence_floor` of now in one that was.

        The ``meta`` document names the database's incarnation. A registry that finds it gone (or
        another one) after connecting knows the database was restored (from nothing or a backup)
        and marks it ``restored``: the numbering reserved in the lost documents is gone too, so
        from then on every claim starts at the time floors (:func:`sequence_floor` for segment
        numbers, :func:`epoch_floor` for the epoch and discontinuity sequence), above anything
        any owner could have listed or edges could have followed (DESIGN §3, same name, same
        bytes). A live origin re-creating its own lost document keeps its numbering
        (:meth:`restore_stream`)."""
        found = await self.meta.find_one({"_id": "registry"})
        if found is None or found.get("incarnation") != self._incarnation:
            update: dict[str, Any] = {"$setOnInsert": {"incarnation": uuid.uuid4().hex}}
            if self._incarnation is not None:
                update["$set"] = {"restored": True}
                log.warning("the registry database was restored (its incarnation changed); streams it "
                            "lost restart their segment numbers at the time floor")
            found = await self.meta.find_one_and_update({"_id": "registry"}, update, upsert=True,
                                                        return_document=ReturnDocument.AFTER)
            if found is None:  # two nodes upserting at once: the embedded server may answer None
                found = await self.meta.find_one({"_id": "registry"})
            if not isinstance(found, dict) or not isinstance(found.get("incarnation"), str):
                metrics.reject("db", "meta_doc", "the registry's meta document is missing or damaged: %r", found)
                return 0  # asked again at the next claim
            self._incarnation = found["incarnation"]
        return sequence_floor(time.time()) if found.get("restored") else 0

    @_fails_fast
    async def server_time(self) -> dt.datetime:
        """The database server's clock (``hello``'s ``localTime``), timezone-aware UTC.

        Liveness is judged on this clock, so that hosts whose clocks disagree agree on who is
        alive. It is read from the server at most every :data:`CLOCK_REFRESH_S` and kept as an
        offset from this host's clock in between: asking on every judgement cost an idle node
        two round trips a second, and clocks do not drift by a heartbeat in half a minute."""
        mono = time.monotonic()
        if self._clock is None or mono - self._clock[0] >= CLOCK_REFRESH_S:
            reply = await self._db.command("hello")
            now = _aware(reply.get("localTime"))
            if now is None:  # a server that does not report its time: fall back to ours, say so once
                if self._clock is None:
                    log.warning("database server did not report localTime; judging liveness on this "
                                "host's clock")
                self._clock = (mono, dt.timedelta(0))
            else:
                self._clock = (mono, now - dt.datetime.now(dt.timezone.utc))
        return dt.datetime.now(dt.timezone.utc) + self._clock[1]

    # -- nodes -----------------------------------------------------------------------------
    @_timed_write
    @_fails_fast
    async def register_node(self, info: NodeInfo) -> None:
        doc = {**_node_fields(info), "stopped": False}
        await self.nodes.update_one(
            {"_id": info.node_id},
            {"$set": doc, "$currentDate": {"last_seen": True, "started_at": True}},
            upsert=True)

    @_timed_write
    @_fails_fast
    async def heartbeat(self, node_id: str, load: dict[str, Any], info: NodeInfo | None = None) -> None:
        """Mark the node alive now. With ``info`` the whole node document is written (upserted), so
        a node re-registers by itself when the database comes back without it (restored empty)."""
        fields: dict[str, Any] = {"load": load, "stopped": False}
        if info is not None:
            fields.update(_node_fields(info))
        await self.nodes.update_one({"_id": node_id},
                                    {"$set": fields, "$currentDate": {"last_seen": True}},
                                    upsert=info is not None)

    @_fails_fast
    @_timed_write
    async def deregister(self, node_id: str) -> None:
        """Mark the node gone now (readers see it dead at once) and hand its streams back."""
        await self.nodes.update_one({"_id": node_id},
                                    {"$set": {"stopped": True}, "$currentDate": {"stopped_at": True}})

    def _judge(self, doc: dict[str, Any], now: dt.datetime) -> NodeView | None:
        node_id, role, host = doc.get("_id"), doc.get("role"), doc.get("host")
        if not all(isinstance(v, str) for v in (node_id, role, host)):
            metrics.reject("db", "node_doc", "node document %r lacks id/role/host", doc.get("_id"))
            return None
        seen = _aware(doc.get("last_seen"))
        age = (now - seen).total_seconds() if seen else None
        alive = bool(seen) and not doc.get("stopped") and age is not None and age <= self.node_dead_after_s
        return NodeView(node_id, role, host, alive, seen, age, doc)

    @_fails_fast
    async def list_nodes(self, offset: int = 0, size: int = 1000) -> list[NodeView]:
        now = await self.server_time()
        cursor = self.nodes.find({}).sort("_id", 1).skip(max(0, offset)).limit(max(0, size))
        views = [self._judge(doc, now) for doc in await cursor.to_list(None)]
        return [v for v in views if v is not None]

    @_fails_fast
    async def count_nodes(self) -> int:
        return await self.nodes.count_documents({})

    @_fails_fast
    async def alive_node_ids(self) -> set[str]:
        now = await self.server_time()
        cutoff = now - dt.timedelta(seconds=self.node_dead_after_s)
        cursor = self.nodes.find({"last_seen": {"$gte": cutoff}, "stopped": {"$ne": True}}, {"_id": 1})
        return {doc["_id"] for doc in await cursor.to_list(None)}

    @_fails_fast
    async def alive_bus_keys(self) -> set[str]:
        """The bus public keys (Z85) of alive nodes: who an origin's bus admits."""
        now = await self.server_time()
        cutoff = now - dt.timedelta(seconds=self.node_dead_after_s)
        cursor = self.nodes.find({"last_seen": {"$gte": cutoff}, "stopped": {"$ne": True}},
                                 {"bus_public_key": 1})
        return {doc["bus_public_key"] for doc in await cursor.to_list(None)
                if isinstance(doc.get("bus_public_key"), str) and doc["bus_public_key"]}

    @_fails_fast
    async def get_node(self, node_id: str) -> NodeView | None:
        doc, now = await asyncio.gather(self.nodes.find_one({"_id": node_id}), self.server_time())
        return self._judge(doc, now) if doc else None

    # -- streams ---------------------------------------------------------------------------
    @_timed_write
    @_fails_fast
    async def create_stream(self, stream_id: str, app: str, settings: dict[str, Any]) -> dict[str, Any]:
        """Record a stream before it goes live (REST create). Existing streams keep their state."""
        return await self.streams.find_one_and_update(
            {"_id": stream_id},
            [{"$set": {
                "app": app, "settings": settings,
                "status": {"$ifNull": ["$status", CREATED]},
                "epoch": {"$ifNull": ["$epoch", 0]},
                "media_sequence": {"$ifNull": ["$media_sequence", 0]},
                "discontinuity_sequence": {"$ifNull": ["$discontinuity_sequence", 0]},
                "created_at": {"$ifNull": ["$created_at", "$$NOW"]},
                "updated_at": "$$NOW",
            }}],
            upsert=True, return_document=ReturnDocument.AFTER)

    @_timed_write
    @_fails_fast
    async def claim_stream(self, stream_id: str, app: str, node: NodeInfo,
                           renditions: Iterable[dict[str, Any]] = (), *,
                           dead_owner: tuple[str, int] | None = None) -> Claim:
        """Atomically become the origin of ``stream_id`` or raise :class:`StreamBusy`.

        ``dead_owner=(node_id, epoch)``: the caller has confirmed that node dead (its endpoints
        refuse connections) before the registry ages it out; the claim then also succeeds while
        the stream is still exactly that node's at that epoch, so a live owner that moved on (or
        any other owner) is never robbed."""
        # In a restored database every claim starts above the time floors: the documents (lost, or
        # from a backup) may be behind what the streams' owners reserved and listed. (Asked
        # alongside the live nodes: no extra round trip on the claim's path.)
        alive, floor = await asyncio.gather(self.alive_node_ids(), self._numbering_floor())
        alive_others = sorted(alive - {node.node_id})
        lost = epoch_floor(time.time()) if floor else 0
        free = [{"status": {"$ne": BROADCASTING}},
                {"origin_node": node.node_id},
                {"origin_node": {"$nin": alive_others}}]
        if dead_owner is not None:
            free.append({"origin_node": dead_owner[0], "epoch": dead_owner[1]})
        prior_epoch = {"$ifNull": ["$epoch", 0]}
        takeover = {"$and": [{"$eq": ["$status", BROADCASTING]},
                             {"$ne": ["$origin_node", node.node_id]}]}
        # Above anything an earlier epoch may have listed, whenever its owner died.
        first = {"$max": [{"$ifNull": ["$media_sequence", 0]}, {"$ifNull": ["$sequence_reserved", 0]}, floor]}
        update = [{"$set": {
            "app": app,
            "previous_origin": {"$cond": [takeover, "$origin_node", None]},
            "status": BROADCASTING,
            "origin_node": node.node_id,
            "bus_endpoint": node.bus_endpoint,
            "snapshot_endpoint": node.snapshot_endpoint,
            "bus_public_key": node.bus_public_key,  # what edges authenticate this origin with
            "renditions": list(renditions),
            "epoch": {"$max": [{"$add": [prior_epoch, 1]}, lost + 1]},
            "media_sequence": first,
            "sequence_reserved": {"$add": [first, self.reserve_segments]},
            # Every epoch after the first starts with a discontinuity: players see one, never a reset.
            "discontinuity_sequence": {"$cond": [
                {"$gt": [first, 0]},
                {"$max": [{"$add": [{"$ifNull": ["$discontinuity_sequence", 0]}, 1]}, lost + 1]},
                {"$ifNull": ["$discontinuity_sequence", 0]}]},
            "settings": {"$ifNull": ["$settings", {}]},
            "created_at": {"$ifNull": ["$created_at", "$$NOW"]},
            "started_at": "$$NOW",
            "updated_at": "$$NOW",
            "finished_at": None,
        }}]
        try:
            doc = await self.streams.find_one_and_update(
                {"_id": stream_id, "$or": free}, update, upsert=True,
                return_document=ReturnDocument.AFTER)
        except pymongo.errors.DuplicateKeyError:
            doc = None
        if doc is None:  # the condition failed: another origin owns it (a lost upsert race too)
            current = await self.streams.find_one({"_id": stream_id}) or {}
            raise StreamBusy(stream_id, str(current.get("origin_node", "?")),
                             int(current.get("epoch") or 0))
        return Claim(stream_id, int(doc["epoch"]), int(doc["media_sequence"]),
                     int(doc["discontinuity_sequence"]), doc.get("previous_origin") is not None,
                     int(doc["sequence_reserved"]))

    async def _fenced_update(self, stream_id: str, node_id: str, epoch: int,
                             update: dict[str, Any]) -> None:
        result = await self.streams.update_one(
            {"_id": stream_id, "origin_node": node_id, "epoch": epoch}, update)
        if result.matched_count == 0:
            raise Fenced(f"stream {stream_id}: epoch {epoch} of {node_id} was superseded")

    @_timed_write
    @_fails_fast
    async def advance_media_sequence(self, stream_id: str, node_id: str, epoch: int,
                                     next_sequence: int, extra: dict[str, Any] | None = None) -> int:
        """Record the number of the next segment (called as segments close) and extend the
        reservation; returns the new reservation (first number not to use)."""
        reserved = next_sequence + self.reserve_segments
        await self._fenced_update(stream_id, node_id, epoch, {
            "$max": {"media_sequence": next_sequence, "sequence_reserved": reserved},
            "$set": {"status": BROADCASTING, **(extra or {})},
            "$currentDate": {"updated_at": True}})
        return reserved

    @_timed_write
    @_fails_fast
    async def advance_media_sequences(self, node_id: str,
                                      updates: list[tuple[str, int, int, dict[str, Any]]]) -> set[str]:
        """Many streams' :meth:`advance_media_sequence` in one round trip: ``(stream_id, epoch,
        next_sequence, extra)`` each. Returns the ids that were fenced or whose document is gone."""
        fenced, missing = await self.record_sequences(node_id, updates)
        return fenced | missing

    @_fails_fast
    async def record_sequences(self, node_id: str, updates: list[tuple[str, int, int, dict[str, Any]]]
                               ) -> tuple[set[str], set[str]]:
        """:meth:`advance_media_sequences`, telling apart ``(fenced, missing)``: fenced streams
        belong to a newer epoch; missing ones have no document (the database lost it: see
        :meth:`restore_stream`). Every other stream's reservation is now ``next_sequence +
        reserve_segments``."""
        if not updates:
            return set(), set()
        ops = [UpdateOne({"_id": sid, "origin_node": node_id, "epoch": epoch},
                         {"$max": {"media_sequence": seq, "sequence_reserved": seq + self.reserve_segments},
                          "$set": {"status": BROADCASTING, **extra},
                          "$currentDate": {"updated_at": True}})
               for sid, epoch, seq, extra in updates]
        result = await self.streams.bulk_write(ops, ordered=False)
        if result.matched_count == len(ops):
            return set(), set()
        wanted = {(sid, epoch) for sid, epoch, _, _ in updates}
        cursor = self.streams.find({"_id": {"$in": [sid for sid, _ in wanted]}},
                                   {"epoch": 1, "origin_node": 1})
        found = {d["_id"]: (d.get("origin_node"), d.get("epoch")) for d in await cursor.to_list(None)}
        fenced = {sid for sid, epoch in wanted if sid in found and found[sid] != (node_id, epoch)}
        missing = {sid for sid, _ in wanted if sid not in found}
        return fenced, missing

    @_fails_fast
    async def restore_stream(self, stream_id: str, app: str, node: NodeInfo, epoch: int,
                             next_sequence: int, discontinuity_sequence: int,
                             renditions: list[dict[str, Any]]) -> int:
        """Re-create the document of a stream this origin is live with, after the database lost
        it (restored empty), with the origin's own epoch and numbering: the stream continues as
        it was, no fencing, no renumbering. Raises :class:`Fenced` if another origin created it
        meanwhile. Returns the reservation."""
        reserved = next_sequence + self.reserve_segments
        try:
            await self.streams.update_one(
                {"_id": stream_id, "origin_node": node.node_id, "epoch": epoch},
                {"$set": {"app": app, "status": BROADCASTING, "bus_endpoint": node.bus_endpoint,
                          "snapshot_endpoint": node.snapshot_endpoint, "bus_public_key": node.bus_public_key,
                          "renditions": renditions,
                          "discontinuity_sequence": discontinuity_sequence, "settings": {},
                          "previous_origin": None, "finished_at": None},
                 "$max": {"media_sequence": next_sequence, "sequence_reserved": reserved},
                 "$currentDate": {"updated_at": True, "started_at": True, "created_at": True}},
                upsert=True)
        except pymongo.errors.DuplicateKeyError:
            raise Fenced(f"stream {stream_id}: another origin recreated it first") from None
        return reserved

    @_fails_fast
    @_timed_write
    async def set_stream_status(self, stream_id: str, node_id: str, epoch: int, status: str,
                                next_sequence: int | None = None) -> None:
        if status not in STREAM_STATUSES:
            raise ValueError(f"unknown stream status {status}")
        update: dict[str, Any] = {"$set": {"status": status}, "$currentDate": {"updated_at": True}}
        if status in (FINISHED, TERMINATED):
            update["$currentDate"]["finished_at"] = True
        if next_sequence is not None:
            update["$max"] = {"media_sequence": next_sequence}
            if status in (FINISHED, TERMINATED):
                # Nothing at or above next_sequence was cut: hand the unused reservation back,
                # so the next publish continues from here instead of skipping numbers.
                update["$set"]["sequence_reserved"] = next_sequence
        await self._fenced_update(stream_id, node_id, epoch, update)

    @_fails_fast
    async def get_stream(self, stream_id: str) -> dict[str, Any] | None:
        # Both questions at once: an edge catching up with a takeover over a slow link waits
        # one round trip, not two (the nodes are asked about even for a stream not live: cheap).
        doc, alive = await asyncio.gather(self.streams.find_one({"_id": stream_id}), self.alive_node_ids())
        if doc is None:
            return None
        found = await self._present([doc], alive)
        return found[0] if found else None

    @_fails_fast
    async def get_streams(self, stream_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Several streams in one query (an edge rechecking what it serves), by id."""
        ids = list(stream_ids)
        if not ids:
            return {}
        docs = await self.streams.find({"_id": {"$in": ids}}).to_list(None)
        return {d["_id"]: d for d in await self._present(docs)}

    @_fails_fast
    async def list_streams(self, offset: int = 0, size: int = 1000, app: str | None = None,
                           ) -> list[dict[str, Any]]:
        query = {"app": app} if app else {}
        cursor = self.streams.find(query).sort("_id", 1).skip(max(0, offset)).limit(max(0, size))
        return await self._present(await cursor.to_list(None))

    @_fails_fast
    async def count_streams(self, app: str | None = None) -> int:
        return await self.streams.count_documents({"app": app} if app else {})

    async def _present(self, docs: list[dict[str, Any]], alive: set[str] | None = None,
                       ) -> list[dict[str, Any]]:
        """Validate stream documents and show a dead origin's streams as terminated_unexpectedly
        (``alive``: the alive nodes' ids, if already known)."""
        good = []
        for doc in docs:
            if not isinstance(doc.get("_id"), str) or doc.get("status") not in STREAM_STATUSES \
                    or not isinstance(doc.get("epoch", 0), int):
                metrics.reject("db", "stream_doc", "stream document %r is malformed", doc.get("_id"))
                continue
            good.append(doc)
        if any(d["status"] == BROADCASTING for d in good):
            if alive is None:
                alive = await self.alive_node_ids()
            for doc in good:
                if doc["status"] == BROADCASTING and doc.get("origin_node") not in alive:
                    doc["status"] = TERMINATED
        return good

    @_fails_fast
    async def orphaned_pulls(self, app: str) -> list[dict[str, Any]]:
        """Pulled streams (``settings.streamUrl``) whose origin is dead: broadcasting on a node no
        longer alive, or already marked terminated_unexpectedly. Oldest first. The pulled streams
        are read first: without any (the usual case) the nodes are not asked about at all."""
        cursor = self.streams.find({
            "app": app, "settings.streamUrl": {"$type": "string"},
            "status": {"$in": [BROADCASTING, TERMINATED]},
        }).sort("updated_at", 1).limit(1000)
        pulled = [d for d in await cursor.to_list(None) if isinstance(d.get("_id"), str)]
        if not pulled:
            return []
        alive = await self.alive_node_ids()
        return [d for d in pulled if d.get("origin_node") not in alive]

    @_timed_write
    @_fails_fast
    async def mark_orphans(self) -> int:
        """Persist terminated_unexpectedly for broadcasting streams whose origin is dead. A live
        origin refreshes ``updated_at`` with every segment, so only streams not updated for a
        dead-node bound are candidates; without any, the nodes are not asked about."""
        cutoff = await self.server_time() - dt.timedelta(seconds=self.node_dead_after_s)
        stale = {"status": BROADCASTING, "updated_at": {"$lt": cutoff}}
        if await self.streams.find_one(stale, {"_id": 1}) is None:
            return 0
        alive = sorted(await self.alive_node_ids())
        result = await self.streams.update_many(
            {**stale, "origin_node": {"$nin": alive}},
            {"$set": {"status": TERMINATED}, "$currentDate": {"finished_at": True}})
        return result.modified_count

    # -- REST queries (broadcast API, cluster list hygiene) ----------------------------------
    @_fails_fast
    async def list_nodes_seen(self, offset: int = 0, size: int = 1000, *,
                              within_s: float | None = None) -> list[NodeView]:
        """Like :meth:`list_nodes`, leaving out nodes not seen for more than ``within_s`` seconds
        (server clock; None: every node). Their documents stay: ``mesh cluster nodes --all``."""
        now = await self.server_time()
        query: dict[str, Any] = {}
        if within_s is not None:
            query = {"last_seen": {"$gte": now - dt.timedelta(seconds=within_s)}}
        cursor = self.nodes.find(query).sort("_id", 1).skip(max(0, offset)).limit(max(0, size))
        views = [self._judge(doc, now) for doc in await cursor.to_list(None)]
        return [v for v in views if v is not None]

    @_fails_fast
    async def count_nodes_seen(self, within_s: float | None = None) -> int:
        if within_s is None:
            return await self.count_nodes()
        cutoff = await self.server_time() - dt.timedelta(seconds=within_s)
        return await self.nodes.count_documents({"last_seen": {"$gte": cutoff}})

    @_fails_fast
    async def insert_stream(self, stream_id: str, app: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Record a new stream in status ``created`` (REST create); None if the id is taken."""
        doc = {"_id": stream_id, "app": app, "status": CREATED, "epoch": 0, "media_sequence": 0,
               "discontinuity_sequence": 0, "settings": {}, **fields}
        try:
            await self.streams.insert_one(doc)
        except pymongo.errors.DuplicateKeyError:
            return None
        await self.streams.update_one({"_id": stream_id},
                                      {"$currentDate": {"created_at": True, "updated_at": True}})
        return await self.get_stream(stream_id)

    @_fails_fast
    async def update_stream_fields(self, stream_id: str, app: str, fields: dict[str, Any], *,
                                   unless_live: bool = False) -> bool:
        """Set descriptive fields (name, description, settings.*) of a stream of ``app``; with
        ``unless_live`` only while no live origin broadcasts it. True if a document changed."""
        query: dict[str, Any] = {"_id": stream_id, "app": app}
        if unless_live:
            query["$or"] = [{"status": {"$ne": BROADCASTING}},
                            {"origin_node": {"$nin": sorted(await self.alive_node_ids())}}]
        result = await self.streams.update_one(
            query, {"$set": fields, "$currentDate": {"updated_at": True}})
        return result.matched_count > 0

    @_fails_fast
    async def delete_stream(self, stream_id: str, app: str) -> bool:
        """Remove a stream of ``app`` that no live origin broadcasts (one conditional delete)."""
        alive = sorted(await self.alive_node_ids())
        result = await self.streams.delete_one({"_id": stream_id, "app": app, "$or": [
            {"status": {"$ne": BROADCASTING}}, {"origin_node": {"$nin": alive}}]})
        return result.deleted_count > 0

    @_fails_fast
    async def count_live_streams(self, app: str | None = None) -> int:
        """Streams broadcasting on a live origin."""
        query: dict[str, Any] = {"status": BROADCASTING,
                                 "origin_node": {"$in": sorted(await self.alive_node_ids())}}
        if app:
            query["app"] = app
        return await self.streams.count_documents(query)

    # -- recordings (``vods``) ----------------------------------------------------------------
    @property
    def vods(self) -> Any:
        return self._db["vods"]

    @_fails_fast
    async def save_vod(self, vod_id: str, fields: dict[str, Any]) -> None:
        """Create or update the record of one MP4 recording."""
        await self.vods.update_one({"_id": vod_id}, {"$set": fields,
                                                     "$currentDate": {"updated_at": True}}, upsert=True)

    @_fails_fast
    async def list_vods(self, app: str, offset: int = 0, size: int = 1000) -> list[dict[str, Any]]:
        cursor = self.vods.find({"app": app}).sort("_id", 1).skip(max(0, offset)).limit(max(0, size))
        return [d for d in await cursor.to_list(None) if isinstance(d.get("_id"), str)]

    @_fails_fast
    async def count_vods(self, app: str) -> int:
        return await self.vods.count_documents({"app": app})

    @_fails_fast
    async def get_vod(self, vod_id: str) -> dict[str, Any] | None:
        return await self.vods.find_one({"_id": vod_id})
