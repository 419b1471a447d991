"""RtmpServer over real sockets: the Debian ffmpeg as an independent publisher, plus raw hostile clients.

Every wait is on a signal (a process exit, an asyncio.Event, EOF on a socket) with a
timeout as a safety net; nothing sleeps for a fixed time.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mesh.ingest.rtmp_server import PublishAborted, PublishRejected, RtmpConnectionInfo, RtmpServer
from mesh.metrics import bad_input_count
from mesh.protocols.rtmp import amf0
from mesh.protocols.rtmp.handshake import client_c0c1
from mesh_codecs import flv
from tests.test_rtmp_session import Publisher

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="Debian ffmpeg not installed")
TIMEOUT = 30.0


class RecordingSink:
    def __init__(self, name: str, fail_after: int | None = None, abort: bool = False) -> None:
        self.abort = abort
        self.name = name
        self.video: list[tuple[int, flv.FlvVideo]] = []
        self.audio: list[tuple[int, flv.FlvAudio]] = []
        self.metadata: list[dict[str, Any]] = []
        self.reasons: list[str] = []
        self.unpublished = asyncio.Event()
        self.got_video = asyncio.Event()
        self.fail_after = fail_after

    def on_video(self, timestamp_ms: int, payload: bytes) -> None:
        if self.fail_after is not None and len(self.video) >= self.fail_after:
            if self.abort:
                raise PublishAborted("codec", "video codec VP6 is not supported; publish H.264")
            raise RuntimeError("sink failure injected by the test")
        self.video.append((timestamp_ms, flv.parse_video(payload)))
        self.got_video.set()

    def on_audio(self, timestamp_ms: int, payload: bytes) -> None:
        self.audio.append((timestamp_ms, flv.parse_audio(payload)))

    def on_metadata(self, values: dict[str, Any]) -> None:
        self.metadata.append(values)

    async def on_unpublish(self, reason: str) -> None:
        self.reasons.append(reason)
        self.unpublished.set()


class RecordingHandler:
    def __init__(self, reject: dict[str, str] | None = None, fail_after: int | None = None,
                 abort: bool = False) -> None:
        self.reject = reject or {}
        self.abort = abort
        self.fail_after = fail_after
        self.sinks: dict[str, RecordingSink] = {}
        self.conns: dict[str, RtmpConnectionInfo] = {}
        self.queries: dict[str, dict[str, str]] = {}
        self.published: dict[str, asyncio.Event] = {}

    def event(self, name: str) -> asyncio.Event:
        return self.published.setdefault(name, asyncio.Event())

    async def on_publish(self, conn: RtmpConnectionInfo, app: str, stream_name: str,
                         query: dict[str, str]) -> RecordingSink:
        if stream_name in self.reject:
            raise PublishRejected("NetStream.Publish.BadName", self.reject[stream_name])
        sink = self.sinks[stream_name] = RecordingSink(stream_name, self.fail_after, self.abort)
        self.conns[stream_name] = conn
        self.queries[stream_name] = query
        self.event(stream_name).set()
        return sink


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 90))


async def ffmpeg_publish(url: str, seconds: float = 3, *extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
        "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine",
        "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-c:a", "aac",
        *extra, "-f", "flv", url, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, err.decode(errors="replace")


async def started_server(handler: Any, **kwargs: Any) -> RtmpServer:
    server = RtmpServer(handler, host="127.0.0.1", port=0, **kwargs)
    await server.start()
    assert server.port != 0
    return server


def assert_good_publish(sink: RecordingSink, seconds: float = 3) -> None:
    """What a 3 s ffmpeg test-pattern publish must have delivered, in order."""
    assert sink.reasons == ["unpublish"]
    first_ts, first = sink.video[0]
    assert (first.packet_type, first.key, first.codec_id) == (flv.AVC_SEQUENCE_HEADER, True, flv.CODEC_AVC)
    assert bytes(first.data[:1]) == b"\x01"  # AVCDecoderConfigurationRecord version 1
    _, aac = sink.audio[0]
    assert (aac.sound_format, aac.packet_type) == (flv.SOUND_AAC, flv.AAC_SEQUENCE_HEADER)
    # AAC-LC, 44.1 kHz, mono (the lavfi sine); ffmpeg appends a 3-byte explicit "no SBR"
    # sync extension (56 e5 00), so only the first two bytes are fixed.
    assert bytes(aac.data[:2]) == bytes.fromhex("1208")
    frames = [(ts, v) for ts, v in sink.video if v.packet_type == flv.AVC_NALU]
    fps = 30
    assert abs(len(frames) - seconds * fps) <= 2
    keys = [ts for ts, v in frames if v.key]
    assert len(keys) >= seconds and keys[0] == 0  # -g 30: one keyframe a second
    assert all(abs(b - a - 1000) <= 40 for a, b in zip(keys, keys[1:]))
    for stamps in ([ts for ts, _ in sink.video], [ts for ts, _ in sink.audio]):
        assert stamps == sorted(stamps), "timestamps must be monotonic per track"
    assert abs(frames[-1][0] - (seconds * 1000 - 1000 / fps)) <= 50
    assert any(v.cts_ms > 0 for _, v in frames)  # x264 B-frames: pts != dts
    assert len(sink.audio) >= seconds * 43 - 3
    assert sink.metadata and sink.metadata[0]["width"] == 640.0 and sink.metadata[0]["height"] == 360.0


# ------------------------------------------------------------------ real ffmpeg publishers


@needs_ffmpeg
@pytest.mark.integration
def test_ffmpeg_publish_end_to_end() -> None:
    async def main() -> None:
        handler = RecordingHandler()
        server = await started_server(handler)
        try:
            rc, err = await ffmpeg_publish(f"rtmp://127.0.0.1:{server.port}/LiveApp/cam1?token=s3cret")
            assert rc == 0, err
            sink = handler.sinks["cam1"]
            await asyncio.wait_for(sink.unpublished.wait(), TIMEOUT)
            assert_good_publish(sink)
            conn = handler.conns["cam1"]
            assert conn.app == "LiveApp" and conn.peer.startswith("127.0.0.1:")
            assert conn.params["flashVer"].startswith("FMLE/3.0")
            assert handler.queries["cam1"] == {"token": "s3cret"}
        finally:
            await server.stop()
        assert server.connection_count == 0
    run(main)


@needs_ffmpeg
@pytest.mark.integration
def test_ffmpeg_extended_timestamps() -> None:
    """Timestamps past 2**24 ms (4.66 h) need the extended field, which ffmpeg repeats on
    every fmt 3 continuation chunk; an off-by-4-bytes reader would corrupt every frame."""
    async def main() -> None:
        handler = RecordingHandler()
        server = await started_server(handler)
        try:
            rc, err = await ffmpeg_publish(f"rtmp://127.0.0.1:{server.port}/LiveApp/late", 2,
                                           "-output_ts_offset", "16777")
            assert rc == 0, err
            sink = handler.sinks["late"]
            await asyncio.wait_for(sink.unpublished.wait(), TIMEOUT)
            assert sink.reasons == ["unpublish"]
            frames = [ts for ts, v in sink.video if v.packet_type == flv.AVC_NALU]
            assert len(frames) == 60
            assert frames[0] < 0xFFFFFF < frames[-1]  # the publish crosses into extended timestamps
            assert all(30 <= b - a <= 37 for a, b in zip(frames, frames[1:]))
            stamps = [ts for ts, _ in sink.audio[1:]]
            assert stamps == sorted(stamps) and stamps[-1] > 0xFFFFFF
        finally:
            await server.stop()
    run(main)


@needs_ffmpeg
@pytest.mark.integration
def test_two_publishers_at_once() -> None:
    async def main() -> None:
        handler = RecordingHandler()
        server = await started_server(handler)
        try:
            results = await asyncio.gather(*(ffmpeg_publish(f"rtmp://127.0.0.1:{server.port}/LiveApp/{name}")
                                             for name in ("cam1", "cam2")))
            assert [rc for rc, _ in results] == [0, 0], results
            for name in ("cam1", "cam2"):
                await asyncio.wait_for(handler.sinks[name].unpublished.wait(), TIMEOUT)
                assert_good_publish(handler.sinks[name])
            assert handler.conns["cam1"].conn_id != handler.conns["cam2"].conn_id
        finally:
            await server.stop()
    run(main)


@needs_ffmpeg
@pytest.mark.integration
def test_rejected_publisher_exits_nonzero_and_another_is_untouched() -> None:
    async def main() -> None:
        handler = RecordingHandler(reject={"taken": "stream taken is already being published on origin-2"})
        server = await started_server(handler)
        try:
            (bad_rc, bad_err), (good_rc, good_err) = await asyncio.gather(
                ffmpeg_publish(f"rtmp://127.0.0.1:{server.port}/LiveApp/taken"),
                ffmpeg_publish(f"rtmp://127.0.0.1:{server.port}/LiveApp/cam1"))
            assert bad_rc != 0
            assert "already being published on origin-2" in bad_err  # ffmpeg prints our description
            assert good_rc == 0, good_err
            await asyncio.wait_for(handler.sinks["cam1"].unpublished.wait(), TIMEOUT)
            assert_good_publish(handler.sinks["cam1"])
            assert "taken" not in handler.sinks
        finally:
            await server.stop()
    run(main)


async def _expect_closed(reader: asyncio.StreamReader) -> bytes:
    """Read until the server closes the connection (EOF); fail if it does not within the timeout."""
    return await asyncio.wait_for(reader.read(), 10)


async def _handshake(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(client_c0c1())
    s0s1s2 = await reader.readexactly(1 + 2 * 1536)
    writer.write(s0s1s2[1:1537])  # C2
    return reader, writer


async def garbage_random_handshake(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x42" + os.urandom(1536))
    assert await _expect_closed(reader) == b""
    writer.close()


async def garbage_huge_chunk_size(port: int) -> None:
    reader, writer = await _handshake(port)
    pub = Publisher()
    writer.write(pub.connect() + pub.w.write(2, 1, 0, 0, struct.pack(">I", 0x7FFFFFFF)))
    await _expect_closed(reader)
    writer.close()


async def garbage_bad_amf_type(port: int) -> None:
    reader, writer = await _handshake(port)
    pub = Publisher()
    writer.write(pub.connect() + pub.w.write(3, 20, 0, 0, amf0.encode("createStream", 2.0) + b"\xff"))
    await _expect_closed(reader)
    writer.close()


@needs_ffmpeg
@pytest.mark.integration
def test_garbage_closes_only_that_connection_while_ffmpeg_publishes() -> None:
    async def main() -> None:
        handler = RecordingHandler()
        server = await started_server(handler)
        before = {r: bad_input_count("rtmp", r) for r in ("handshake", "chunk", "amf")}
        try:
            publish = asyncio.create_task(ffmpeg_publish(f"rtmp://127.0.0.1:{server.port}/LiveApp/cam1"))
            await asyncio.wait_for(handler.event("cam1").wait(), TIMEOUT)
            await asyncio.wait_for(handler.sinks["cam1"].got_video.wait(), TIMEOUT)  # mid-publish
            await asyncio.gather(garbage_random_handshake(server.port), garbage_huge_chunk_size(server.port),
                                 garbage_bad_amf_type(server.port))
            for reason in ("handshake", "chunk", "amf"):
                assert bad_input_count("rtmp", reason) == before[reason] + 1, reason
            rc, err = await publish
            assert rc == 0, err
            await asyncio.wait_for(handler.sinks["cam1"].unpublished.wait(), TIMEOUT)
            assert_good_publish(handler.sinks["cam1"])
        finally:
            await server.stop()
    run(main)


# ------------------------------------------------------------------ a scripted Python publisher (fast)


async def python_publish(port: int, name: str, frames: int, *, close: bool = True) -> tuple[Any, Any]:
    """Publish ``frames`` tiny video frames like ffmpeg would (without waiting for replies)."""
    reader, writer = await _handshake(port)
    pub = Publisher(4096)
    data = pub.connect() + pub.setup(name)
    data += pub.video(0, flv.video_tag(True, 0, 0, b"\x01\x64\x00\x1f\xff\xe1\x00\x00"))
    for i in range(frames):
        data += pub.video(i * 33, flv.video_tag(i % 30 == 0, 1, 0, b"\x00\x00\x00\x01\x65"))
    if close:
        data += pub.teardown(name)
    writer.write(data)
    await writer.drain()
    return reader, writer


def test_sink_exception_closes_only_that_connection() -> None:
    async def main() -> None:
        handler = RecordingHandler(fail_after=5)
        server = await started_server(handler)
        try:
            r1, w1 = await python_publish(server.port, "boom", 20, close=False)
            await _expect_closed(r1)
            assert handler.event("boom").is_set()
            await asyncio.wait_for(handler.sinks["boom"].unpublished.wait(), 10)
            assert handler.sinks["boom"].reasons == ["error"]
            assert len(handler.sinks["boom"].video) == 5
            handler.fail_after = None
            r2, w2 = await python_publish(server.port, "fine", 20)
            await asyncio.wait_for(handler.event("fine").wait(), 10)
            await asyncio.wait_for(handler.sinks["fine"].unpublished.wait(), 10)
            assert handler.sinks["fine"].reasons == ["unpublish"] and len(handler.sinks["fine"].video) == 21
            w1.close()
            w2.close()
        finally:
            await server.stop()
    run(main)


def test_sink_can_abort_a_publish_with_a_reason_the_client_sees() -> None:
    async def main() -> None:
        handler = RecordingHandler(fail_after=2, abort=True)
        server = await started_server(handler)
        aborted = bad_input_count("rtmp", "codec")
        try:
            reader, writer = await python_publish(server.port, "vp6", 10, close=False)
            rest = await _expect_closed(reader)
            assert b"video codec VP6 is not supported; publish H.264" in rest  # the onStatus error
            await asyncio.wait_for(handler.sinks["vp6"].unpublished.wait(), 10)
            assert handler.sinks["vp6"].reasons == ["error"] and len(handler.sinks["vp6"].video) == 2
            assert bad_input_count("rtmp", "codec") == aborted + 1
            writer.close()
        finally:
            await server.stop()
    run(main)


def test_stop_ends_live_publishers_with_server_stop() -> None:
    async def main() -> None:
        handler = RecordingHandler()
        server = await started_server(handler)
        _, writer = await python_publish(server.port, "live1", 3, close=False)
        await asyncio.wait_for(handler.event("live1").wait(), 10)
        await asyncio.wait_for(handler.sinks["live1"].got_video.wait(), 10)
        assert server.connection_count == 1
        await asyncio.wait_for(server.stop(), 10)
        assert handler.sinks["live1"].reasons == ["server-stop"]
        assert server.connection_count == 0
        writer.close()
    run(main)


def test_handshake_timeout_and_connection_limit() -> None:
    async def main() -> None:
        server = await started_server(RecordingHandler(), handshake_timeout_s=0.3, max_connections=1)
        timeouts, limits = bad_input_count("rtmp", "timeout"), bad_input_count("rtmp", "limit")
        try:
            r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)  # says nothing
            w1.write(b"\x03")
            await w1.drain()
            r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)  # one too many
            assert await _expect_closed(r2) == b""
            assert bad_input_count("rtmp", "limit") == limits + 1
            assert await _expect_closed(r1) == b""  # handshake never finished
            assert bad_input_count("rtmp", "timeout") == timeouts + 1
            w1.close()
            w2.close()
        finally:
            await server.stop()
    run(main)


def test_bad_stream_name_gets_an_error_status_before_the_close() -> None:
    async def main() -> None:
        server = await started_server(RecordingHandler())
        badnames = bad_input_count("rtmp", "badname")
        try:
            reader, writer = await python_publish(server.port, "../../etc/passwd", 0, close=False)
            rest = await _expect_closed(reader)
            assert b"NetStream.Publish.BadName" in rest
            assert bad_input_count("rtmp", "badname") == badnames + 1
            writer.close()
        finally:
            await server.stop()
    run(main)


def test_idle_publisher_times_out_and_is_unpublished() -> None:
    async def main() -> None:
        handler = RecordingHandler()
        server = await started_server(handler, idle_timeout_s=0.3)
        timeouts = bad_input_count("rtmp", "timeout")
        try:
            reader, writer = await python_publish(server.port, "quiet", 2, close=False)  # then silence
            await asyncio.wait_for(handler.event("quiet").wait(), 10)
            await _expect_closed(reader)
            await asyncio.wait_for(handler.sinks["quiet"].unpublished.wait(), 10)
            assert handler.sinks["quiet"].reasons == ["disconnect"]
            assert len(handler.sinks["quiet"].video) == 3
            assert bad_input_count("rtmp", "timeout") == timeouts + 1
            writer.close()
        finally:
            await server.stop()
    run(main)


@needs_ffmpeg
@pytest.mark.integration
def test_ffmpeg_play_gets_a_clean_error() -> None:
    async def main() -> None:
        server = await started_server(RecordingHandler())
        try:
            proc = await asyncio.create_subprocess_exec(
                "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
                "-i", f"rtmp://127.0.0.1:{server.port}/LiveApp/cam1", "-f", "null", "-",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
            assert proc.returncode != 0
            assert "play the stream over HLS" in err.decode(errors="replace")
        finally:
            await server.stop()
    run(main)


class LoggingSink(RecordingSink):
    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__(name)
        self.log = log

    def on_video(self, timestamp_ms: int, payload: bytes) -> None:
        self.log.append("media")
        super().on_video(timestamp_ms, payload)

    def on_audio(self, timestamp_ms: int, payload: bytes) -> None:
        self.log.append("media")
        super().on_audio(timestamp_ms, payload)


class LoggingBatch:
    """A MediaBatch (the bus, in an origin) that logs when a read pass begins and flushes."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def begin_batch(self) -> None:
        self.log.append("begin")

    def flush(self) -> None:
        self.log.append("flush")


@needs_ffmpeg
@pytest.mark.integration
def test_every_read_pass_delivers_its_media_between_begin_batch_and_flush() -> None:
    """The media reader brackets each pass with the batch's begin_batch() and flush(), so the
    bus sends a pass's media at the end of that pass, not in a later pass of the event loop."""
    async def main() -> None:
        log: list[str] = []

        class Handler(RecordingHandler):
            async def on_publish(self, conn: RtmpConnectionInfo, app: str, stream_name: str,
                                 query: dict[str, str]) -> RecordingSink:
                sink = self.sinks[stream_name] = LoggingSink(stream_name, log)
                return sink

        handler = Handler()
        server = await started_server(handler, media_batch=LoggingBatch(log))
        try:
            rc, err = await ffmpeg_publish(f"rtmp://127.0.0.1:{server.port}/LiveApp/cam1", 2)
            assert rc == 0, err
            await asyncio.wait_for(handler.sinks["cam1"].unpublished.wait(), TIMEOUT)
        finally:
            await server.stop()
        first = log.index("begin")  # media before it came through the transport, before the reader
        inside = False
        bracketed = 0
        for entry in log[first:]:
            if entry == "begin":
                assert not inside, "a pass began inside another"
                inside = True
            elif entry == "flush":
                assert inside, "a flush without its begin"
                inside = False
            else:
                assert inside, "media delivered outside a read pass"
                bracketed += 1
        assert not inside  # the last pass flushed too
        assert bracketed >= 2 * 30  # most of 2 s of 30 fps video and 43 fps audio came through passes
    run(main)


class SinkHandler(RecordingHandler):
    """Accepts every publish into a sink of one class."""

    def __init__(self, sink_class: type[RecordingSink]) -> None:
        super().__init__()
        self.sink_class = sink_class

    async def on_publish(self, conn: RtmpConnectionInfo, app: str, stream_name: str,
                         query: dict[str, str]) -> RecordingSink:
        sink = self.sinks[stream_name] = self.sink_class(stream_name)
        self.event(stream_name).set()
        return sink


async def publish_cam1(server: RtmpServer, handler: RecordingHandler
                       ) -> tuple[Publisher, asyncio.StreamWriter, RecordingSink]:
    """A scripted publisher of LiveApp/cam1, once its publish is accepted: (client, socket, sink)."""
    pub = Publisher(chunk_size=4096)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(pub.handshake_c0c1())
    await reader.readexactly(1 + 1536 * 2)
    writer.write(bytes(1536) + pub.connect() + pub.setup())
    await asyncio.wait_for(handler.event("cam1").wait(), TIMEOUT)
    return pub, writer, handler.sinks["cam1"]


class CutSink(RecordingSink):
    """A sink that says when a keyframe would close its open segment, as the origin's does; and
    signals each delivered video message."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.due_ms: int | None = 10 ** 9
        self.delivered = asyncio.Event()

    def cut_due_ms(self) -> int | None:
        return self.due_ms

    def on_video(self, timestamp_ms: int, payload: bytes) -> None:
        super().on_video(timestamp_ms, payload)
        self.delivered.set()


def test_a_keyframe_wakes_the_reader_only_when_it_may_close_a_segment() -> None:
    """Between ticks a publisher's socket wakes the media reader for a keyframe's worth of bytes
    only from shortly before the sink's ``cut_due_ms``; until then its small frames and even a
    keyframe wait for the tick (one wake-up a tick for every publisher, not one per publisher)."""
    async def main() -> None:
        handler = SinkHandler(CutSink)
        server = await started_server(handler, media_read_max_interval_s=0.3)
        pub, writer, sink = await publish_cam1(server, handler)
        assert isinstance(sink, CutSink)
        try:
            media_reader = server._reader
            ts = 0

            async def send(body: bytes, frames: int = 1) -> None:
                nonlocal ts
                for _ in range(frames):
                    ts += 33
                    writer.write(pub.video(ts, body))
                sink.delivered.clear()
                await writer.drain()
                while not sink.video or sink.video[-1][0] != ts:
                    sink.delivered.clear()
                    await asyncio.wait_for(sink.delivered.wait(), TIMEOUT)

            keyframe = b"\x17\x01\x00\x00\x00" + bytes(20_000)
            inter = b"\x27\x01\x00\x00\x00" + bytes(3_000)
            await send(keyframe)  # the first keyframe sets the keyframe wake size (15 KB)
            for _ in range(4):  # ~30 KB a tick: the reader learns the publisher's byte rate
                await send(inter, frames=10)
            assert media_reader is not None and media_reader.passes >= 3
            wakes = media_reader.wakes
            await send(keyframe)
            assert media_reader.wakes == wakes, "a keyframe that cannot close a segment woke the reader"

            sink.due_ms = ts + 150  # the open segment may close with the next keyframe
            await send(inter)  # read at a tick, after which the socket wakes for a keyframe
            wakes = media_reader.wakes
            await send(keyframe)
            assert media_reader.wakes > wakes, "a keyframe that may close a segment waited for the tick"
        finally:
            writer.close()
            await server.stop()
    run(main)


class PartSink(RecordingSink):
    """A sink that names the frame closing its open LL part and when a keyframe would close its
    segment, as the origin's does (parts of 200 ms, segments of 1 s on the publisher's clock),
    and notes when each video message reached it."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.reached: dict[int, float] = {}

    def part_due_ms(self) -> int | None:
        return (self.video[-1][0] // 200 + 1) * 200 if self.video else None

    def cut_due_ms(self) -> int | None:
        return (self.video[-1][0] // 1000 + 1) * 1000 if self.video else -1

    def on_video(self, timestamp_ms: int, payload: bytes) -> None:
        super().on_video(timestamp_ms, payload)
        self.reached[timestamp_ms] = asyncio.get_running_loop().time()


FRAME = b"\x27\x01\x00\x00\x00" + bytes(1_500)  # an AVC inter frame
KEYFRAME = b"\x17\x01\x00\x00\x00" + bytes(20_000)


async def publish_to_part_sink() -> tuple[RtmpServer, Publisher, asyncio.StreamWriter, PartSink]:
    """A server whose publishes go to :class:`PartSink`, and LiveApp/cam1 published on it."""
    handler = SinkHandler(PartSink)
    server = await started_server(handler)
    pub, writer, sink = await publish_cam1(server, handler)
    assert isinstance(sink, PartSink)
    return server, pub, writer, sink


def test_a_publisher_is_read_when_its_part_can_close() -> None:
    """A live publisher (25 fps, paced in real time, a keyframe every second) is read about once
    per LL part, soon after the frame that closes the part arrives: fewer passes than a 100 ms
    tick would make (30 in 3 s), and the part-closing frames reach the sink promptly (a fixed
    250 ms grid would hand them over 125 ms late on average). The keyframes that close segments
    wake the reader themselves (their socket drained just before they are due)."""
    async def main() -> None:
        server, pub, writer, sink = await publish_to_part_sink()
        loop = asyncio.get_running_loop()
        try:
            frame, keyframe = FRAME, KEYFRAME
            sent: dict[int, float] = {}
            start = loop.time()
            passes = wakes = 0
            for i in range(150):  # 6 s: the first half teaches the reader the publisher's clock
                await asyncio.sleep(max(0.0, start + i * 0.04 - loop.time()))
                if i == 75:
                    assert server._reader is not None
                    passes, wakes = server._reader.passes, server._reader.wakes
                writer.write(pub.video(i * 40, keyframe if i % 25 == 0 else frame))
                sent[i * 40] = loop.time()
            last = 149 * 40
            while last not in sink.reached:
                sink.got_video.clear()
                await asyncio.wait_for(sink.got_video.wait(), TIMEOUT)
            assert server._reader is not None
            passes = server._reader.passes - passes
            wakes = server._reader.wakes - wakes
            assert passes < 24, f"{passes} read passes in 3 s of 200 ms parts"
            assert wakes >= 3, f"{wakes} wake-ups for the 3 segment-closing keyframes"
            closing = [ts for ts in sent if ts % 200 == 0 and ts >= 75 * 40 and ts != last]
            delays = sorted(sink.reached[ts] - sent[ts] for ts in closing)
            assert delays[len(delays) // 2] < 0.06, f"part-closing frames waited {delays}"
        finally:
            writer.close()
            await server.stop()
    run(main)


def test_a_segment_closing_keyframe_wakes_the_reader_after_a_late_part() -> None:
    """When the last part before a segment's end comes late, its retry read is less than a pass
    gap before the keyframe: no pass can drain the socket just before that keyframe, so the
    socket wakes the reader for it instead of leaving it to the next pass. (25 fps, a keyframe a
    second; the frames of 800 and 840 ms in each second come with the one of 880 ms.)"""
    async def main() -> None:
        server, pub, writer, sink = await publish_to_part_sink()
        loop = asyncio.get_running_loop()
        try:
            frame, keyframe = FRAME, KEYFRAME
            start = loop.time()
            woken = []
            for i in range(126):
                ts = i * 40
                if ts % 1000 in (800, 840):
                    continue  # held back, sent with the next frame
                await asyncio.sleep(max(0.0, start + i * 0.04 - loop.time()))
                held = [t for t in (ts - 80, ts - 40) if t % 1000 in (800, 840)]
                for t in held:
                    writer.write(pub.video(t, frame))
                assert server._reader is not None
                wakes = server._reader.wakes
                writer.write(pub.video(ts, keyframe if ts % 1000 == 0 else frame))
                if ts % 1000 == 0 and ts >= 2000:  # the first two seconds teach the reader the clock
                    while ts not in sink.reached:
                        sink.got_video.clear()
                        await asyncio.wait_for(sink.got_video.wait(), TIMEOUT)
                    woken.append(server._reader.wakes > wakes)
            assert woken == [True] * 4, f"keyframes at 2-5 s that woke the reader: {woken}"
        finally:
            writer.close()
            await server.stop()
    run(main)


def test_a_publisher_with_a_lying_clock_costs_no_more_than_a_pass_per_gap() -> None:
    """Timestamps are the publisher's to choose: running far ahead of real time, jumping back,
    or leaping by days. Its reads follow its predictions only within bounds -- a due in the past
    is looked for again a pass gap (100 ms) later, one far ahead waits at most the max interval
    (250 ms) -- so it gets at most one timed pass per gap and every frame is still delivered."""
    async def main() -> None:
        server, pub, writer, sink = await publish_to_part_sink()
        loop = asyncio.get_running_loop()
        frame = b"\x27\x01\x00\x00\x00" + bytes(500)
        stamps = [i * 400 for i in range(10)] + [5, 1, 0] + [86_400_000 * d for d in range(1, 10)] \
            + [2 ** 31 - 1 - i for i in range(10)] + [i * 7 for i in range(15)]
        try:
            assert server._reader is not None
            passes = server._reader.passes
            start = loop.time()
            for i, ts in enumerate(stamps):  # about 1.5 s of them, paced
                await asyncio.sleep(max(0.0, start + i * 0.03 - loop.time()))
                writer.write(pub.video(ts, frame))
            while len(sink.video) < len(stamps):
                sink.got_video.clear()
                await asyncio.wait_for(sink.got_video.wait(), TIMEOUT)
            elapsed = loop.time() - start
            passes = server._reader.passes - passes
            assert passes <= elapsed / 0.1 + 2, f"{passes} passes in {elapsed:.2f} s"
            assert [ts for ts, _ in sink.video] == stamps
        finally:
            writer.close()
            await server.stop()
    run(main)
