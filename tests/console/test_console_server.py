"""The console's own web server: the page and its assets, and nothing outside them."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from heraldo.console import make_app


async def test_serves_the_page_and_its_assets():
    async with TestClient(TestServer(make_app())) as client:
        page = await client.get("/console/")
        script = await client.get("/console/console.js")
        style = await client.get("/console/console.css")

        assert page.status == 200 and page.content_type == "text/html"
        assert '<script src="console.js">' in await page.text()
        assert script.status == 200 and script.content_type == "text/javascript"
        assert style.status == 200 and style.content_type == "text/css"


async def test_the_bare_prefix_redirects_to_the_page():
    async with TestClient(TestServer(make_app())) as client:
        response = await client.get("/console", allow_redirects=False)

        assert response.status == 302
        assert response.headers["Location"] == "/console/"


async def test_nothing_outside_the_static_folder_is_served():
    async with TestClient(TestServer(make_app())) as client:
        for path in ("/console/%2e%2e%2fserver.py", "/console/server.py",
                     "/console/..%2f__init__.py", "/console/missing.js"):
            response = await client.get(path)

            assert response.status == 404, path
