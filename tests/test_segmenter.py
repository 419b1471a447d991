"""The origin segmenter: boundaries at keyframes after the target, numbering, timestamp safety."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.broker.wire import FLAG_KEY, FLAG_PART_START, FLAG_SEG_START
from mesh.ingest.segmenter import Segmenter
from mesh_codecs.media import AUDIO, VIDEO, AccessUnit

FRAME = 3000  # 30 fps at 90 kHz


def video(i: int, key: bool) -> AccessUnit:
    return AccessUnit(VIDEO, i * FRAME, i * FRAME, key, b"v")


def test_cuts_at_first_keyframe_after_target_and_numbers_from_registry() -> None:
    seg = Segmenter(target_s=2.0, first_seq=41)
    seg.video_present()
    stamps = [seg.push(video(i, key=i % 45 == 0)) for i in range(300)]  # 1.5 s GOP
    starts = [i for i, s in enumerate(stamps) if s and s.flags & FLAG_SEG_START]
    # keyframes at 0, 1.5, 3, 4.5, 6, 7.5, 9 s: cuts at 0, 3, 6, 9 s (first key >= 2 s after start)
    assert starts == [0, 90, 180, 270]
    assert [stamps[i].seg for i in starts] == [41, 42, 43, 44]
    assert stamps[90].closed.seq == 41 and stamps[90].closed.duration_ticks == 90 * FRAME
    assert all(s.flags & FLAG_KEY for i, s in enumerate(stamps) if i % 45 == 0)
    assert seg.next_seq == 45


def test_nothing_before_the_first_keyframe() -> None:
    seg = Segmenter()
    seg.video_present()
    assert seg.push(AccessUnit(AUDIO, 0, 0, True, b"a")) is None
    assert seg.push(video(1, key=False)) is None
    first = seg.push(video(2, key=True))
    assert first is not None and first.flags == FLAG_KEY | FLAG_SEG_START | FLAG_PART_START and first.seg == 0
    assert seg.push(AccessUnit(AUDIO, 7000, 7000, True, b"a")).seg == 0
    assert seg.dropped_before_start == 2


def test_cut_due_says_from_when_a_keyframe_closes_the_open_segment() -> None:
    """What the RTMP ingest wakes by (cut_due_ms): -1 until the first keyframe opens a segment,
    then the open segment's start plus the target, in milliseconds; None without video."""
    assert Segmenter().cut_due_ms() is None  # no video (yet): keyframes do not cut
    seg = Segmenter(target_s=2.0, first_target_s=1.0)
    seg.video_present()
    assert seg.cut_due_ms() == -1
    seg.push(video(3, key=True))  # opens segment 0 at 100 ms; the first one may close after 1 s
    assert seg.cut_due_ms() == 100 + 1000
    seg.push(video(10, key=True))  # too soon: still open
    assert seg.cut_due_ms() == 1100
    seg.push(video(33, key=True))  # 1.1 s: closes it; the next one runs the full target
    assert seg.cut_due_ms() == 1100 + 2000


@pytest.mark.parametrize("step, track", [(3000, VIDEO), (3750, VIDEO), (3600, VIDEO), (1500, VIDEO),
                                         (1920, AUDIO), (2090, AUDIO)])
def test_part_due_names_the_frame_that_starts_the_next_part(step: int, track: int) -> None:
    """What the RTMP ingest reads by (part_due_ms): after each frame, the millisecond of the
    frame that will start the next LL part -- at 24, 25, 30 and 60 fps and for audio-only
    streams, where a part may end before the target (24 fps: after 167 ms) -- exactly."""
    seg = Segmenter(target_s=2.0, part_target_s=0.2)
    if track == VIDEO:
        seg.video_present()
    assert seg.part_due_ms() is None  # no segment open
    predicted, checked = None, 0
    first = 0 if track == VIDEO else 60  # audio-only: the first cut comes after a second
    for i in range(first + 200):
        stamp = seg.push(AccessUnit(track, i * step, i * step, i % 60 == 0, b"x"))
        if stamp is not None and stamp.flags & FLAG_PART_START and not stamp.flags & FLAG_SEG_START:
            assert predicted == i * step // 90, f"frame {i}"
            checked += 1
        predicted = seg.part_due_ms()
    assert checked >= 10


def test_audio_only_stream_cuts_on_audio_after_a_second_without_video() -> None:
    seg = Segmenter(target_s=2.0)
    step = 1920  # 1024 samples at 48 kHz in 90 kHz ticks
    stamps = [seg.push(AccessUnit(AUDIO, i * step, i * step, True, b"a")) for i in range(200)]
    starts = [i for i, s in enumerate(stamps) if s and s.flags & FLAG_SEG_START]
    assert starts[0] == 47  # the first frame at or after 1 s of audio
    assert all((starts[k + 1] - starts[k]) * step >= 180000 for k in range(len(starts) - 1))


def test_timestamps_made_safe() -> None:
    seg = Segmenter()
    seg.video_present()
    a = video(10, True)
    seg.push(a)
    b = AccessUnit(VIDEO, 5, 5, False, b"v")  # steps back
    seg.push(b)
    assert b.dts == a.dts + 1 and b.pts >= b.dts and seg.timestamp_fixes == 1
    c = AccessUnit(VIDEO, 100, 200000, False, b"v")  # pts < dts
    seg.push(c)
    assert c.pts == c.dts


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(-5000, 20000), st.booleans()),
                min_size=1, max_size=200))
def test_property_monotonic_dts_and_segments_start_on_video_keyframes(steps) -> None:
    seg = Segmenter(target_s=0.5)
    seg.video_present()
    dts = {VIDEO: 0, AUDIO: 0}
    last = {VIDEO: None, AUDIO: None}
    seqs = []
    for track, delta, key in steps:
        dts[track] += delta
        au = AccessUnit(track, dts[track], dts[track], key, b"x")
        stamp = seg.push(au)
        if last[track] is not None:
            assert au.dts > last[track] or (track == AUDIO and au.dts == last[track])
        last[track] = au.dts
        if stamp is not None:
            if stamp.flags & FLAG_SEG_START:
                assert track == VIDEO and key
                seqs.append(stamp.seg)
    assert seqs == list(range(len(seqs)))
