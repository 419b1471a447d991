"""The transcoding ladder: which renditions an origin makes of each published stream. Pure.

A rung is written ``{height}p{video kbps}k`` with an optional frame rate, e.g. ``720p2500k``,
``360p600k@15``; a ladder is a list of rungs (``--abr 720p2500k,480p1000k,360p600k``, ``abr = [...]``
in the TOML, ``MESH_ABR``). Its rendition is named ``{height}p{kbps}kbps`` (``360p600kbps``): the
bus topic ``s/{id}/360p600kbps/`` and the playlist ``{id}_360p600kbps.m3u8``. Audio is passed
through unchanged into every rung.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

RUNG_RE = re.compile(r"(\d{2,4})p(\d{2,6})k(?:bps)?(?:@(\d{1,3}(?:\.\d{1,3})?))?")
RENDITION_RE = re.compile(r"\d{2,4}p\d{2,6}kbps")  # a rung's rendition name
MIN_HEIGHT, MAX_HEIGHT = 72, 4320
MIN_KBPS, MAX_KBPS = 50, 100_000
MAX_RUNGS = 8


@dataclass(frozen=True, order=True)
class Rung:
    height: int
    video_kbps: int
    fps: float | None = None  # None: the source's frame rate

    @property
    def name(self) -> str:
        return f"{self.height}p{self.video_kbps}kbps"

    def width_for(self, src_width: int, src_height: int) -> int:
        """The source's aspect ratio at this height, rounded to an even width (4:2:0)."""
        return max(2, int(round(self.height * src_width / src_height / 2)) * 2)


def parse_rung(text: str) -> Rung:
    m = RUNG_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text.strip()[:40]!r} is not a rung like 720p2500k or 360p600k@15")
    height, kbps = int(m.group(1)), int(m.group(2))
    fps = float(m.group(3)) if m.group(3) else None
    if not MIN_HEIGHT <= height <= MAX_HEIGHT or height % 2:
        raise ValueError(f"rung {text.strip()!r}: height must be even, {MIN_HEIGHT} to {MAX_HEIGHT}")
    if not MIN_KBPS <= kbps <= MAX_KBPS:
        raise ValueError(f"rung {text.strip()!r}: video bitrate must be {MIN_KBPS} to {MAX_KBPS} kbps")
    if fps is not None and not 1 <= fps <= 120:
        raise ValueError(f"rung {text.strip()!r}: frame rate must be 1 to 120")
    return Rung(height, kbps, fps)


def parse_ladder(items: Iterable[str]) -> list[Rung]:
    """Rungs from config text, highest first; duplicates (same height and bitrate) refused."""
    rungs = [parse_rung(item) for item in items if item.strip()]
    if len(rungs) > MAX_RUNGS:
        raise ValueError(f"at most {MAX_RUNGS} rungs")
    names = [r.name for r in rungs]
    if len(set(names)) != len(names):
        raise ValueError("the same rung is listed twice")
    return sorted(rungs, key=lambda r: (-r.height, -r.video_kbps))


def rungs_for_source(rungs: Iterable[Rung], src_height: int) -> list[Rung]:
    """The rungs a source of ``src_height`` gets: none taller than the source."""
    return [r for r in rungs if r.height <= src_height]
