"""The origin role: RTMP ingest and pull sources, each stream claimed in the registry and
published on the bus (media + snapshots) with origin-decided segment boundaries.

Wiring and the claim: the bus publisher, the RTMP server (this part is its handler), the
pull-source manager (handed :meth:`OriginPart.begin_stream`/:meth:`OriginPart.end_stream`), and
the sequence book that records segment numbers in the registry.

Two fault rules live here (README "Failures"):

- **Fast takeover.** A publish of a stream the registry still gives to another origin is not
  refused at once: that owner is probed directly (TCP connects to its HTTP and bus ports, about
  half a second each). If both are refused or time out it is dead, and the stream is claimed with
  the fencing epoch under the condition that it is still exactly that owner's at that epoch
  (:meth:`Registry.claim_stream` ``dead_owner``). A live owner accepts connections, so its stream
  is never taken; a second publisher of a live stream is still refused.
- **Zombie watch.** While this origin cannot write to the registry, it asks its peers (the nodes
  it last saw alive, which may still reach the database) who owns each of its streams; a stream
  another origin now owns (a higher epoch) is stopped here and its publisher told why.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
import weakref
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import zmq.asyncio

from .. import metrics, tokens
from ..broker.keys import node_keys
from ..broker.publisher import BusPublisher
from ..config import NodeConfig
from ..ingest.adoption import Adopter
from ..ingest.bookkeeping import SequenceBook
from ..ingest.flv_source import FlvPublish
from ..ingest.live import LiveStream
from ..ingest.record import Mp4Recorder
from ..ingest.record import warm_up as record_warm_up
from ..errors import NotFound
from ..ingest.rtmp_server import (PublishAborted, PublishRejected, RtmpConnectionInfo, RtmpServer,
                                  server_limits)
from ..ladder import parse_ladder
from ..timers import sleep_to_grid
from ..names import NAME_RULE, is_name
from ..registry import FINISHED, Claim, NodeInfo, Registry, RegistryError, StreamBusy

PROBE_TIMEOUT_S = 0.5  # per connect when probing a registered owner
PEER_TIMEOUT_S = 1.0  # per question to a peer while the registry is unreachable
PEERS_ASKED = 3

log = logging.getLogger("mesh.origin")

VOD_NOTE_BEATS = 3  # heartbeats between notes of running recordings in the registry
STOP_DRAIN_S = 5.0  # at shutdown, how long recorded rungs may take to encode their tails


class OriginPart:
    name = "origin"

    def __init__(self, cfg: NodeConfig, registry: Registry, ctx: zmq.asyncio.Context, info: NodeInfo):
        self.cfg = cfg
        self.registry = registry
        self.info = info
        snapshot_port = cfg.snapshot_port or (cfg.bus_port + 1 if cfg.bus_port else 0)
        keys = node_keys(cfg.bus_security, cfg.data_dir, info.node_id)
        info.bus_public_key = keys.public.decode() if keys else ""
        self.bus = BusPublisher(
            ctx, bind=cfg.bind, port=cfg.bus_port, snapshot_port=snapshot_port,
            advertise_host=cfg.host, hwm=cfg.bus_hwm, window_segments=cfg.snapshot_segments,
            window_bytes=cfg.snapshot_max_bytes, heartbeat_interval_s=cfg.stream_heartbeat_interval_s,
            curve=keys, allowed_keys=registry.alive_bus_keys)
        self.rtmp = RtmpServer(self, host=cfg.bind, port=cfg.rtmp_port, media_batch=self.bus,
                               **server_limits(cfg))
        self.book = SequenceBook(registry, info.node_id)
        self.live: dict[str, LiveStream] = {}
        self._publishes: dict[str, _StoppablePublish] = {}  # RTMP publishers by stream id
        self._vod_beats = 0
        self._vod_task: asyncio.Task[None] | None = None
        self._rung_vod_tasks: set[asyncio.Task[None]] = set()  # rung recordings' registry notes
        self._recorded_ladders: weakref.WeakSet[Any] = weakref.WeakSet()  # ladders whose rungs are recorded
        self._claiming: set[str] = set()
        self._peers: list[str] = []  # HTTP URLs of the other nodes last seen alive
        self._watch: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._gauge = metrics.STREAMS.labels("origin")
        self._secrets = tokens.secrets_of(cfg.cluster_secret, cfg.cluster_secret_previous)
        self.ladder = parse_ladder(cfg.abr)
        from ..ingest.pulls import PullManager  # PyAV is only imported when a node has an origin
        from ..ingest.source_policy import SourcePolicy

        self.pulls = PullManager(registry, self.begin_stream, self.end_stream,
                                 file_root=cfg.pull_file_root, policy=SourcePolicy(cfg.pull_allowed_hosts))
        self.adopter = Adopter(registry, info.node_id, cfg.app, self.pulls.create,
                               lambda sid: sid in self.live or sid in self._claiming)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self.cfg.record_mp4:
            record_warm_up()  # on the recorder's thread: the loop goes on
        self.book.start()
        await self.bus.start()
        self.info.bus_endpoint = self.bus.endpoint
        self.info.snapshot_endpoint = self.bus.snapshot_endpoint
        await self.rtmp.start()
        self.info.rtmp_url = f"rtmp://{self.cfg.host}:{self.rtmp.port}/{self.cfg.app}"
        self.adopter.start()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_S))
        self._watch = asyncio.create_task(self._watch_registry(), name="origin-registry-watch")

    async def stop(self) -> None:
        await self.adopter.stop()
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        await self.pulls.stop()  # pulled streams end like unpublished ones
        await self.rtmp.stop()  # every publisher's on_unpublish has run: eos sent, status written
        for live in list(self.live.values()):
            await live.finish()
            await self._end_recording(live)
        for abr in list(self._recorded_ladders):  # their rungs' tails, briefly
            try:
                await asyncio.wait_for(abr.wait_drained(), STOP_DRAIN_S)
            except asyncio.TimeoutError:
                abr.stop("finished")
        if self._rung_vod_tasks:
            await asyncio.gather(*self._rung_vod_tasks, return_exceptions=True)
        self._forget_all()
        await self.book.stop()
        await self.bus.stop()

    def load(self) -> dict[str, Any]:
        for live in self.live.values():
            if live.abr is not None:
                metrics.TRANSCODER_LAG.labels(live.stream_id).set(live.abr.lag_s)
        self._note_recordings()
        return {"streams": len(self.live),
                "ingest_kbps": round(sum(s.bitrate_kbps for s in self.live.values()))}

    def listening(self) -> list[tuple[str, str]]:
        return [("rtmp", f"{self.info.rtmp_url}/{{stream_id}}"),
                ("bus", f"{self.bus.endpoint} (snapshots {self.bus.snapshot_endpoint})")]

    # -- starting and ending streams (RTMP and pull sources) -------------------------------
    async def begin_stream(self, stream_id: str, app: str, source: str) -> LiveStream:
        """Claim ``stream_id`` and open its bus channel; raises PublishRejected with the reason."""
        cfg, node_id = self.cfg, self.info.node_id
        asked = time.monotonic()
        if app != cfg.app:
            raise PublishRejected("NetStream.Publish.BadName",
                                  f"unknown application {app!r}; this origin serves {cfg.app!r}")
        if not is_name(stream_id):
            raise PublishRejected("NetStream.Publish.BadName", f"stream ids use {NAME_RULE}")
        if stream_id in self.live or stream_id in self._claiming:
            raise PublishRejected("NetStream.Publish.BadName",
                                  f"stream {stream_id} is already being published on {node_id}; "
                                  f"stop that publisher or use another stream id")
        if len(self.live) >= cfg.max_publishers:
            raise PublishRejected("NetStream.Publish.Denied",
                                  f"this origin is at its limit of {cfg.max_publishers} streams")
        self._claiming.add(stream_id)
        try:
            try:
                claim = await self.registry.claim_stream(stream_id, app, self.info)
            except StreamBusy as busy:
                claim = await self._take_over_if_dead(busy)
        except StreamBusy as busy:
            raise PublishRejected("NetStream.Publish.BadName", str(busy)) from None
        except (RegistryError, OSError, Exception) as exc:  # the DB is the authority; without it, refuse
            log.warning("cannot claim %s: %s", stream_id, exc)
            raise PublishRejected("NetStream.Publish.Failed",
                                  "the cluster registry is unavailable; try again shortly") from None
        finally:
            self._claiming.discard(stream_id)
        live = LiveStream(stream_id=stream_id, app=app, node_id=node_id, claim=claim, bus=self.bus,
                          registry=self.registry, book=self.book, segment_target_s=cfg.segment_target_s,
                          source=source, on_fenced=self._fenced, ladder=self.ladder,
                          abr_preset=cfg.abr_preset, abr_threads=cfg.abr_encoder_threads,
                          part_target_s=cfg.ll_part_target_s)
        self.live[stream_id] = live
        self._gauge.set(len(self.live))
        await self._maybe_record(live, claim.epoch)
        log.info("stream %s/%s live on %s (epoch %d, from segment %d%s; claimed in %.0f ms)", app, stream_id,
                 node_id, claim.epoch, claim.media_sequence, ", taking over" if claim.takeover else "",
                 (time.monotonic() - asked) * 1000)
        return live

    async def _take_over_if_dead(self, busy: StreamBusy) -> Claim:
        """The registry still names another owner: claim the stream if that owner is dead."""
        started = time.monotonic()
        view = await self.registry.get_node(busy.origin)
        if view is None or view.node_id == self.info.node_id or not await owner_is_dead(view.doc):
            raise busy
        probed = time.monotonic()
        claim = await self.registry.claim_stream(busy.stream_id, self.cfg.app, self.info,
                                                 dead_owner=(busy.origin, busy.epoch))
        log.warning("stream %s: its origin %s refuses connections (dead); taking over at epoch %d "
                    "(owner probed in %.0f ms, claim written %.0f ms later)", busy.stream_id, busy.origin,
                    claim.epoch, (probed - started) * 1000, (time.monotonic() - probed) * 1000)
        return claim

    async def _watch_registry(self) -> None:
        """Keep a list of peers while the registry answers; ask them about our streams when not."""
        refreshed = 0.0
        while True:
            await sleep_to_grid(1.0)  # with the node's other timers
            now = time.monotonic()
            since = self.book.failing_since
            try:
                if since is None:
                    if now - refreshed >= 5.0:
                        refreshed = now
                        views = await self.registry.list_nodes()
                        self._peers = [str(v.doc.get("http_url")) for v in views
                                       if v.alive and v.node_id != self.info.node_id
                                       and v.doc.get("http_url")]
                elif now - since >= self.cfg.heartbeat_interval_s * 2:
                    for live in list(self.live.values()):
                        await self._ask_peers(live)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("registry watch: %s", exc)

    async def _ask_peers(self, live: LiveStream) -> None:
        assert self._http is not None
        for peer in self._peers[:PEERS_ASKED]:
            url = f"{peer}/{live.app}/rest/v2/broadcasts/{live.stream_id}"
            try:
                async with self._http.get(url) as resp:
                    if resp.status != 200:
                        continue  # 503: the registry is away for that peer too
                    doc = await resp.json()
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                continue
            epoch, owner = doc.get("epoch"), doc.get("originNode")
            if isinstance(epoch, int) and epoch > live.epoch:
                live.fence(f"stream {live.stream_id} was taken over by {owner} (epoch {epoch}) while "
                           f"this origin was cut off from the cluster registry; stopping it here")
                return
            return  # the peer sees the registry and we still own it

    async def end_stream(self, live: LiveStream, reason: str) -> None:
        self._forget(live)
        await live.finish(FINISHED)
        log.info("stream %s/%s ended (%s)", live.app, live.stream_id, reason)
        await self._end_recording(live)

    # -- recording -------------------------------------------------------------------------
    async def _maybe_record(self, live: LiveStream, epoch: int) -> None:
        """Record the stream when it or the app asks for it (``mp4_enabled`` 1 / -1 on the stream,
        else ``record_mp4``), and its ladder's rungs too when it or the app asks for that
        (``mp4_rungs`` 1 / -1, else ``record_rungs``). A registry or disk problem here never
        refuses the publish."""
        try:
            doc = await self.registry.get_stream(live.stream_id) or {}
            wanted = doc.get("mp4_enabled") or 0
            if wanted < 0 or (wanted == 0 and not self.cfg.record_mp4):
                return
            rungs = doc.get("mp4_rungs") or 0
            if live.abr is not None and (rungs > 0 or (rungs == 0 and self.cfg.record_rungs)):
                self._record_rungs(live, epoch)
            recorder = Mp4Recorder(self.cfg.resolved_record_dir(), live.stream_id, epoch,
                                   configs=lambda: (live.video, live.audio))
            live.recorder = recorder
            await self.registry.save_vod(recorder.info.vod_id, self._vod_fields(live, recorder, "recording"))
        except Exception as exc:
            log.warning("cannot record %s: %s; the live stream goes on", live.stream_id, exc)

    def _record_rungs(self, live: LiveStream, epoch: int) -> None:
        """Give the stream's ladder a recorder factory: one file per rung, noted in the registry
        when it starts and when it ends (a dropped rung, a restarted ladder, the stream's end)."""
        abr = live.abr
        assert abr is not None
        starts: dict[int, asyncio.Task[None]] = {}

        def spawn(coro: Any) -> asyncio.Task[None]:
            task = asyncio.get_running_loop().create_task(coro)
            self._rung_vod_tasks.add(task)
            task.add_done_callback(self._rung_vod_tasks.discard)
            return task

        async def save(recorder: Mp4Recorder, status: str) -> None:
            try:
                await self.registry.save_vod(recorder.info.vod_id, self._vod_fields(live, recorder, status))
            except Exception as exc:
                log.warning("could not note recording %s (%s): %s", recorder.info.vod_id, status, exc)

        async def finish(recorder: Mp4Recorder, started: asyncio.Task[None] | None) -> None:
            if started is not None:
                await asyncio.gather(started, return_exceptions=True)  # "finished" is written last
            await asyncio.to_thread(recorder.wait)
            await save(recorder, "finished")

        def record(rung: str, cfg: Any) -> Mp4Recorder:
            recorder = Mp4Recorder(self.cfg.resolved_record_dir(), live.stream_id, epoch,
                                   configs=lambda: (cfg, abr.audio), rendition=rung)
            starts[id(recorder)] = spawn(save(recorder, "recording"))
            return recorder

        def ended(recorder: Mp4Recorder) -> None:
            spawn(finish(recorder, starts.pop(id(recorder), None)))

        abr.record, abr.on_record_end = record, ended
        self._recorded_ladders.add(abr)

    def _vod_fields(self, live: LiveStream, recorder: Mp4Recorder, status: str) -> dict[str, Any]:
        info = recorder.info
        return {"app": live.app, "stream_id": live.stream_id, "origin_node": self.info.node_id,
                "rendition": info.rendition,
                "file": info.path.name, "size": info.size, "duration_ms": info.duration_ms,
                "started_ms": int(info.started * 1000), "status": "failed" if info.failed else status,
                "error": info.failed or None}

    def _note_recordings(self) -> None:
        """Every VOD_NOTE_BEATS heartbeats, record how far each running recording got, so the
        list shows a killed origin's recording up to about its last note."""
        self._vod_beats += 1
        if self._vod_beats % VOD_NOTE_BEATS or (self._vod_task is not None and not self._vod_task.done()):
            return
        running = [(live, rec) for live in self.live.values()
                   for rec in (live.recorder, *(live.abr.recorders.values() if live.abr else ()))
                   if isinstance(rec, Mp4Recorder) and not rec.closed]
        if running:
            self._vod_task = asyncio.get_running_loop().create_task(self._save_vods(running))

    async def _save_vods(self, running: list[tuple[LiveStream, Mp4Recorder]]) -> None:
        for live, recorder in running:
            if recorder.closed:  # ended meanwhile (a dropped rung): its end writes "finished"
                continue
            try:
                await self.registry.save_vod(recorder.info.vod_id, self._vod_fields(live, recorder, "recording"))
            except Exception as exc:
                log.debug("could not note recording %s: %s", recorder.info.vod_id, exc)
                return

    async def _end_recording(self, live: LiveStream) -> None:
        recorder = live.recorder
        if not isinstance(recorder, Mp4Recorder) or recorder.closed:
            return
        recorder.close()
        await asyncio.to_thread(recorder.wait)
        try:
            await self.registry.save_vod(recorder.info.vod_id, self._vod_fields(live, recorder, "finished"))
        except Exception as exc:
            log.warning("could not record the end of recording %s: %s", recorder.info.vod_id, exc)

    async def stop_stream(self, stream_id: str) -> str:
        """Stop a stream live here (REST ``stop``): a pull source stops; an RTMP publisher is
        disconnected (its next media ends the publish with an error status). The stream is
        finished at once. Returns ``pull`` or ``rtmp``; raises NotFound when it is not live here."""
        live = self.live.get(stream_id)
        if live is None:
            raise NotFound(f"stream {stream_id} is not live on {self.info.node_id}")
        if stream_id in self.pulls.sources:
            self.pulls.cancel(stream_id)
            kind = "pull"
        else:
            publish = self._publishes.get(stream_id)
            if publish is not None and publish.live is live:
                publish.stop_reason = f"stream {stream_id} was stopped over the REST API"
            kind = "rtmp"
        await self.end_stream(live, "stopped over REST")
        return kind

    def _fenced(self, live: LiveStream) -> None:
        self._forget(live)
        if isinstance(live.recorder, Mp4Recorder):
            live.recorder.close()
        self.pulls.cancel(live.stream_id)  # an RTMP publisher is dropped by its sink

    def _forget(self, live: LiveStream) -> None:
        publish = self._publishes.get(live.stream_id)
        if publish is not None and publish.live is live:
            del self._publishes[live.stream_id]
        if self.live.get(live.stream_id) is live:
            del self.live[live.stream_id]
            self._gauge.set(len(self.live))
            if live.abr is not None:
                try:
                    metrics.TRANSCODER_LAG.remove(live.stream_id)
                except KeyError:
                    pass

    def _forget_all(self) -> None:
        self.live.clear()
        self._publishes.clear()
        self._gauge.set(0)

    # -- RtmpHandler -----------------------------------------------------------------------
    async def on_publish(self, conn: RtmpConnectionInfo, app: str, stream_name: str,
                         query: dict[str, str]) -> FlvPublish:
        cfg = self.cfg
        if cfg.require_publish_token:
            try:
                tokens.verify_stream_token(query.get("token", ""), self._secrets, stream_name,
                                           tokens.PUBLISH, now=time.time())
            except tokens.TokenError as exc:
                metrics.reject("rtmp", f"token_{exc.reason}")
                raise PublishRejected("NetStream.Publish.Denied", str(exc)) from None
        elif cfg.publish_token and not hmac.compare_digest(query.get("token", "").encode(),
                                                           cfg.publish_token.encode()):
            raise PublishRejected("NetStream.Publish.Denied",
                                  "a valid ?token= is required to publish on this origin")
        live = await self.begin_stream(stream_name, app, "rtmp")
        publish = _StoppablePublish(live, self.end_stream)
        self._publishes[stream_name] = publish
        return publish


class _StoppablePublish(FlvPublish):
    """An RTMP publish the origin can end (REST ``stop``): once ``stop_reason`` is set, the next
    media the publisher sends ends the publish with an error status and closes the connection."""

    stop_reason = ""

    def on_media(self, batch: list[tuple[int, int, bytes]]) -> None:
        if self.stop_reason:
            raise PublishAborted("stopped", self.stop_reason)
        super().on_media(batch)

    def on_video(self, timestamp_ms: int, payload: bytes) -> None:
        if self.stop_reason:
            raise PublishAborted("stopped", self.stop_reason)
        super().on_video(timestamp_ms, payload)


async def _refuses(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError):
        return True
    writer.close()
    return False


async def owner_is_dead(doc: dict[str, Any]) -> bool:
    """True when the node ``doc`` describes refuses (or never answers) TCP connections on both its
    HTTP and its bus port. A process that is alive, even stalled, has its ports accepting."""
    ends = []
    for key in ("http_url", "bus_endpoint"):
        parts = urlsplit(str(doc.get(key) or ""))
        if parts.hostname and parts.port:
            ends.append((parts.hostname, parts.port))
    if not ends:
        return False  # nothing to probe: wait for the registry to age it out
    results = await asyncio.gather(*(_refuses(h, p) for h, p in ends))
    return all(results)
