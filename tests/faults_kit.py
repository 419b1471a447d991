"""Tools for the fault tests: a TCP proxy that can be cut, and a viewer that records every
playlist and segment an edge serves (names, bytes, media and discontinuity sequence)."""
from __future__ import annotations

import hashlib
import queue
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field


def fetch(url: str, timeout_s: float = 10) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


class TcpProxy:
    """127.0.0.1:port -> target, in threads. ``cut()`` drops every connection and accepts new
    ones only to close them (the far side is unreachable); ``heal()`` forwards again.
    ``delay_s`` holds every chunk that long before forwarding it (a slow link, each way)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", delay_s: float = 0.0):
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_off = False
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            # The 5 s bounds the connect only: left on, it dropped every connection the server
            # was quiet on for 5 s (an idle pooled one, a monitor's awaited hello), which no link
            # does; the client's pool was cleared every ~5 s.
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        late: queue.Queue[tuple[float, bytes] | None] | None = None
        if self.delay_s:  # a line with latency, not a throttle: chunks overtake no one, wait in parallel
            late = queue.Queue()
            threading.Thread(target=self._deliver, args=(late, dst), daemon=True).start()
        try:
            while True:
                data = src.recv(65536)
                if not data or self.cut_off:
                    break
                if late is not None:
                    late.put((time.monotonic() + self.delay_s, data))
                else:
                    dst.sendall(data)
        except OSError:
            pass
        if late is not None:
            late.put(None)
            return  # the deliverer closes both ends once the line is empty
        for s in (src, dst):
            self._drop(s)

    def _deliver(self, late: "queue.Queue[tuple[float, bytes] | None]", dst: socket.socket) -> None:
        try:
            while (item := late.get()) is not None and not self.cut_off:
                due, data = item
                time.sleep(max(0.0, due - time.monotonic()))
                dst.sendall(data)
        except OSError:
            pass
        self._drop(dst)

    def _drop(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> None:
        self.cut_off = True
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            self._drop(s)

    def heal(self) -> None:
        self.cut_off = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()


SEGMENT_LINE = re.compile(r"^(\w+?)(\d{9})\.ts$", re.M)


@dataclass
class Viewer:
    """Polls an edge's playlist and fetches every segment it lists, keeping what it saw."""

    base_url: str  # .../LiveApp/streams/
    stream: str
    interval_s: float = 0.2
    hashes: dict[str, str] = field(default_factory=dict)  # segment name -> sha256 of its bytes
    media_sequences: list[int] = field(default_factory=list)
    disc_sequences: list[int] = field(default_factory=list)
    first_seen: dict[str, float] = field(default_factory=dict)  # name -> monotonic time
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval_s)

    def poll(self) -> None:
        try:
            status, body, _ = fetch(f"{self.base_url}{self.stream}.m3u8", timeout_s=10)
        except OSError as exc:
            self.errors.append(f"playlist: {exc}")
            return
        if status != 200:
            return
        text = body.decode()
        ms = re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text)
        ds = re.search(r"#EXT-X-DISCONTINUITY-SEQUENCE:(\d+)", text)
        if ms is None or ds is None:
            return
        self.media_sequences.append(int(ms.group(1)))
        self.disc_sequences.append(int(ds.group(1)))
        for m in SEGMENT_LINE.finditer(text):
            name = m.group(0)
            if name in self.hashes:
                continue
            self.first_seen.setdefault(name, time.monotonic())
            try:
                status, data, _ = fetch(self.base_url + name, timeout_s=5)
            except OSError as exc:
                self.errors.append(f"{name}: {exc}")
                continue
            if status == 200:
                self.hashes[name] = hashlib.sha256(data).hexdigest()

    def numbers(self) -> list[int]:
        return sorted(int(n[-12:-3]) for n in self.hashes)

    def wait_for_new(self, after: int, timeout_s: float = 30) -> int:
        """Wait until a segment numbered above ``after`` was fetched; its number."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            newer = [n for n in self.numbers() if n > after]
            if newer:
                return min(newer)
            time.sleep(0.05)
        raise AssertionError(f"no segment above {after} on {self.base_url} within {timeout_s} s")

    def last(self) -> int:
        numbers = self.numbers()
        return numbers[-1] if numbers else -1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def monotonic(values: list[int]) -> bool:
    return all(a <= b for a, b in zip(values, values[1:]))
