"""The publisher's bounded per-topic window of recent segments, served to late joiners. Pure.

It keeps the latest config, the packets of the last ``max_segments`` complete segments and those of
the open one, within ``max_bytes``. A snapshot is the config followed by that window in ``seq``
order, so a cold edge can list a full playlist at once instead of waiting for new segments.
"""
from __future__ import annotations

from collections import deque
from operator import attrgetter

from .wire import CONFIG, EOS, FLAG_SEG_START, HEARTBEAT, MEDIA, Entry

_payload_of = attrgetter("payload")


class SnapshotWindow:
    def __init__(self, max_segments: int = 6, max_bytes: int = 64 << 20):
        if max_segments < 1:
            raise ValueError("max_segments must be at least 1")
        self.max_segments = max_segments
        self.max_bytes = max_bytes
        self.base_config: Entry | None = None  # the config in force at the start of the window
        self.eos: Entry | None = None
        self._segments: deque[list[Entry]] = deque()  # the last one is open
        self._sizes: deque[int] = deque()
        self.bytes = 0
        self.last_seq = -1

    def add(self, entry: Entry) -> None:
        kind = entry.kind
        if kind == MEDIA:
            self._add_run([entry], len(entry.payload), bool(entry.flags & FLAG_SEG_START))
            return
        if kind == HEARTBEAT:
            return  # takes no seq, so it is not part of the stream
        self.last_seq = entry.seq
        if kind == CONFIG:
            if self._segments:
                self._segments[-1].append(entry)  # a mid-stream change stays in seq order
            else:
                self.base_config = entry
        elif kind == EOS:
            self.eos = entry

    def extend(self, entries: list[Entry], marks: list[int] | None = None) -> None:
        """``add`` each of ``entries`` (in seq order), faster: only the entries at the indices
        ``marks`` (ascending) may start a segment or be anything but media; each run of plain
        media between them joins the open segment in one step. Without ``marks``, every entry
        is looked at."""
        if marks is None:
            for entry in entries:
                self.add(entry)
            return
        start = 0
        for i in marks:
            if i > start:
                run = entries[start:i]
                self._add_run(run, sum(map(len, map(_payload_of, run))), False)
            self.add(entries[i])
            start = i + 1
        if start < len(entries):
            run = entries[start:] if start else entries
            self._add_run(run, sum(map(len, map(_payload_of, run))), False)

    def _add_run(self, run: list[Entry], size: int, seg_start: bool) -> None:
        """Media entries of one segment; ``seg_start``: the first one opens a new segment."""
        self.last_seq = run[-1].seq
        self.bytes += size
        if seg_start or not self._segments:
            self._segments.append(list(run))
            self._sizes.append(size)
            self._trim()
        else:
            self._segments[-1].extend(run)
            self._sizes[-1] += size
            if self.bytes > self.max_bytes:
                self._trim()

    def _trim(self) -> None:
        # Complete segments beyond the bound go; so do old ones while over the byte budget
        # (never the open segment). A config inside a dropped segment becomes the base.
        while len(self._segments) - 1 > self.max_segments or \
                (self.bytes > self.max_bytes and len(self._segments) > 1):
            dropped = self._segments.popleft()
            self.bytes -= self._sizes.popleft()
            for entry in dropped:
                if entry.kind == CONFIG:
                    self.base_config = entry

    @property
    def first_seq(self) -> int:
        """The seq of the window's first entry (a segment start), or the next seq if it is empty."""
        if self._segments:
            return self._segments[0][0].seq
        return self.last_seq + 1

    @property
    def complete_segments(self) -> int:
        """Segments a snapshot would hand over whole (the open one counts once the stream ended)."""
        if not self._segments:
            return 0
        return len(self._segments) - (0 if self.eos is not None else 1)

    def snapshot(self) -> list[Entry]:
        """The base config, then every kept entry in ``seq`` order, then the end of stream if any."""
        out: list[Entry] = [self.base_config] if self.base_config is not None else []
        for segment in self._segments:
            out.extend(segment)
        if self.eos is not None:
            out.append(self.eos)
        return out
