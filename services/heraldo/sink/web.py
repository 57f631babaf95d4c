"""The sink's web view: an HTML list, raw messages, and a JSON API for tests and scripts."""

from __future__ import annotations

import html
import logging

from aiohttp import web

from heraldo.sink.store import MessageStore

logger = logging.getLogger(__name__)

#: The HTML page lists this many messages unless ``?limit=`` asks otherwise; the API lists all.
DEFAULT_PAGE_ROWS = 500

STORE_KEY = web.AppKey("store", MessageStore)

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Heraldo SMTP sink</title>
<style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;font-size:14px}}</style>
</head><body><h1>Heraldo SMTP sink</h1>
<p>{count} messages, {unique} notification ids; showing the newest {shown}.</p>
<table><tr><th>#</th><th>received</th><th>to</th><th>subject</th><th>Message-ID</th>
<th>X-Heraldo-Notification-Id</th></tr>
{rows}
</table></body></html>
"""
ROW = ('<tr><td><a href="/messages/{n}">{n}</a></td><td>{received_at}</td><td>{to}</td>'
       '<td>{subject}</td><td>{message_id}</td><td>{notification_id}</td></tr>')


def _limit(request: web.Request, default: int | None) -> int | None:
    raw = request.query.get("limit")
    if raw is None:
        return default
    try:
        return max(0, int(raw))
    except ValueError as exc:
        raise web.HTTPBadRequest(text="limit must be an integer") from exc


async def index(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    messages = store.newest_first(_limit(request, DEFAULT_PAGE_ROWS))
    rows = "\n".join(
        ROW.format(**{key: html.escape(str(value)) for key, value in m.as_dict().items()})
        for m in messages)
    stats = store.stats()
    return web.Response(text=PAGE.format(count=stats["count"],
                                         unique=stats["unique_notification_ids"],
                                         shown=len(messages), rows=rows),
                        content_type="text/html", charset="utf-8")


async def raw_message(request: web.Request) -> web.Response:
    try:
        n = int(request.match_info["n"])
    except ValueError as exc:
        raise web.HTTPNotFound(text="no such message") from exc
    data = request.app[STORE_KEY].raw(n)
    if data is None:
        raise web.HTTPNotFound(text=f"no message {n}")
    # Shown as text so a browser displays it instead of downloading an attachment.
    return web.Response(body=data, content_type="text/plain", charset="utf-8")


async def list_messages(request: web.Request) -> web.Response:
    messages = request.app[STORE_KEY].newest_first(_limit(request, None))
    return web.json_response([m.as_dict() for m in messages])


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STORE_KEY].stats())


async def clear(request: web.Request) -> web.Response:
    removed = request.app[STORE_KEY].clear()
    logger.info("cleared messages=%d", removed)
    return web.json_response({"deleted": removed})


def make_app(store: MessageStore) -> web.Application:
    app = web.Application()
    app[STORE_KEY] = store
    app.router.add_get("/", index)
    app.router.add_get("/messages/{n}", raw_message)
    app.router.add_get("/api/messages", list_messages)
    app.router.add_delete("/api/messages", clear)
    app.router.add_get("/api/stats", stats)
    return app
