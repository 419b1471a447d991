"""Pull sources on an origin: ``POST /{app}/rest/v2/broadcasts/create`` starts one.

The body names the stream and its source: ``{"streamId": "cam1", "streamUrl": "rtsp://..."}``.
Network URLs (rtsp, rtmp, http(s) HLS or MP4) are allowed; local files only below the configured
``pull_file_root``, so no REST client can make a node read arbitrary paths.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..broker.wire import NAME_RE
from ..http.app import HttpError
from ..http.broadcasts import broadcast_json
from ..ingest.pull import PullSource
from ..ingest.rtmp_server import PublishRejected

if TYPE_CHECKING:
    from ..ingest.live import LiveStream
    from .origin import OriginPart

log = logging.getLogger("mesh.pull")

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https")
MAX_URL = 2048


class PullManager:
    def __init__(self, origin: "OriginPart"):
        self.origin = origin
        self.sources: dict[str, PullSource] = {}

    def check_url(self, url: Any) -> str:
        if not isinstance(url, str) or not url or len(url) > MAX_URL:
            raise HttpError(400, f"streamUrl must be a URL or file path of at most {MAX_URL} characters",
                            "body")
        scheme = urlsplit(url).scheme.lower()
        if scheme in NETWORK_SCHEMES:
            return url
        if scheme not in ("", "file"):
            raise HttpError(400, f"streamUrl scheme {scheme!r} is not supported; use "
                                 f"{', '.join(NETWORK_SCHEMES)} or a file path", "body")
        root = self.origin.node.cfg.pull_file_root
        path = urlsplit(url).path if scheme == "file" else url
        if not root:
            raise HttpError(400, "file sources are disabled on this origin; set pull_file_root "
                                 "(MESH_PULL_FILE_ROOT) to the directory they may come from", "body")
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(os.path.realpath(root)):
            raise HttpError(400, f"file sources must be below {root}", "body")
        if not real.is_file():
            raise HttpError(400, f"no such file below {root}: {real.name}", "body")
        return str(real)

    async def create(self, app: str, body: dict[str, Any]) -> dict[str, Any]:
        stream_id = body.get("streamId") or f"stream{secrets.token_hex(4)}"
        if not isinstance(stream_id, str) or not NAME_RE.match(stream_id):
            raise HttpError(400, "streamId must be 1-128 characters from A-Z a-z 0-9 _ -", "body")
        url = self.check_url(body.get("streamUrl"))
        registry = self.origin.node.registry
        assert registry is not None
        await registry.create_stream(stream_id, app, {"streamUrl": body.get("streamUrl")})
        try:
            live = await self.origin.begin_stream(stream_id, app, url)
        except PublishRejected as rej:
            raise HttpError(409, rej.description, "busy") from None
        source = PullSource(
            url, on_video_config=live.set_video, on_audio_config=live.set_audio, on_au=live.push,
            on_end=lambda reason: self._ended(live, source, reason))
        self.sources[stream_id] = source
        source.start()
        log.info("pulling %s from %s", stream_id, body.get("streamUrl"))
        doc = await registry.get_stream(stream_id)
        return broadcast_json(doc) if doc else {"streamId": stream_id}

    def _ended(self, live: "LiveStream", source: PullSource, reason: str) -> None:
        if self.sources.get(live.stream_id) is source:
            del self.sources[live.stream_id]
        if source.error:
            log.warning("pull source of %s failed: %s", live.stream_id, source.error)
        asyncio.get_running_loop().create_task(self.origin.end_stream(live, f"pull {reason}"))

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
