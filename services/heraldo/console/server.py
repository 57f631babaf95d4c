"""The console's web server: the page, its script and style, and a health endpoint."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

logger = logging.getLogger(__name__)

#: Envoy routes this prefix to the console; everything else on the edge is the REST API.
CONSOLE_PREFIX = "/console"
STATIC_DIR = Path(__file__).resolve().parent / "static"
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                 ".svg": "image/svg+xml"}
#: The page is fetched rarely and changes with a deploy; a short cache keeps reloads honest.
CACHE_CONTROL = "no-cache"


async def _asset(request: web.Request) -> web.Response:
    name = request.match_info.get("name") or "index.html"
    path = (STATIC_DIR / name).resolve()
    # Only files that sit directly in static/ are served, never a path that climbs out of it.
    if path.parent != STATIC_DIR or path.suffix not in CONTENT_TYPES or not path.is_file():
        raise web.HTTPNotFound(text=f"no console asset {name!r}")
    return web.Response(body=path.read_bytes(), content_type=CONTENT_TYPES[path.suffix],
                        charset="utf-8", headers={"Cache-Control": CACHE_CONTROL})


async def _redirect(request: web.Request) -> web.Response:
    # A relative redirect keeps whatever host and port the browser used to reach the edge.
    raise web.HTTPFound(f"{CONSOLE_PREFIX}/")


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "SERVING"})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get(CONSOLE_PREFIX, _redirect)
    app.router.add_get(f"{CONSOLE_PREFIX}/", _asset)
    app.router.add_get(f"{CONSOLE_PREFIX}/healthz", _health)
    app.router.add_get(f"{CONSOLE_PREFIX}/{{name}}", _asset)
    return app
