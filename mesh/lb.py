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


def render_nginx(b: Backends, *, listen: str = "127.0.0.1", http_port: int = 5080, rtmp_port: int = 1935,
                 prefix: str | None = None, app: str = "LiveApp") -> str:
    """A complete nginx.conf. With ``prefix`` it is self-contained (pid, logs, cache, temp files
    under that directory, foreground) for a private instance such as `mesh cluster up` runs."""
    b.check()
    origins = b.http_origins or b.http_edges
    private = prefix is not None
    base = prefix or "/var/cache/nginx/mesh"
    head = ""
    if private:
        head = (f"daemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
                f"{'user root root;' + chr(10) if os.geteuid() == 0 else ''}")
    temp = "".join(f"    {k}_temp_path {base}/tmp/{k};\n"
                   for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")) if private else ""
    return f"""# Rendered by `mesh lb nginx` from the mesh registry. Publishers -> origins, viewers -> edges.
load_module {NGINX_STREAM_MODULE};
{head}worker_processes {1 if private else "auto"};
events {{ worker_connections 4096; }}

stream {{
    # RTMP: each publisher's TCP connection goes to the origin with the fewest connections.
    upstream mesh_rtmp {{
        least_conn;
{_servers(b.rtmp, "        ")}
    }}
    server {{
        listen {listen}:{rtmp_port};
        proxy_pass mesh_rtmp;
        proxy_connect_timeout 5s;
        proxy_timeout 60s;
    }}
}}

http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65;
{temp}    # Segments are immutable; playlists change every segment, so they are cached for one second.
    proxy_cache_path {base}/cache levels=1:2 keys_zone=mesh_hls:16m max_size=2g inactive=60s use_temp_path=off;

    upstream mesh_edges {{
{_servers(b.http_edges, "        ", " max_fails=2 fail_timeout=5s")}
        keepalive 64;
    }}
    upstream mesh_origins {{
{_servers(origins, "        ")}
    }}

    server {{
        listen {listen}:{http_port};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_next_upstream error timeout http_502 http_503;

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
}}
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
    acl create path_reg ^/[^/]+/rest/v2/broadcasts/create$
    use_backend mesh_origins if create
    default_backend mesh_edges

backend mesh_edges
    mode http
    balance roundrobin
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
