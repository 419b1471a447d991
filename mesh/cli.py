"""The ``mesh`` command. Thin: parse options, build the config, call into the package.

(It lives at ``mesh/cli.py`` rather than a top-level ``cli.py``: an installed top-level module
named ``cli`` would collide with any other package that ships one.)
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import DEFAULT_DATA_DIR, ConfigError, load_config

DEFAULT_MONGO = "mongodb://127.0.0.1:27017/"


def default_config_path() -> Path:
    """Where `mesh mode` writes and `mesh node` reads when --config is not given."""
    if os.environ.get("MESH_CONFIG"):
        return Path(os.environ["MESH_CONFIG"])
    if os.geteuid() == 0:
        return Path("/etc/mesh/mesh.toml")
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "mesh" / "mesh.toml"


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("pymongo", "aiohttp.access", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def mongo_uri(explicit: str | None) -> str:
    """--mongo, else MESH_MONGO, else the config file's, else a local `mesh db`."""
    if explicit:
        return explicit
    if os.environ.get("MESH_MONGO"):
        return os.environ["MESH_MONGO"]
    path = default_config_path()
    if path.exists():
        try:
            cfg = load_config(path, env={}, role="standalone")
            if cfg.mongo:
                return cfg.mongo
        except ConfigError:
            pass
    return DEFAULT_MONGO


def run_registry(uri: str, job: Any) -> Any:
    """Run ``await job(registry)`` against the database at ``uri`` with one-line errors."""
    from .registry import Registry, RegistryError

    async def go() -> Any:
        registry = Registry(uri, os.environ.get("MESH_DB_NAME") or "mesh",
                            node_dead_after_s=float(os.environ.get("MESH_NODE_DEAD_AFTER_S") or 4.0))
        try:
            await registry.connect()
            return await job(registry)
        finally:
            await registry.close()

    try:
        return asyncio.run(go())
    except RegistryError as exc:
        fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100, "terminal_width": 100})
@click.version_option(__version__, prog_name="mesh")
def main() -> None:
    """mesh: a live-video streaming cluster.

    Publishers push RTMP to origin nodes; edge nodes pull each stream over a ZeroMQ bus and serve
    HLS; MongoDB records the nodes and which origin owns each stream.

    \b
    Quick start (one machine, embedded database, nginx in front):
      mesh cluster up --publish          then open the printed player URL
    Single node:
      mesh node --role standalone        RTMP on :1935, HLS on :5080
      mesh publish --url rtmp://127.0.0.1:1935/LiveApp/cam1
    """


# -- node ---------------------------------------------------------------------------------------
@main.command()
@click.option("--role", type=click.Choice(["origin", "edge", "standalone"]), default=None,
              help="origin: ingests and publishes on the bus; edge: serves HLS pulled from origins; "
                   "standalone: both in one process.  [default: standalone]")
@click.option("--mongo", metavar="URI", default=None,
              help="The cluster database, e.g. mongodb://user:pass@10.0.0.5:27017/. Without it a "
                   "standalone node starts an embedded one; origins and edges need it.")
@click.option("--node-id", default=None, help="Unique node name [default: ROLE-HOSTNAME-HTTPPORT].")
@click.option("--host", default=None, help="Address other nodes and clients use to reach this node "
                                           "[default: 127.0.0.1].")
@click.option("--bind", default=None, help="Address to listen on [default: 127.0.0.1; 0.0.0.0 for all].")
@click.option("--http-port", type=int, default=None, help="HLS, REST and pages [default: 5080; 0 = any].")
@click.option("--rtmp-port", type=int, default=None, help="RTMP ingest (origins) [default: 1935; 0 = any].")
@click.option("--bus-port", type=int, default=None,
              help="ZeroMQ PUB port (origins); snapshots use the next port [default: 5560; 0 = any].")
@click.option("--app", default=None, help="Application name in URLs [default: LiveApp].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML config file (see deploy/mesh.toml) [default: the file `mesh mode` writes, "
                   "if it exists].")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help=f"Where the embedded database keeps its files [default: {DEFAULT_DATA_DIR}].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
def node(config_path: str | None, **flags: Any) -> None:
    """Run one node until SIGTERM/Ctrl-C.

    Every option can also come from the config file or from MESH_<OPTION> environment variables
    (e.g. MESH_MONGO, MESH_HTTP_PORT); flags win over the environment, which wins over the file.
    """
    path = config_path or (str(default_config_path()) if default_config_path().exists() else None)
    try:
        cfg = load_config(path, **flags)
    except ConfigError as exc:
        fail(str(exc))
    setup_logging(cfg.log_level)
    from .nodes.node import run_node

    sys.exit(asyncio.run(run_node(cfg)))


# -- db -----------------------------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=27017, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=str(DEFAULT_DATA_DIR / "db"),
              show_default=True, help="Where the database keeps its files.")
@click.option("--user", default=None, help="Create this user and require authentication.")
@click.option("--password", default=None, help="Password for --user.")
def db(host: str, port: int, data_dir: str, user: str | None, password: str | None) -> None:
    """Run the embedded MongoDB-wire database (SecantusDB) until Ctrl-C/SIGTERM.

    Any real MongoDB 4.2+ works in its place; this one needs nothing but pip.
    """
    from .embedded_db import EmbeddedDb, EmbeddedDbError

    if bool(user) != bool(password):
        fail("--user and --password go together")
    setup_logging("warning")
    server = EmbeddedDb(data_dir, host=host, port=port, users={user: password} if user else None)
    try:
        uri = server.start()
    except EmbeddedDbError as exc:
        fail(str(exc))
    click.echo(f"mesh db ready: {uri}")
    click.echo(f"  data     {Path(data_dir).resolve()}")
    click.echo("  use it   mesh node --role origin --mongo " + uri)
    sys.stdout.flush()

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        code = server.wait()
        fail(f"the database exited on its own with code {code}; see {server.log_path}", 1)
    except KeyboardInterrupt:
        click.echo("mesh db stopping", err=True)
        server.stop()


# -- cluster ------------------------------------------------------------------------------------
@main.group()
def cluster() -> None:
    """Look at or start a cluster."""


@cluster.command("nodes")
@click.option("--mongo", metavar="URI", default=None, help=f"[default: MESH_MONGO or {DEFAULT_MONGO}]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def cluster_nodes(mongo: str | None, as_json: bool) -> None:
    """List the nodes of the cluster, alive or dead (judged on the database server's clock)."""
    from .console import ago, size, table
    from .http.cluster import node_json

    views = run_registry(mongo_uri(mongo), lambda r: r.list_nodes())
    if as_json:
        click.echo(json.dumps([node_json(v) for v in views], indent=2, default=str))
        return
    if not views:
        click.echo("no nodes registered")
        return
    rows = []
    for v in views:
        load = v.doc.get("load") or {}
        address = v.doc.get("http_url") or v.host
        rows.append([v.node_id, v.role, address, "alive" if v.alive else "dead", ago(v.age_s),
                     f"{load.get('cpu', '')}%" if load.get("cpu") is not None else "",
                     size(load.get("memory")), load.get("streams", ""), load.get("viewers", "")])
    click.echo(table(["node", "role", "address", "status", "last seen", "cpu", "memory",
                      "streams", "viewers"], rows))


@cluster.command("up")
@click.option("--origins", type=click.IntRange(1, 16), default=1, show_default=True)
@click.option("--edges", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option("--http-port", type=int, default=5080, show_default=True, help="The load balancer's HTTP port.")
@click.option("--rtmp-port", type=int, default=1935, show_default=True, help="The load balancer's RTMP port.")
@click.option("--mongo", metavar="URI", default=None, help="Use this database instead of an embedded one.")
@click.option("--publish", "publish_stream", is_flag=False, flag_value="cam1", default=None,
              metavar="[STREAM]", help="Also run a test publisher (stream cam1 unless named).")
@click.option("--no-lb", is_flag=True, help="No nginx: publish to an origin and play from an edge directly.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where logs, the database and nginx's files go [default: a new temp dir].")
@click.option("--duration", "duration_s", type=float, default=0.0,
              help="Stop after this many seconds (0 = until Ctrl-C).")
def cluster_up(origins: int, edges: int, http_port: int, rtmp_port: int, mongo: str | None,
               publish_stream: str | None, no_lb: bool, workdir: str | None, duration_s: float) -> None:
    """Start a local cluster: embedded database, origins, edges and nginx in front.

    Prints where to publish and where to play, then runs until Ctrl-C (which stops everything).
    """
    import tempfile
    import time

    from .cluster import ClusterError, LocalCluster

    setup_logging("warning")
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mesh-cluster-"))
    say = lambda msg: click.echo(f"mesh cluster: {msg}", err=True)  # noqa: E731
    cl = LocalCluster(work, origins=origins, edges=edges, mongo=mongo, lb=not no_lb,
                      http_port=http_port, rtmp_port=rtmp_port, say=say)
    publisher = None

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        cl.start()
        click.echo(f"mesh cluster up: {origins} origin(s), {edges} edge(s), "
                   f"{'embedded database' if cl.db else 'database ' + mongo_uri(mongo).split('@')[-1]}"
                   f"{', nginx in front' if cl.nginx else ''}")
        rows = [("publish", cl.publish_url("{stream_id}")), ("play", cl.play_url("{stream_id}")),
                ("player", f"{cl.http}/{cl.app}/play.html?id={{stream_id}}"),
                ("cluster", f"{cl.http}/#/cluster"), ("database", cl.mongo or ""), ("logs", str(work))]
        for name, value in rows:
            click.echo(f"  {name:<9}{value}")
        if publish_stream:
            import subprocess

            publisher = subprocess.Popen([sys.executable, "-m", "mesh", "publish", "--quiet", "--url",
                                          cl.publish_url(publish_stream)], stdin=subprocess.DEVNULL)
            click.echo(f"test publisher on {publish_stream}: play {cl.play_url(publish_stream)}")
            click.echo(f"  in a browser: {cl.http}/{cl.app}/play.html?id={publish_stream}")
        click.echo("Ctrl-C stops the cluster.")
        sys.stdout.flush()
        deadline = time.monotonic() + duration_s if duration_s else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
            if publisher is not None and publisher.poll() is not None:
                click.echo(f"the test publisher exited with code {publisher.returncode}", err=True)
                publisher = None
    except ClusterError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
    finally:
        if publisher is not None:
            publisher.terminate()
            publisher.wait(10)
        say("stopping")
        cl.stop()


@main.group()
def lb() -> None:
    """Render load-balancer configs from the registry (publishers -> origins, viewers -> edges)."""


def _lb_options(fn: Any) -> Any:
    fn = click.option("--mongo", metavar="URI", default=None,
                      help=f"[default: MESH_MONGO or {DEFAULT_MONGO}]")(fn)
    fn = click.option("--listen", default="0.0.0.0", show_default=True)(fn)
    fn = click.option("--http-port", type=int, default=5080, show_default=True)(fn)
    fn = click.option("--rtmp-port", type=int, default=1935, show_default=True)(fn)
    fn = click.option("--out", type=click.Path(dir_okay=False), default=None,
                      help="Write here instead of standard output.")(fn)
    return fn


def _alive_backends(mongo: str | None) -> Any:
    from .lb import Backends

    views = run_registry(mongo_uri(mongo), lambda r: r.list_nodes())
    return Backends.from_nodes([v.doc for v in views if v.alive])


def _emit(text: str, out: str | None) -> None:
    if out:
        Path(out).write_text(text)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


@lb.command("nginx")
@_lb_options
def lb_nginx(mongo: str | None, listen: str, http_port: int, rtmp_port: int, out: str | None) -> None:
    """nginx.conf: stream{} for RTMP (least connections to origins), http{} with an HLS cache
    (round-robin to edges). Needs Debian's libnginx-mod-stream."""
    from .lb import render_nginx

    try:
        _emit(render_nginx(_alive_backends(mongo), listen=listen, http_port=http_port,
                           rtmp_port=rtmp_port), out)
    except ValueError as exc:
        fail(str(exc))


@lb.command("haproxy")
@_lb_options
def lb_haproxy(mongo: str | None, listen: str, http_port: int, rtmp_port: int, out: str | None) -> None:
    """haproxy.cfg: TCP for RTMP to origins, HTTP round-robin to edges with health checks."""
    from .lb import render_haproxy

    try:
        _emit(render_haproxy(_alive_backends(mongo), listen=listen, http_port=http_port,
                             rtmp_port=rtmp_port), out)
    except ValueError as exc:
        fail(str(exc))


@main.command()
@click.argument("mode", type=click.Choice(["cluster", "standalone"]))
@click.argument("mongo_host", required=False)
@click.argument("user", required=False)
@click.argument("password", required=False)
@click.option("--role", type=click.Choice(["origin", "edge"]), default="origin", show_default=True,
              help="The role of this node in cluster mode.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="The config file to write [default: the one `mesh node` reads].")
@click.option("--no-check", is_flag=True, help="Do not try the database before writing.")
def mode(mode: str, mongo_host: str | None, user: str | None, password: str | None, role: str,
         config_path: str | None, no_check: bool) -> None:
    """Switch this node between standalone and cluster mode (like Ant Media's change_server_mode.sh).

    \b
      mesh mode cluster 10.0.0.5                    a MongoDB without authentication
      mesh mode cluster 10.0.0.5:27017 USER PASS    with a user and password
      mesh mode cluster mongodb://u:p@db1,db2/?replicaSet=rs0
      mesh mode standalone                          back to one process with its own database

    Then restart the node (e.g. systemctl restart mesh-origin).
    """
    from urllib.parse import quote_plus

    from .config import set_config_values

    path = Path(config_path) if config_path else default_config_path()
    if mode == "standalone":
        set_config_values(path, {"role": "standalone", "mongo": ""})
        click.echo(f"wrote {path}: standalone mode (embedded database). Restart the node to apply.")
        return
    if not mongo_host:
        fail("cluster mode needs the database address: mesh mode cluster MONGO_HOST [USER PASS]")
    if bool(user) != bool(password):
        fail("give both USER and PASS, or neither")
    if mongo_host.startswith(("mongodb://", "mongodb+srv://")):
        uri = mongo_host
    else:
        host = mongo_host if ":" in mongo_host else f"{mongo_host}:27017"
        creds = f"{quote_plus(user)}:{quote_plus(password)}@" if user and password else ""
        uri = f"mongodb://{creds}{host}/"
    if not no_check:
        run_registry(uri, lambda r: r.count_nodes())  # a bad address or password fails here, clearly
    set_config_values(path, {"role": role, "mongo": uri})
    click.echo(f"wrote {path}: cluster mode, role {role}, database {uri.split('@')[-1]}. "
               f"Restart the node to apply.")


@main.command()
@click.option("--mongo", metavar="URI", default=None, help=f"[default: MESH_MONGO or {DEFAULT_MONGO}]")
@click.option("--app", default=None, help="Only this application's streams.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def streams(mongo: str | None, app: str | None, as_json: bool) -> None:
    """List streams: status, origin node, epoch, segments."""
    from .console import since, table

    async def job(registry: Any) -> Any:
        return await registry.list_streams(app=app), await registry.server_time()

    docs, now = run_registry(mongo_uri(mongo), job)
    if as_json:
        click.echo(json.dumps(docs, indent=2, default=str))
        return
    if not docs:
        click.echo("no streams")
        return
    rows = [[d["_id"], d.get("app", ""), d["status"], d.get("origin_node", ""), d.get("epoch", 0),
             d.get("media_sequence", 0), since(d.get("updated_at"), now)] for d in docs]
    click.echo(table(["stream", "app", "status", "origin", "epoch", "segments", "updated"], rows))


def entry() -> None:  # pragma: no cover - console-script shim
    main()


# -- publish ------------------------------------------------------------------------------------
@main.command()
@click.argument("source", required=False, default="")
@click.option("--url", required=True, metavar="RTMP_URL",
              help="Where to publish, e.g. rtmp://127.0.0.1:1935/LiveApp/cam1")
@click.option("--size", default="640x360", show_default=True, help="Test pattern size WxH.")
@click.option("--fps", type=int, default=30, show_default=True)
@click.option("--bitrate-kbps", type=int, default=1500, show_default=True, help="Test pattern video bitrate.")
@click.option("--gop-s", type=float, default=2.0, show_default=True, help="Keyframe interval.")
@click.option("--duration", "duration_s", type=float, default=0.0, show_default=True,
              help="Stop after this many seconds (0 = until Ctrl-C or the end of SOURCE).")
@click.option("--loop", is_flag=True, help="Start SOURCE over when it ends.")
@click.option("--quiet", is_flag=True, help="No progress line.")
def publish(source: str, url: str, size: str, fps: int, bitrate_kbps: int, gop_s: float,
            duration_s: float, loop: bool, quiet: bool) -> None:
    """Publish a test pattern with a tone (default) or SOURCE (a file or URL) over RTMP.

    \b
    Examples:
      mesh publish --url rtmp://127.0.0.1:1935/LiveApp/cam1
      mesh publish talk.mp4 --loop --url rtmp://lb.example:1935/LiveApp/talk
    """
    import av

    from .publish import Progress, PublishOptions, publish as run_publish

    try:
        w, h = (int(x) for x in size.lower().split("x"))
        if not (16 <= w <= 7680 and 16 <= h <= 4320) or w % 2 or h % 2:
            raise ValueError
    except ValueError:
        fail(f"--size {size!r}: use even WIDTHxHEIGHT such as 1280x720")
    if not url.startswith(("rtmp://", "rtmps://")):
        fail("--url must be an rtmp:// URL such as rtmp://127.0.0.1:1935/LiveApp/cam1")
    if not 1 <= fps <= 120:
        fail("--fps: use 1 to 120")
    opts = PublishOptions(url=url, source=source, size=(w, h), fps=fps, bitrate_kbps=bitrate_kbps,
                          gop_s=gop_s, duration_s=duration_s, loop=loop)
    click.echo(f"publishing {source or f'test pattern {w}x{h}@{fps} + 440 Hz tone'} to {url}"
               f"{'' if quiet else ' (Ctrl-C to stop)'}", err=True)
    try:
        run_publish(opts, Progress(enabled=not quiet))
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    except av.FFmpegError as exc:
        fail(f"publishing to {url} failed: {exc}. Is an origin listening there, and is the stream "
             f"id free?", 1)


from .bench_cli import bench  # noqa: E402

main.add_command(bench)
