"""Tests of the headless-Chromium player harness (tests/browser.py): it sees real playback of a real
stream, it reports failures instead of hanging, and it leaves no Chromium behind."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests import browser
from tests.browser import StaticServer, play_hls

pytestmark = [pytest.mark.integration, pytest.mark.browser]

SEGMENT_S = 2
WIDTH, HEIGHT = 640, 360


@pytest.fixture(scope="module")
def hls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8 s VOD stream (four 2 s H.264/AAC TS segments) made by ffmpeg from lavfi sources."""
    browser.require_chromium()
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is not installed; run scripts/setup", pytrace=False)
    out = tmp_path_factory.mktemp("hls")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440", "-t", "8", "-c:v", "libx264", "-g", "60", "-c:a", "aac",
         "-f", "hls", "-hls_time", str(SEGMENT_S), "-hls_list_size", "0", "-hls_playlist_type", "vod",
         "out.m3u8"],
        cwd=out, check=True, timeout=60)
    assert sorted(p.name for p in out.glob("*.ts")) == [f"out{i}.ts" for i in range(4)]
    return out


@pytest.fixture
def stream(hls_dir: Path):
    with StaticServer(root=hls_dir) as server:
        yield server


@pytest.fixture(autouse=True)
def no_leftover_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Puts the harness's browser profiles in tmp_path, then checks no process still uses one."""
    monkeypatch.setattr(browser, "PROFILE_PARENT", tmp_path)
    yield
    pattern = re.escape(f"--user-data-dir={tmp_path}")
    left = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout.split()
    assert not left, f"Chromium processes {left} outlived play_hls"
    assert not list(tmp_path.glob("mesh-chromium-*")), "play_hls left its browser profile behind"


def assert_played(report: browser.PlayerReport, min_advance_s: float = 2.0) -> None:
    assert report.fatal_error is None, "\n".join(report.log)
    assert report.advanced_s >= min_advance_s, report
    assert (report.video_width, report.video_height) == (WIDTH, HEIGHT)
    assert report.playing
    assert not [e for e in report.errors if "fatal=true" in e]


def test_vod_plays_with_hlsjs(stream: StaticServer) -> None:
    report = play_hls(f"{stream.url}/out.m3u8")
    assert_played(report)
    assert report.levels == 1
    assert report.buffered_s > 0
    assert "GET /out0.ts 200" in stream.requests


def test_vod_plays_natively(stream: StaticServer) -> None:
    # Chromium 156 plays HLS in <video src> by itself (canPlayType says "maybe").
    report = play_hls(f"{stream.url}/out.m3u8", mode="native")
    assert_played(report)
    assert report.levels == 0  # only hls.js reports levels


def test_missing_playlist_is_fatal(stream: StaticServer) -> None:
    report = play_hls(f"{stream.url}/missing.m3u8", timeout_s=30)
    assert report.fatal_error == report.errors[0]
    assert report.fatal_error.startswith("networkError/manifestLoadError fatal=true HTTP 404")
    assert not report.playing and report.start_time is None
    assert report.elapsed_s < 15, "the harness should stop at the fatal error, not wait for the timeout"


def test_missing_playlist_is_fatal_natively(stream: StaticServer) -> None:
    # Native playback gives no HTTP status, only a demuxer error.
    report = play_hls(f"{stream.url}/missing.m3u8", mode="native", timeout_s=30)
    assert report.fatal_error is not None and report.fatal_error.startswith("video element error 4")
    assert report.elapsed_s < 15


def test_stream_without_cors_fails_in_hlsjs(hls_dir: Path) -> None:
    # The player page is on another origin, so HLS servers must send Access-Control-Allow-Origin.
    with StaticServer(root=hls_dir, cors=False) as server:
        report = play_hls(f"{server.url}/out.m3u8", timeout_s=30)
    assert report.fatal_error is not None
    assert report.fatal_error.startswith("networkError/manifestLoadError fatal=true HTTP 0")
    assert any("blocked by CORS policy" in line for line in report.log)


def test_stalled_stream_times_out(hls_dir: Path) -> None:
    # A live playlist of one segment that never grows: hls.js plays 2 s, then waits for more.
    frozen = render_live_playlist(["out0.ts"], range(1), "event")
    with StaticServer({"/frozen.m3u8": lambda: frozen}, root=hls_dir) as server:
        # the deadline counts Chromium's start too (seconds on a loaded machine)
        report = play_hls(f"{server.url}/frozen.m3u8", min_advance_s=3, timeout_s=12)
    assert report.fatal_error is not None
    assert report.fatal_error.startswith("timed out: playback advanced only"), report.fatal_error
    assert 1.5 < report.advanced_s < 2.5
    assert not report.playing
    assert 12 <= report.elapsed_s < 20


def test_teardown_kills_browser_when_quit_fails(stream: StaticServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from selenium.webdriver.chrome.webdriver import WebDriver

    def broken_quit(self: WebDriver) -> None:
        raise RuntimeError("quit failed")

    monkeypatch.setattr(WebDriver, "quit", broken_quit)
    with pytest.raises(RuntimeError, match="quit failed"):
        play_hls(f"{stream.url}/missing.m3u8", timeout_s=10)
    # no_leftover_chromium checks that the process group was killed and the profile removed.


def test_missing_browser_fails_unless_skipping_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser, "CHROMEDRIVER", Path("/nonexistent/chromedriver"))
    monkeypatch.delenv(browser.SKIP_ENV, raising=False)
    assert not browser.chromium_available()
    with pytest.raises(pytest.fail.Exception, match="/nonexistent/chromedriver; run scripts/setup"):
        play_hls("http://127.0.0.1:9/never.m3u8")
    monkeypatch.setenv(browser.SKIP_ENV, "1")
    with pytest.raises(pytest.skip.Exception, match="/nonexistent/chromedriver"):
        play_hls("http://127.0.0.1:9/never.m3u8")


def live_window(n_segments: int, elapsed_s: float, kind: str, size: int = 3) -> range:
    """Segments in a live playlist `elapsed_s` after the first request. The player joins halfway
    through the fourth segment: three are out, the next one comes SEGMENT_S / 2 later, then one each
    SEGMENT_S, so a playlist reload lands well clear of a change. An EVENT playlist keeps all the
    segments; a sliding one keeps the last `size`."""
    available = min(n_segments, 3 + int((elapsed_s + SEGMENT_S / 2) // SEGMENT_S))
    return range(0 if kind == "event" else max(0, available - size), available)


def render_live_playlist(names: list[str], window: range, kind: str) -> bytes:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{SEGMENT_S}",
             f"#EXT-X-MEDIA-SEQUENCE:{window.start}"]
    if kind == "event":
        lines.append("#EXT-X-PLAYLIST-TYPE:EVENT")
    for i in window:
        lines += [f"#EXTINF:{SEGMENT_S:.3f},", names[i]]
    return ("\n".join(lines) + "\n").encode()


class LivePlaylist:
    """Serves the VOD segments as a live playlist whose clock starts at the first request."""

    def __init__(self, names: list[str], kind: str) -> None:
        self.names, self.kind = names, kind
        self.t0: float | None = None
        self.windows: list[range] = []  # what each request was served

    def __call__(self) -> bytes:
        now = time.monotonic()
        self.t0 = now if self.t0 is None else self.t0
        window = live_window(len(self.names), now - self.t0, self.kind)
        self.windows.append(window)
        return render_live_playlist(self.names, window, self.kind)


def test_live_window() -> None:
    assert live_window(4, 0.0, "event") == range(0, 3)
    assert live_window(4, 1.0, "event") == range(0, 4)
    assert live_window(4, 99.0, "event") == range(0, 4)
    assert live_window(4, 0.9, "sliding") == range(0, 3)
    assert live_window(4, 1.0, "sliding") == range(1, 4)
    assert live_window(6, 3.0, "sliding") == range(2, 5)
    assert render_live_playlist(["a.ts", "b.ts"], range(1, 2), "sliding") == (
        b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n"
        b"#EXTINF:2.000,\nb.ts\n")


@pytest.mark.parametrize(("kind", "mode"), [("event", "hlsjs"), ("sliding", "hlsjs"), ("sliding", "native")])
def test_live_playlist_plays(hls_dir: Path, kind: str, mode: str) -> None:
    # Native playback fails (DEMUXER_ERROR_COULD_NOT_PARSE) on a live playlist of fewer than three
    # segments; live_window starts with three.
    playlist = LivePlaylist([f"out{i}.ts" for i in range(4)], kind)
    with StaticServer({"/live.m3u8": playlist}, root=hls_dir) as server:
        report = play_hls(f"{server.url}/live.m3u8", min_advance_s=2.5, mode=mode)
    assert_played(report, min_advance_s=2.5)
    assert len(playlist.windows) >= 2, "the player did not reload the playlist, so did not treat it as live"
    if kind == "sliding":
        assert playlist.windows[-1].start > 0, "the window never slid while the player was playing"
