"""The web pages every node serves: the cluster view (``/``, ``/#/cluster``, ``/#/streams``) and a
player (``/{app}/play.html?id=STREAM``). Plain HTML + JS over the REST API; the player uses the
browser's own HLS support or hls.js when it is installed next to the pages (``scripts/setup``)."""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).parent / "static"
HLS_JS_CANDIDATES = (STATIC / "vendor" / "hls.min.js",
                     Path(__file__).resolve().parents[2] / "tests/js/node_modules/hls.js/dist/hls.min.js")


def add_page_routes(app: web.Application, app_name: str) -> None:
    index = (STATIC / "index.html").read_text().replace("{{APP}}", app_name)
    player = (STATIC / "play.html").read_text().replace("{{APP}}", app_name)
    hls_js = next((p for p in HLS_JS_CANDIDATES if p.exists()), None)

    async def index_page(request: web.Request) -> web.Response:
        return web.Response(text=index, content_type="text/html")

    async def player_page(request: web.Request) -> web.Response:
        return web.Response(text=player, content_type="text/html")

    async def hls_script(request: web.Request) -> web.StreamResponse:
        if hls_js is None:
            return web.Response(status=404, text="// hls.js is not installed; run scripts/setup\n",
                                content_type="text/javascript")
        return web.FileResponse(hls_js, headers={"Cache-Control": "public, max-age=86400"})

    app.router.add_get("/", index_page)
    app.router.add_get(f"/{app_name}/play.html", player_page)
    app.router.add_get("/static/hls.min.js", hls_script)
