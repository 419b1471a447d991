"""Benchmark: fMP4 packetisation, mesh's Numba kernel vs FFmpeg's mp4 muxer (placeholder)."""
from __future__ import annotations

from collections.abc import Sequence

from mesh_codecs.media import VIDEO, AccessUnit

PART_TARGET_90K = 18_000  # 200 ms


def cut_parts(segment: Sequence[AccessUnit], target_90k: int = PART_TARGET_90K) -> list[list[AccessUnit]]:
    """Cut a segment into LL-HLS parts of about ``target_90k``: a part ends before the video access
    unit whose DTS is ``target_90k`` or more after the part's first video DTS (audio goes with the
    part it arrives in)."""
    parts: list[list[AccessUnit]] = [[]]
    start = None
    for au in segment:
        if au.track == VIDEO:
            if start is None:
                start = au.dts
            elif au.dts - start >= target_90k:
                parts.append([])
                start = au.dts
        parts[-1].append(au)
    return parts
