"""Pull sources on an origin: ``POST /{app}/rest/v2/broadcasts/create`` starts one.

The body names the stream and its source: ``{"streamId": "cam1", "streamUrl": "rtsp://..."}``.
Network URLs (rtsp, rtmp, http(s) HLS or MP4) are allowed to hosts the :class:`SourcePolicy`
allows (no loopback, link-local or private addresses unless the operator lists them); local files
only below the configured ``pull_file_root``, so no REST client can make a node read arbitrary
paths or reach what only the origin can reach. A refused request changes nothing: the stream is
claimed first, and only a successful claim records the source.

The manager does not know the origin: it is handed ``begin_stream`` (claim the stream, open its
bus channel) and ``end_stream`` as callables, and raises domain errors that the HTTP layer turns
into answers.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol, Sequence
from urllib.parse import urlsplit

from ..errors import Conflict, Invalid
from ..names import NAME_RULE, is_name
from .live import LiveStream
from .pull import PullSource
from .rtmp_server import PublishRejected
from .source_policy import SourcePolicy

log = logging.getLogger("mesh.pull")

MAX_URL = 2048

BeginStream = Callable[[str, str, str], Awaitable[LiveStream]]  # (stream id, app, source)
EndStream = Callable[[LiveStream, str], Awaitable[None]]  # (stream, reason)


class StreamRecords(Protocol):
    """The registry calls a pull needs."""

    async def create_stream(self, stream_id: str, app: str, settings: dict[str, Any]) -> dict[str, Any]: ...

    async def get_stream(self, stream_id: str) -> dict[str, Any] | None: ...


class PullManager:
    def __init__(self, records: StreamRecords, begin_stream: BeginStream, end_stream: EndStream, *,
                 file_root: str = "", policy: SourcePolicy | None = None):
        self._records = records
        self._begin = begin_stream
        self._end = end_stream
        self.file_root = file_root
        self.policy = policy or SourcePolicy()
        self.sources: dict[str, PullSource] = {}

    async def check_url(self, url: Any) -> str:
        if not isinstance(url, str) or not url or len(url) > MAX_URL:
            raise Invalid(f"streamUrl must be a URL or file path of at most {MAX_URL} characters")
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("", "file"):
            await self.policy.check(url, _resolve)
            return url
        root = self.file_root
        path = urlsplit(url).path if scheme == "file" else url
        if not root:
            raise Invalid("file sources are disabled on this origin; set pull_file_root "
                          "(MESH_PULL_FILE_ROOT) to the directory they may come from")
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(os.path.realpath(root)):
            raise Invalid(f"file sources must be below {root}")
        if not real.is_file():
            raise Invalid(f"no such file below {root}: {real.name}")
        return str(real)

    async def create(self, app: str, body: dict[str, Any]) -> dict[str, Any]:
        """Start pulling ``body["streamUrl"]`` as ``body["streamId"]``; the stream's document."""
        stream_id = body.get("streamId") or f"stream{secrets.token_hex(4)}"
        if not is_name(stream_id):
            raise Invalid(f"streamId must be {NAME_RULE}")
        url = await self.check_url(body.get("streamUrl"))
        try:
            live = await self._begin(stream_id, app, url)
        except PublishRejected as rej:
            raise Conflict(rej.description) from None
        try:
            await self._records.create_stream(stream_id, app, {"streamUrl": body.get("streamUrl")})
        except BaseException:
            await self._end(live, "its source could not be recorded")
            raise
        source = PullSource(
            url, on_video_config=live.set_video, on_audio_config=live.set_audio, on_au=live.push,
            on_end=lambda reason: self._ended(live, source, reason))
        self.sources[stream_id] = source
        source.start()
        log.info("pulling %s from %s", stream_id, body.get("streamUrl"))
        doc = await self._records.get_stream(stream_id)
        return doc or {"_id": stream_id, "app": app}

    def _ended(self, live: LiveStream, source: PullSource, reason: str) -> None:
        if self.sources.get(live.stream_id) is source:
            del self.sources[live.stream_id]
        if source.error:
            log.warning("pull source of %s failed: %s", live.stream_id, source.error)
        asyncio.get_running_loop().create_task(self._end(live, f"pull {reason}"))

    def cancel(self, stream_id: str) -> None:
        source = self.sources.pop(stream_id, None)
        if source is not None:
            source.stop()

    async def stop(self) -> None:
        sources, self.sources = list(self.sources.values()), {}
        for source in sources:
            source.stop()
        for source in sources:
            await source.wait()


async def _resolve(host: str) -> Sequence[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    return sorted({str(info[4][0]) for info in infos})
