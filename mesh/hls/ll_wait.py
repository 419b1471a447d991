"""Blocking LL-HLS requests parked on the HTTP fast path, for one rendition. Pure.

A blocking request (``_HLS_msn``/``_HLS_part``) for a part that does not exist yet costs one entry
here: no task, no future, no timer of its own. Entries are kept by what they wait for, so when the
window lists a part, :meth:`BlockedRequests.reached` hands back every request it satisfies in one
go (the routes render each distinct answer once and write the same bytes to all of them). Every
request waits at most the same time, so deadlines come in arrival order: one queue, one timer
for the whole rendition (the routes arm it at :meth:`next_deadline` and call :meth:`expired`).
A request for the part being cut (the preload hint) waits here the same way. An entry whose
client left (:meth:`discard`) or that was answered stays in the queue until its
deadline passes, then goes; nothing else holds it.

Time is passed in; the answer callables are opaque (the fast path's connection callbacks).
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Hashable

from .ll_playlist import reached

Target = tuple[int, int | None]
Answer = Callable[..., None]


class Entry:
    """One parked request: when it gives up, what it waits for, how to answer it, and what it
    asked for: the playlist (with its ``_HLS_skip``) or, with ``media`` set, that part or segment."""

    __slots__ = ("deadline", "target", "answer", "skip", "media")

    def __init__(self, deadline: float, target: Target, answer: Answer, skip: str | None,
                 media: str | None = None):
        self.deadline, self.target, self.answer, self.skip, self.media = deadline, target, answer, skip, media


class BlockedRequests:
    def __init__(self) -> None:
        self._by_target: dict[Target, dict[Hashable, Entry]] = {}
        self._queue: deque[Entry] = deque()  # arrival order = deadline order
        self.waiting = 0
        self.timer: object | None = None  # the routes' timer handle for next_deadline()

    def add(self, target: Target, answer: Answer, skip: str | None, deadline: float,
            media: str | None = None) -> Entry:
        entry = Entry(deadline, target, answer, skip, media)
        self._by_target.setdefault(target, {})[answer] = entry
        self._queue.append(entry)
        self.waiting += 1
        return entry

    def discard(self, entry: Entry) -> None:
        """The client went away: forget its request (its queue slot expires unused)."""
        waiting = self._by_target.get(entry.target)
        if waiting is not None and waiting.get(entry.answer) is entry:
            del waiting[entry.answer]
            self.waiting -= 1
            if not waiting:
                del self._by_target[entry.target]

    def reached(self, last_part: tuple[int, int] | None, last_seq: int | None) -> list[Entry]:
        """Every waiting request a playlist with this live edge satisfies (they leave the list)."""
        due = [t for t in self._by_target if reached(t, last_part, last_seq)]
        out: list[Entry] = []
        for target in due:
            out.extend(self._by_target.pop(target).values())
        self.waiting -= len(out)
        return out

    def all(self) -> list[Entry]:
        """Every waiting request (the stream ended); the list is left empty."""
        out = [e for waiting in self._by_target.values() for e in waiting.values()]
        self._by_target.clear()
        self._queue.clear()
        self.waiting = 0
        return out

    def expired(self, now: float) -> list[Entry]:
        """The waiting requests whose deadline is ``now`` or past (they leave the list)."""
        out: list[Entry] = []
        queue = self._queue
        while queue and queue[0].deadline <= now:
            entry = queue.popleft()
            waiting = self._by_target.get(entry.target)
            if waiting is not None and waiting.get(entry.answer) is entry:
                del waiting[entry.answer]
                if not waiting:
                    del self._by_target[entry.target]
                out.append(entry)
        self.waiting -= len(out)
        return out

    def next_deadline(self) -> float | None:
        """The earliest deadline of a request still waiting (stale queue heads are dropped)."""
        queue = self._queue
        while queue:
            head = queue[0]
            waiting = self._by_target.get(head.target)
            if waiting is not None and waiting.get(head.answer) is head:
                return head.deadline
            queue.popleft()
        return None

    def __len__(self) -> int:
        return self.waiting
