"""The Numba frame scaler (mesh_codecs.scale, .scale_av) against FFmpeg's swscale and an exact
float64 area reference; the per-rendition bitrate meter (mesh_codecs.bitrate).

Quality bound (issue 13): on real content, the scaler's PSNR against a high-quality reference
(swscale's Lanczos at the same size) is within 0.5 dB of swscale's own bilinear downscale.
Correctness: the output matches an independently computed float64 area average (prefix sums of
the piecewise-constant image, not the kernel's weight tables) to rounding.
"""
from __future__ import annotations

import io
import math
from fractions import Fraction

import av
import numpy as np
import pytest
from av.video.reformatter import VideoReformatter
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_codecs import scale as S
from mesh_codecs import scale_kernels as K
from mesh_codecs.bitrate import BitrateMeter, average_bps, peak_bps
from mesh_codecs.scale_av import FrameScaler, frame_from_planes, plane_views

LADDER = [((1920, 1080), (1280, 720)), ((1280, 720), (854, 480)), ((1280, 720), (640, 360))]


# --------------------------------------------------------------------------- content and measures


def lavfi_frame(source: str, w: int, h: int, index: int = 1) -> av.VideoFrame:
    with av.open(f"{source}=s={w}x{h}:r=30:d=1", format="lavfi") as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i == index:
                return frame.reformat(format="yuv420p")
    raise AssertionError("lavfi gave too few frames")


def natural_frame(w: int, h: int, seed: int = 1) -> av.VideoFrame:
    """A natural-ish picture: 1/f-like noise (random phases, amplitude falling with frequency)
    plus a gradient, in all three planes."""
    rng = np.random.default_rng(seed)

    def field(pw: int, ph: int) -> np.ndarray:
        fy, fx = np.fft.fftfreq(ph)[:, None], np.fft.rfftfreq(pw)[None, :]
        amp = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(pw, ph))
        spec = amp * np.exp(2j * np.pi * rng.random(amp.shape))
        img = np.fft.irfft2(spec, s=(ph, pw))
        img = (img - img.mean()) / (img.std() + 1e-9)
        ramp = np.linspace(-1, 1, pw)[None, :]
        return np.clip(128 + 40 * img + 30 * ramp, 0, 255).astype(np.uint8)

    cw, ch = S.chroma_size(w, h)
    return frame_from_planes(field(w, h), field(cw, ch), field(cw, ch))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255 ** 2 / mse) if mse > 0 else math.inf


def frame_psnr(a: av.VideoFrame, b: av.VideoFrame) -> float:
    """PSNR over all samples of the three planes (luma weighs 4x each chroma plane, by count)."""
    pa, pb = plane_views(a), plane_views(b)
    se = sum(float(np.sum((x.astype(np.float64) - y.astype(np.float64)) ** 2)) for x, y in zip(pa, pb))
    n = sum(x.size for x in pa)
    return 10 * math.log10(255 ** 2 / (se / n)) if se > 0 else math.inf


def area_reference(plane: np.ndarray, dw: int, dh: int) -> np.ndarray:
    """Exact area averaging in float64, from the integral of the piecewise-constant image."""

    def along_last(a: np.ndarray, n: int) -> np.ndarray:
        src = a.shape[-1]
        prefix = np.concatenate([np.zeros(a.shape[:-1] + (1,)), np.cumsum(a, -1)], -1)

        def integral(x: np.ndarray) -> np.ndarray:
            i = np.minimum(np.floor(x).astype(int), src - 1)
            return prefix[..., i] + (x - i) * a[..., i]

        edges = np.arange(n + 1) * src / n
        return (integral(edges[1:]) - integral(edges[:-1])) / (src / n)

    return along_last(along_last(plane.astype(np.float64).T, dh).T, dw)


def swscale(frame: av.VideoFrame, w: int, h: int, interpolation: str) -> av.VideoFrame:
    return VideoReformatter().reformat(frame, w, h, format="yuv420p", interpolation=interpolation, threads=1)


# --------------------------------------------------------------------------- quality


@pytest.mark.parametrize("source", ["testsrc2", "smptehdbars", "natural"])
@pytest.mark.parametrize("src,dst", LADDER, ids=lambda v: "x".join(map(str, v)))
def test_psnr_within_half_a_db_of_swscale_bilinear(source, src, dst) -> None:
    frame = natural_frame(*src) if source == "natural" else lavfi_frame(source, *src)
    reference = swscale(frame, *dst, "LANCZOS")
    ours = FrameScaler(*src, *dst, backend="numba")(frame)
    theirs = swscale(frame, *dst, "BILINEAR")
    ours_db, theirs_db = frame_psnr(ours, reference), frame_psnr(theirs, reference)
    assert ours_db >= theirs_db - 0.5, \
        f"{source} {src}->{dst}: ours {ours_db:.2f} dB, swscale {theirs_db:.2f} dB"
    # and against an area reference that shares no code with the kernels
    for ours_plane, src_plane in zip(plane_views(ours), plane_views(frame)):
        ref = np.rint(area_reference(src_plane, ours_plane.shape[1], ours_plane.shape[0]))
        assert np.abs(ours_plane.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("src,dst", [((1281, 721), (853, 481)), ((641, 361), (427, 241)),
                                     ((1000, 562), (666, 374)), ((1918, 1078), (1278, 718)),
                                     ((854, 480), (640, 360)), ((333, 187), (111, 63))])
def test_odd_and_unaligned_sizes_match_the_area_reference(src, dst) -> None:
    frame = natural_frame(*src, seed=src[0])
    ours = FrameScaler(*src, *dst, backend="numba")(frame)
    assert (ours.width, ours.height) == dst
    for ours_plane, src_plane in zip(plane_views(ours), plane_views(frame)):
        ref = np.rint(area_reference(src_plane, ours_plane.shape[1], ours_plane.shape[0]))
        assert np.abs(ours_plane.astype(int) - ref).max() <= 1
    reference = swscale(frame, *dst, "LANCZOS")
    assert frame_psnr(ours, reference) >= frame_psnr(swscale(frame, *dst, "BILINEAR"), reference) - 0.5


def test_family_forms_are_chosen_for_the_ladder_sizes_and_agree_with_the_general_form() -> None:
    families = {}
    for src, dst in LADDER:
        plan = S.make_plan(*src, *dst)
        families[dst] = {p.family for p in plan.planes}
        frame = natural_frame(*src, seed=7)
        general = S.scale_planes(S.make_plan(*src, *dst, families=False), plane_views(frame))
        fast = S.scale_planes(plan, plane_views(frame))
        for a, b in zip(general, fast):
            assert np.abs(a.astype(int) - b).max() <= 1  # float sums in another order
    assert families == {(1280, 720): {K.FAMILY_3_2 | K.FAMILY_EXACT}, (854, 480): {K.FAMILY_3_2},
                        (640, 360): {K.FAMILY_2_1 | K.FAMILY_EXACT}}


@settings(max_examples=60, deadline=None)
@given(sw=st.integers(1, 97), sh=st.integers(1, 41), dw=st.integers(1, 97), dh=st.integers(1, 41),
       filt=st.sampled_from(S.FILTERS), seed=st.integers(0, 2**32 - 1))
def test_any_size_any_filter_property(sw, sh, dw, dh, filt, seed) -> None:
    """Every size pair, up or down: a constant stays constant; forms and threads agree."""
    rng = np.random.default_rng(seed)
    cw, ch = S.chroma_size(sw, sh)
    planes = (rng.integers(0, 256, (sh, sw), np.uint8), rng.integers(0, 256, (ch, cw), np.uint8),
              rng.integers(0, 256, (ch, cw), np.uint8))
    plan = S.make_plan(sw, sh, dw, dh, filt)
    out = S.scale_planes(plan, planes)
    assert [p.shape for p in out] == [(dh, dw), S.chroma_size(dw, dh)[::-1], S.chroma_size(dw, dh)[::-1]]
    general = S.scale_planes(S.make_plan(sw, sh, dw, dh, filt, families=False), planes)
    threaded = S.scale_planes(plan, planes, parallel=True)
    for a, g, t in zip(out, general, threaded):
        assert np.array_equal(a, t)
        assert np.abs(a.astype(int) - g).max() <= 1
    for p, q in zip(planes, out):  # a weighted mean stays within its inputs' range
        assert p.min() <= q.min() and q.max() <= p.max()
    flat = tuple(np.full_like(p, 77) for p in planes)
    assert all((q == 77).all() for q in S.scale_planes(plan, flat))


def test_padded_linesizes_are_read_in_place() -> None:
    frame = natural_frame(1000, 562, seed=3)
    tight = tuple(np.ascontiguousarray(p) for p in plane_views(frame))
    padded = []
    for p in tight:  # rows 1024 (or 512) bytes apart, with garbage in the padding
        buf = np.full((p.shape[0], 1024 if p is tight[0] else 512), 0xEE, np.uint8)
        buf[:, : p.shape[1]] = p
        padded.append(buf[:, : p.shape[1]])
    plan = S.make_plan(1000, 562, 666, 374)
    out_pad = [np.full((h, w + 13), 0x55, np.uint8) for h, w in ((374, 666), (187, 333), (187, 333))]
    S.scale_planes(plan, padded, [o[:, :-13] for o in out_pad])
    for a, b in zip(S.scale_planes(plan, tight), out_pad):
        assert np.array_equal(a, b[:, :-13])
        assert (b[:, -13:] == 0x55).all(), "wrote into the output's padding"


def test_decoded_h264_frame_with_linesize_padding() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = 854, 480, "yuv420p"
        with av.open("testsrc2=s=854x480:r=30:d=0.2", format="lavfi") as src:
            for f in src.decode(video=0):
                out.mux(vs.encode(f))
        out.mux(vs.encode(None))
    buf.seek(0)
    with av.open(buf) as c:
        frame = next(c.decode(video=0))
    assert frame.planes[0].line_size > 854  # the decoder pads rows: the case we must read in place
    ours = FrameScaler(854, 480, 640, 360, backend="numba")(frame)
    reference = swscale(frame, 640, 360, "LANCZOS")
    assert frame_psnr(ours, reference) >= frame_psnr(swscale(frame, 640, 360, "BILINEAR"), reference) - 0.5


@pytest.mark.parametrize("src,dst", [((1, 1), (1, 1)), ((1, 9), (1, 4)), ((9, 1), (4, 1)), ((2, 2), (1, 1)),
                                     ((7, 5), (1, 1)), ((3, 3), (2, 2))])
def test_one_pixel_edges(src, dst) -> None:
    rng = np.random.default_rng(5)
    cw, ch = S.chroma_size(*src)
    planes = (rng.integers(0, 256, src[::-1], np.uint8), rng.integers(0, 256, (ch, cw), np.uint8),
              rng.integers(0, 256, (ch, cw), np.uint8))
    out = S.scale_planes(S.make_plan(*src, *dst), planes)
    for p, q in zip(planes, out):
        assert np.abs(q.astype(int) - np.rint(area_reference(p, q.shape[1], q.shape[0]))).max() <= 1


@pytest.mark.parametrize("filt", S.FILTERS)
def test_identity_is_an_exact_copy(filt) -> None:
    frame = natural_frame(641, 361, seed=9)
    out = S.scale_planes(S.make_plan(641, 361, 641, 361, filt), plane_views(frame))
    for a, b in zip(out, plane_views(frame)):
        assert np.array_equal(a, b)


def test_frame_scaler_keeps_timing_and_chooses_per_size() -> None:
    frame = lavfi_frame("testsrc2", 1280, 720)
    frame.pts, frame.time_base = 4500, Fraction(1, 90000)
    for backend in ("numba", "swscale"):
        out = FrameScaler(1280, 720, 640, 360, backend=backend)(frame)
        assert (out.width, out.height, out.format.name) == (640, 360, "yuv420p")
        assert (out.pts, out.time_base) == (4500, Fraction(1, 90000))
    assert FrameScaler(1920, 1080, 1280, 720).backend == "numba"  # the per-size choice in scale_av
    assert FrameScaler(1280, 720, 640, 360).backend == "swscale"
    assert FrameScaler(1280, 720, 854, 480).backend == "swscale"
    # a frame the kernels cannot take goes through swscale, converted to yuv420p
    rgb = frame.reformat(format="rgb24")
    out = FrameScaler(1280, 720, 640, 360, backend="numba")(rgb)
    assert (out.width, out.height, out.format.name) == (640, 360, "yuv420p")
    # threaded
    a = FrameScaler(1280, 720, 640, 360, backend="numba", threads=2)(frame)
    b = FrameScaler(1280, 720, 640, 360, backend="numba")(frame)
    assert all(np.array_equal(x, y) for x, y in zip(plane_views(a), plane_views(b)))


def test_misuse_raises_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="built for 1280x720"):
        FrameScaler(1280, 720, 640, 360)(lavfi_frame("testsrc2", 640, 360))
    with pytest.raises(ValueError, match="unknown filter"):
        S.make_plan(10, 10, 5, 5, "lanczos")
    with pytest.raises(ValueError, match="axis sizes"):
        S.make_plan(0, 10, 5, 5)
    with pytest.raises(ValueError, match="unknown scaler backend"):
        FrameScaler(10, 10, 5, 5, backend="gpu")
    plan = S.make_plan(8, 8, 4, 4)
    good = S.new_planes(8, 8)
    with pytest.raises(ValueError, match="the plan wants 8x8"):
        S.scale_planes(plan, (np.zeros((8, 9), np.uint8),) + good[1:])
    with pytest.raises(ValueError, match="2-D uint8"):
        S.scale_planes(plan, (np.zeros((8, 8), np.int16),) + good[1:])
    with pytest.raises(ValueError, match="contiguous rows"):
        S.scale_planes(plan, (np.zeros((8, 16), np.uint8)[:, ::2],) + good[1:])
    with pytest.raises(ValueError, match="read-only"):
        ro = S.new_planes(4, 4)
        ro[0].flags.writeable = False
        S.scale_planes(plan, good, ro)


def test_rung_sizes() -> None:
    assert S.rung_size(1920, 1080, 720) == (1280, 720)
    assert S.rung_size(1280, 720, 480) == (854, 480)
    assert S.rung_size(1280, 720, 360) == (640, 360)
    assert S.rung_size(1280, 720, 241) == (430, 242)  # odd height -> even
    assert S.rung_size(720, 1280, 360) == (202, 360)  # portrait
    assert S.rung_size(4000, 10, 2) == (800, 2)
    with pytest.raises(ValueError):
        S.rung_size(1280, 0, 360)


# --------------------------------------------------------------------------- bitrate meter


def test_bitrate_meter_peak_and_average_as_rfc_8216_defines_them() -> None:
    m = BitrateMeter(target_duration_s=2.0, window=5)
    assert (m.peak_bps(), m.average_bps(), len(m)) == (0.0, 0.0, 0)
    m.add(10, 500_000, 2.0)  # 2.0 Mbit/s
    m.add(11, 750_000, 2.0)  # 3.0 Mbit/s
    m.add(12, 250_000, 2.0)  # 1.0 Mbit/s
    assert m.peak_bps() == pytest.approx(3_000_000)
    assert m.average_bps() == pytest.approx(8 * 1_500_000 / 6.0)
    assert m.max_segment_bps() == pytest.approx(3_000_000)


def test_short_segments_join_their_neighbours() -> None:
    # a 0.4 s segment of 300 kB (6 Mbit/s alone) is too short to be a set by itself (< 1 s);
    # with its 2 s neighbour it is 8*(300k+500k)/2.4 = 2.67 Mbit/s
    m = BitrateMeter(2.0)
    m.add(1, 500_000, 2.0)
    m.add(2, 300_000, 0.4)
    assert m.peak_bps() == pytest.approx(8 * 800_000 / 2.4)
    assert m.max_segment_bps() == pytest.approx(6_000_000)
    only_short = BitrateMeter(2.0)
    only_short.add(1, 300_000, 0.4)  # nothing qualifies yet: the single-segment rate, an upper bound
    assert only_short.peak_bps() == pytest.approx(6_000_000)


def test_sets_do_not_span_gaps_and_long_segments_stand_alone() -> None:
    segs_gap = BitrateMeter(4.0)
    segs_gap.add(1, 100_000, 1.0)
    segs_gap.add(3, 900_000, 1.0)  # seq 2 missing: 1 and 3 are not contiguous, neither reaches 2 s
    assert segs_gap.peak_bps() == pytest.approx(7_200_000)  # no set qualifies: the largest segment
    long = BitrateMeter(2.0)
    long.add(1, 1_000_000, 4.0)  # longer than 1.5 target durations
    long.add(2, 100_000, 2.0)
    assert long.peak_bps() == pytest.approx(2_000_000)


def test_window_slides_and_lifetime_peak_stays() -> None:
    m = BitrateMeter(2.0, window=2)
    m.add(1, 1_000_000, 2.0)
    m.add(2, 250_000, 2.0)
    m.add(3, 250_000, 2.0)
    assert m.peak_bps() == pytest.approx(1_000_000)
    assert m.lifetime_peak_bps == pytest.approx(4_000_000)


def test_meter_refuses_bad_feeds() -> None:
    m = BitrateMeter(2.0)
    m.add(5, 1, 1.0)
    for seq, nbytes, dur, match in ((5, 1, 1.0, "not after segment 5"), (6, -1, 1.0, "size"),
                                    (6, 1, 0.0, "duration")):
        with pytest.raises(ValueError, match=match):
            m.add(seq, nbytes, dur)
    with pytest.raises(ValueError):
        BitrateMeter(0)
    with pytest.raises(ValueError):
        BitrateMeter(2.0, window=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3_000_000), st.floats(0.05, 6.0)), min_size=1, max_size=12),
       st.floats(0.5, 6.0))
def test_peak_against_brute_force(segs, target) -> None:
    from mesh_codecs.bitrate import Segment
    segments = [Segment(i, 8 * b, d) for i, (b, d) in enumerate(segs)]
    rates = []
    for i in range(len(segments)):
        for j in range(i, len(segments)):
            dur = sum(s.duration_s for s in segments[i:j + 1])
            bits = sum(s.bits for s in segments[i:j + 1])
            if 0.5 * target <= dur <= 1.5 * target or (i == j and dur > 1.5 * target):
                rates.append(bits / dur)
    expected = max(rates) if rates else max(s.bits / s.duration_s for s in segments)
    assert peak_bps(segments, target) == pytest.approx(expected)
    assert average_bps(segments) == pytest.approx(sum(s.bits for s in segments)
                                                  / sum(s.duration_s for s in segments))
