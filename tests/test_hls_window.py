"""The edge's HLS window and playlist rendering, fed synthetic bus deliveries (no sockets)."""
from __future__ import annotations

import re

from mesh.broker.tracker import Gap
from mesh.broker.wire import CONFIG, EOS, FLAG_KEY, FLAG_SEG_START, MEDIA, Entry
from mesh.hls.playlist import SegmentRef, render_media_playlist, segment_name
from mesh.hls.window import RenditionWindow
from mesh_codecs.media import VIDEO

AVCC = bytes.fromhex("01640028ffe1001967640028acd940780227e5c04400000fa40003a9803c60c65801000568ebecb22c")
VIDEO_PARAMS = {"codec": "h264", "avcc": AVCC, "width": 1920, "height": 1080, "codec_string": "avc1.640028"}


def fake_packetise(video, audio, aus) -> bytes:
    return b"|".join(b"%d:%d" % (a.dts, len(a.data)) for a in aus)


class Feed:
    """Builds entries the way an origin would: config, then numbered segments of 30 frames."""

    def __init__(self, epoch: int = 1, disc: int = 0):
        self.seq = 0
        self.epoch = epoch
        self.disc = disc

    def entry(self, kind: int, **kw) -> Entry:
        e = Entry(self.seq, kind, epoch=self.epoch, **kw)
        self.seq += 1
        return e

    def config(self) -> Entry:
        return self.entry(CONFIG, extra={"video": VIDEO_PARAMS, "audio": None, "disc": self.disc})

    def segment(self, seg: int, frames: int = 60, t0_ms: int = 1_700_000_000_000) -> list[Entry]:
        out = []
        for i in range(frames):
            dts = (seg * frames + i) * 3000
            flags = FLAG_KEY | FLAG_SEG_START if i == 0 else 0
            extra = {"t": t0_ms + seg * 2000} if i == 0 else None
            out.append(self.entry(MEDIA, track=VIDEO, pts=dts, dts=dts, flags=flags, seg=seg,
                                  payload=b"\x00\x00\x00\x01\x65", extra=extra))
        return out


def window(**kw) -> RenditionWindow:
    return RenditionWindow("cam1", fake_packetise, window=kw.pop("window", 3), retired=2, target_s=2.0)


def test_segments_listed_when_the_next_one_starts_with_exact_durations() -> None:
    w, f = window(), Feed()
    w.feed([f.config()] + f.segment(0))
    assert w.segment_count == 0, "an open segment is never listed"
    w.feed(f.segment(1))
    assert [s.seq for s in w.listed] == [0] and w.listed[0].duration_s == 2.0
    for seg in range(2, 7):
        w.feed(f.segment(seg))
    text = w.playlist()
    assert "#EXT-X-MEDIA-SEQUENCE:3\n" in text and "#EXT-X-TARGETDURATION:2\n" in text
    assert re.findall(r"cam1\d{9}\.ts", text) == ["cam1000000003.ts", "cam1000000004.ts", "cam1000000005.ts"]
    assert "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:26.000Z" in text
    assert w.segment(0) is None and w.segment(1) is not None, "two retired segments stay fetchable"
    assert "#EXT-X-ENDLIST" not in text


def test_end_of_stream_lists_the_last_segment_and_ends_the_playlist() -> None:
    w, f = window(), Feed()
    w.feed([f.config()] + f.segment(0) + f.segment(1) + [f.entry(EOS, extra={"reason": "finished"})])
    assert [s.seq for s in w.listed] == [0, 1] and w.ended
    assert w.listed[1].duration_s == 2.0  # 60 frames of 1/30 s
    assert w.playlist().endswith("#EXT-X-ENDLIST\n")


def test_unrepaired_gap_never_lists_a_partial_segment_and_restarts_the_window() -> None:
    w, f = window(), Feed()
    w.feed([f.config()] + f.segment(0) + f.segment(1))
    seg2 = f.segment(2)
    w.feed(seg2[:10] + [Gap(55, "window")])
    seg3 = f.segment(3)
    w.feed(seg3)
    w.feed(f.segment(4))
    assert [s.seq for s in w.listed] == [3], "the window restarts after the hole"
    assert w.segment(2) is None and w.resets == 1
    assert b"%d:" % seg3[0].dts in w.segment(3)


def test_new_epoch_marks_a_discontinuity_and_keeps_numbering() -> None:
    w, f = window(window=5), Feed(epoch=1, disc=0)
    w.feed([f.config()] + f.segment(0) + f.segment(1) + f.segment(2))
    g = Feed(epoch=2, disc=1)  # a new origin took over at segment 2 (the old one never closed it)
    w.feed([g.config()] + g.segment(2) + g.segment(3) + g.segment(4))
    text = w.playlist()
    names = re.findall(r"cam1\d{9}\.ts", text)
    assert names == [segment_name("cam1", n) for n in (0, 1, 2, 3)]
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:0" in text
    assert text.count("#EXT-X-DISCONTINUITY\n") == 1
    assert text.index("#EXT-X-DISCONTINUITY\n") < text.index("cam1000000002.ts")


def test_reused_numbers_of_a_new_epoch_are_skipped() -> None:
    w, f = window(window=5), Feed()
    w.feed([f.config()] + f.segment(0) + f.segment(1) + f.segment(2))
    g = Feed(epoch=2, disc=1)
    w.feed([g.config()] + g.segment(1) + g.segment(2) + g.segment(3))
    assert [s.seq for s in w.listed] == [0, 1, 2]
    assert [s.disc for s in w.listed] == [0, 0, 1], "1 kept epoch 1's bytes; 2 is the new epoch's"
    w.feed(g.segment(4))
    assert [s.seq for s in w.listed][-1] == 3


def test_media_before_config_is_dropped() -> None:
    w, f = window(), Feed()
    w.feed(f.segment(0) + f.segment(1))
    assert w.segment_count == 0 and w.dropped > 0


def test_render_is_deterministic_and_ceil_target() -> None:
    segs = [SegmentRef(7, 2.0, 3, 1_700_000_000_123), SegmentRef(8, 4.2, 3, None),
            SegmentRef(9, 2.0, 4, 1_700_000_006_323)]
    text = render_media_playlist("x", segs, configured_target_s=2.0, ended=False)
    assert text == render_media_playlist("x", segs, configured_target_s=2.0, ended=False)
    assert text.splitlines()[:5] == ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:5",
                                     "#EXT-X-MEDIA-SEQUENCE:7", "#EXT-X-DISCONTINUITY-SEQUENCE:3"]
    assert "#EXTINF:4.200,\nx000000008.ts" in text
    assert "#EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:26.323Z" in text


# -- packetising off the loop: the same outcomes, in the same order --------------------------

class HeldJobs:
    """An offload that holds jobs until told to run them, in any order (what worker threads may do)."""

    def __init__(self) -> None:
        self.jobs: list[tuple] = []

    def __call__(self, job, done):
        from concurrent.futures import Future
        future: Future = Future()
        self.jobs.append((job, done, future))
        return future

    def run(self, order) -> None:
        for i in order:
            job, done, future = self.jobs[i]
            future.set_result(job())
            done()


def scenario(f: Feed, g: Feed) -> list[list]:
    """Batches covering a hole, a takeover with a discontinuity, reused numbers and the end."""
    return [[f.config()] + f.segment(0), f.segment(1), f.segment(2)[:10] + [Gap(50, "window")],
            f.segment(3), f.segment(4), [g.config()] + g.segment(4) + g.segment(5), g.segment(6),
            g.segment(7) + [g.entry(EOS, extra={"reason": "finished"})]]


def state(w: RenditionWindow) -> tuple:
    return (list(w.listed), dict(w.data), w.ended, w.resets, w.version, w.playlist())


def test_offloaded_packetising_lists_exactly_what_inline_packetising_lists() -> None:
    inline = window(window=4)
    for batch in scenario(Feed(), Feed(epoch=2, disc=1)):
        inline.feed(batch)
    held = HeldJobs()
    w = RenditionWindow("cam1", fake_packetise, window=4, retired=2, target_s=2.0, offload=held)
    changes: list[int] = []
    w.on_change(lambda: changes.append(len(w.listed)))
    for batch in scenario(Feed(), Feed(epoch=2, disc=1)):
        w.feed(batch)
    assert w.segment_count == 0 and not w.ended and w.pending > 0, "nothing shows before it is cut"
    assert len(held.jobs) == 7
    held.run([6, 5, 4])  # later segments finish first: still nothing may show out of order
    assert w.segment_count == 0 and not w.ended
    held.run([1])
    assert w.segment_count == 0, "segment 0 is not cut yet, so 1 waits"
    held.run([0])
    assert list(w.data) == [0, 1] and w.segments_cut == 2 and changes == [2], "then both, in order"
    assert w.resets == 0 and w.segment_count == 2, "the hole behind them restarts the window only " \
        "when the next segment lists (never an empty playlist in between)"
    assert w.segment(0) and w.segment(1) and w.segment(3) is None
    held.run([2, 3])
    assert w.pending == 0 and state(w) == state(inline)
    assert changes[-1] == len(inline.listed) and w.ended


def test_offloaded_packetising_on_real_threads_matches_inline() -> None:
    import asyncio

    from mesh.hls.packetiser import WorkerPool

    inline = window(window=4)
    for batch in scenario(Feed(), Feed(epoch=2, disc=1)):
        inline.feed(batch)

    async def run() -> tuple:
        pool = WorkerPool(2)
        try:
            w = RenditionWindow("cam1", fake_packetise, window=4, retired=2, target_s=2.0,
                                offload=pool.offload())
            ended = asyncio.Event()
            w.on_change(lambda: w.ended and ended.set())
            for batch in scenario(Feed(), Feed(epoch=2, disc=1)):
                w.feed(batch)
            await asyncio.wait_for(ended.wait(), 10)
            return state(w)
        finally:
            pool.close()

    assert asyncio.run(run()) == state(inline)


def test_a_failed_packetise_is_logged_and_the_window_goes_on(caplog) -> None:
    calls = []

    def flaky(video, audio, aus) -> bytes:
        calls.append(aus[0].dts)
        if len(calls) == 2:
            raise RuntimeError("kernel bug")
        return fake_packetise(video, audio, aus)

    w, f = RenditionWindow("cam1", flaky, window=5, retired=2, target_s=2.0), Feed()
    for seg in range(4):
        w.feed(([f.config()] if seg == 0 else []) + f.segment(seg))
    assert [s.seq for s in w.listed] == [0, 2] and "packetising segment 1 of cam1 failed" in caplog.text
