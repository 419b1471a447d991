"""Operators' metrics on a real node with a stream playing, and the Grafana dashboard that uses them."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .procs import node_env, wait_until

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/grafana/mesh.json"
PROMQL_WORDS = {"sum", "by", "rate", "max", "histogram_quantile", "le", "without", "avg", "irate"}


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: dict, name: str, **labels: str) -> float | None:
    return scraped.get((name, tuple(sorted(labels.items()))))


def dashboard_metrics() -> set[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in doc["panels"] for t in panel["targets"]]
    assert exprs and all(panel["datasource"]["uid"] == "${datasource}" for panel in doc["panels"])
    names = set()
    for expr in exprs:
        found = set(re.findall(r"\bmesh_[a-z0-9_]+\b", expr))
        assert found, f"query {expr!r} names no mesh metric"
        names |= found
    return names


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


@pytest.mark.integration
def test_operator_metrics_and_the_dashboard(node_factory) -> None:
    node = node_factory("standalone", extra_args=["--abr", "144p150k"])
    rtmp = node.rtmp_url("cam1")
    publisher = subprocess.Popen([sys.executable, "-m", "mesh", "publish", "--quiet", "--size", "320x180",
                                  "--url", rtmp], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env=node_env())
    play = f"{node.http}/LiveApp/streams/cam1.m3u8"
    try:
        def playing() -> bool:
            try:
                playlist = get(play).decode()
            except OSError:
                return False
            segments = re.findall(r"cam1\d{9}\.ts", playlist)
            if segments:
                get(f"{node.http}/LiveApp/streams/{segments[-1]}")
            return len(segments) >= 2

        wait_until(playing, timeout_s=90, interval_s=0.5, message="cam1 playing")

        def exported() -> dict | None:
            get(play)  # a viewer keeps watching
            s = samples(node.http)
            wanted = [value(s, "mesh_hls_stream_viewers", stream="cam1"),
                      value(s, "mesh_hls_stream_egress_bytes_total", stream="cam1"),
                      value(s, "mesh_ingest_bytes_total", stream="cam1"),
                      value(s, "mesh_abr_transcoder_lag_seconds", stream="cam1")]
            return s if all(v is not None for v in wanted) and wanted[1] > 0 and wanted[2] > 0 else None

        try:  # a viewer's bad request, so the rejected-inputs panel has a series to show
            get(f"{node.http}/LiveApp/streams/no_such_thing.xyz")
            raise AssertionError("a bad HLS path answered 200")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
        scraped = wait_until(exported, timeout_s=60, interval_s=0.5, message="per-stream metrics")
        assert value(scraped, "mesh_bad_input_total", boundary="http", reason="path") >= 1
        assert value(scraped, "mesh_hls_stream_viewers", stream="cam1") >= 1
        for name in ("mesh_bus_sent_bytes_total", "mesh_bus_received_bytes_total",
                     "mesh_bus_messages_sent_total", "mesh_bus_messages_received_total"):
            assert value(scraped, name) > 0, name
        assert value(scraped, "mesh_registry_write_seconds_count", op="heartbeat") > 0
        assert value(scraped, "mesh_registry_write_seconds_count", op="claim_stream") >= 1

        exported_names = {name for name, _ in scraped}
        missing = sorted(dashboard_metrics() - exported_names)
        assert not missing, f"the dashboard queries metrics no node exports: {missing}"
    finally:
        publisher.terminate()
        publisher.wait(10)

    def stream_labels_gone() -> bool:
        s = samples(node.http)
        return not any(dict(labels).get("stream") == "cam1" for (name, labels) in s
                       if name.startswith(("mesh_hls_stream_", "mesh_ingest_", "mesh_abr_transcoder")))
    wait_until(stream_labels_gone, timeout_s=90, interval_s=0.5,
               message="per-stream series removed once the stream closed")


def test_dashboard_is_grafana_json_with_prometheus_queries() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and doc["templating"]["list"][0]["type"] == "datasource"
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(ids) == len(set(ids))
    names = dashboard_metrics()
    import mesh.metrics as m

    from prometheus_client import Counter, Gauge, Histogram

    declared = {f.name for v in vars(m).values() if isinstance(v, (Counter, Gauge, Histogram, m.SummedCounter))
                for f in v.describe()}
    for name in names:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert base in declared or name in declared, f"{name} is not declared in mesh/metrics.py"
