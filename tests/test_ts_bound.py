"""The origin's bound of a rung's MPEG-TS segment size (BANDWIDTH of renditions an edge does not
hold) against the bytes the edge's real packetiser writes for the same access units."""
from __future__ import annotations

import random

from mesh_codecs.media import AUDIO, VIDEO, AccessUnit, warm_sample
from mesh_codecs.ts import TsPacketiser

from mesh.ingest.abr import ts_packets_bound


def _units(rng: random.Random, seconds: int) -> list[AccessUnit]:
    aus = []
    for i in range(30 * seconds):
        key = i % 60 == 0
        size = rng.randint(4000, 20000) if key else rng.randint(50, 3000)
        nal = bytes([0x65 if key else 0x41]) + rng.randbytes(size)
        aus.append(AccessUnit(VIDEO, 3000 * i + 3000, 3000 * i, key, len(nal).to_bytes(4, "big") + nal))
        for k in range(3 if i % 2 else 2):  # ~47 AAC frames a second
            aus.append(AccessUnit(AUDIO, 3000 * i + 900 * k, 3000 * i + 900 * k, True,
                                  rng.randbytes(rng.randint(6, 700))))
    return aus


def test_bound_is_never_below_and_close_to_the_real_segment() -> None:
    video, audio, _ = warm_sample()
    rng = random.Random(7)
    for _ in range(5):
        aus = _units(rng, 2)
        real = len(TsPacketiser(video, audio).segment(aus)) // 188
        bound = 2 + sum(ts_packets_bound(len(au.data), au.track == VIDEO, au.key, len(video.avcc))
                        for au in aus)
        assert bound >= real
        # these units carry a DTS (PTS > DTS): the bound is exact but for the avcC framing of
        # SPS/PPS (B-frames off, a rung's DTS field is absent: at most 5 bytes a unit of slack)
        assert bound - real <= 2, (bound, real)
