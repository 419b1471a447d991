"""The cluster across real (namespaced) hosts: each node, the database and nginx on its own address.

Skipped, with the reason, where network namespaces cannot be made (not root, no iproute2). The
harness is bench/_lab.py (hosts on a private bridge) and bench/_lagproxy.py (delay and loss where
the kernel has no netem); `mesh bench faults` runs the same scenarios and reports the figures.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterator

import pytest

from mesh_bench._lab import unavailable
from mesh_bench.faults import LabCluster, Player, http_get, wait, watched_cluster

from .browser import play_hls, require_chromium
from .media import ffmpeg_decode_errors

pytestmark = [pytest.mark.integration]

WHY = unavailable()
if WHY:
    pytestmark.append(pytest.mark.skip(reason=f"network namespaces unavailable: {WHY}"))


@pytest.fixture(scope="module")
def lab_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabCluster, Player]]:
    with watched_cluster(tmp_path_factory.mktemp("lab")) as (cl, player):
        yield cl, player


def test_every_node_is_its_own_host_and_advertises_its_own_address(lab_cluster) -> None:
    cl, player = lab_cluster
    lb = cl.hosts["lb"].address
    status, body = http_get(f"http://{lb}:5080/rest/v2/cluster/nodes/0/50")
    assert status == 200
    rows = {r["id"]: r for r in json.loads(body)}
    for name in ("origin-a", "origin-b", "edge-1", "edge-2"):
        address = cl.hosts[name].address
        assert rows[name]["host"] == address and rows[name]["httpUrl"] == f"http://{address}:5080", rows[name]
        assert rows[name]["status"] == "alive"
    assert len({cl.hosts[n].address for n in cl.hosts}) == len(cl.hosts)
    assert ffmpeg_decode_errors(cl.play_url, seconds=3) == ""


def test_a_partitioned_edge_is_taken_out_by_the_balancer_and_returns_on_heal(lab_cluster) -> None:
    cl, player = lab_cluster
    before = player.mark()
    edge = cl.hosts["edge-2"]
    direct = f"http://{edge.address}:5080/LiveApp/streams/cam1.m3u8"
    assert http_get(direct)[0] == 200
    edge.cut()
    try:
        assert http_get(direct, timeout_s=1)[0] == 0, "the partitioned edge is unreachable"
        seen = player.new_segment_at
        wait(lambda: player.new_segment_at > seen, 30, "new segments through the balancer meanwhile")
    finally:
        edge.heal()
    wait(lambda: http_get(direct)[0] == 200, 30, "the healed edge serving again")
    after = player.mark()
    assert after["reused"] == before["reused"] == 0 and after["msn_regressions"] == 0


def test_hlsjs_keeps_playing_when_an_edge_is_killed_behind_round_robin(lab_cluster) -> None:
    require_chromium()
    cl, player = lab_cluster
    killer = threading.Timer(6.0, cl.nodes["edge-1"].kill)
    killer.start()
    try:
        report = play_hls(cl.play_url, min_advance_s=12.0, timeout_s=90)
    finally:
        killer.cancel()
        if cl.nodes["edge-1"].proc.poll() is not None:
            cl.start_node("edge", "edge-1")
    assert report.fatal_error is None, report.errors + report.log[-10:]
    assert report.advanced_s >= 12.0
    assert player.mark()["reused"] == 0


def test_origin_to_edge_delay_and_loss_are_repaired(tmp_path: Path) -> None:
    with watched_cluster(tmp_path, wan_delay_ms=50, wan_loss=0.01) as (cl, player):
        count = player.mark()["segments"]
        wait(lambda: player.mark()["segments"] >= count + 6, 60, "six more segments over the lossy link")
        report = player.mark()
        assert report["lost"] == 0 and report["reused"] == 0 and report["msn_regressions"] == 0, report
        assert ffmpeg_decode_errors(cl.play_url, seconds=3) == ""
