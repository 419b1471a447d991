"""The origin role: RTMP ingest and pull sources, each stream claimed in the registry and
published on the bus (media + snapshots) with origin-decided segment boundaries.

Wiring and the claim: the bus publisher, the RTMP server (this part is its handler), the
pull-source manager (handed :meth:`OriginPart.begin_stream`/:meth:`OriginPart.end_stream`), and
the sequence book that records segment numbers in the registry.
"""
from __future__ import annotations

import hmac
import logging
import time
from typing import Any

import zmq.asyncio

from .. import metrics, tokens
from ..broker.publisher import BusPublisher
from ..config import NodeConfig
from ..ingest.bookkeeping import SequenceBook
from ..ingest.flv_source import FlvPublish
from ..ingest.live import LiveStream
from ..ingest.rtmp_server import PublishRejected, RtmpConnectionInfo, RtmpServer, server_limits
from ..ladder import parse_ladder
from ..names import NAME_RULE, is_name
from ..registry import FINISHED, NodeInfo, Registry, RegistryError, StreamBusy

log = logging.getLogger("mesh.origin")


class OriginPart:
    name = "origin"

    def __init__(self, cfg: NodeConfig, registry: Registry, ctx: zmq.asyncio.Context, info: NodeInfo):
        self.cfg = cfg
        self.registry = registry
        self.info = info
        snapshot_port = cfg.snapshot_port or (cfg.bus_port + 1 if cfg.bus_port else 0)
        self.bus = BusPublisher(
            ctx, bind=cfg.bind, port=cfg.bus_port, snapshot_port=snapshot_port,
            advertise_host=cfg.host, hwm=cfg.bus_hwm, window_segments=cfg.snapshot_segments,
            window_bytes=cfg.snapshot_max_bytes, heartbeat_interval_s=cfg.stream_heartbeat_interval_s)
        self.rtmp = RtmpServer(self, host=cfg.bind, port=cfg.rtmp_port, **server_limits(cfg))
        self.book = SequenceBook(registry, info.node_id)
        self.live: dict[str, LiveStream] = {}
        self._claiming: set[str] = set()
        self._gauge = metrics.STREAMS.labels("origin")
        self._secrets = tokens.secrets_of(cfg.cluster_secret, cfg.cluster_secret_previous)
        self.ladder = parse_ladder(cfg.abr)
        from ..ingest.pulls import PullManager  # PyAV is only imported when a node has an origin

        self.pulls = PullManager(registry, self.begin_stream, self.end_stream,
                                 file_root=cfg.pull_file_root)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.book.start()
        await self.bus.start()
        self.info.bus_endpoint = self.bus.endpoint
        self.info.snapshot_endpoint = self.bus.snapshot_endpoint
        await self.rtmp.start()
        self.info.rtmp_url = f"rtmp://{self.cfg.host}:{self.rtmp.port}/{self.cfg.app}"

    async def stop(self) -> None:
        await self.pulls.stop()  # pulled streams end like unpublished ones
        await self.rtmp.stop()  # every publisher's on_unpublish has run: eos sent, status written
        for live in list(self.live.values()):
            await live.finish()
        self._forget_all()
        await self.book.stop()
        await self.bus.stop()

    def load(self) -> dict[str, Any]:
        for live in self.live.values():
            if live.abr is not None:
                metrics.TRANSCODER_LAG.labels(live.stream_id).set(live.abr.lag_s)
        return {"streams": len(self.live),
                "ingest_kbps": round(sum(s.bitrate_kbps for s in self.live.values()))}

    def listening(self) -> list[tuple[str, str]]:
        return [("rtmp", f"{self.info.rtmp_url}/{{stream_id}}"),
                ("bus", f"{self.bus.endpoint} (snapshots {self.bus.snapshot_endpoint})")]

    # -- starting and ending streams (RTMP and pull sources) -------------------------------
    async def begin_stream(self, stream_id: str, app: str, source: str) -> LiveStream:
        """Claim ``stream_id`` and open its bus channel; raises PublishRejected with the reason."""
        cfg, node_id = self.cfg, self.info.node_id
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
            claim = await self.registry.claim_stream(stream_id, app, self.info)
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
        log.info("stream %s/%s live on %s (epoch %d, from segment %d%s)", app, stream_id, node_id,
                 claim.epoch, claim.media_sequence, ", taking over" if claim.takeover else "")
        return live

    async def end_stream(self, live: LiveStream, reason: str) -> None:
        self._forget(live)
        await live.finish(FINISHED)
        log.info("stream %s/%s ended (%s)", live.app, live.stream_id, reason)

    def _fenced(self, live: LiveStream) -> None:
        self._forget(live)
        self.pulls.cancel(live.stream_id)  # an RTMP publisher is dropped by its sink

    def _forget(self, live: LiveStream) -> None:
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
        return FlvPublish(live, self.end_stream)
