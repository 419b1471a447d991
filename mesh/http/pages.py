"""The web pages every node serves: the cluster view (``/``, ``/#/cluster``, ``/#/streams``) and a
player (``/{app}/play.html?id=STREAM``). Plain HTML + JS over the REST API; the player uses the
browser's own HLS support or hls.js when it is installed next to the pages (``scripts/setup``).

Origins do not serve HLS, so an origin's player page redirects (307, query kept) to the player
page of an alive edge from the registry, or, with no edge alive, answers 503 with a page that
says where to watch."""
from __future__ import annotations

import html
from pathlib import Path

from aiohttp import web

from ..registry import Registry

STATIC = Path(__file__).parent / "static"
HLS_JS_CANDIDATES = (STATIC / "vendor" / "hls.min.js",
                     Path(__file__).resolve().parents[2] / "tests/js/node_modules/hls.js/dist/hls.min.js")


NO_EDGE_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>mesh: no edge</title>
</head><body><h1>This node is an origin</h1><p>Origins take publishers in but do not serve HLS to
viewers, and no edge node is alive in the cluster right now. Watch through the load balancer
(<code>/{app}/play.html?id=STREAM</code> on its address), or start an edge
(<code>mesh node --role edge</code>) and reload this page.</p></body></html>
"""


def add_page_routes(app: web.Application, app_name: str, registry: Registry | None = None,
                    serves_hls: bool = True) -> None:
    index = (STATIC / "index.html").read_text().replace("{{APP}}", app_name)
    player = (STATIC / "play.html").read_text().replace("{{APP}}", app_name)
    hls_js = next((p for p in HLS_JS_CANDIDATES if p.exists()), None)

    async def index_page(request: web.Request) -> web.Response:
        return web.Response(text=index, content_type="text/html")

    async def player_page(request: web.Request) -> web.Response:
        if serves_hls or registry is None:
            return web.Response(text=player, content_type="text/html")
        edges = [v for v in await registry.list_nodes()
                 if v.alive and v.role != "origin" and v.doc.get("http_url")]
        if not edges:
            return web.Response(text=NO_EDGE_PAGE.replace("{app}", html.escape(app_name)), status=503,
                                content_type="text/html", headers={"Retry-After": "5"})
        edge = min(edges, key=lambda v: (v.doc.get("load") or {}).get("viewers") or 0)
        target = f"{edge.doc['http_url']}/{app_name}/play.html"
        if request.query_string:
            target += "?" + request.query_string
        raise web.HTTPTemporaryRedirect(target, headers={"Cache-Control": "no-store"})

    async def hls_script(request: web.Request) -> web.StreamResponse:
        if hls_js is None:
            return web.Response(status=404, text="// hls.js is not installed; run scripts/setup\n",
                                content_type="text/javascript")
        return web.FileResponse(hls_js, headers={"Cache-Control": "public, max-age=86400"})

    app.router.add_get("/", index_page)
    app.router.add_get(f"/{app_name}/play.html", player_page)
    app.router.add_get("/static/hls.min.js", hls_script)
