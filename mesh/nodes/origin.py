"""The origin role: RTMP ingest and pull sources, each stream claimed in the registry and
published on the bus (media + snapshots) with origin-decided segment boundaries."""
from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Any

from ..broker.keys import node_keys
from ..broker.publisher import BusPublisher
from ..broker.wire import NAME_RE
from ..ingest.bookkeeping import SequenceBook
from ..ingest.flv_source import FlvPublish
from ..ingest.live import LiveStream
from ..ingest.rtmp_server import PublishRejected, RtmpConnectionInfo, RtmpServer
from ..registry import FINISHED, RegistryError, StreamBusy

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
        keys = node_keys(cfg.bus_security, cfg.data_dir, node.node_id)
        node.info.bus_public_key = keys.public.decode() if keys else ""
        assert node.registry is not None
        self.bus = BusPublisher(
            node.zmq, bind=cfg.bind, port=cfg.bus_port, snapshot_port=snapshot_port,
            advertise_host=cfg.host, hwm=cfg.bus_hwm, window_segments=cfg.snapshot_segments,
            window_bytes=cfg.snapshot_max_bytes, heartbeat_interval_s=cfg.stream_heartbeat_interval_s,
            curve=keys, allowed_keys=node.registry.alive_bus_keys)
        self.rtmp = RtmpServer(self, host=cfg.bind, port=cfg.rtmp_port,
                               max_connections=cfg.max_publishers * 2,
                               max_message_size=cfg.rtmp_max_message_bytes,
                               media_read_max_interval_s=cfg.rtmp_read_max_interval_s)
        assert node.registry is not None
        self.book = SequenceBook(node.registry, node.node_id)
        self.live: dict[str, LiveStream] = {}
        self._claiming: set[str] = set()
        from .pulls import PullManager  # PyAV is only imported when a node has an origin

        self.pulls = PullManager(self)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.book.start()
        await self.bus.start()
        self.node.info.bus_endpoint = self.bus.endpoint
        self.node.info.snapshot_endpoint = self.bus.snapshot_endpoint
        await self.rtmp.start()
        self.node.info.rtmp_url = f"rtmp://{self.node.cfg.host}:{self.rtmp.port}/{self.node.cfg.app}"

    async def stop(self) -> None:
        await self.pulls.stop()  # pulled streams end like unpublished ones
        await self.rtmp.stop()  # every publisher's on_unpublish has run: eos sent, status written
        for live in list(self.live.values()):
            await live.finish()
        self.live.clear()
        await self.book.stop()
        await self.bus.stop()

    def load(self) -> dict[str, Any]:
        return {"streams": len(self.live),
                "ingest_kbps": round(sum(s.bitrate_kbps for s in self.live.values()))}

    def listening(self) -> list[tuple[str, str]]:
        return [("rtmp", f"{self.node.info.rtmp_url}/{{stream_id}}"),
                ("bus", f"{self.bus.endpoint} (snapshots {self.bus.snapshot_endpoint})")]

    # -- starting and ending streams (RTMP and pull sources) -------------------------------
    async def begin_stream(self, stream_id: str, app: str, source: str) -> LiveStream:
        """Claim ``stream_id`` and open its bus channel; raises PublishRejected with the reason."""
        node, cfg = self.node, self.node.cfg
        if app != cfg.app:
            raise PublishRejected("NetStream.Publish.BadName",
                                  f"unknown application {app!r}; this origin serves {cfg.app!r}")
        if not NAME_RE.match(stream_id):
            raise PublishRejected("NetStream.Publish.BadName",
                                  "stream ids use 1-128 characters from A-Z a-z 0-9 _ -")
        if stream_id in self.live or stream_id in self._claiming:
            raise PublishRejected("NetStream.Publish.BadName",
                                  f"stream {stream_id} is already being published on {node.node_id}; "
                                  f"stop that publisher or use another stream id")
        if len(self.live) >= cfg.max_publishers:
            raise PublishRejected("NetStream.Publish.Denied",
                                  f"this origin is at its limit of {cfg.max_publishers} streams")
        assert node.registry is not None
        self._claiming.add(stream_id)
        try:
            claim = await node.registry.claim_stream(stream_id, app, node.info)
        except StreamBusy as busy:
            raise PublishRejected("NetStream.Publish.BadName", str(busy)) from None
        except (RegistryError, OSError, Exception) as exc:  # the DB is the authority; without it, refuse
            log.warning("cannot claim %s: %s", stream_id, exc)
            raise PublishRejected("NetStream.Publish.Failed",
                                  "the cluster registry is unavailable; try again shortly") from None
        finally:
            self._claiming.discard(stream_id)
        live = LiveStream(stream_id=stream_id, app=app, node_id=node.node_id, claim=claim, bus=self.bus,
                          registry=node.registry, book=self.book, segment_target_s=cfg.segment_target_s,
                          source=source,
                          on_fenced=self._fenced)
        self.live[stream_id] = live
        log.info("stream %s/%s live on %s (epoch %d, from segment %d%s)", app, stream_id, node.node_id,
                 claim.epoch, claim.media_sequence, ", taking over" if claim.takeover else "")
        return live

    async def end_stream(self, live: LiveStream, reason: str) -> None:
        if self.live.get(live.stream_id) is live:
            del self.live[live.stream_id]
        await live.finish(FINISHED)
        log.info("stream %s/%s ended (%s)", live.app, live.stream_id, reason)

    def _fenced(self, live: LiveStream) -> None:
        if self.live.get(live.stream_id) is live:
            del self.live[live.stream_id]
        self.pulls.cancel(live.stream_id)  # an RTMP publisher is dropped by its sink
    # -- RtmpHandler -----------------------------------------------------------------------
    async def on_publish(self, conn: RtmpConnectionInfo, app: str, stream_name: str,
                         query: dict[str, str]) -> FlvPublish:
        token = self.node.cfg.publish_token
        if token and not hmac.compare_digest(query.get("token", ""), token):
            raise PublishRejected("NetStream.Publish.Denied",
                                  "a valid ?token= is required to publish on this origin")
        live = await self.begin_stream(stream_name, app, "rtmp")
        return FlvPublish(live, self.end_stream)
