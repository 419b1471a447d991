"""A mesh node: one OS process, one asyncio loop, parts chosen by role.

The node owns what every role shares: the registry connection (and, for a standalone node
without ``--mongo``, the embedded database), the ZeroMQ context, the HTTP server with the cluster
endpoints, node registration and the heartbeat. Role parts (:mod:`.origin`, :mod:`.edge`) plug in
through the small :class:`Part` interface.

Stop order (SIGTERM, what systemd sends): stop ingest and tell subscribers the streams ended, flush
the bus, stop serving HTTP, mark the node gone in the registry, close the database.
"""
from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import zmq
import zmq.asyncio

from .. import __version__
from ..config import NodeConfig
from ..embedded_db import EmbeddedDb, EmbeddedDbError, free_port
from ..http.app import HttpServer, make_app
from ..http.auth import RestAuth
from ..http.broadcasts import BroadcastActions, add_broadcast_routes
from ..http.cluster import add_cluster_routes
from ..http.limits import HttpLimits
from ..http.pages import add_page_routes
from ..http.vods import add_vod_routes
from ..registry import NodeInfo, Registry, RegistryError
from ..timers import sleep_to_grid
from ..tokens import secrets_of
from .part import Part, Shared
from .roles import build_parts

log = logging.getLogger("mesh.node")


class Node:
    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.node_id = cfg.resolved_node_id()
        self.role = cfg.role
        self.embedded: EmbeddedDb | None = None
        self.registry: Registry | None = None
        self.zmq: zmq.asyncio.Context | None = None
        self.app = make_app()
        self.http = HttpServer(self.app, cfg.bind, cfg.http_port, HttpLimits.from_config(cfg))
        self.parts: list[Part] = []
        self.info = NodeInfo(self.node_id, self.role, cfg.host, version=__version__)
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._cpu_mark = (time.monotonic(), time.process_time())
        self.started = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.cfg
        uri = cfg.mongo
        if not uri:
            data = Path(cfg.data_dir) / f"db-{self.node_id}"
            self.embedded = EmbeddedDb(data, port=free_port())
            uri = self.embedded.start()  # in the loop thread on purpose: see EmbeddedDb
        self.registry = Registry(uri, cfg.db_name, node_dead_after_s=cfg.node_dead_after_s)
        await self.registry.connect()
        self.zmq = zmq.asyncio.Context(io_threads=self.cfg.bus_io_threads)
        secrets = secrets_of(cfg.cluster_secret, cfg.cluster_secret_previous)
        auth = RestAuth(secrets, cfg.rest_allowed_cidrs, cfg.trusted_proxies)
        add_cluster_routes(self.app, self.registry, self.health, auth, cfg.node_forget_after_s)
        role = build_parts(self.role, Shared(cfg, self.registry, self.zmq, self.info, self.app, self.http))
        self.parts = role.parts
        for part in self.parts:
            await part.start()
        actions = BroadcastActions(self.node_id, role.create_pull, role.stop_stream, role.check_url,
                                   self._origin_hint, secrets)
        add_broadcast_routes(self.app, self.registry, cfg.app, actions, auth)
        add_vod_routes(self.app, self.registry, cfg.app, cfg.resolved_record_dir(), auth)
        add_page_routes(self.app, cfg.app, self.registry, serves_hls=self.role != "origin")
        await self.http.start()
        self.info.http_url = f"http://{cfg.host}:{self.http.port}"
        await self.registry.register_node(self.info)
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="node-heartbeat")
        settle_heap()
        self.started.set()

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            # bounded: a beat cancelled inside the database driver has been seen never to finish
            await self._bounded(asyncio.wait([self._heartbeat_task]), "the heartbeat", 5)
        for part in reversed(self.parts):
            await self._bounded(part.stop(), part.name, 10)
        await self._bounded(self.http.stop(), "HTTP", 10)
        if self.registry is not None:
            try:
                await asyncio.wait_for(self.registry.deregister(self.node_id), 5)
            except Exception as exc:
                log.warning("could not mark %s gone in the registry: %s", self.node_id, exc)
            await self._bounded(self.registry.close(), "the registry client", 5)
        if self.zmq is not None:
            self.zmq.term()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)

    @staticmethod
    async def _bounded(step: Awaitable[Any], what: str, timeout_s: float) -> None:
        """One step of stopping, given at most ``timeout_s``: a stop must end (systemd waits 90 s)."""
        try:
            await asyncio.wait_for(step, timeout_s)
        except asyncio.TimeoutError:
            log.warning("stopping %s took over %.0f s; going on without it", what, timeout_s)
        except Exception:
            log.exception("stopping %s failed", what)

    async def run(self, on_ready: Callable[["Node"], None] | None = None) -> None:
        """Start, report readiness, serve until SIGTERM/SIGINT, stop in order."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            log.info("node %s runs on the %s event loop", self.node_id, type(loop).__module__.split(".")[0])
            if on_ready:
                on_ready(self)
            await stop.wait()
            log.info("node %s stopping", self.node_id)
        finally:
            await self.stop()

    # -- heartbeat and load ----------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), time.process_time()
        then, cpu_then = self._cpu_mark
        self._cpu_mark = (now, cpu)
        figures: dict[str, Any] = {
            "cpu": round(100.0 * (cpu - cpu_then) / max(now - then, 1e-6), 1),
            "memory": _rss_bytes(),
        }
        for part in self.parts:
            for key, value in part.load().items():
                figures[key] = figures.get(key, 0) + value if isinstance(value, (int, float)) else value
        return figures

    async def _heartbeat(self) -> None:
        """Beat about every second. Each beat writes the whole node document (upserted), so the
        node re-registers by itself after the database comes back without it. Orphaned streams
        are only judged once our beats have succeeded for a full dead-node bound: after an
        outage every live node must have had the chance to beat again before anyone is called
        dead."""
        assert self.registry is not None
        cfg = self.cfg
        beats = 0
        failing = False
        ok_since = time.monotonic()
        while not self._stopping:
            try:
                await self.registry.heartbeat(self.node_id, self.load(), self.info)
                if failing:
                    log.info("registry reachable again; node %s re-registered", self.node_id)
                    ok_since = time.monotonic()
                failing = False
                settled = time.monotonic() - ok_since > cfg.node_dead_after_s + cfg.heartbeat_interval_s
                if self.role != "edge" and beats % 5 == 0 and settled:
                    await self.registry.mark_orphans()
            except Exception as exc:  # the DB being away must not stop media
                if self._stopping:
                    return  # a cancel the database driver turned into a connection error
                if not failing:
                    log.warning("heartbeat to the registry failed (%s); media keeps flowing, "
                                "retrying every %.0f s", exc, cfg.heartbeat_interval_s)
                failing = True
            beats += 1
            # On the shared grid (mesh.timers): the bus heartbeat, the registry watch and the
            # RTMP timeout checks fall due in the same pass of the loop.
            await sleep_to_grid(cfg.heartbeat_interval_s)

    async def _origin_hint(self) -> str:
        assert self.registry is not None
        origins = [v for v in await self.registry.list_nodes() if v.alive and v.role != "edge"]
        if not origins:
            return "no origin is alive in the cluster"
        url = origins[0].doc.get("http_url")
        return f"POST to an origin instead, e.g. {url}/{self.cfg.app}/rest/v2/broadcasts/create"

    def health(self) -> dict[str, Any]:
        return {"status": "ok" if self.started.is_set() and not self._stopping else "starting",
                "node": self.node_id, "role": self.role, "version": __version__,
                "parts": [p.name for p in self.parts]}

    def listening(self) -> list[tuple[str, str]]:
        rows = [("http", f"http://{self.cfg.host}:{self.http.port}/")]
        for part in self.parts:
            rows.extend(part.listening())
        db = self.embedded.uri + " (embedded)" if self.embedded else _hide_password(self.cfg.mongo)
        rows.append(("db", db))
        return rows


def _hide_password(uri: str) -> str:
    if "@" not in uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


_statm = -1  # /proc/self/statm, opened once: reread each heartbeat with one pread, no open/close
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    global _statm
    try:
        if _statm < 0:
            _statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(_statm, 128, 0).split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def settle_heap() -> None:
    """Leave what start-up built (modules, Numba's compiled kernels, codec tables, parts and
    sockets: some 130,000 objects, all living as long as the node) out of every later garbage
    collection: a full collection over them took 65-95 ms on a 2-core machine, a stall of the
    event loop each time one ran (bench/results/ingest.md); new objects are collected as usual."""
    gc.collect()
    gc.freeze()


def print_ready(node: Node) -> None:
    print(f"mesh node {node.node_id} ({node.role}) ready", flush=True)
    for name, value in node.listening():
        print(f"  {name:<9}{value}", flush=True)
    sys.stdout.flush()


async def run_node(cfg: NodeConfig) -> int:
    """Run a node; startup failures become one clear line and exit code 2."""
    node = Node(cfg)
    try:
        await node.run(print_ready)
    except (RegistryError, EmbeddedDbError) as exc:
        log.error("%s", exc)
        return 2
    except (OSError, zmq.ZMQError) as exc:
        if getattr(exc, "errno", None) in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            log.error("cannot listen (%s); pick free ports with --http-port/--rtmp-port/--bus-port "
                      "(0 lets the OS choose) or another --bind address", exc.strerror or exc)
            return 2
        raise
    return 0
