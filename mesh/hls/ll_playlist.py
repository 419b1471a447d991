"""LL-HLS media and master playlists (RFC 8216bis, protocol version 9). Pure: segments in, text out.

A media playlist lists the window's closed segments (``EXTINF`` + URI), each preceded by its
parts (``EXT-X-PART``) while it is within three target durations of the live edge, then the open
segment's parts, then an ``EXT-X-PRELOAD-HINT`` for the part being cut. ``EXT-X-SERVER-CONTROL``
says the server blocks (``CAN-BLOCK-RELOAD=YES``) and how far behind the edge a player should
stay (``PART-HOLD-BACK``, three part targets). Everything derives from the origin's decisions, so
two edges holding the same window render the same text (rendition reports name only renditions
this edge holds, the one thing that may differ).

Blocking requests (``_HLS_msn``/``_HLS_part``) are parsed and judged by :func:`block_target` and
:func:`reached`; the waiting itself is the routes' business. :func:`simple_query` reads the plain
queries the HTTP fast path may answer itself (those directives and nothing else).

Delta updates (``_HLS_skip=YES`` or ``v2``, RFC 8216bis 4.4.3.8 and 6.2.5.1): when the window can
hold more than the Skip Boundary (six target durations), ``EXT-X-SERVER-CONTROL`` advertises
``CAN-SKIP-UNTIL``, and a request with ``_HLS_skip`` gets the playlist with its oldest closed
segments, those that end at least the Skip Boundary before the end of the playlist, replaced by
one ``EXT-X-SKIP:SKIPPED-SEGMENTS=n`` line; the header and everything after the skipped segments
are the full playlist's bytes. With nothing old enough to skip the answer is the full playlist.
There are no date ranges, so ``v2`` only adds the (empty) ``RECENTLY-REMOVED-DATERANGES``.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from .cmaf import LlSegment, part_name, segment_name

VERSION = 9
PART_HOLD_BACK_PARTS = 3
ADVANCE_PART_LIMIT = 3  # how many parts beyond the last one a request may name (RFC 8216bis 6.2.5.2)
ADVANCE_MSN_LIMIT = 2  # how many segments beyond the last one a request may name
SKIP_BOUNDARY_TARGETS = 6  # the Skip Boundary, in target durations (the spec's minimum)
SKIPS = ("YES", "v2")  # the _HLS_skip values served with a delta update
_MAX_DIGITS = 18  # a directive's value fits in 62 bits (larger ones: aiohttp's 400)
_USUAL = re.compile(r"_HLS_msn=([0-9]{1,18})&_HLS_part=([0-9]{1,18})(?:&_HLS_skip=(YES|v2))?")


@dataclass(frozen=True, slots=True)
class Report:
    """Another rendition's live edge, for ``EXT-X-RENDITION-REPORT``."""

    uri: str
    last_msn: int
    last_part: int


def _pdt(ms: int) -> str:
    when = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _duration(seg: LlSegment) -> float:
    return seg.duration_s if seg.duration_s is not None else sum(p.duration_s for p in seg.parts)


def skippable(segments: Sequence[LlSegment], boundary_s: float) -> int:
    """How many of the oldest segments a delta update may skip: closed ones that end at least
    ``boundary_s`` before the end of the playlist."""
    left = sum(_duration(s) for s in segments)
    count = 0
    for seg in segments:
        left -= _duration(seg)
        if seg.duration_s is None or left < boundary_s - 1e-9:
            break
        count += 1
    return count


def render_ll_playlist(base: str, segments: Sequence[LlSegment], *, target_s: float, part_target_s: float,
                       ended: bool, preload: tuple[int, int] | None, reports: Sequence[Report] = (),
                       query: str = "", can_skip: bool = False, skip: str | None = None) -> str:
    """``segments``: listed segments, oldest first, the last one possibly open; ``preload``:
    (segment, part) being cut now; ``query`` (``?token=...``) is appended to every URI.
    ``can_skip``: advertise delta updates (the window may hold more than the Skip Boundary);
    ``skip``: the request's ``_HLS_skip`` (``YES``/``v2``), answered with a delta update."""
    longest = max((s.duration_s for s in segments if s.duration_s is not None), default=target_s)
    target = max(math.ceil(target_s), math.ceil(round(longest, 3)))
    boundary = SKIP_BOUNDARY_TARGETS * target
    can_skip = can_skip and not ended
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION}", f"#EXT-X-TARGETDURATION:{target}",
             f"#EXT-X-PART-INF:PART-TARGET={part_target_s:.3f}"]
    if not ended:
        lines.append("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
                     + (f"CAN-SKIP-UNTIL={boundary:.1f}," if can_skip else "")
                     + f"PART-HOLD-BACK={PART_HOLD_BACK_PARTS * part_target_s:.3f}")
    skipped = skippable(segments, boundary) if can_skip and skip in SKIPS else 0
    if segments:
        lines.append(f"#EXT-X-MEDIA-SEQUENCE:{segments[0].seq}")
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{segments[0].disc}")
    if skipped:
        lines.append(f"#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}"
                     + (',RECENTLY-REMOVED-DATERANGES=""' if skip == "v2" else ""))
    # Parts are listed for the segments within three target durations of the end.
    horizon, since_end, with_parts = 3 * target, 0.0, set()
    for seg in reversed(segments):
        if since_end >= horizon:
            break
        with_parts.add(seg.seq)
        since_end += seg.duration_s if seg.duration_s is not None else sum(p.duration_s for p in seg.parts)
    previous: LlSegment | None = None
    first = len(lines)  # where the segments' lines start
    for n, seg in enumerate(segments):
        if n == skipped and skipped:
            del lines[first:]  # a delta update: the skipped segments' lines go, the rest stays as is
        if previous is not None and seg.disc != previous.disc:
            lines.append("#EXT-X-DISCONTINUITY")
        if previous is None or seg.init != previous.init:
            lines.append(f'#EXT-X-MAP:URI="{seg.init}{query}"')
        if seg.pdt_ms is not None:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(seg.pdt_ms)}")
        if seg.seq in with_parts:
            for p in seg.parts:
                independent = ",INDEPENDENT=YES" if p.independent else ""
                lines.append(f'#EXT-X-PART:DURATION={p.duration_s:.5f},'
                             f'URI="{part_name(base, seg.seq, p.index)}{query}"{independent}')
        if seg.duration_s is not None:
            lines.append(f"#EXTINF:{seg.duration_s:.5f},")
            lines.append(segment_name(base, seg.seq) + query)
        previous = seg
    if ended:
        lines.append("#EXT-X-ENDLIST")
    elif preload is not None:
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{part_name(base, *preload)}{query}"')
    for r in reports:
        lines.append(f'#EXT-X-RENDITION-REPORT:URI="{r.uri}{query}",LAST-MSN={r.last_msn},LAST-PART={r.last_part}')
    return "\n".join(lines) + "\n"


class BadBlockingRequest(ValueError):
    """The ``_HLS_msn``/``_HLS_part`` directives are malformed (HTTP 400)."""


def block_target(params: Mapping[str, str]) -> tuple[int, int | None] | None:
    """The (segment, part or None) a blocking request waits for; None when it does not block."""
    msn, part = params.get("_HLS_msn"), params.get("_HLS_part")
    if msn is None:
        if part is not None:
            raise BadBlockingRequest("_HLS_part needs _HLS_msn")
        return None
    try:
        m = int(msn)
        p = int(part) if part is not None else None
    except ValueError:
        raise BadBlockingRequest("_HLS_msn and _HLS_part must be decimal integers") from None
    if m < 0 or (p is not None and p < 0) or m >= 1 << 62:
        raise BadBlockingRequest("_HLS_msn and _HLS_part must be non-negative")
    return m, p


def reached(target: tuple[int, int | None], last_part: tuple[int, int] | None, last_seq: int | None) -> bool:
    """Whether a playlist with newest part ``last_part`` and newest closed segment ``last_seq``
    satisfies a request for ``target`` (that part, or any later one; a whole segment when no part
    is named)."""
    msn, part = target
    if part is None:
        return last_seq is not None and last_seq >= msn
    return last_part is not None and last_part >= (msn, part)


def too_far(target: tuple[int, int | None], last_part: tuple[int, int] | None) -> bool:
    """A request more than two segments, or more than a few parts, beyond the live edge (400)."""
    if last_part is None:
        return False  # nothing listed yet: the wait is bounded anyway
    msn, part = target
    last_msn, last_index = last_part
    if msn > last_msn + ADVANCE_MSN_LIMIT:
        return True
    return part is not None and msn == last_msn and part > last_index + ADVANCE_PART_LIMIT


def simple_query(query: str) -> tuple[tuple[int, int | None] | None, str | None] | None:
    """Sans-IO: (blocking target or None, ``_HLS_skip`` value or None) of a plain query made of
    ``_HLS_msn``, ``_HLS_part`` and ``_HLS_skip`` (``YES``/``v2``) only, each at most once,
    numbers in ASCII decimal: exactly what :func:`block_target` and :func:`skip_directive` read
    the same way. None for anything else (other keys, a repeated key, ``_HLS_part`` alone, other
    values): the full handler answers it, errors included."""
    if m := _USUAL.fullmatch(query):  # what players send: msn and part, in this order
        return (int(m.group(1)), int(m.group(2))), m.group(3)
    seen: dict[str, str] = {}
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        if not eq or key in seen or key not in ("_HLS_msn", "_HLS_part", "_HLS_skip"):
            return None
        seen[key] = value
    skip = seen.get("_HLS_skip")
    if skip is not None and skip not in SKIPS:
        return None
    msn, part = seen.get("_HLS_msn"), seen.get("_HLS_part")
    for number in (msn, part):
        if number is not None and not (number.isascii() and number.isdigit() and len(number) <= _MAX_DIGITS):
            return None
    if msn is None:
        return None if part is not None else (None, skip)
    return (int(msn), int(part) if part is not None else None), skip


def skip_directive(params: Mapping[str, str]) -> str | None:
    """The ``_HLS_skip`` a request asks for, if it is one we answer with a delta update."""
    value = params.get("_HLS_skip")
    return value if value in SKIPS else None
