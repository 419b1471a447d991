"""One live stream on an origin: codec config, segmenter, bus channel, registry bookkeeping.

Sources (an RTMP publish, a pulled URL) feed a :class:`LiveStream` with codec configs and access
units in the bus's media model; it stamps them with the origin's segment decisions, publishes
them, and notes closed segments in the origin's :class:`~.bookkeeping.SequenceBook`, which
records ``media_sequence`` for all streams in one bulk write (never on the packet path). A fenced
write means another origin took the stream over: this one stops publishing it at once.

Each write also extends the stream's reservation of segment numbers (see :mod:`mesh.registry`);
the segmenter never starts a number beyond it. A stream whose reservation runs out (the registry
unreachable for longer than the reservation lasts) stops instead of risking a number a successor
may be given, and tells its publisher why.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from mesh_codecs.media import (VIDEO, AccessUnit, AudioConfig, VideoConfig, audio_to_dict,
                               video_to_dict)

from .. import metrics
from ..broker.wire import FLAG_SEG_START
from ..ladder import Rung
from ..registry import FINISHED, Claim, Fenced, NodeInfo
from .abr import Renditions
from .segmenter import Segmenter

if TYPE_CHECKING:
    from ..broker.publisher import BusPublisher
    from ..registry import Registry
    from .bookkeeping import SequenceBook

log = logging.getLogger("mesh.ingest")


class LiveStream:
    def __init__(self, *, stream_id: str, app: str, node_id: str, claim: Claim, bus: "BusPublisher",
                 registry: "Registry", book: "SequenceBook", segment_target_s: float, source: str,
                 on_fenced: Callable[["LiveStream"], None] | None = None,
                 ladder: Sequence[Rung] = (), abr_preset: str = "veryfast", abr_threads: int = 1,
                 part_target_s: float = 0.2):
        self.stream_id, self.app, self.node_id = stream_id, app, node_id
        self.claim = claim
        self.epoch = claim.epoch
        self.registry = registry
        self.book = book
        self.source = source  # "rtmp" or the pulled URL
        self.bus = bus
        self.channel = bus.open_channel(stream_id, "src", claim.epoch)
        # After a takeover viewers are waiting: the first segment closes at the first keyframe
        # after one second (still the origin's decision, so every edge cuts it alike).
        self.segmenter = Segmenter(segment_target_s, claim.media_sequence, part_target_s,
                                   limit=claim.reserved or None,
                                   first_target_s=min(1.0, segment_target_s) if claim.takeover else None)
        # A takeover's first segment start on the bus is logged once, with its delay since the claim.
        self._claimed_at = time.monotonic() if claim.takeover else None
        self.video: VideoConfig | None = None
        self.audio: AudioConfig | None = None
        self.on_fenced = on_fenced
        self.fenced = False
        self.recorder: Any = None  # an Mp4Recorder (mesh/ingest/record.py) when the origin records
        self.fence_reason = ""  # what the publisher is told when the stream stops here
        self.finished = False
        self.bytes_in = 0
        self._bytes_counted = 0  # of bytes_in, already in metrics.INGEST_BYTES
        self._bitrate_mark = (time.monotonic(), 0)
        self.bitrate_kbps = 0.0
        self.abr: Renditions | None = None
        if ladder:
            self.abr = Renditions(stream_id, list(ladder), bus, claim.epoch, claim.discontinuity_sequence,
                                  preset=abr_preset, threads=abr_threads, segment_target_s=segment_target_s,
                                  on_change=lambda: self.book.note(self))

    # -- from the source -------------------------------------------------------------------
    def set_video(self, cfg: VideoConfig) -> None:
        if cfg == self.video:
            return
        self.video = cfg
        self.segmenter.video_present()
        self._send_config()

    def set_audio(self, cfg: AudioConfig) -> None:
        if cfg == self.audio:
            return
        self.audio = cfg
        self._send_config()

    def _send_config(self) -> None:
        self.channel.config({
            "video": video_to_dict(self.video) if self.video else None,
            "audio": audio_to_dict(self.audio) if self.audio else None,
            "disc": self.claim.discontinuity_sequence,
            "epoch": self.epoch,
            "part_ticks": self.segmenter.part_target_ticks,  # LL-HLS part target (90 kHz)
        })
        if self.abr is not None:
            self.abr.set_source(self.video, self.audio)

    def push(self, au: AccessUnit) -> None:
        """Stamp and publish one access unit (a pull source's callback)."""
        self.push_media(au.track, au.pts, au.dts, au.key, au.data)

    def push_media(self, track: int, pts: int, dts: int, key: bool, data: bytes | memoryview) -> None:
        """:meth:`push` on plain values (the RTMP ingest's per-packet path: no AccessUnit)."""
        if self.fenced or self.finished:
            return
        if (self.video if track == VIDEO else self.audio) is None:
            return  # media before its codec config cannot be decoded by anyone
        segmenter = self.segmenter
        pts, dts, seg, flags, closed = segmenter.stamp(track, pts, dts, key)
        if segmenter.starved:
            self.fence(f"stream {self.stream_id} stopped on this origin: it could not reserve segment "
                       f"numbers in the cluster registry (unreachable); publish again when it is back")
            return
        if seg is None:
            return
        self.bytes_in += len(data)
        extra = {"t": int(time.time() * 1000)} if flags & FLAG_SEG_START else None
        self.channel.media(track, pts, dts, flags, seg, data, extra)
        if self._claimed_at is not None and extra is not None:
            log.info("stream %s: first segment %d on the bus, %.0f ms after the takeover claim",
                     self.stream_id, seg, (time.monotonic() - self._claimed_at) * 1000)
            self._claimed_at = None
        if self.abr is not None:
            self.abr.push(track, pts, dts, flags, seg, data, extra)
        if self.recorder is not None:
            self.recorder.push(track, pts, dts, flags, seg, data)
        if closed is not None:
            self._segment_closed()

    # -- registry bookkeeping --------------------------------------------------------------
    def _segment_closed(self) -> None:
        metrics.INGEST_BYTES.labels(self.stream_id).inc(self.bytes_in - self._bytes_counted)
        self._bytes_counted = self.bytes_in
        now = time.monotonic()
        then, bytes_then = self._bitrate_mark
        if now - then >= 1.0:
            self.bitrate_kbps = (self.bytes_in - bytes_then) * 8 / 1000 / (now - then)
            self._bitrate_mark = (now, self.bytes_in)
        self.book.note(self)

    def _drop_metrics(self) -> None:
        """The stream is gone from this origin: so is its series (bounded label set)."""
        try:
            metrics.INGEST_BYTES.remove(self.stream_id)
        except KeyError:
            pass

    def renditions(self) -> list[dict[str, Any]]:
        v, a = self.video, self.audio
        codecs = ",".join(c.codec_string for c in (v, a) if c is not None)
        src = {"name": "src", "width": v.width if v else None, "height": v.height if v else None,
               "bitrate_kbps": round(self.bitrate_kbps), "codecs": codecs}
        if self.abr is None:
            return [src]
        src["frame_rate"] = self.abr.frame_rate()
        return [src, *self.abr.documents()]

    def doc_fields(self) -> dict[str, Any]:
        """What the stream document records besides numbering (written by the book)."""
        fields: dict[str, Any] = {"renditions": self.renditions()}
        if self.abr is not None:
            fields["dropped_renditions"] = [{"name": n, "why": why} for n, why in self.abr.dropped.items()]
        return fields

    def reserve(self, until: int) -> None:
        """The registry recorded our reservation: numbers below ``until`` are ours to use."""
        limit = self.segmenter.limit
        if limit is not None and until > limit:
            self.segmenter.limit = until

    async def restore(self) -> None:
        """Our document vanished (a database restored empty): re-create it as we are."""
        curve = getattr(self.bus, "curve", None)
        me = NodeInfo(self.node_id, "origin", "", bus_endpoint=self.bus.endpoint,
                      snapshot_endpoint=self.bus.snapshot_endpoint,
                      bus_public_key=curve.public.decode() if curve is not None else "")
        next_seq = self.segmenter.next_seq
        self.reserve(await self.registry.restore_stream(
            self.stream_id, self.app, me, self.epoch, next_seq, self.claim.discontinuity_sequence,
            self.renditions()))
        log.warning("stream %s was missing from the registry; re-created it (epoch %d, next segment %d)",
                    self.stream_id, self.epoch, next_seq)

    def fence(self, reason: str = "") -> None:
        """Stop publishing this stream here: another origin claimed it (a newer epoch), or this
        origin cannot keep its claim (``reason`` says why, for the log and the publisher)."""
        if self.fenced:
            return
        self.fenced = True
        self._drop_metrics()
        self.fence_reason = reason or (f"stream {self.stream_id} was taken over by another origin; "
                                       f"this publisher is no longer the source")
        if reason:
            log.warning("%s", reason)
        else:
            log.warning("stream %s was taken over by another origin (epoch %d superseded); "
                        "stopping it here", self.stream_id, self.epoch)
        self.bus.close_channel(self.channel)
        if self.abr is not None:
            self.abr.stop()
        if self.on_fenced is not None:
            self.on_fenced(self)

    async def finish(self, status: str = FINISHED) -> None:
        """The source ended: tell subscribers, record the final sequence and the status."""
        if self.finished:
            return
        self.finished = True
        if self.fenced:
            return
        self._drop_metrics()
        self.channel.eos("finished" if status == FINISHED else status)
        self.bus.close_channel(self.channel)
        if self.abr is not None:  # recorded rungs first encode what is queued
            self.abr.finish("finished" if status == FINISHED else status)
        self.book.forget(self)
        try:
            await self.registry.set_stream_status(self.stream_id, self.node_id, self.epoch, status,
                                                  next_sequence=self.segmenter.next_seq)
        except Fenced:
            log.info("stream %s ended after another origin took it over", self.stream_id)
        except Exception as exc:
            log.warning("could not mark stream %s %s in the registry: %s", self.stream_id, status, exc)
