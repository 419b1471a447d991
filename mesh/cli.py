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


def mongo_uri(explicit: str | None, mongo_file: str | None = None) -> str:
    """--mongo, else --mongo-file, else MESH_MONGO / MESH_MONGO_FILE, else the config file's, else
    a local `mesh db`."""
    from .credentials import SecretFileError, read_secret_file

    try:
        if explicit:
            return explicit
        if mongo_file:
            return read_secret_file(mongo_file, "mongo URI")
        if os.environ.get("MESH_MONGO"):
            return os.environ["MESH_MONGO"]
        if os.environ.get("MESH_MONGO_FILE"):
            return read_secret_file(os.environ["MESH_MONGO_FILE"], "mongo URI")
    except SecretFileError as exc:
        fail(str(exc))
    path = default_config_path()
    if path.exists():
        try:
            cfg = load_config(path, env={}, role="standalone")
            if cfg.mongo:
                return cfg.mongo
        except ConfigError:
            pass
    return DEFAULT_MONGO


def refuse_secret_in_argv(option: str, instead: str) -> None:
    """A secret given on the command line is readable by every local user (ps, /proc/*/cmdline)."""
    fail(f"{option} would put a secret in the process list, where every local user can read it "
         f"(ps, /proc/PID/cmdline); {instead}")


def mongo_file_option(fn: Any) -> Any:
    return click.option("--mongo-file", type=click.Path(dir_okay=False), default=None,
                        help="A file holding the database URI (keeps its password out of the "
                             "process list) [or MESH_MONGO_FILE].")(fn)


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
@click.option("--mongo-file", type=click.Path(dir_okay=False), default=None,
              help="A file holding the --mongo URI, so its password stays out of the process list.")
@click.option("--cluster-secret-file", type=click.Path(dir_okay=False), default=None,
              help="A file holding the cluster secret that signs play/publish/REST tokens "
                   "[or MESH_CLUSTER_SECRET, or cluster_secret in the config file].")
@click.option("--cluster-secret", "cluster_secret_argv", default=None, hidden=True)
@click.option("--require-play-token/--no-require-play-token", default=None,
              help="Playlists and segments need ?token= (a play token from `mesh token`).")
@click.option("--require-publish-token/--no-require-publish-token", default=None,
              help="Publishing needs a publish token from `mesh token`.")
@click.option("--abr", default=None, metavar="RUNGS",
              help="Transcoding ladder of an origin, e.g. 720p2500k,480p1000k,360p600k (height p video "
                   "kbps k, optionally @fps); rungs taller than the source are skipped [off].")
@click.option("--record-mp4/--no-record-mp4", default=None,
              help="Record every stream of the app to MP4 on its origin (a stream can say otherwise "
                   "over REST) [off].")
@click.option("--record-rungs/--no-record-rungs", default=None,
              help="When recording, also record each rung of the --abr ladder, one MP4 per rendition "
                   "[off].")
def node(config_path: str | None, cluster_secret_argv: str | None, **flags: Any) -> None:
    """Run one node until SIGTERM/Ctrl-C.

    Every option can also come from the config file or from MESH_<OPTION> environment variables
    (e.g. MESH_MONGO, MESH_HTTP_PORT); flags win over the environment, which wins over the file.
    Secrets (a --mongo URI with a password, the cluster secret) belong in a file (--mongo-file,
    --cluster-secret-file) or the environment, not on the command line.
    """
    if cluster_secret_argv is not None:
        refuse_secret_in_argv("--cluster-secret", "put it in a file (chmod 600) and pass "
                              "--cluster-secret-file FILE, or set MESH_CLUSTER_SECRET")
    from .credentials import uri_has_password

    if flags.get("mongo") and uri_has_password(flags["mongo"]):
        click.echo("warning: the --mongo URI holds a password that every local user can read in "
                   "the process list; use --mongo-file FILE or MESH_MONGO instead", err=True)
    path = config_path or (str(default_config_path()) if default_config_path().exists() else None)
    try:
        cfg = load_config(path, **flags)
    except ConfigError as exc:
        fail(str(exc))
    setup_logging(cfg.log_level)
    from .nodes.node import run_node

    if cfg.event_loop == "uvloop":
        import uvloop

        sys.exit(uvloop.run(run_node(cfg)))
    sys.exit(asyncio.run(run_node(cfg)))


# -- db -----------------------------------------------------------------------------------------
def read_password(password_file: str | None) -> str | None:
    """The password from ``password_file``, else from MESH_DB_PASSWORD, else None."""
    from .credentials import SecretFileError, file_is_open_to_others, read_secret_file

    if password_file:
        try:
            password = read_secret_file(password_file, "password")
        except SecretFileError as exc:
            fail(str(exc))
        if file_is_open_to_others(password_file):
            click.echo(f"warning: {password_file} is readable by every local user; "
                       f"chmod 600 it", err=True)
        return password
    return os.environ.get("MESH_DB_PASSWORD") or None


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=27017, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=str(DEFAULT_DATA_DIR / "db"),
              show_default=True, help="Where the database keeps its files.")
@click.option("--user", default=None, help="Create this user (role root) and require authentication.")
@click.option("--password-file", type=click.Path(dir_okay=False), default=None,
              help="A file holding the password for --user [or MESH_DB_PASSWORD].")
@click.option("--password", default=None, hidden=True)
@click.option("--uri-file", type=click.Path(dir_okay=False), default=None,
              help="Also write the full URI (with the password) to this file, mode 0640, for "
                   "`mesh node --mongo-file`.")
def db(host: str, port: int, data_dir: str, user: str | None, password_file: str | None,
       password: str | None, uri_file: str | None) -> None:
    """Run the embedded MongoDB-wire database (SecantusDB) until Ctrl-C/SIGTERM.

    Any real MongoDB 4.2+ works in its place; this one needs nothing but pip. With --user, the
    user is written into the data directory before the server starts, and the server never
    listens without authentication. The password comes from --password-file or
    MESH_DB_PASSWORD, never from the command line, and is printed as ***.
    """
    from .credentials import write_private_file
    from .embedded_db import EmbeddedDb, EmbeddedDbError

    if password is not None:
        refuse_secret_in_argv("--password", "put the password in a file (chmod 600) and pass "
                              "--password-file FILE, or set MESH_DB_PASSWORD")
    secret = read_password(password_file) if user else None
    if user and not secret:
        fail("--user needs a password: --password-file FILE or the MESH_DB_PASSWORD environment variable")
    if not user and (password_file or uri_file):
        fail("--password-file and --uri-file go with --user")
    setup_logging("warning")
    server = EmbeddedDb(data_dir, host=host, port=port, users={user: secret} if user and secret else None)
    try:
        uri = server.start()
    except EmbeddedDbError as exc:
        fail(str(exc))
    if uri_file:
        write_private_file(uri_file, uri + "\n")
    click.echo(f"mesh db ready: {server.display_uri}")
    click.echo(f"  data     {Path(data_dir).resolve()}")
    if uri_file:
        click.echo(f"  use it   mesh node --role origin --mongo-file {uri_file}")
    elif user:
        click.echo(f"  use it   mesh node --role origin --mongo-file FILE   (FILE holding "
                   f"{server.display_uri} with the password in place of ***)")
    else:
        click.echo("  use it   mesh node --role origin --mongo " + uri)
    sys.stdout.flush()

    _interrupt_on_stop_signals()
    try:
        code = server.wait()
        fail(f"the database exited on its own with code {code}; see {server.log_path}", 1)
    except KeyboardInterrupt:
        click.echo("mesh db stopping", err=True)
        server.stop()


def _interrupt_on_stop_signals() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt in the main thread, so a foreground command
    stops the way Ctrl-C stops it. SIGINT is set explicitly: a process started in the background
    by a shell without job control inherits SIGINT ignored, and Python then leaves it ignored
    (``kill -INT`` did nothing to `mesh db` started that way)."""
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


# -- cluster ------------------------------------------------------------------------------------
@main.group()
def cluster() -> None:
    """Look at or start a cluster."""


@cluster.command("nodes")
@click.option("--mongo", metavar="URI", default=None, help=f"[default: MESH_MONGO or {DEFAULT_MONGO}]")
@mongo_file_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--all", "show_all", is_flag=True,
              help="Also list nodes unseen for longer than node_forget_after_s (600 s by default).")
def cluster_nodes(mongo: str | None, mongo_file: str | None, as_json: bool, show_all: bool) -> None:
    """List the nodes of the cluster, alive or dead (judged on the database server's clock).
    Nodes dead for longer than node_forget_after_s are left out unless --all is given."""
    from .console import ago, size, table
    from .http.cluster import node_json

    from .config import NodeConfig

    try:
        within = None if show_all else float(os.environ.get("MESH_NODE_FORGET_AFTER_S")
                                              or NodeConfig.node_forget_after_s)
    except ValueError:
        fail("MESH_NODE_FORGET_AFTER_S must be a number of seconds", 2)
    views = run_registry(mongo_uri(mongo, mongo_file), lambda r: r.list_nodes_seen(within_s=within))
    if as_json:
        click.echo(json.dumps([node_json(v, internal=True) for v in views], indent=2, default=str))
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
@mongo_file_option
@click.option("--publish", "publish_stream", is_flag=False, flag_value="cam1", default=None,
              metavar="[STREAM]", help="Also run a test publisher (stream cam1 unless named).")
@click.option("--no-lb", is_flag=True, help="No nginx: publish to an origin and play from an edge directly.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where logs, the database and nginx's files go [default: a new temp dir].")
@click.option("--duration", "duration_s", type=float, default=0.0,
              help="Stop after this many seconds (0 = until Ctrl-C).")
@click.option("--abr", default=None, metavar="RUNGS",
              help="The origins' transcoding ladder, e.g. 720p2500k,480p1000k,360p600k [off].")
def cluster_up(origins: int, edges: int, http_port: int, rtmp_port: int, mongo: str | None,
               mongo_file: str | None, publish_stream: str | None, no_lb: bool, workdir: str | None,
               duration_s: float, abr: str | None) -> None:
    """Start a local cluster: embedded database, origins, edges and nginx in front.

    Prints where to publish and where to play, then runs until Ctrl-C (which stops everything).
    """
    import tempfile
    import time

    from .cluster import ClusterError, LocalCluster
    from .credentials import mask_uri

    setup_logging("warning")
    from .credentials import uri_has_password

    if mongo and uri_has_password(mongo):
        click.echo("warning: the --mongo URI holds a password that every local user can read in the "
                   "process list; use --mongo-file FILE instead", err=True)
    if mongo_file:
        mongo = mongo_uri(None, mongo_file)
    if abr:
        from .ladder import parse_ladder

        try:
            parse_ladder(abr.split(","))
        except ValueError as exc:
            fail(f"--abr: {exc}")
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mesh-cluster-"))
    say = lambda msg: click.echo(f"mesh cluster: {msg}", err=True)  # noqa: E731
    cl = LocalCluster(work, origins=origins, edges=edges, mongo=mongo, lb=not no_lb,
                      http_port=http_port, rtmp_port=rtmp_port, say=say,
                      node_env={"MESH_ABR": abr} if abr else {})
    publisher = None

    _interrupt_on_stop_signals()
    try:
        cl.start()
        click.echo(f"mesh cluster up: {origins} origin(s), {edges} edge(s), "
                   f"{'embedded database' if cl.db else 'database ' + mongo_uri(mongo).split('@')[-1]}"
                   f"{', nginx in front' if cl.nginx else ''}")
        rows = [("publish", cl.publish_url("{stream_id}")), ("play", cl.play_url("{stream_id}")),
                ("player", f"{cl.http}/{cl.app}/play.html?id={{stream_id}}"),
                ("cluster", f"{cl.http}/#/cluster"), ("database", mask_uri(cl.mongo or "")),
                ("logs", str(work))]
        for name, value in rows:
            click.echo(f"  {name:<9}{value}")
        if publish_stream:
            import subprocess

            publisher = subprocess.Popen([sys.executable, "-m", "mesh", "publish", "--quiet", "--url",
                                          cl.publish_url(publish_stream)], stdin=subprocess.DEVNULL)
            click.echo(f"test publisher on {publish_stream}: play {cl.play_url(publish_stream)}")
            if abr:
                click.echo(f"  adaptive (every rung): {cl.play_url(publish_stream + '_adaptive')}")
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
    fn = mongo_file_option(fn)
    fn = click.option("--mongo", metavar="URI", default=None,
                      help=f"[default: MESH_MONGO or {DEFAULT_MONGO}]")(fn)
    fn = click.option("--listen", default="0.0.0.0", show_default=True)(fn)
    fn = click.option("--http-port", type=int, default=5080, show_default=True)(fn)
    fn = click.option("--rtmp-port", type=int, default=1935, show_default=True)(fn)
    fn = click.option("--out", type=click.Path(dir_okay=False), default=None,
                      help="Write here instead of standard output.")(fn)
    fn = click.option("--watch", is_flag=True,
                      help="Keep running: re-render when the alive nodes change, check, replace, reload.")(fn)
    fn = click.option("--interval", "interval_s", type=click.FloatRange(0.2, 60), default=1.0,
                      show_default=True, help="With --watch: seconds between registry polls.")(fn)
    fn = click.option("--check-cmd", default=None,
                      help="Command that checks the config ({conf}: the candidate file) [nginx: "
                           "`nginx -t -q -c {conf}`, with --include `nginx -t -q`; haproxy: "
                           "`haproxy -c -q -f {conf}`].")(fn)
    fn = click.option("--reload-cmd", default=None,
                      help="Command that reloads the balancer after a change [nginx: `nginx -s reload`; "
                           "haproxy: `systemctl reload haproxy`].")(fn)
    return fn


def _alive_backends(mongo: str | None, mongo_file: str | None = None) -> Any:
    from .lb import Backends

    views = run_registry(mongo_uri(mongo, mongo_file), lambda r: r.list_nodes())
    return Backends.from_nodes([v.doc for v in views if v.alive])


def _emit(text: str, out: str | None) -> None:
    if out:
        Path(out).write_text(text)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


def _lb_watch(mongo: str | None, mongo_file: str | None, render: Any, check_cmd: str | None,
              reload_cmd: str | None, interval_s: float) -> None:
    """Run :func:`mesh.lb_watch.watch` until SIGTERM/Ctrl-C."""
    from .lb_watch import watch
    from .registry import Registry, RegistryError

    uri = mongo_uri(mongo, mongo_file)
    setup_logging("info")

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        registry = Registry(uri, os.environ.get("MESH_DB_NAME") or "mesh",
                            node_dead_after_s=float(os.environ.get("MESH_NODE_DEAD_AFTER_S") or 4.0))
        await registry.connect()
        try:
            click.echo(f"following the cluster every {interval_s:g} s (check: {check_cmd or 'none'}; "
                       f"reload: {reload_cmd or 'none'}); Ctrl-C stops", err=True)
            await watch(registry, render, check_cmd=check_cmd, reload_cmd=reload_cmd,
                        interval_s=interval_s, stop=stop)
        finally:
            await registry.close()

    try:
        asyncio.run(go())
    except RegistryError as exc:
        fail(str(exc))


@lb.command("nginx")
@_lb_options
@click.option("--include", "include_dir", type=click.Path(file_okay=False), default=None,
              help="Write mesh-stream.conf and mesh-http.conf into this directory, to include from a "
                   "stock nginx.conf (inside stream {} and http {}), instead of a whole nginx.conf.")
@click.option("--cache-dir", default=None, help="The HLS cache directory, created if missing "
              "[default: /var/cache/nginx/mesh].")
def lb_nginx(mongo: str | None, mongo_file: str | None, listen: str, http_port: int, rtmp_port: int,
             out: str | None, watch: bool, interval_s: float, check_cmd: str | None, reload_cmd: str | None,
             include_dir: str | None, cache_dir: str | None) -> None:
    """nginx config: stream{} for RTMP (least connections to origins), http{} with an HLS cache
    (round-robin to edges). Needs Debian's libnginx-mod-stream.

    \b
    A whole nginx.conf:   mesh lb nginx --out /etc/nginx/nginx.conf
    Parts to include:     mesh lb nginx --include /etc/nginx/mesh
      then in nginx.conf, at the top level:  stream { include /etc/nginx/mesh/mesh-stream.conf; }
      and inside http { }:                   include /etc/nginx/mesh/mesh-http.conf;
    Following the cluster: add --watch (checks with nginx -t before a reload; keeps the old
    config when the check fails).
    """
    from .lb import NGINX_CACHE_DIR, render_nginx, render_nginx_includes

    if out and include_dir:
        fail("--out writes a whole nginx.conf, --include the parts to include: pick one")
    if watch and not (out or include_dir):
        fail("--watch needs --out FILE or --include DIR to keep up to date")
    if out or include_dir:
        base = cache_dir or NGINX_CACHE_DIR
        Path(base).mkdir(parents=True, exist_ok=True)  # nginx -t fails on a missing parent

    def render(backends: Any) -> dict[Path, str]:
        if include_dir:
            parts = render_nginx_includes(backends, listen=listen, http_port=http_port, rtmp_port=rtmp_port,
                                          cache_dir=cache_dir or NGINX_CACHE_DIR)
            return {Path(include_dir) / name: text for name, text in parts.items()}
        return {Path(out or "-"): render_nginx(backends, listen=listen, http_port=http_port,
                                               rtmp_port=rtmp_port, cache_dir=cache_dir)}

    if watch:
        _lb_watch(mongo, mongo_file, render, check_cmd or ("nginx -t -q" if include_dir else
                                                           "nginx -t -q -c {conf}"),
                  reload_cmd or "nginx -s reload", interval_s)
        return
    try:
        files = render(_alive_backends(mongo, mongo_file))
    except ValueError as exc:
        fail(str(exc))
    if include_dir:
        for path, text in files.items():
            _emit(text, str(path))
        click.echo(f"add to nginx.conf: at the top level `stream {{ include {Path(include_dir).resolve()}/"
                   f"mesh-stream.conf; }}`, inside http {{ }} `include {Path(include_dir).resolve()}/"
                   f"mesh-http.conf;`", err=True)
    else:
        _emit(next(iter(files.values())), out)


@lb.command("haproxy")
@_lb_options
def lb_haproxy(mongo: str | None, mongo_file: str | None, listen: str, http_port: int, rtmp_port: int,
               out: str | None, watch: bool, interval_s: float, check_cmd: str | None,
               reload_cmd: str | None) -> None:
    """haproxy.cfg: TCP for RTMP to origins, HTTP round-robin to edges with health checks.
    With --watch it follows the cluster (checked with haproxy -c before a reload)."""
    from .lb import render_haproxy

    def render(backends: Any) -> dict[Path, str]:
        return {Path(out or "-"): render_haproxy(backends, listen=listen, http_port=http_port,
                                                 rtmp_port=rtmp_port)}

    if watch:
        if not out:
            fail("--watch needs --out FILE to keep up to date")
        _lb_watch(mongo, mongo_file, render, check_cmd or "haproxy -c -q -f {conf}",
                  reload_cmd or "systemctl reload haproxy", interval_s)
        return
    try:
        _emit(next(iter(render(_alive_backends(mongo, mongo_file)).values())), out)
    except ValueError as exc:
        fail(str(exc))


@main.group()
def install() -> None:
    """Install mesh as a service on this machine."""


@install.command("systemd")
@click.option("--role", type=click.Choice(["origin", "edge", "standalone", "db"]), default="standalone",
              show_default=True, help="Written to the config file (db: the embedded database's unit).")
@click.option("--user", default="mesh", show_default=True, help="The system user the service runs as.")
@click.option("--root", "root", type=click.Path(file_okay=False), default="/", show_default=True,
              help="Prefix for every path written (for tests and images); the unit is then not enabled.")
def install_systemd(role: str, user: str, root: str) -> None:
    """As root: create the system user (useradd --system), /etc/mesh (0750 root:USER), /var/lib/mesh
    and /var/cache/mesh (0750 USER:USER), the config file /etc/mesh/mesh.toml (0640 root:USER,
    holding the role), and the unit (mesh.service, or mesh-db.service for --role db) in
    /etc/systemd/system; then systemctl daemon-reload and enable it (or print those commands when
    systemd is not running). The unit passes no --role: the node takes it from the config file.
    """
    from .install import InstallError, Layout, install_systemd as run_install

    try:
        run_install(role, layout=Layout(Path(root).resolve()), user=user, say=click.echo)
    except InstallError as exc:
        fail(str(exc))


@main.command()
@click.argument("mode", type=click.Choice(["cluster", "standalone"]))
@click.argument("mongo_host", required=False)
@click.argument("user", required=False)
@click.argument("password", required=False)
@click.option("--password-file", type=click.Path(dir_okay=False), default=None,
              help="A file holding USER's password [or MESH_DB_PASSWORD].")
@click.option("--role", type=click.Choice(["origin", "edge"]), default="origin", show_default=True,
              help="The role of this node in cluster mode.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="The config file to write [default: the one `mesh node` reads].")
@click.option("--no-check", is_flag=True, help="Do not try the database before writing.")
def mode(mode: str, mongo_host: str | None, user: str | None, password: str | None,
         password_file: str | None, role: str, config_path: str | None, no_check: bool) -> None:
    """Switch this node between standalone and cluster mode (like Ant Media's change_server_mode.sh).

    \b
      mesh mode cluster 10.0.0.5                    a MongoDB without authentication
      mesh mode cluster 10.0.0.5:27017 USER --password-file FILE    with a user and password
      MESH_DB_PASSWORD=... mesh mode cluster 10.0.0.5 USER          the same, from the environment
      mesh mode standalone                          back to one process with its own database

    The password is never taken from the command line (every local user can read that). The
    config file holds it, so it is written 0640, group mesh (root if there is no mesh group), or
    the group of its directory (/etc/mesh after `mesh install systemd`: the service user's).
    Then restart the node: systemctl restart mesh.
    """
    from urllib.parse import quote_plus

    from .config import set_config_values
    from .credentials import uri_has_password

    from .install import restart_hint, share_with_dir_group

    path = Path(config_path) if config_path else default_config_path()
    if mode == "standalone":
        set_config_values(path, {"role": "standalone", "mongo": ""})
        share_with_dir_group(path)
        click.echo(f"wrote {path}: standalone mode (embedded database); {restart_hint(path)}")
        return
    if not mongo_host:
        fail("cluster mode needs the database address: mesh mode cluster MONGO_HOST [USER]")
    if password is not None:
        refuse_secret_in_argv("a PASS argument", "put the password in a file (chmod 600) and pass "
                              "--password-file FILE, or set MESH_DB_PASSWORD")
    if mongo_host.startswith(("mongodb://", "mongodb+srv://")):
        if user:
            fail("give the user inside the mongodb:// URI, or MONGO_HOST USER, not both")
        uri = mongo_host
        if uri_has_password(uri):
            click.echo("warning: this URI's password is visible in the process list while the "
                       "command runs; prefer MONGO_HOST USER --password-file FILE", err=True)
    else:
        secret = read_password(password_file) if user else None
        if user and not secret:
            fail(f"user {user} needs a password: --password-file FILE or MESH_DB_PASSWORD")
        if not user and password_file:
            fail("--password-file goes with USER: mesh mode cluster MONGO_HOST USER --password-file FILE")
        host = mongo_host if ":" in mongo_host else f"{mongo_host}:27017"
        creds = f"{quote_plus(user)}:{quote_plus(secret)}@" if user and secret else ""
        uri = f"mongodb://{creds}{host}/"
    if not no_check:
        run_registry(uri, lambda r: r.count_nodes())  # a bad address or password fails here, clearly
    set_config_values(path, {"role": role, "mongo": uri})
    share_with_dir_group(path)
    click.echo(f"wrote {path}: cluster mode, role {role}, database {uri.split('@')[-1]}; "
               f"{restart_hint(path)}")


@main.command()
@click.option("--mongo", metavar="URI", default=None, help=f"[default: MESH_MONGO or {DEFAULT_MONGO}]")
@mongo_file_option
@click.option("--app", default=None, help="Only this application's streams.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def streams(mongo: str | None, mongo_file: str | None, app: str | None, as_json: bool) -> None:
    """List streams: status, origin node, epoch, segments."""
    from .console import since, table

    async def job(registry: Any) -> Any:
        return await registry.list_streams(app=app), await registry.server_time()

    docs, now = run_registry(mongo_uri(mongo, mongo_file), job)
    if as_json:
        click.echo(json.dumps(docs, indent=2, default=str))
        return
    if not docs:
        click.echo("no streams")
        return
    def rungs(d: dict[str, Any]) -> str:
        live = [r.get("name") for r in d.get("renditions") or [] if isinstance(r, dict) and r.get("name") != "src"]
        gone = [f"{r.get('name')} dropped" for r in d.get("dropped_renditions") or [] if isinstance(r, dict)]
        return ", ".join(str(x) for x in live + gone) or "-"

    rows = [[d["_id"], d.get("app", ""), d["status"], d.get("origin_node", ""), d.get("epoch", 0),
             d.get("media_sequence", 0), rungs(d), since(d.get("updated_at"), now)] for d in docs]
    click.echo(table(["stream", "app", "status", "origin", "epoch", "segments", "rungs", "updated"], rows))


# -- token --------------------------------------------------------------------------------------
@main.command()
@click.option("--stream", "stream_id", default=None, metavar="ID", help="The stream id the token is for.")
@click.option("--play", "action", flag_value="play", help="A token to play the stream (HLS ?token=).")
@click.option("--publish", "action", flag_value="publish",
              help="A token to publish the stream (RTMP ?token=).")
@click.option("--rest", "action", flag_value="rest", help="A bearer token for the REST API instead.")
@click.option("--scope", multiple=True, help="With --rest: a scope to grant (repeatable).")
@click.option("--ttl", "ttl_s", type=click.IntRange(1, 366 * 24 * 3600), default=3600, show_default=True,
              help="Seconds until the token expires.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="The config file holding cluster_secret [default: the one `mesh node` reads].")
@click.option("--cluster-secret-file", type=click.Path(dir_okay=False), default=None,
              help="A file holding the cluster secret [or MESH_CLUSTER_SECRET].")
def token(stream_id: str | None, action: str | None, scope: tuple[str, ...], ttl_s: int,
          config_path: str | None, cluster_secret_file: str | None) -> None:
    """Print a signed token (JWT HS256) for one stream and action, or for the REST API.

    \b
      mesh token --stream cam1 --play --ttl 3600      then play .../cam1.m3u8?token=TOKEN
      mesh token --stream cam1 --publish              then publish to rtmp://.../LiveApp/cam1?token=TOKEN
      mesh token --rest                               then send Authorization: Bearer TOKEN

    The secret comes from --cluster-secret-file, MESH_CLUSTER_SECRET or the config file's
    cluster_secret; only the token is printed.
    """
    import time

    from . import tokens

    if action is None:
        fail("say what the token allows: --play or --publish (with --stream ID), or --rest")
    if action == "rest":
        if stream_id:
            fail("--stream goes with --play or --publish; a --rest token is for the whole API")
    elif not stream_id:
        fail(f"--{action} needs --stream ID")
    elif scope:
        fail("--scope goes with --rest")
    path = config_path or (str(default_config_path()) if default_config_path().exists() else None)
    try:
        cfg = load_config(path, role="standalone", cluster_secret_file=cluster_secret_file)
    except ConfigError as exc:
        fail(str(exc))
    if not cfg.cluster_secret:
        fail("no cluster secret: pass --cluster-secret-file FILE, set MESH_CLUSTER_SECRET, or put "
             "cluster_secret in the config file (the nodes must use the same one)")
    now = time.time()
    if action == "rest":
        text = tokens.issue_rest_token(cfg.cluster_secret, ttl_s=ttl_s, now=now, scope=scope)
    else:
        assert stream_id is not None
        try:
            text = tokens.issue_stream_token(cfg.cluster_secret, stream_id, action, ttl_s=ttl_s, now=now)
        except ValueError as exc:
            fail(str(exc))
    click.echo(text)


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
