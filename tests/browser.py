"""Headless Chromium as an independent HLS player for integration tests.

    report = play_hls("http://127.0.0.1:8080/live/cam1/index.m3u8")
    assert report.fatal_error is None and report.advanced_s >= 2.0, report.log

`play_hls` starts Chromium through chromedriver, serves `tests/js/player.html` and hls.js from its own
small HTTP server on 127.0.0.1 (OS-assigned port), opens the page on the stream URL and polls the
<video> until playback has advanced `min_advance_s` past where it started, a fatal error occurs, or the
timeout passes. The page and the stream are on different origins, so the server of the stream must
send `Access-Control-Allow-Origin: *` on playlists and segments (mesh's HLS endpoints must do so);
without it hls.js fails with a fatal `networkError/manifestLoadError ... HTTP 0`.

mode="native" gives the playlist to <video src> instead: Chromium 156 plays HLS (TS, H.264/AAC) by
itself, VOD and live, without needing CORS. Its errors carry no HTTP status (a 404 playlist shows as
`video element error 4: PipelineStatus::DEMUXER_ERROR_COULD_NOT_PARSE`), and it fails the same way on
a live playlist (no EXT-X-ENDLIST) of one or two 2 s segments, while three play: a live window should
not be published before it holds three target durations (RFC 8216 section 6.2.2 asks that too).

Chromium, chromedriver and hls.js are installed by `scripts/setup`. When one is missing the harness
fails the test, saying how to install it; it skips instead only when MESH_ALLOW_SKIP_BROWSER=1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import mimetypes
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
JS_DIR = Path(__file__).parent / "js"
HLS_JS = JS_DIR / "node_modules" / "hls.js" / "dist" / "hls.min.js"
PLAYER_HTML = JS_DIR / "player.html"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required", "--mute-audio",
)
POLL_INTERVAL_S = 0.1
HAVE_FUTURE_DATA = 3  # HTMLMediaElement.readyState from which it can play on; below it is stalled
DRIVER_COMMAND_TIMEOUT_S = 15  # one chromedriver call; a hung browser must not hang the test run
PROFILE_PARENT: Path | None = None  # where temp profiles go (None: system temp); tests point it at tmp_path
SKIP_ENV = "MESH_ALLOW_SKIP_BROWSER"

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t", ".m4s": "video/iso.segment",
    ".mp4": "video/mp4", ".js": "text/javascript", ".html": "text/html; charset=utf-8",
}


@dataclass
class PlayerReport:
    current_time: float  # video.currentTime at the last poll
    video_width: int
    video_height: int
    fatal_error: str | None  # a fatal hls.js error, a <video> error, or why the harness gave up
    errors: list[str]  # every hls.js error event as "type/details fatal=... [HTTP code] [(reason)]"
    levels: int  # variants in the manifest (hls.js mode; 0 in native mode)
    playing: bool  # it has played, and at the last poll is not paused, ended, stalled or in error
    buffered_s: float  # seconds buffered ahead of the playhead
    log: list[str]  # the page's event log, then the browser console
    start_time: float | None = None  # currentTime at the first "playing" event
    elapsed_s: float = 0.0  # wall time of the whole call, browser start and teardown included
    heights_seen: list[int] = dataclasses.field(default_factory=list)  # play_levels: picture heights, in order
    latency_s: float | None = None  # hls.js's hls.latency (seconds behind the live edge) at the last poll

    @property
    def advanced_s(self) -> float:
        return 0.0 if self.start_time is None else self.current_time - self.start_time


def missing_browser_parts() -> list[str]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    missing += [str(p) for p in (HLS_JS, PLAYER_HTML) if not p.is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium Python package")
    return missing


def chromium_available() -> bool:
    return not missing_browser_parts()


def require_chromium() -> None:
    """Fail (or, with MESH_ALLOW_SKIP_BROWSER=1, skip) the calling test if the browser stack is missing."""
    missing = missing_browser_parts()
    if not missing:
        return
    message = (f"headless Chromium player tests need {', '.join(missing)}; run scripts/setup to install "
               f"chromium, chromium-driver, selenium and hls.js (or set {SKIP_ENV}=1 to skip these tests)")
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


Route = Path | Callable[[], bytes]


class StaticServer:
    """Serves fixed routes and, optionally, a directory over HTTP on 127.0.0.1 from a daemon thread.

    A route maps a URL path to a file or to a function returning the body (for playlists that change).
    Responses carry `Access-Control-Allow-Origin: *` unless cors=False; other paths are 404.
    """

    def __init__(self, routes: Mapping[str, Route] | None = None, root: Path | None = None, *,
                 cors: bool = True) -> None:
        self.routes = dict(routes or {})
        self.root = root.resolve() if root else None
        self.cors = cors
        self.requests: list[str] = []  # "GET /path 200", in order
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd, "StaticServer is not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StaticServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                body = server._body(path)
                server.requests.append(f"GET {path} {200 if body is not None else 404}")
                if body is None:
                    body = f"{path} not found\n".encode()
                    self.send_response(404)
                    self.send_header("Content-Type", "text/plain")
                else:
                    self.send_response(200)
                    ctype = CONTENT_TYPES.get(Path(path).suffix) or mimetypes.guess_type(path)[0]
                    self.send_header("Content-Type", ctype or "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-cache")
                if server.cors:
                    self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="StaticServer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            assert self._thread
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> StaticServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _body(self, path: str) -> bytes | None:
        route = self.routes.get(path)
        if callable(route):
            return route()
        if route is not None:
            return route.read_bytes()
        if self.root:
            file = (self.root / path.lstrip("/")).resolve()
            if file.is_relative_to(self.root) and file.is_file():
                return file.read_bytes()
        return None


def play_hls(url: str, *, min_advance_s: float = 2.0, timeout_s: float = 40.0,
             mode: str = "hlsjs", low_latency: bool = False) -> PlayerReport:
    """Play `url` in headless Chromium until it has advanced `min_advance_s`, fails fatally, or times out.

    mode="hlsjs" plays through hls.js (MediaSource); mode="native" sets <video src> to the playlist.
    Timing out is not an exception: the report then has fatal_error set to say so, with the log.
    ``low_latency``: hls.js with ``lowLatencyMode: true`` (LL-HLS parts, blocking reloads); the
    report's ``latency_s`` is then hls.js's own ``hls.latency``.
    """
    if mode not in ("hlsjs", "native"):
        raise ValueError(f"mode must be 'hlsjs' or 'native', not {mode!r}")
    require_chromium()
    from selenium.webdriver.chrome.service import Service

    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:  # unwinds in reverse order, each step even if one fails
        page = cleanup.enter_context(StaticServer({"/player.html": PLAYER_HTML, "/hls.min.js": HLS_JS}))
        profile = Path(tempfile.mkdtemp(prefix="mesh-chromium-", dir=PROFILE_PARENT))
        cleanup.callback(shutil.rmtree, profile, ignore_errors=True)
        # Its own session, so that teardown can kill chromedriver and all of Chromium by process group.
        service = Service(str(CHROMEDRIVER), popen_kw={"start_new_session": True})
        driver = None
        try:
            driver = _start_driver(service, profile)
            query = {'src': url, 'mode': mode, **({'lowLatency': '1'} if low_latency else {})}
            driver.get(f"{page.url}/player.html?{urllib.parse.urlencode(query)}")
            report = _poll(driver, min_advance_s, started + timeout_s)
            report.log += [f"console: {e.get('level')} {e.get('message')}" for e in _console(driver)]
        finally:
            _stop_driver(driver, service)
    report.elapsed_s = time.monotonic() - started
    return report


def play_levels(url: str, *, timeout_s: float = 60.0, advance_s: float = 1.5) -> PlayerReport:
    """Play a master playlist with hls.js, then force the lowest level (``hls.currentLevel = 0``)
    and then the highest: each time wait until the picture has that level's height and playback
    has advanced ``advance_s`` more. ``heights_seen`` lists the heights reached, in order."""
    require_chromium()
    from selenium.webdriver.chrome.service import Service

    started = time.monotonic()
    deadline = started + timeout_s
    with contextlib.ExitStack() as cleanup:
        page = cleanup.enter_context(StaticServer({"/player.html": PLAYER_HTML, "/hls.min.js": HLS_JS}))
        profile = Path(tempfile.mkdtemp(prefix="mesh-chromium-", dir=PROFILE_PARENT))
        cleanup.callback(shutil.rmtree, profile, ignore_errors=True)
        service = Service(str(CHROMEDRIVER), popen_kw={"start_new_session": True})
        driver = None
        try:
            driver = _start_driver(service, profile)
            driver.get(f"{page.url}/player.html?{urllib.parse.urlencode({'src': url, 'mode': 'hlsjs'})}")
            report = _poll(driver, advance_s, deadline)
            heights: list[int] = []
            for which in ("0", "window.__hls.levels.length - 1"):
                if report.fatal_error:
                    break
                want = driver.execute_script(f"const i = {which}; window.__hls.currentLevel = i; "
                                             "return window.__hls.levels[i].height;")
                mark = report.current_time
                while True:
                    state = driver.execute_script("return window.__state();") or {}
                    if state.get("fatalError"):
                        report = _poll(driver, 0, deadline)
                        break
                    if state.get("videoHeight") == want and state.get("currentTime", 0) - mark >= advance_s:
                        heights.append(int(want))
                        report = _poll(driver, 0, deadline)
                        break
                    if time.monotonic() >= deadline:
                        report.fatal_error = (f"timed out waiting for level height {want} (now "
                                              f"{state.get('videoHeight')}, t={state.get('currentTime')})")
                        break
                    time.sleep(POLL_INTERVAL_S)
            report.heights_seen = heights
            report.log += [f"console: {e.get('level')} {e.get('message')}" for e in _console(driver)]
        finally:
            _stop_driver(driver, service)
    report.elapsed_s = time.monotonic() - started
    return report


def page_eval(url: str, script: str, until: Callable[[object], bool], *, timeout_s: float = 20.0) -> object:
    """Open ``url`` in headless Chromium and evaluate ``script`` (a JS expression body returning a value)
    every poll until ``until(value)`` holds or ``timeout_s`` passes; returns the last value."""
    require_chromium()
    from selenium.webdriver.chrome.service import Service

    with contextlib.ExitStack() as cleanup:
        profile = Path(tempfile.mkdtemp(prefix="mesh-chromium-", dir=PROFILE_PARENT))
        cleanup.callback(shutil.rmtree, profile, ignore_errors=True)
        service = Service(str(CHROMEDRIVER), popen_kw={"start_new_session": True})
        driver = None
        try:
            driver = _start_driver(service, profile)
            driver.get(url)
            deadline = time.monotonic() + timeout_s
            while True:
                value = driver.execute_script(script)
                if until(value) or time.monotonic() >= deadline:
                    return value
                time.sleep(POLL_INTERVAL_S)
        finally:
            _stop_driver(driver, service)


def _start_driver(service, profile: Path):
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=service)
    driver.command_executor.client_config.timeout = DRIVER_COMMAND_TIMEOUT_S
    driver.set_page_load_timeout(DRIVER_COMMAND_TIMEOUT_S)
    driver.set_script_timeout(DRIVER_COMMAND_TIMEOUT_S)
    return driver


def _poll(driver, min_advance_s: float, deadline: float) -> PlayerReport:
    state: dict = {}
    while True:
        state = driver.execute_script("return window.__state ? window.__state() : null;") or {}
        start = state.get("startTime")
        if state.get("fatalError"):
            break
        if start is not None and state["currentTime"] - start >= min_advance_s:
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL_S)
    fatal = state.get("fatalError")
    advanced = state.get("currentTime", 0.0) - (start if start is not None else 0.0)
    if not fatal and (start is None or advanced < min_advance_s):
        progress = "never started" if start is None else f"advanced only {advanced:.2f} s"
        fatal = f"timed out: playback {progress} (wanted {min_advance_s} s)"
    return PlayerReport(
        current_time=float(state.get("currentTime", 0.0)),
        video_width=int(state.get("videoWidth", 0)),
        video_height=int(state.get("videoHeight", 0)),
        fatal_error=fatal,
        errors=list(state.get("errors", [])),
        levels=int(state.get("levels", 0)),
        playing=(start is not None and state["readyState"] >= HAVE_FUTURE_DATA
                 and not (state["paused"] or state["ended"] or state.get("fatalError"))),
        buffered_s=float(state.get("bufferedAhead", 0.0)),
        log=list(state.get("log", [])),
        start_time=start,
        latency_s=float(state["latency"]) if isinstance(state.get("latency"), (int, float)) else None,
    )


def _console(driver) -> list[dict]:
    try:
        return driver.get_log("browser")
    except Exception as e:  # the log is a debugging aid; never fail the report over it
        return [{"level": "HARNESS", "message": f"could not read the browser console: {e!r}"}]


def _stop_driver(driver, service) -> None:
    """Quit the browser, then kill whatever is left of chromedriver's process group. Bounded in time."""
    process = getattr(service, "process", None)  # set once chromedriver has been spawned
    quit_ok = False
    try:
        if driver is not None:
            driver.quit()
            quit_ok = True
    finally:
        if process is not None:
            _kill_group(process.pid, grace_s=3.0 if quit_ok else 0.0)
            try:
                process.wait(timeout=3)  # reap chromedriver, if quit() did not
            except subprocess.TimeoutExpired:
                pass
            if process.stdin:
                process.stdin.close()


def _kill_group(pgid: int, grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 3.0
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in group `pgid`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False
