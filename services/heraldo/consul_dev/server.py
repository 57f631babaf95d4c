"""The HTTP API of the Consul development stand-in, on aiohttp.web.

Routes, query parameters, JSON shapes, status codes and blocking-query headers follow Consul's
HTTP API documentation for the endpoints Heraldo and py-consul use. A blocking read computes its
answer and index, and while the index is not past the client's ``index`` it waits for the next
write (or the end of ``wait`` plus Consul's jitter of up to wait/16) and computes them again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from heraldo.consul_dev.agent import LocalAgent
from heraldo.consul_dev.checks import CheckRunner
from heraldo.consul_dev.durations import parse_duration
from heraldo.consul_dev.errors import ConsulDevError, InvalidRequest, UnknownResource
from heraldo.consul_dev.payloads import (
    decode_object,
    parse_check_registration,
    parse_service,
    parse_status_update,
)
from heraldo.consul_dev.state import CRITICAL, PASSING, SERVER_RPC_PORT, WARNING, ConsulState
from heraldo.consul_dev.ui import render_page

logger = logging.getLogger(__name__)

DEFAULT_WAIT_S = 300.0
MAX_WAIT_S = 600.0
#: Consul adds a random extra wait of up to wait/16 so that many watchers do not all wake at once.
JITTER_FRACTION = 16
#: Consul's limit on one KV value.
MAX_VALUE_BYTES = 512 * 1024
#: The version of Consul's HTTP API this stand-in follows; Revision marks it as the stand-in.
API_VERSION = "1.20.0"
REVISION = "heraldo-consul-dev"
HEALTH_STATES = ("any", PASSING, WARNING, CRITICAL)
#: The gossip port a Consul agent reports for itself; the stand-in has no gossip.
SERF_LAN_PORT = 8301

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def create_app(*, state: ConsulState, agent: LocalAgent) -> web.Application:
    """The aiohttp application serving Consul's HTTP API over ``state`` and ``agent``."""
    api = ConsulHTTPApi(state=state, agent=agent)
    app = web.Application(middlewares=[_consul_errors(state)], client_max_size=2 * MAX_VALUE_BYTES)
    app.add_routes(
        [
            web.get("/v1/agent/self", api.agent_self),
            web.get("/v1/agent/services", api.agent_services),
            web.put("/v1/agent/service/register", api.agent_service_register),
            web.put("/v1/agent/service/deregister/{service_id:.+}", api.agent_service_deregister),
            web.put("/v1/agent/service/maintenance/{service_id:.+}", api.agent_service_maint),
            web.get("/v1/agent/service/{service_id:.+}", api.agent_service),
            web.put("/v1/agent/maintenance", api.agent_node_maint),
            web.get("/v1/agent/checks", api.agent_checks),
            web.put("/v1/agent/check/register", api.agent_check_register),
            web.put("/v1/agent/check/deregister/{check_id:.+}", api.agent_check_deregister),
            web.put("/v1/agent/check/pass/{check_id:.+}", api.agent_check_pass),
            web.put("/v1/agent/check/warn/{check_id:.+}", api.agent_check_warn),
            web.put("/v1/agent/check/fail/{check_id:.+}", api.agent_check_fail),
            web.put("/v1/agent/check/update/{check_id:.+}", api.agent_check_update),
            web.get("/v1/health/service/{service}", api.health_service),
            web.get("/v1/health/checks/{service}", api.health_checks),
            web.get("/v1/health/state/{state}", api.health_state),
            web.get("/v1/health/node/{node}", api.health_node),
            web.get("/v1/catalog/services", api.catalog_services),
            web.get("/v1/catalog/service/{service}", api.catalog_service),
            web.get("/v1/catalog/nodes", api.catalog_nodes),
            web.get("/v1/catalog/node/{node}", api.catalog_node),
            web.get("/v1/catalog/datacenters", api.catalog_datacenters),
            web.get("/v1/kv/{key:.*}", api.kv_get),
            web.put("/v1/kv/{key:.*}", api.kv_put),
            web.delete("/v1/kv/{key:.*}", api.kv_delete),
            web.get("/v1/status/leader", api.status_leader),
            web.get("/v1/status/peers", api.status_peers),
            web.get("/ui", api.ui),
            web.get("/ui/", api.ui),
            web.get("/", api.root),
        ]
    )
    return app


def _consul_errors(state: ConsulState) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path.startswith("/v1/"):
                _refuse_unsupported(request, state)
            return await handler(request)
        except ConsulDevError as exc:
            logger.debug("%s %s -> %d %s", request.method, request.path, exc.status, exc)
            return web.Response(status=exc.status, text=str(exc))
        except web.HTTPMethodNotAllowed:
            return web.Response(status=405, text=f"method {request.method} not allowed")
        except web.HTTPNotFound:
            # Consul's router answers an unknown path the way Go's net/http does.
            return web.Response(status=404, text="404 page not found\n")

    return middleware


def _refuse_unsupported(request: web.Request, state: ConsulState) -> None:
    datacenter = request.query.get("dc")
    if datacenter and datacenter != state.datacenter:
        raise ConsulDevError("No path to datacenter")
    if request.query.get("filter"):
        # Answering as if there were no filter would return wrong results without a word.
        raise InvalidRequest(
            "filter expressions are not supported by the Consul development stand-in"
        )


class ConsulHTTPApi:
    """One method per Consul HTTP endpoint."""

    def __init__(self, *, state: ConsulState, agent: LocalAgent) -> None:
        self._state = state
        self._agent = agent

    # ---- agent

    async def agent_self(self, request: web.Request) -> web.Response:
        state = self._state
        config = {
            "Datacenter": state.datacenter,
            "PrimaryDatacenter": state.datacenter,
            "NodeName": state.node_name,
            "NodeID": state.node_id,
            "Revision": REVISION,
            "Server": True,
            "Version": API_VERSION,
        }
        member = {
            "Name": state.node_name,
            "Addr": state.address,
            "Port": SERF_LAN_PORT,
            "Tags": {
                "dc": state.datacenter,
                "id": state.node_id,
                "role": "consul",
                "build": f"{API_VERSION}:{REVISION}",
                "port": str(SERVER_RPC_PORT),
            },
            "Status": 1,
        }
        body = {
            "Config": config,
            "DebugConfig": {},
            "Coord": None,
            "Member": member,
            "Stats": {},
            "Meta": {"consul-network-segment": ""},
        }
        return _json(request, body)

    async def agent_services(self, request: web.Request) -> web.Response:
        services = {
            service.service_id: service.agent_view(self._state.datacenter)
            for service in self._state.services.values()
            if service.agent_local
        }
        return _json(request, services)

    async def agent_service(self, request: web.Request) -> web.Response:
        service_id = request.match_info["service_id"]

        def read() -> tuple[str, dict[str, Any]]:
            service = self._state.services.get(service_id)
            if service is None or not service.agent_local:
                raise UnknownResource(f"unknown service ID: {service_id}")
            view = service.agent_view(self._state.datacenter)
            content = json.dumps(view, sort_keys=True).encode()
            return hashlib.sha256(content).hexdigest()[:16], view

        # This endpoint blocks on a content hash instead of an index, as Consul's does.
        content_hash, view = read()
        known_hash = request.query.get("hash")
        if known_hash:
            deadline = _deadline(_wait_s(request))
            loop = asyncio.get_running_loop()
            while content_hash == known_hash and not self._state.closing:
                remaining_s = deadline - loop.time()
                if remaining_s <= 0:
                    break
                await self._state.wait_for_change(remaining_s)
                content_hash, view = read()
        view["ContentHash"] = content_hash
        return _json(request, view, headers={"X-Consul-ContentHash": content_hash})

    async def agent_service_register(self, request: web.Request) -> web.Response:
        service, specs = parse_service(decode_object(await request.read()))
        replace = _flag(request, "replace-existing-checks")
        self._agent.register_service(service, specs, replace_existing_checks=replace)
        return _empty()

    async def agent_service_deregister(self, request: web.Request) -> web.Response:
        self._agent.deregister_service(request.match_info["service_id"])
        return _empty()

    async def agent_service_maint(self, request: web.Request) -> web.Response:
        enable = _required_flag(request, "enable")
        reason = request.query.get("reason", "")
        self._agent.service_maintenance(
            request.match_info["service_id"], enable=enable, reason=reason
        )
        return _empty()

    async def agent_node_maint(self, request: web.Request) -> web.Response:
        enable = _required_flag(request, "enable")
        self._agent.node_maintenance(enable=enable, reason=request.query.get("reason", ""))
        return _empty()

    async def agent_checks(self, request: web.Request) -> web.Response:
        checks = {
            check.check_id: self._state.check_view(check)
            for check in self._state.checks.values()
            if check.agent_local
        }
        return _json(request, checks)

    async def agent_check_register(self, request: web.Request) -> web.Response:
        self._agent.register_check(parse_check_registration(decode_object(await request.read())))
        return _empty()

    async def agent_check_deregister(self, request: web.Request) -> web.Response:
        self._agent.deregister_check(request.match_info["check_id"])
        return _empty()

    async def agent_check_pass(self, request: web.Request) -> web.Response:
        return self._ttl(request, PASSING)

    async def agent_check_warn(self, request: web.Request) -> web.Response:
        return self._ttl(request, WARNING)

    async def agent_check_fail(self, request: web.Request) -> web.Response:
        return self._ttl(request, CRITICAL)

    def _ttl(self, request: web.Request, status: str) -> web.Response:
        note = request.query.get("note", "")
        self._agent.update_ttl(request.match_info["check_id"], status, note)
        return _empty()

    async def agent_check_update(self, request: web.Request) -> web.Response:
        status, output = parse_status_update(decode_object(await request.read()))
        self._agent.update_ttl(request.match_info["check_id"], status, output)
        return _empty()

    # ---- health

    async def health_service(self, request: web.Request) -> web.Response:
        name = request.match_info["service"]
        tags = request.query.getall("tag", [])
        passing_only = _flag(request, "passing")
        node_meta = _node_meta(request)
        index, entries = await self._block(
            request,
            lambda: self._state.health_service(
                name, tags=tags, passing_only=passing_only, node_meta=node_meta
            ),
        )
        return _json(request, entries, index=index)

    async def health_checks(self, request: web.Request) -> web.Response:
        name = request.match_info["service"]
        index, checks = await self._block(request, lambda: self._state.health_checks(name))
        return _json(request, checks, index=index)

    async def health_state(self, request: web.Request) -> web.Response:
        wanted = request.match_info["state"]
        if wanted not in HEALTH_STATES:
            raise InvalidRequest("Bad check state")
        index, checks = await self._block(request, lambda: self._state.health_state(wanted))
        return _json(request, checks, index=index)

    async def health_node(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        index, checks = await self._block(request, lambda: self._state.health_node(node))
        return _json(request, checks, index=index)

    # ---- catalog

    async def catalog_services(self, request: web.Request) -> web.Response:
        index, services = await self._block(request, self._state.catalog_services)
        return _json(request, services, index=index)

    async def catalog_service(self, request: web.Request) -> web.Response:
        name = request.match_info["service"]
        tags = request.query.getall("tag", [])
        index, entries = await self._block(request, lambda: self._state.catalog_service(name, tags))
        return _json(request, entries, index=index)

    async def catalog_nodes(self, request: web.Request) -> web.Response:
        index, nodes = await self._block(request, self._state.catalog_nodes)
        return _json(request, nodes, index=index)

    async def catalog_node(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        index, found = await self._block(request, lambda: self._state.catalog_node(node))
        return _json(request, found, index=index)

    async def catalog_datacenters(self, request: web.Request) -> web.Response:
        return _json(request, [self._state.datacenter])

    # ---- KV

    async def kv_get(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        recurse = "recurse" in request.query
        keys_only = "keys" in request.query
        if not key and not (recurse or keys_only):
            raise InvalidRequest("Missing key name")

        if keys_only:
            separator = request.query.get("separator", "")
            index, keys = await self._block(request, lambda: self._state.kv_keys(key, separator))
            if not keys:
                return web.Response(status=404, headers=_index_headers(index))
            return _json(request, keys, index=index)
        if recurse:
            index, entries = await self._block(request, lambda: self._state.kv_list(key))
            if not entries:
                return web.Response(status=404, headers=_index_headers(index))
            return _json(request, [entry.view() for entry in entries], index=index)

        index, entry = await self._block(request, lambda: self._state.kv_get(key))
        if entry is None:
            return web.Response(status=404, headers=_index_headers(index))
        if "raw" in request.query:
            # Served as plain bytes that a browser must not sniff into HTML.
            headers = {**_index_headers(index), "X-Content-Type-Options": "nosniff"}
            return web.Response(body=entry.value, content_type="text/plain", headers=headers)
        return _json(request, [entry.view()], index=index)

    async def kv_put(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if not key:
            raise InvalidRequest("Missing key name")
        for unsupported in ("acquire", "release"):
            if unsupported in request.query:
                raise InvalidRequest(
                    "sessions (acquire, release) are not supported by the Consul dev stand-in"
                )
        value = await request.read()
        if len(value) > MAX_VALUE_BYTES:
            raise ConsulDevError(
                f"Request body({len(value)} bytes) too large, max size: {MAX_VALUE_BYTES} bytes."
            )

        flags = _unsigned(request, "flags", "Invalid flags") or 0
        cas = _unsigned(request, "cas", "Invalid cas index")
        stored = self._state.kv_put(key, value, flags=flags, cas=cas)
        logger.debug("kv put key=%s bytes=%d stored=%s", key, len(value), stored)
        return _json(request, stored)

    async def kv_delete(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        cas = _unsigned(request, "cas", "Invalid cas index")
        if cas is not None:
            deleted = self._state.kv_delete(key, cas=cas)
        elif "recurse" in request.query:
            deleted = self._state.kv_delete_tree(key)
        elif not key:
            raise InvalidRequest("Missing key name")
        else:
            deleted = self._state.kv_delete(key, cas=None)
        logger.debug("kv delete key=%s deleted=%s", key, deleted)
        return _json(request, deleted)

    # ---- status and UI

    async def status_leader(self, request: web.Request) -> web.Response:
        return _json(request, f"{self._state.address}:{SERVER_RPC_PORT}")

    async def status_peers(self, request: web.Request) -> web.Response:
        return _json(request, [f"{self._state.address}:{SERVER_RPC_PORT}"])

    async def ui(self, request: web.Request) -> web.Response:
        return web.Response(text=render_page(self._state), content_type="text/html")

    async def root(self, request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/ui/")

    # ---- blocking queries

    async def _block(self, request: web.Request, read: Callable[[], tuple[int, Any]]) -> Any:
        """Run ``read`` as a Consul blocking query; return (index, answer), index at least 1."""
        min_index = _min_index(request)
        index, answer = read()
        # An index beyond any this process has handed out comes from before a restart. Consul
        # would hold such a query for the whole wait (5 minutes by default); answering at once
        # lets the client see the lower index and start over, as Consul's docs tell it to.
        if min_index and min_index <= self._state.index:
            loop = asyncio.get_running_loop()
            deadline = _deadline(_wait_s(request))
            while index <= min_index and not self._state.closing:
                remaining_s = deadline - loop.time()
                if remaining_s <= 0:
                    break
                await self._state.wait_for_change(remaining_s)
                index, answer = read()
        # Consul never reports index 0, so a client that feeds it back always blocks.
        return max(index, 1), answer


def _min_index(request: web.Request) -> int:
    raw = request.query.get("index")
    if raw is None:
        return 0
    try:
        index = int(raw)
    except ValueError:
        raise InvalidRequest("Invalid index") from None
    if index < 0:
        raise InvalidRequest("Invalid index")
    return index


def _wait_s(request: web.Request) -> float:
    raw = request.query.get("wait")
    if not raw:
        return DEFAULT_WAIT_S
    try:
        wait_s = parse_duration(raw, "wait")
    except InvalidRequest:
        raise InvalidRequest("Invalid wait time") from None
    if wait_s <= 0:
        return DEFAULT_WAIT_S
    return min(wait_s, MAX_WAIT_S)


def _deadline(wait_s: float) -> float:
    jitter_s = random.uniform(0, wait_s / JITTER_FRACTION)
    return asyncio.get_running_loop().time() + wait_s + jitter_s


def _flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter: absent is false, bare (``?passing``) is true."""
    if name not in request.query:
        return False
    raw = request.query[name]
    if raw == "" or raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise InvalidRequest(f"Invalid value for ?{name}")


def _required_flag(request: web.Request, name: str) -> bool:
    if not request.query.get(name):
        raise InvalidRequest(f"Missing value for {name}")
    return _flag(request, name)


def _unsigned(request: web.Request, name: str, problem: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(problem) from None
    if value < 0:
        raise InvalidRequest(problem)
    return value


def _node_meta(request: web.Request) -> list[tuple[str, str]]:
    pairs = []
    for raw in request.query.getall("node-meta", []):
        key, _, value = raw.partition(":")
        pairs.append((key, value))
    return pairs


def _index_headers(index: int) -> dict[str, str]:
    return {
        "X-Consul-Index": str(index),
        "X-Consul-KnownLeader": "true",
        "X-Consul-LastContact": "0",
    }


def _json(
    request: web.Request,
    body: Any,
    *,
    index: int | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    indent = 4 if "pretty" in request.query else None
    all_headers = dict(headers or {})
    if index is not None:
        all_headers.update(_index_headers(index))
    return web.Response(
        text=json.dumps(body, indent=indent),
        status=status,
        content_type="application/json",
        headers=all_headers,
    )


def _empty() -> web.Response:
    return web.Response(status=200)


class ConsulDevServer:
    """The stand-in as one object: state, agent, check runner and HTTP listener.

    Use ``async with ConsulDevServer(host, port) as server`` in-process, or run
    ``python -m heraldo.consul_dev``. Port 0 picks a free port; ``server.port`` tells which.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8500,
        *,
        data_dir: Path | str | None = None,
        node_name: str | None = None,
        datacenter: str = "dc1",
    ) -> None:
        self.host = host
        self.port = port
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._node_name = node_name or socket.gethostname()
        self._datacenter = datacenter
        self.state: ConsulState | None = None
        self._runner: CheckRunner | None = None
        self._agent: LocalAgent | None = None
        self._web: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self._data_dir is not None:
            self._data_dir.mkdir(parents=True, exist_ok=True)
        advertised = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        self.state = ConsulState(
            node_name=self._node_name,
            address=advertised,
            datacenter=self._datacenter,
            data_dir=self._data_dir,
        )
        self._runner = CheckRunner(self.state)
        await self._runner.start()
        self._agent = LocalAgent(state=self.state, runner=self._runner)
        self._agent.start()

        app = create_app(state=self.state, agent=self._agent)
        # Blocking queries end at once on shutdown (state.closing), so a short grace is enough.
        self._web = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._web.setup()
        site = web.TCPSite(self._web, self.host, self.port)
        await site.start()
        self.port = self._web.addresses[0][1]
        logger.info("consul stand-in listening on %s", self.url)

    async def stop(self) -> None:
        if self.state is not None:
            self.state.closing = True
            self.state.notify()
        if self._web is not None:
            await self._web.cleanup()
        if self._agent is not None:
            await self._agent.close()
        if self._runner is not None:
            await self._runner.close()
        logger.info("consul stand-in stopped")

    async def __aenter__(self) -> ConsulDevServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def serve(host: str, port: int, data_dir: Path | str | None = None) -> None:
    """Run the stand-in until the task running this coroutine is cancelled."""
    async with ConsulDevServer(host, port, data_dir=data_dir):
        await asyncio.Event().wait()
