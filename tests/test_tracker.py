"""The subscriber's ordering logic and the publisher's snapshot window, without sockets."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.broker.tracker import LIVE, RESYNC, Gap, TopicTracker
from mesh.broker.window import SnapshotWindow
from mesh.broker.wire import CONFIG, EOS, FLAG_KEY, FLAG_SEG_START, HEARTBEAT, MEDIA, Entry


def stream(n: int, seg_len: int = 5, start: int = 0, epoch: int = 1) -> list[Entry]:
    """config, then media where every seg_len-th packet starts a segment."""
    out = [Entry(start, CONFIG, extra={"v": 1}, epoch=epoch)]
    for i in range(n):
        flags = FLAG_KEY | FLAG_SEG_START if i % seg_len == 0 else 0
        out.append(Entry(start + 1 + i, MEDIA, 0, i * 3000, i * 3000, flags, i // seg_len,
                         bytes([i % 256]) * 10, epoch=epoch))
    return out


def media_seqs(deliveries) -> list[int]:
    return [d.seq for d in deliveries if not isinstance(d, Gap) and d.kind == MEDIA]


def test_late_join_snapshot_then_live_no_gap_no_duplicate() -> None:
    entries = stream(40)
    window = SnapshotWindow(max_segments=3)
    for e in entries[:31]:
        window.add(e)
    t = TopicTracker()
    assert t.on_live([entries[26], entries[27]]) == []  # buffered while joining
    assert t.wants_snapshot
    out = t.on_snapshot(window.first_seq, 30, window.snapshot())
    out += t.on_live(entries[28:])  # overlaps what the snapshot carried
    assert out[0].kind == CONFIG
    seqs = media_seqs(out)
    assert seqs == list(range(seqs[0], 41)), "contiguous, no duplicates"
    assert out[1].seg_start, "the snapshot starts at a segment boundary"
    # 3 complete segments + the open one
    assert seqs[0] == 11 and t.state == LIVE and t.lost == 0 and t.gaps == 0


def joined(entries: list[Entry], upto: int) -> TopicTracker:
    """A tracker that joined with a snapshot holding entries[0..upto]."""
    t = TopicTracker()
    t.on_live([Entry(entries[upto].seq + 1, HEARTBEAT, epoch=1)])
    t.on_snapshot(entries[0].seq + 1, entries[upto].seq, entries[: upto + 1])
    return t


def test_gap_without_recovery_resyncs_at_next_segment_start() -> None:
    entries = stream(30)
    t = joined(entries, 0)
    t.recover = False
    out = t.on_live(entries[1:8])
    out2 = t.on_live(entries[10:])  # 8 and 9 were dropped by the publisher
    assert isinstance(out2[0], Gap) and out2[0].lost == 2
    # 10 is mid-segment (segment 1 = seqs 6..10); discard until 11 which starts segment 2
    assert media_seqs(out2)[0] == 11 and entries[11].seg_start
    assert t.discarded == 1 and t.lost == 2 and t.state == LIVE
    assert media_seqs(out) == list(range(1, 8))


def test_gap_repaired_silently_from_the_window() -> None:
    entries = stream(30)
    window = SnapshotWindow(max_segments=3)
    t = joined(entries, 0)
    for e in entries[:8]:
        window.add(e)
    assert media_seqs(t.on_live(entries[1:8])) == list(range(1, 8))
    assert t.on_live(entries[10:13]) == []  # 8, 9 missing: buffer and ask for a snapshot
    assert t.wants_snapshot
    for e in entries[8:14]:
        window.add(e)
    out = t.on_snapshot(window.first_seq, 13, window.snapshot())
    out += t.on_live(entries[13:])
    assert not any(isinstance(d, Gap) for d in out)
    assert media_seqs(out) == list(range(8, 31)), "the missing entries came back, in order"
    assert t.lost == 0 and t.recovered == 2 and t.state == LIVE


def test_gap_older_than_the_window_is_reported_and_restarts_at_a_segment() -> None:
    entries = stream(40)
    window = SnapshotWindow(max_segments=1)
    t = joined(entries, 0)
    t.on_live(entries[1:4])
    t.on_live(entries[30:32])  # 4..29 missing
    for e in entries[:32]:
        window.add(e)
    out = t.on_snapshot(window.first_seq, 31, window.snapshot())
    assert isinstance(out[0], Gap) and out[0].lost == window.first_seq - 4
    assert out[1].kind == CONFIG and out[2].seg_start and out[2].seq == window.first_seq


def test_heartbeat_reveals_tail_loss_and_is_not_delivered() -> None:
    t = TopicTracker()
    t.on_live([Entry(0, HEARTBEAT, epoch=1)])
    assert t.on_snapshot(0, -1, []) == []
    t.recover = False
    out = t.on_live([Entry(0, HEARTBEAT, epoch=1), Entry(3, HEARTBEAT, epoch=1)])
    assert out == [Gap(3, "hwm")] and t.state == RESYNC


def test_stale_epoch_dropped() -> None:
    t = TopicTracker()
    t.on_live([Entry(1, HEARTBEAT, epoch=5)])
    t.on_snapshot(1, 0, [], epoch=5)
    out = t.on_live([Entry(1, MEDIA, flags=3, epoch=4), Entry(1, MEDIA, flags=3, epoch=5)])
    assert media_seqs(out) == [1] and t.stale == 1


def test_snapshot_failure_joins_at_segment_start() -> None:
    entries = stream(20)
    t = TopicTracker()
    t.on_live(entries[3:9])
    out = t.on_snapshot_failed()
    assert media_seqs(out) == [6, 7, 8] and out[0].seg_start


def test_window_keeps_bounded_segments_and_base_config() -> None:
    w = SnapshotWindow(max_segments=2)
    entries = stream(23)
    for e in entries:
        w.add(e)
    snap = w.snapshot()
    assert snap[0].kind == CONFIG
    assert [e.seg for e in snap[1:]] == [2] * 5 + [3] * 5 + [4] * 3
    assert w.complete_segments == 2
    w.add(Entry(99, EOS, epoch=1))
    assert w.snapshot()[-1].kind == EOS and w.complete_segments == 3


def test_window_byte_budget_never_drops_open_segment() -> None:
    w = SnapshotWindow(max_segments=10, max_bytes=25)
    for e in stream(12):
        w.add(e)
    media = [e for e in w.snapshot() if e.kind == MEDIA]
    assert {e.seg for e in media} == {2}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=120), st.integers(1, 8))
def test_random_drops_never_deliver_partial_segments(keep: list[bool], seg_len: int) -> None:
    """Whatever is dropped, every delivered segment is complete from its first packet on."""
    entries = stream(len(keep), seg_len)
    t = joined(entries, 0)
    t.recover = False
    out = t.on_live([e for e, k in zip(entries[1:], keep) if k])
    by_seg: dict[int, list[int]] = {}
    for d in out:
        if isinstance(d, Gap) or d.kind != MEDIA:
            continue
        by_seg.setdefault(d.seg, []).append(d.seq)
    for seg, seqs in by_seg.items():
        first = 1 + seg * seg_len
        assert seqs[0] == first, f"segment {seg} delivered from {seqs[0]}, not its start {first}"
        assert seqs == list(range(first, first + len(seqs)))
    # every seq up to the last one received is accounted for exactly once
    last_received = max((i + 1 for i, k in enumerate(keep) if k), default=0)
    delivered_media = sum(1 for d in out if not isinstance(d, Gap) and d.kind == MEDIA)
    assert t.lost + delivered_media + t.discarded == last_received
