"""A player alternating between two edges (round-robin) across an origin takeover: the media and
discontinuity sequences it sees never go back, and a segment name never comes with other bytes.

The edges notice a takeover at different moments. Here one edge reaches the registry through a
slow link, so on its own it would follow the new origin later than the other one; an edge asks
the registry before answering a playlist while its origin is quiet, so both answer with the new
numbering once either does. And a window restarted by the takeover keeps the old segments until
the new origin's first one is listed (an empty playlist would read as media sequence 0).
"""
from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from mesh.hls.stream import EdgeStream
from mesh.hls.window import RenditionWindow

from .faults_kit import TcpProxy, fetch, monotonic
from .media import ffmpeg_publish
from .test_hls_window import Feed, fake_packetise

SEGMENT = re.compile(r"^rr\d{9}\.ts$", re.M)


def test_a_takeover_keeps_the_old_window_until_the_new_epoch_lists_a_segment() -> None:
    """Between the new epoch's first segment start and its close, the playlist is the old window
    (never an empty one, whose media sequence would read as 0)."""
    w = RenditionWindow("cam1", fake_packetise, window=3, retired=2, target_s=2.0)
    f = Feed(epoch=1, disc=0)
    w.feed([f.config()] + f.segment(0) + f.segment(1) + f.segment(2))
    before = w.playlist()
    g = Feed(epoch=2, disc=1)  # the new owner starts above the old reservation
    w.feed([g.config()] + g.segment(20))
    assert w.playlist() == before and "#EXT-X-MEDIA-SEQUENCE:0" in before
    w.feed(g.segment(21)[:1])  # segment 20 closes
    text = w.playlist()
    assert "#EXT-X-MEDIA-SEQUENCE:20" in text and "#EXT-X-DISCONTINUITY-SEQUENCE:1" in text
    assert re.findall(r"cam1\d{9}\.ts", text) == ["cam1000000020.ts"] and w.resets == 1


class SlowDirectory:
    """A registry over a slow link: an answer tells the document as it was when asked."""

    def __init__(self, doc: dict, delay_s: float):
        self.doc = doc
        self.delay_s = delay_s
        self.asked = 0

    async def get_stream(self, stream_id: str) -> dict:
        self.asked += 1
        doc = dict(self.doc)
        await asyncio.sleep(self.delay_s)
        return doc


class RecordingBus:
    def __init__(self) -> None:
        self.endpoints: list[str] = []

    def subscribe(self, bus_endpoint, snapshot_endpoint, stream_id, rendition, sink, server_key=None):
        self.endpoints.append(bus_endpoint)
        sub = SimpleNamespace(snapshot_ready=asyncio.Event(), last_rx=time.monotonic() - 5, silent_s=5.0)
        sub.snapshot_ready.set()
        return sub

    async def unsubscribe(self, sub) -> None:
        pass


def owner(epoch: int, bus: str) -> dict:
    return {"_id": "rr", "app": "LiveApp", "status": "broadcasting", "epoch": epoch, "origin_node": bus,
            "bus_endpoint": bus, "snapshot_endpoint": bus + "-snap"}


def test_a_quiet_origin_is_checked_again_when_the_answer_held_was_asked_before_the_takeover() -> None:
    """A question asked just before the new owner's claim is answered (over a slow link) just
    after it, with the old owner. A playlist request that comes right after that answer must
    not take it as fresh: another edge may already list the new owner's segments."""
    async def go() -> None:
        directory = SlowDirectory(owner(1, "tcp://old"), delay_s=0.6)
        bus = RecordingBus()
        stream = EdgeStream("rr", bus, directory,  # type: ignore[arg-type]
                            lambda n: RenditionWindow("rr", fake_packetise), origin_silence_s=3.0)
        stream.follow(directory.doc)
        r = await stream.open("src", snapshot_wait_s=0.1, first_segment_wait_s=0.05)
        asked = time.monotonic()
        question = asyncio.create_task(directory.get_stream("rr"))
        await asyncio.sleep(0)  # asked: the old owner ...
        directory.doc = owner(2, "tcp://new")  # ... and the new owner claims while the answer travels
        stream.apply(await question, asked)
        assert stream.epoch == 1 and directory.asked == 1
        await stream.catch_up(r, 2.0)  # a playlist request right after that answer
        assert directory.asked == 2, "asked the registry again"
        assert stream.epoch == 2 and bus.endpoints == ["tcp://old", "tcp://new"]
        # requests while a question is in flight share it
        await asyncio.gather(*(stream.catch_up(r, 2.0) for _ in range(5)))
        assert directory.asked == 3

    asyncio.run(go())


class Alternating(threading.Thread):
    """A round-robin player: asks edge 0, then edge 1, then edge 0 ... for the playlist, and
    fetches every listed segment from the edge that listed it (once per edge)."""

    def __init__(self, edges: list[str], stream: str):
        super().__init__(daemon=True)
        self.urls = [f"{e}/LiveApp/streams/" for e in edges]
        self.stream = stream
        self.answers: list[tuple[int, int, int, list[str]]] = []  # edge, MSN, DSN, names
        self.hashes: dict[tuple[int, str], str] = {}
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        turn = 0
        while not self.halt.is_set():
            edge = turn % 2
            turn += 1
            try:
                status, body, _ = fetch(f"{self.urls[edge]}{self.stream}.m3u8", timeout_s=10)
            except OSError as exc:
                self.errors.append(f"edge {edge} playlist: {exc}")
                continue
            if status != 200:
                self.errors.append(f"edge {edge} playlist: {status}")
                continue
            text = body.decode()
            ms = re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text)
            ds = re.search(r"#EXT-X-DISCONTINUITY-SEQUENCE:(\d+)", text)
            names = SEGMENT.findall(text)
            self.answers.append((edge, int(ms.group(1)) if ms else 0, int(ds.group(1)) if ds else 0,
                                 names))
            for name in names:
                if (edge, name) in self.hashes:
                    continue
                s, data, _ = fetch(self.urls[edge] + name, timeout_s=5)
                if s == 200:
                    self.hashes[(edge, name)] = hashlib.sha256(data).hexdigest()
            self.halt.wait(0.05)

    def highest(self) -> int:
        return max((int(n[-12:-3]) for *_, names in self.answers for n in names), default=-1)

    def wait_for(self, predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"{what} within {timeout_s} s; answers: {self.answers[-6:]}")


@pytest.mark.integration
@pytest.mark.parametrize("gop,delay_s", [(90, 0.3), (30, 0.45)], ids=["follow-while-open", "follow-late"])
def test_round_robin_player_never_sees_the_sequence_go_back_across_a_takeover(node_factory, mongo, gop: int,
                                                                                 delay_s: float) -> None:
    """``follow-while-open``: the new publisher's keyframes come every 3 s, so both edges follow
    while its first segment is still open (their windows restart before it is listed).
    ``follow-late``: keyframes every second and a slower registry link, so on its own the slow
    edge would follow only after the other edge listed the new origin's first segment."""
    db = urlsplit(mongo)
    slow_db = TcpProxy(db.port, db.hostname or "127.0.0.1")
    origins = [node_factory("origin"), node_factory("origin")]
    # directConnection: through the proxy only (the server's own address is not rediscovered);
    # minPoolSize: connections opened while the link is fast, as a node on a slow link would keep
    # them (a new one costs a handshake round trip on top of the question)
    slow_uri = f"mongodb://127.0.0.1:{slow_db.port}/?directConnection=true&minPoolSize=4"
    edges = [node_factory("edge"), node_factory("edge", mongo=slow_uri)]
    slow_db.delay_s = delay_s  # slow from now on (the edge started at full speed)
    pub = ffmpeg_publish(origins[0].rtmp_url("rr"), 120)
    player = Alternating([e.http for e in edges], "rr")
    try:
        origins[0].wait_for_line(r"stream LiveApp/rr live on", timeout_s=30)
        player.start()
        # the window has slid (MEDIA-SEQUENCE above 0 on both edges), so going back can show
        player.wait_for(lambda: all(any(e == i and m >= 2 for e, m, _, _ in player.answers) for i in (0, 1)),
                        90, "both edges' windows slide")
        before = player.highest()
        player.errors.clear()  # the slow edge's first join may have timed out: what counts is from here
        origins[0].kill()
        pub.kill()
        pub.wait()
        pub = ffmpeg_publish(origins[1].rtmp_url("rr"), 120, gop=gop)  # reconnects at once
        origins[1].wait_for_line(r"stream LiveApp/rr live on \S+ \(epoch 2, .*taking over", timeout_s=30)
        first_new = int(origins[1].wait_for_line(r"live on \S+ \(epoch 2, from segment (\d+)").group(1))
        assert first_new > before
        # every edge's answers reach the new owner's numbering, and a few segments past it
        player.wait_for(lambda: all(any(e == i and names and int(names[-1][-12:-3]) >= first_new + 2
                                        for e, _, _, names in player.answers) for i in (0, 1)),
                        60, "both edges list the new origin's segments")
    finally:
        player.halt.set()
        player.join(15)
        pub.kill()
        slow_db.close()
    assert not player.errors, player.errors[:5]
    msns = [m for _, m, _, _ in player.answers]
    dsns = [d for _, _, d, _ in player.answers]
    back = [(a, b) for a, b in zip(player.answers, player.answers[1:]) if b[1] < a[1] or b[2] < a[2]]
    assert monotonic(msns) and monotonic(dsns), f"went back: {back[:3]}"
    assert dsns[-1] - dsns[0] == 1, "exactly one discontinuity for the takeover"
    # same name, same bytes on both edges
    by_name: dict[str, set[str]] = {}
    for (_, name), digest in player.hashes.items():
        by_name.setdefault(name, set()).add(digest)
    assert all(len(d) == 1 for d in by_name.values()), {n: d for n, d in by_name.items() if len(d) > 1}
    shared = {n for (e, n) in player.hashes if e == 0} & {n for (e, n) in player.hashes if e == 1}
    assert any(int(n[-12:-3]) >= first_new for n in shared), "both edges served the new origin's segments"
