"""Pulled sources survive their origin: a live origin adopts a dead one's pulled streams."""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mesh.ingest.adoption import deal

from .media import ffmpeg_decode_errors, ffmpeg_write
from .procs import wait_until


def test_orphans_are_dealt_to_the_least_loaded_origins_first() -> None:
    assert deal(["a", "b", "c"], [(3, "o1"), (0, "o2"), (0, "o0")]) == {"a": "o0", "b": "o2", "c": "o1"}
    assert deal(["a"], []) == {}, "no origin alive: nobody adopts, the stream waits"


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.integration
def test_a_pulled_stream_moves_to_a_live_origin_and_waits_when_none_is_left(node_factory, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    clip = ffmpeg_write(media / "long.mp4", 90)
    env = {"MESH_PULL_FILE_ROOT": str(media)}
    a = node_factory("origin", env=env)
    b = node_factory("origin", env=env)
    edge = node_factory("edge")
    status, body = post(f"{a.http}/LiveApp/rest/v2/broadcasts/create", {"streamId": "pulled", "streamUrl": str(clip)})
    assert status == 200 and body["originNode"] == a.node_id, body
    playlist = f"{edge.http}/LiveApp/streams/pulled.m3u8"

    def listed() -> list[int]:
        status, text = get(playlist)
        return [int(n) for n in re.findall(rb"pulled(\d{9})\.ts", text)] if status == 200 else []
    wait_until(lambda: len(listed()) >= 2, timeout_s=40, interval_s=0.3, message="segments from origin a")
    before = listed()
    a.kill()
    b.wait_for_line(r"adopted the pulled stream pulled of " + re.escape(a.node_id), timeout_s=30)
    doc = json.loads(get(f"{b.http}/LiveApp/rest/v2/broadcasts/pulled")[1])
    assert doc["originNode"] == b.node_id and doc["status"] == "broadcasting" and doc["epoch"] == 2
    wait_until(lambda: listed() and listed()[-1] > before[-1] + 1, timeout_s=40, interval_s=0.5,
               message="new segments from origin b on the edge")
    text = get(playlist)[1].decode()
    assert "#EXT-X-DISCONTINUITY" in text, text
    numbers = listed()
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert ffmpeg_decode_errors(playlist, seconds=3) == ""
    # no origin left: the stream waits, and the next origin to join adopts it
    b.kill()
    c = node_factory("origin", env=env)
    c.wait_for_line(r"adopted the pulled stream pulled of " + re.escape(b.node_id), timeout_s=40)
    doc = json.loads(get(f"{c.http}/LiveApp/rest/v2/broadcasts/pulled")[1])
    assert doc["originNode"] == c.node_id and doc["status"] == "broadcasting"
