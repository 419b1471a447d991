"""Origin takeovers with real processes: SIGKILL at many offsets around segment boundaries, the
publisher reconnecting to the other origin at once, a warm edge that saw every epoch and an edge
that is cold again for every takeover. Same name, same bytes, always; a live owner is never robbed.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import time

import pytest

from .faults_kit import Viewer, fetch, monotonic
from .media import ffmpeg_publish
from .procs import wait_until

pytestmark = pytest.mark.integration

KILL_OFFSETS_S = (0.0, 0.3, 0.7, 1.1, 1.6)  # after a fresh segment was listed on the warm edge
DECODE_TROUBLE = re.compile(r"error while decoding|non-existing PPS|Invalid NAL|concealing|corrupt",
                            re.I)


def published(origin, stream: str, epoch: int, pub: subprocess.Popen) -> None:
    """The publish was accepted at once (no refusal), as ``epoch``."""
    origin.wait_for_line(rf"stream LiveApp/{stream} live on \S+ \(epoch {epoch},", timeout_s=20)
    assert pub.poll() is None, f"publisher refused: {pub.stderr.read() if pub.stderr else ''}"


def test_kills_around_boundaries_never_reuse_a_name_and_takeover_is_immediate(node_factory) -> None:
    origins = [node_factory("origin"), node_factory("origin")]
    warm = node_factory("edge")
    cold = node_factory("edge", env={"MESH_EDGE_IDLE_UNSUBSCRIBE_S": "1.5"})
    base = f"{warm.http}/LiveApp/streams/"
    pub = ffmpeg_publish(origins[0].rtmp_url("kam"), 300)
    viewer = Viewer(base, "kam")
    reader = subprocess.Popen(["ffmpeg", "-hide_banner", "-v", "error", "-i", f"{base}kam.m3u8",
                               "-f", "null", "-"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    cold_hashes: dict[str, str] = {}
    recoveries = []
    try:
        published(origins[0], "kam", 1, pub)
        viewer.wait_for_new(0)
        for i, offset in enumerate(KILL_OFFSETS_S):
            owner, other = origins
            listed = viewer.wait_for_new(viewer.last())  # a boundary just passed on the edge
            time.sleep(offset)  # where in the segment the kill lands is what this test varies
            before = viewer.last()
            killed_at = time.monotonic()
            owner.kill()
            pub.kill()
            pub.wait()
            pub = ffmpeg_publish(other.rtmp_url("kam"), 300)  # reconnects at once
            published(other, "kam", i + 2, pub)
            assert "already being published" not in other.output()
            replacement = node_factory("origin", wait=False)
            first_new = viewer.wait_for_new(before, timeout_s=40)
            recoveries.append(viewer.first_seen[f"kam{first_new:09d}.ts"] - killed_at)
            assert first_new > listed
            # the cold edge joins now, from the new origin's snapshot only
            status, body, _ = fetch(f"{cold.http}/LiveApp/streams/kam.m3u8")
            assert status == 200, body
            for name in re.findall(r"kam\d{9}\.ts", body.decode()):
                viewer.poll()
                s, data, _ = fetch(f"{cold.http}/LiveApp/streams/{name}")
                if s == 200:
                    cold_hashes[name] = hashlib.sha256(data).hexdigest()
            # cold again (this round's line: wait_for_line would find an earlier round's)
            wait_until(lambda: sum("no viewer asked for kam" in line for line in list(cold.lines)) > i,
                       timeout_s=20, interval_s=0.2, message=f"the cold edge to leave kam (round {i + 1})")
            origins = [other, replacement.wait_ready()]
        # a live owner is never robbed: a second publisher on the other origin is refused
        intruder = ffmpeg_publish(origins[1].rtmp_url("kam"), 20)
        assert intruder.wait(30) != 0
        assert "already being published on" in intruder.stderr.read()
        assert pub.poll() is None
    finally:
        pub.kill()
        viewer.stop()
        reader.kill()
    print("kill -> first new segment listed on the warm edge (s):", [round(r, 2) for r in recoveries])
    assert reader.stderr is not None
    trouble = [line for line in reader.stderr.read().splitlines() if DECODE_TROUBLE.search(line)]
    assert not trouble, trouble[:5]
    # Same name, same bytes: every name the cold edge served has the warm edge's bytes.
    shared = set(cold_hashes) & set(viewer.hashes)
    assert len(shared) >= len(KILL_OFFSETS_S), (sorted(cold_hashes), viewer.numbers())
    assert {n: cold_hashes[n] for n in shared} == {n: viewer.hashes[n] for n in shared}
    # the warm edge: media sequence monotonic, one discontinuity per takeover
    assert monotonic(viewer.media_sequences) and monotonic(viewer.disc_sequences)
    assert viewer.disc_sequences[-1] - viewer.disc_sequences[0] == len(KILL_OFFSETS_S)
    assert len(set(viewer.disc_sequences)) == len(KILL_OFFSETS_S) + 1
    assert not viewer.errors


def test_a_republish_on_the_same_origin_continues_on_a_watching_edge(node_factory) -> None:
    """The edge rechecks the registry every few seconds; a new epoch on the origin it already
    follows arrives on the same subscription and must keep being listed (numbers continue: a
    clean finish hands the unused reservation back)."""
    origin = node_factory("origin")
    edge = node_factory("edge")
    viewer = Viewer(f"{edge.http}/LiveApp/streams/", "again")
    pub = ffmpeg_publish(origin.rtmp_url("again"), 5)
    try:
        assert pub.wait(30) == 0
        wait_until(lambda: (s := fetch(f"{edge.http}/LiveApp/streams/again.m3u8"))[0] == 200
                   and s[1].endswith(b"#EXT-X-ENDLIST\n"), timeout_s=20, interval_s=0.2)
        last = viewer.last()
        pub = ffmpeg_publish(origin.rtmp_url("again"), 60)
        published(origin, "again", 2, pub)
        first = viewer.wait_for_new(last, timeout_s=30)
        assert first == last + 1, "numbering continues after a clean finish"
        # several registry rechecks later the edge still lists the new epoch's segments
        edge_checks = viewer.wait_for_new(viewer.wait_for_new(viewer.wait_for_new(first)))
        assert edge_checks >= first + 3
    finally:
        pub.kill()
        viewer.stop()
    assert monotonic(viewer.media_sequences)
