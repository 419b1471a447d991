"""The bus's fast paths agree with its plain paths: the snapshot window fed in batches, the
tracker's batched delivery, and the Numba header kernel against the general msgpack decoder.
Pure and quick (no sockets); property tests over random sequences."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.broker.tracker import LIVE, Gap, TopicTracker
from mesh.broker.window import SnapshotWindow
from mesh.broker.wire import CONFIG, EOS, FLAG_KEY, FLAG_SEG_START, HEARTBEAT, MEDIA, Entry


def _entry(seq: int, kind: int, flags: int = 0, size: int = 3, epoch: int = 1) -> Entry:
    extra = {"v": seq} if kind in (CONFIG, EOS) else None
    payload = bytes(size) if kind == MEDIA else b""
    return Entry(seq, kind, 0, seq * 10, seq * 10, flags, seq // 4, payload, extra, epoch)


class ReferenceWindow:
    """The window's rules written plainly, one entry at a time (the pre-batching implementation)."""

    def __init__(self, max_segments: int, max_bytes: int):
        self.max_segments, self.max_bytes = max_segments, max_bytes
        self.base_config: Entry | None = None
        self.eos: Entry | None = None
        self.segments: list[list[Entry]] = []
        self.bytes, self.last_seq = 0, -1

    def add(self, e: Entry) -> None:
        if e.kind == HEARTBEAT:
            return
        self.last_seq = e.seq
        if e.kind == MEDIA:
            if e.seg_start or not self.segments:
                self.segments.append([])
            self.segments[-1].append(e)
            self.bytes += len(e.payload)
            while len(self.segments) - 1 > self.max_segments or \
                    (self.bytes > self.max_bytes and len(self.segments) > 1):
                dropped = self.segments.pop(0)
                self.bytes -= sum(len(x.payload) for x in dropped if x.kind == MEDIA)
                self.base_config = next((x for x in reversed(dropped) if x.kind == CONFIG),
                                        self.base_config)
        elif e.kind == CONFIG:
            if self.segments:
                self.segments[-1].append(e)
            else:
                self.base_config = e
        elif e.kind == EOS:
            self.eos = e

    @property
    def first_seq(self) -> int:
        return self.segments[0][0].seq if self.segments else self.last_seq + 1

    @property
    def complete_segments(self) -> int:
        return len(self.segments) - (0 if self.eos is not None or not self.segments else 1)

    def snapshot(self) -> list[Entry]:
        body = [e for seg in self.segments for e in seg]
        return ([self.base_config] if self.base_config else []) + body + ([self.eos] if self.eos else [])


def _window_state(w: SnapshotWindow) -> tuple:
    return (w.first_seq, w.last_seq, w.bytes, w.complete_segments, [e.seq for e in w.snapshot()],
            w.base_config.seq if w.base_config else None)


ITEM = st.tuples(st.sampled_from([MEDIA] * 6 + [CONFIG, EOS, HEARTBEAT]), st.booleans(),
                 st.integers(0, 40))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(ITEM, max_size=12), max_size=8), st.integers(1, 3), st.integers(20, 400))
def test_window_extend_in_batches_equals_adding_one_by_one(batches, segments, max_bytes) -> None:
    """The publisher hands the window one tick's batch with the indices of its segment starts
    and non-media entries; the result must be exactly what adding each entry gives."""
    one, batched = ReferenceWindow(segments, max_bytes), SnapshotWindow(segments, max_bytes)
    seq = 0
    for batch in batches:
        entries, marks = [], []
        for kind, start, size in batch:
            flags = FLAG_KEY | FLAG_SEG_START if kind == MEDIA and start else 0
            if kind != MEDIA or flags:
                marks.append(len(entries))
            entries.append(_entry(seq, kind, flags, size))
            seq += kind != HEARTBEAT
        for e in entries:
            one.add(e)
        batched.extend(entries, marks)
        assert _window_state(batched) == _window_state(one)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([MEDIA] * 5 + [HEARTBEAT, CONFIG]),
                          st.integers(1, 2)), min_size=1, max_size=30), st.integers(1, 6))
def test_tracker_fast_path_delivers_what_the_entry_by_entry_path_does(steps, chunk) -> None:
    """Live batches are checked in C (contiguous, no heartbeat, one epoch) and passed through;
    any batch that is not like that must still get the full treatment."""
    entries, seq = [], 1
    for jump, kind, epoch in steps:
        seq += jump if jump < 3 else 0  # 0: duplicate, 1: next, 2: a gap
        entries.append(_entry(seq, kind, FLAG_SEG_START if seq % 4 == 0 else 0, epoch=epoch))
    class EntryByEntry(TopicTracker):
        _apply = TopicTracker._apply_each

    fast, slow = TopicTracker(), EntryByEntry()
    for t in (fast, slow):
        t.on_live([Entry(1, HEARTBEAT, epoch=1)])
        t.on_snapshot(1, 0, [], epoch=1)
        t.recover = False
        assert t.state == LIVE
    out_fast, out_slow = [], []
    for i in range(0, len(entries), chunk):
        out_fast += fast.on_live(entries[i:i + chunk])
        out_slow += slow.on_live(entries[i:i + chunk])

    def seen(out: list) -> list:
        return [("gap", d.lost) if isinstance(d, Gap) else (d.seq, d.kind, d.epoch) for d in out]

    assert seen(out_fast) == seen(out_slow)
    assert (fast.next_seq, fast.delivered, fast.lost, fast.state, fast.epoch) == \
           (slow.next_seq, slow.delivered, slow.lost, slow.state, slow.epoch)


# The subscriber's header kernel (wire_kernels) must agree with the general msgpack path: it may
# only decline (then the general path decides), never accept differently.
def _mp_int(v: int, wide: int) -> bytes:
    """A msgpack integer: the shortest form (wide=0) or a wider valid one."""
    import struct

    if wide == 1:
        return b"\xd3" + struct.pack(">q", v)
    if wide == 2 and 0 <= v < 1 << 64:
        return b"\xcf" + struct.pack(">Q", v)
    import msgpack

    return msgpack.packb(v)


def _header(epoch: int, rows: list[list[int]], widths: list[int]) -> bytes:
    import msgpack

    out = bytearray(b"\x83\xa1v\x01\xa1e" + msgpack.packb(epoch) + b"\xa1h")
    out += bytes([0x90 | len(rows)]) if len(rows) < 16 else b"\xdc" + len(rows).to_bytes(2, "big")
    k = 0
    for row in rows:
        out.append(0x98)
        for v in row:
            out += _mp_int(v, widths[k % len(widths)])
            k += 1
    return bytes(out)


FIELD = st.one_of(st.integers(0, 300), st.integers(-2**63, 2**63 - 1),
                  st.sampled_from([2**62, 2**62 + 1, -2**62 - 1]))


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 4), st.integers(0, 16), FIELD, FIELD,
                          st.integers(0, 4), st.integers(0, 2**40), st.integers(0, 40)),
                min_size=1, max_size=20),
       st.lists(st.integers(0, 2), min_size=1, max_size=5), st.integers(-3, 3), st.data())
def test_header_kernel_agrees_with_the_msgpack_path(rows, widths, payload_delta, data) -> None:
    from mesh.broker import wire

    header = _header(7, [list(r) for r in rows], widths)
    if data.draw(st.booleans()):  # and sometimes a damaged one
        b = bytearray(header)
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] ^= data.draw(st.integers(1, 255))
        header = bytes(b[:data.draw(st.integers(1, len(b)))]) if data.draw(st.booleans()) else bytes(b)
    payload = bytes(max(0, sum(r[7] for r in rows) + payload_delta))
    frames = [b"s/x/src/", header, payload]

    def run() -> tuple:
        try:
            _, _, entries = wire.decode(frames)
        except wire.WireError as exc:
            return ("error", exc.reason)
        return ("ok", [(e.seq, e.kind, e.track, e.pts, e.dts, e.flags, e.seg, bytes(e.payload), e.extra,
                        e.epoch) for e in entries])

    assert wire.load_kernels(), "Numba is a dependency: the kernel must load"
    with_kernel = run()
    saved, wire._kernels = wire._kernels, False
    try:
        general = run()
    finally:
        wire._kernels = saved
    assert with_kernel == general
