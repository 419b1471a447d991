"""The edge role: HLS for viewers, pulled on demand from each stream's origin over the bus.

Wiring only: a bus subscriber, the streams this edge serves (:mod:`mesh.hls.streams`) over the
registry as their directory, and the HTTP routes that map viewers' requests to them
(:mod:`mesh.hls.routes`).
"""
from __future__ import annotations

import time
from typing import Any

import zmq.asyncio
from aiohttp import web

from ..broker.keys import node_keys
from ..broker.subscriber import BusSubscriber
from ..config import NodeConfig
from .. import tokens
from ..hls.routes import HlsRoutes, PlayCheck
from ..hls.stream import Directory
from ..hls.streams import EdgeStreams, HlsSettings
from ..http.app import HttpServer
from ..registry import NodeInfo


def hls_settings(cfg: NodeConfig) -> HlsSettings:
    return HlsSettings(app=cfg.app, playlist_window=cfg.playlist_window,
                       retired_segments_kept=cfg.retired_segments_kept,
                       segment_target_s=cfg.segment_target_s,
                       idle_unsubscribe_s=cfg.edge_idle_unsubscribe_s,
                       origin_silence_s=cfg.origin_silence_s,
                       packetise_workers=cfg.edge_packetise_workers,
                       ll_part_target_s=cfg.ll_part_target_s, ll_block_s=cfg.ll_block_s)


def play_check(cfg: NodeConfig) -> PlayCheck | None:
    """The play-token check of a node that requires tokens (None: streams play without one)."""
    if not cfg.require_play_token:
        return None
    secrets = tokens.secrets_of(cfg.cluster_secret, cfg.cluster_secret_previous)

    def check(stream_id: str, token: str) -> None:
        tokens.verify_stream_token(token, secrets, stream_id, tokens.PLAY, now=time.time())

    return check


class EdgePart:
    name = "edge"

    def __init__(self, cfg: NodeConfig, directory: Directory, ctx: zmq.asyncio.Context,
                 app: web.Application, http: HttpServer, info: NodeInfo):
        keys = node_keys(cfg.bus_security, cfg.data_dir, info.node_id)
        if keys is not None and not info.bus_public_key:
            info.bus_public_key = keys.public.decode()
        self.bus = BusSubscriber(ctx, curve=keys)
        self.streams = EdgeStreams(hls_settings(cfg), directory, self.bus)
        self.routes = HlsRoutes(self.streams, cfg.app, play_check(cfg))
        self.routes.install(app, http)

    async def start(self) -> None:
        await self.streams.start()

    async def stop(self) -> None:
        await self.streams.stop()
        await self.bus.stop()
        self.routes.close()

    def load(self) -> dict[str, Any]:
        return self.routes.load()

    def listening(self) -> list[tuple[str, str]]:
        return []
