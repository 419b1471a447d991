"""Load-balancer configs rendered from the registry: nginx (stream{} for RTMP, http{} with a cache
for HLS) and HAProxy. Publishers go to origins (least connections); viewers go round-robin to edges,
which is safe because every edge serves the same playlists and bytes; stream creation goes to
origins. The templates live in ``deploy/nginx`` and ``deploy/haproxy`` for operators to read.

HAProxy needs about two file descriptors per connection (client and server side) and refuses to
start when its ``maxconn`` needs more than the host allows ("Cannot raise FD limit"), so the
rendered ``maxconn`` derives from the file-descriptor limit of the host that renders it
(:func:`haproxy_maxconn`); render on the balancer's host, or pass ``fd_limit``.
"""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
LL_PROXY_TIMEOUT_S = 45  # longer than the longest blocking LL-HLS request (ll_block_s <= 30 s)
HAPROXY_MAXCONN_CAP = 20_000
HAPROXY_FD_RESERVE = 200  # listeners, checks, logs, pollers


def host_fd_limit() -> int:
    """This host's hard file-descriptor limit (what HAProxy may raise its soft limit to)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)


def haproxy_maxconn(fd_limit: int) -> int:
    """Connections HAProxy can hold within ``fd_limit`` descriptors: two per proxied connection
    plus a reserve, capped at 20,000."""
    return max(64, min(HAPROXY_MAXCONN_CAP, (fd_limit - HAPROXY_FD_RESERVE) // 2))


@dataclass(frozen=True)
class Backend:
    node_id: str
    host: str
    port: int


@dataclass
class Backends:
    rtmp: list[Backend]  # origin RTMP listeners
    http_edges: list[Backend]  # edge (and standalone) HTTP
    http_origins: list[Backend]  # origin (and standalone) HTTP, for stream creation

    @classmethod
    def from_nodes(cls, nodes: list[dict]) -> "Backends":
        """From node documents (alive ones only), as the registry stores them."""
        rtmp, edges, origins = [], [], []
        for doc in sorted(nodes, key=lambda d: str(d.get("_id"))):
            role = doc.get("role")
            http = urlsplit(str(doc.get("http_url") or ""))
            if http.hostname and http.port:
                backend = Backend(str(doc["_id"]), http.hostname, http.port)
                if role in ("edge", "standalone"):
                    edges.append(backend)
                if role in ("origin", "standalone"):
                    origins.append(backend)
            rt = urlsplit(str(doc.get("rtmp_url") or ""))
            if role in ("origin", "standalone") and rt.hostname and rt.port:
                rtmp.append(Backend(str(doc["_id"]), rt.hostname, rt.port))
        return cls(rtmp, edges, origins)

    def check(self) -> None:
        missing = [what for what, group in (("origin (RTMP)", self.rtmp), ("edge (HTTP)", self.http_edges))
                   if not group]
        if missing:
            raise ValueError(f"no alive {' or '.join(missing)} node in the registry; start nodes first")


def _servers(backends: list[Backend], indent: str, extra: str = "") -> str:
    return "\n".join(f"{indent}server {b.host}:{b.port}{extra};  # {b.node_id}" for b in backends)


NGINX_CACHE_DIR = "/var/cache/nginx/mesh"
NGINX_STREAM_FILE = "mesh-stream.conf"
NGINX_HTTP_FILE = "mesh-http.conf"


def _indent(text: str, by: str) -> str:
    return "".join(by + line if line.strip() else line for line in text.splitlines(keepends=True))


def nginx_stream_part(b: Backends, *, listen: str, rtmp_port: int) -> str:
    """What goes inside ``stream {}``: RTMP publishers to the origin with the fewest connections."""
    return f"""# RTMP: each publisher's TCP connection goes to the origin with the fewest connections.
upstream mesh_rtmp {{
    least_conn;
{_servers(b.rtmp, "    ")}
}}
server {{
    listen {listen}:{rtmp_port};
    proxy_pass mesh_rtmp;
    proxy_connect_timeout 5s;
    proxy_timeout 60s;
}}
"""


def nginx_http_part(b: Backends, *, listen: str, http_port: int, cache_dir: str) -> str:
    """What goes inside ``http {}``: the HLS cache, edges round-robin, stream creation to origins."""
    origins = b.http_origins or b.http_edges
    return f"""# Segments are immutable; playlists change every segment, so they are cached for one second.
proxy_cache_path {cache_dir} levels=1:2 keys_zone=mesh_hls:16m max_size=2g inactive=60s use_temp_path=off;

upstream mesh_edges {{
{_servers(b.http_edges, "    ", " max_fails=2 fail_timeout=5s")}
    keepalive 64;
}}
upstream mesh_origins {{
{_servers(origins, "    ")}
}}

server {{
    listen {listen}:{http_port};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header X-Forwarded-For $remote_addr;
    proxy_next_upstream error timeout http_502 http_503;
    proxy_connect_timeout 2s;  # an unreachable edge is skipped quickly, not after 60 s

    # LL-HLS: a blocking playlist reload (?_HLS_msn=..) waits at the edge until its part exists
    # (at most ll_block_s, 30 s): passed through unbuffered and never cached (the query differs per
    # request and the answer per moment), with timeouts longer than the longest block; a 503
    # (the block ran out) goes back to the player, not to another edge.
    location ~ _ll\\.m3u8$ {{
        proxy_pass http://mesh_edges;
        proxy_buffering off;
        proxy_read_timeout {LL_PROXY_TIMEOUT_S}s;
        proxy_send_timeout {LL_PROXY_TIMEOUT_S}s;
        proxy_next_upstream error http_502;
    }}
    # LL-HLS parts, segments and init segments are immutable once they exist; a request for the
    # part being cut waits at the edge, and the cache lock lets one such request through per part.
    location ~ _ll[^/]*\\.(m4s|mp4)$ {{
        proxy_pass http://mesh_edges;
        proxy_cache mesh_hls;
        proxy_cache_valid 200 10m;
        proxy_cache_lock on;
        proxy_cache_lock_timeout {LL_PROXY_TIMEOUT_S}s;
        proxy_cache_lock_age {LL_PROXY_TIMEOUT_S}s;
        proxy_read_timeout {LL_PROXY_TIMEOUT_S}s;
        proxy_next_upstream error http_502;
    }}
    location ~ \\.ts$ {{
        proxy_pass http://mesh_edges;
        proxy_cache mesh_hls;
        proxy_cache_valid 200 10m;
        proxy_cache_lock on;
    }}
    location ~ \\.m3u8$ {{
        proxy_pass http://mesh_edges;
        proxy_cache mesh_hls;
        proxy_cache_valid 200 1s;
        proxy_cache_lock on;
        proxy_cache_lock_timeout 2s;
    }}
    location ~ ^/[^/]+/rest/v2/broadcasts/create$ {{
        proxy_pass http://mesh_origins;
    }}
    location / {{
        proxy_pass http://mesh_edges;
    }}
}}
"""


def render_nginx_includes(b: Backends, *, listen: str = "127.0.0.1", http_port: int = 5080,
                          rtmp_port: int = 1935, cache_dir: str = NGINX_CACHE_DIR) -> dict[str, str]:
    """Two files for a stock nginx.conf: ``mesh-stream.conf`` (include it inside ``stream {}``) and
    ``mesh-http.conf`` (include it inside ``http {}``)."""
    b.check()
    note = "# Rendered by `mesh lb nginx --include` from the mesh registry; included from nginx.conf {}.\n"
    return {NGINX_STREAM_FILE: note.format("stream {}") + nginx_stream_part(b, listen=listen, rtmp_port=rtmp_port),
            NGINX_HTTP_FILE: note.format("http {}") + nginx_http_part(b, listen=listen, http_port=http_port,
                                                                     cache_dir=cache_dir)}


def render_nginx(b: Backends, *, listen: str = "127.0.0.1", http_port: int = 5080, rtmp_port: int = 1935,
                 prefix: str | None = None, app: str = "LiveApp", cache_dir: str | None = None) -> str:
    """A complete nginx.conf. With ``prefix`` it is self-contained (pid, logs, cache, temp files
    under that directory, foreground) for a private instance such as `mesh cluster up` runs."""
    b.check()
    private = prefix is not None
    base = prefix or NGINX_CACHE_DIR
    cache = cache_dir or (f"{prefix}/cache" if private else f"{NGINX_CACHE_DIR}/cache")
    head = ""
    if private:
        head = (f"daemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
                f"{'user root root;' + chr(10) if os.geteuid() == 0 else ''}")
    temp = "".join(f"    {k}_temp_path {base}/tmp/{k};\n"
                   for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")) if private else ""
    stream = _indent(nginx_stream_part(b, listen=listen, rtmp_port=rtmp_port), "    ")
    http = _indent(nginx_http_part(b, listen=listen, http_port=http_port, cache_dir=cache), "    ")
    return f"""# Rendered by `mesh lb nginx` from the mesh registry. Publishers -> origins, viewers -> edges.
load_module {NGINX_STREAM_MODULE};
{head}worker_processes {1 if private else "auto"};
events {{ worker_connections 4096; }}

stream {{
{stream}}}

http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65;
{temp}{http}}}
"""


def render_haproxy(b: Backends, *, listen: str = "127.0.0.1", http_port: int = 5080,
                   rtmp_port: int = 1935, fd_limit: int | None = None) -> str:
    b.check()
    fd_limit = fd_limit or host_fd_limit()
    maxconn = haproxy_maxconn(fd_limit)
    origins = b.http_origins or b.http_edges

    def servers(group: list[Backend], opts: str = "check") -> str:
        return "\n".join(f"    server {x.node_id} {x.host}:{x.port} {opts}" for x in group)

    return f"""# Rendered by `mesh lb haproxy` from the mesh registry. Publishers -> origins, viewers -> edges.
global
    # about two descriptors per connection: maxconn fits a file-descriptor limit of {fd_limit}
    maxconn {maxconn}

defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    # health checks: a node is out after 2 failed checks 1 s apart, back in after 2 good ones
    default-server inter 1s fall 2 rise 2
    # until then, a request to a node that died (refused, reset, no answer) goes to another one,
    # as nginx's proxy_next_upstream does: a viewer never sees a killed edge's error
    retries 2
    option redispatch 1

frontend rtmp_in
    mode tcp
    bind {listen}:{rtmp_port}
    default_backend mesh_rtmp

backend mesh_rtmp
    mode tcp
    balance leastconn
{servers(b.rtmp)}

frontend http_in
    mode http
    bind {listen}:{http_port}
    # the client's address, as the nodes' REST authentication reads it (never the client's own header)
    http-request set-header X-Forwarded-For %[src]
    acl create path_reg ^/[^/]+/rest/v2/broadcasts/create$
    use_backend mesh_origins if create
    # LL-HLS blocking playlist reloads wait at the edge (at most ll_block_s, 30 s); HAProxy streams
    # answers unbuffered and caches nothing.
    acl ll_playlist path_end _ll.m3u8
    use_backend mesh_edges_ll if ll_playlist
    default_backend mesh_edges

backend mesh_edges
    mode http
    balance roundrobin
    retry-on conn-failure empty-response response-timeout
    option httpchk GET /healthz
{servers(b.http_edges)}

backend mesh_edges_ll
    mode http
    balance roundrobin
    timeout server {LL_PROXY_TIMEOUT_S}s
    retry-on conn-failure empty-response
    option httpchk GET /healthz
{servers(b.http_edges)}

backend mesh_origins
    mode http
    balance leastconn
{servers(origins)}
"""


def write_private_nginx(prefix: Path, conf: str) -> Path:
    """Lay out a private nginx prefix (cache and temp dirs) and write its config."""
    for sub in ("cache", "tmp/client_body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return path
