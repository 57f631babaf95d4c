"""Conformance of the Consul development stand-in to Consul's HTTP API, driven through py-consul.

The stand-in runs as a real subprocess (``python -m heraldo.consul_dev``). With
``CONSUL_HTTP_ADDR`` set, the same tests run against that agent instead, which is how to check
that an assertion here describes Consul and not just the stand-in; only the tests of stand-in
features (a DeregisterCriticalServiceAfter below Consul's 1 minute, the HTML page, --data-dir,
the in-process server) are skipped then.

Waits are bounded by deadlines and driven by blocking queries, never by sleeping for a guessed
time, and no test asserts how fast anything is.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import consul.aio
import grpc
import pytest
import requests
from aiohttp import web
from consul.exceptions import BadRequest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from heraldo.consul_dev import ConsulDevServer

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
#: Upper bound for anything a test waits for; reaching it fails the test.
WAIT_LIMIT_S = 20.0
LISTENING = re.compile(r"consul stand-in listening on http://127\.0\.0\.1:(\d+)")

NODE_KEYS = {"ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta"}
NODE_KEYS |= {"CreateIndex", "ModifyIndex"}
HEALTH_SERVICE_KEYS = {"ID", "Service", "Tags", "Address", "Meta", "Port", "Weights"}
HEALTH_SERVICE_KEYS |= {"EnableTagOverride", "CreateIndex", "ModifyIndex"}
CHECK_KEYS = {"Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID"}
CHECK_KEYS |= {"ServiceName", "ServiceTags", "Type", "CreateIndex", "ModifyIndex"}
AGENT_SERVICE_KEYS = {"ID", "Service", "Tags", "Meta", "Port", "Address", "Weights"}
AGENT_SERVICE_KEYS |= {"EnableTagOverride", "Datacenter"}
CATALOG_SERVICE_KEYS = {"ID", "Node", "Address", "Datacenter", "TaggedAddresses", "NodeMeta"}
CATALOG_SERVICE_KEYS |= {"ServiceID", "ServiceName", "ServiceTags", "ServiceAddress"}
CATALOG_SERVICE_KEYS |= {"ServiceWeights", "ServiceMeta", "ServicePort"}
CATALOG_SERVICE_KEYS |= {"ServiceEnableTagOverride", "CreateIndex", "ModifyIndex"}
KV_KEYS = {"LockIndex", "Key", "Flags", "Value", "CreateIndex", "ModifyIndex"}


@dataclass(frozen=True)
class Agent:
    """Where the Consul under test listens, and whether it is the stand-in."""

    host: str
    port: int
    standin: bool

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def sync(self) -> consul.Consul:
        return consul.Consul(host=self.host, port=self.port)

    def aio(self) -> consul.aio.Consul:
        return consul.aio.Consul(host=self.host, port=self.port)

    def require_standin(self, why: str) -> None:
        if not self.standin:
            pytest.skip(f"stand-in only: {why}")


def start_standin(log_path: Path, *extra_args: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``python -m heraldo.consul_dev`` on a port the OS picks; return it and the port."""
    log = log_path.open("ab")
    # A restart appends to the same log: only lines written after this start count.
    offset = log.tell()
    process = subprocess.Popen(
        [sys.executable, "-m", "heraldo.consul_dev", "--http-addr", "127.0.0.1:0", *extra_args],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = LISTENING.findall(log_path.read_bytes()[offset:].decode(errors="replace"))
        if found:
            return process, int(found[-1])
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    pytest.fail(f"the stand-in did not start:\n{log_path.read_text(errors='replace')}")


def stop_standin(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    configured = os.environ.get("CONSUL_HTTP_ADDR")
    if configured:
        host, _, port = configured.removeprefix("http://").rstrip("/").rpartition(":")
        yield Agent(host=host, port=int(port), standin=False)
        return

    log_path = tmp_path_factory.mktemp("consul-dev") / "standin.log"
    process, port = start_standin(log_path)
    yield Agent(host="127.0.0.1", port=port, standin=True)

    assert stop_standin(process) == 0, log_path.read_text(errors="replace")


@pytest.fixture
def name() -> str:
    """A service or key name no other test (or earlier run against a real agent) uses."""
    return f"heraldo-test-{uuid.uuid4().hex[:10]}"


def wait_until(
    read: Callable[[str | None], tuple[str, Any]], done: Callable[[Any], bool]
) -> tuple[str, Any]:
    """Repeat a blocking read, passing back its index, until done(answer) or the deadline."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    index, answer = read(None)
    while not done(answer):
        assert time.monotonic() < deadline, f"gave up waiting; last answer: {answer!r}"
        index, answer = read(index)
    return index, answer


async def await_until(read: Callable[[str | None], Any], done: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + WAIT_LIMIT_S
    index, answer = await read(None)
    while not done(answer):
        assert time.monotonic() < deadline, f"gave up waiting; last answer: {answer!r}"
        index, answer = await read(index)
    return index, answer


def checks_by_id(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {check["CheckID"]: check for check in entries}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- status, agent self, catalog basics


def test_status_leader_and_peers(agent: Agent) -> None:
    c = agent.sync()

    leader = c.status.leader()
    peers = c.status.peers()

    assert isinstance(leader, str) and ":" in leader
    assert isinstance(peers, list) and leader in peers


def test_agent_self_describes_node_and_datacenter(agent: Agent) -> None:
    me = agent.sync().agent.self()

    assert {"Datacenter", "NodeName", "NodeID", "Version"} <= me["Config"].keys()
    assert me["Member"]["Name"] == me["Config"]["NodeName"]


def test_catalog_nodes_and_datacenters(agent: Agent) -> None:
    c = agent.sync()
    config = c.agent.self()["Config"]

    datacenters = c.catalog.datacenters()
    index, nodes = c.catalog.nodes()

    assert config["Datacenter"] in datacenters
    assert int(index) >= 1
    mine = [node for node in nodes if node["Node"] == config["NodeName"]]
    assert len(mine) == 1 and NODE_KEYS <= mine[0].keys()


def test_health_node_lists_serf_health(agent: Agent) -> None:
    c = agent.sync()
    node = c.agent.self()["Config"]["NodeName"]

    index, checks = c.health.node(node)

    serf = checks_by_id(checks)["serfHealth"]
    assert int(index) >= 1
    assert serf["Status"] == "passing" and serf["ServiceID"] == ""


# ---- service registration and the reads that show it


def test_registered_service_appears_in_agent_catalog_and_health(agent: Agent, name: str) -> None:
    c = agent.sync()
    service_id = f"{name}-1"
    node = c.agent.self()["Config"]["NodeName"]

    registered = c.agent.service.register(
        name,
        service_id=service_id,
        address="127.0.0.1",
        port=50061,
        tags=["v1", "blue"],
        meta={"version": "0.1.0"},
        check=consul.Check.ttl("30s"),
    )
    try:
        assert registered is True

        service = c.agent.services()[service_id]
        assert AGENT_SERVICE_KEYS <= service.keys()
        assert (service["Service"], service["Port"], service["Tags"]) == (
            name,
            50061,
            ["v1", "blue"],
        )
        assert service["Meta"] == {"version": "0.1.0"}
        assert c.agent.service_definition(service_id)["ID"] == service_id

        check = c.agent.checks()[f"service:{service_id}"]
        assert CHECK_KEYS <= check.keys()
        assert (check["Status"], check["Type"], check["ServiceName"]) == ("critical", "ttl", name)
        assert check["Name"] == f"Service '{name}' check"

        _, services = c.catalog.services()
        assert sorted(services[name]) == ["blue", "v1"]
        _, instances = c.catalog.service(name)
        assert len(instances) == 1 and CATALOG_SERVICE_KEYS <= instances[0].keys()
        assert (instances[0]["ServiceID"], instances[0]["ServicePort"]) == (service_id, 50061)

        index, entries = c.health.service(name)
        assert int(index) >= 1 and len(entries) == 1
        entry = entries[0]
        assert NODE_KEYS <= entry["Node"].keys() and entry["Node"]["Node"] == node
        assert HEALTH_SERVICE_KEYS <= entry["Service"].keys()
        assert entry["Service"]["ID"] == service_id
        entry_checks = checks_by_id(entry["Checks"])
        assert {"serfHealth", f"service:{service_id}"} <= entry_checks.keys()
        assert all(CHECK_KEYS <= check.keys() for check in entry["Checks"])

        _, checks = c.health.checks(name)
        assert [check["CheckID"] for check in checks] == [f"service:{service_id}"]
        _, critical = c.health.state("critical")
        assert f"service:{service_id}" in checks_by_id(critical)
        _, node_checks = c.health.node(node)
        assert f"service:{service_id}" in checks_by_id(node_checks)
    finally:
        c.agent.service.deregister(service_id)

    assert service_id not in c.agent.services()
    assert f"service:{service_id}" not in c.agent.checks()
    assert c.health.service(name)[1] == []


def test_health_service_filters_by_tag_and_passing(agent: Agent, name: str) -> None:
    c = agent.sync()
    c.agent.service.register(name, service_id=f"{name}-a", tags=["a"], check={"ttl": "30s"})
    c.agent.service.register(name, service_id=f"{name}-b", tags=["b"], check={"ttl": "30s"})
    try:
        c.agent.check.ttl_pass(f"service:{name}-a")

        _, tagged = c.health.service(name, tag="b")
        _, passing = c.health.service(name, passing=True)
        _, tagged_catalog = c.catalog.service(name, tag="a")

        assert [entry["Service"]["ID"] for entry in tagged] == [f"{name}-b"]
        assert [entry["Service"]["ID"] for entry in passing] == [f"{name}-a"]
        assert [entry["ServiceID"] for entry in tagged_catalog] == [f"{name}-a"]
    finally:
        c.agent.service.deregister(f"{name}-a")
        c.agent.service.deregister(f"{name}-b")


def test_replace_existing_checks_and_status_kept_on_reregistration(agent: Agent, name: str) -> None:
    c = agent.sync()
    ttl = consul.Check.ttl("30s")
    c.agent.service.register(name, service_id=name, check=ttl, extra_checks=[ttl])
    try:
        first = {cid for cid, check in c.agent.checks().items() if check["ServiceID"] == name}
        assert first == {f"service:{name}:1", f"service:{name}:2"}

        c.agent.service.register(name, service_id=name, check=ttl, replace_existing_checks=True)
        c.agent.check.ttl_pass(f"service:{name}", "ready")
        c.agent.service.register(name, service_id=name, check=ttl, replace_existing_checks=True)

        after = {
            cid: check for cid, check in c.agent.checks().items() if check["ServiceID"] == name
        }
        assert list(after) == [f"service:{name}"]
        assert after[f"service:{name}"]["Status"] == "passing"
    finally:
        c.agent.service.deregister(name)


def test_standalone_check_register_and_deregister(agent: Agent, name: str) -> None:
    c = agent.sync()
    c.agent.service.register(name, service_id=name)
    try:
        registered = c.agent.check.register(
            "extra",
            check=consul.Check.ttl("30s"),
            check_id=f"{name}-extra",
            service_id=name,
            notes="set by the test",
        )
        check = c.agent.checks()[f"{name}-extra"]
        _, service_checks = c.health.checks(name)

        assert registered is True
        assert (check["Name"], check["Notes"], check["ServiceID"]) == (
            "extra",
            "set by the test",
            name,
        )
        assert f"{name}-extra" in checks_by_id(service_checks)

        assert c.agent.check.deregister(f"{name}-extra") is True
        assert f"{name}-extra" not in c.agent.checks()
        assert c.agent.check.deregister(f"{name}-extra") is False
    finally:
        c.agent.service.deregister(name)


def test_service_maintenance_mode_hides_instance_from_passing(agent: Agent, name: str) -> None:
    c = agent.sync()
    c.agent.service.register(name, service_id=name, check={"ttl": "30s", "status": "passing"})
    try:
        assert len(c.health.service(name, passing=True)[1]) == 1

        assert c.agent.service.maintenance(name, "true", reason="upgrade") is True
        _, entries = c.health.service(name)
        _, passing = c.health.service(name, passing=True)

        maintenance = checks_by_id(entries[0]["Checks"])[f"_service_maintenance:{name}"]
        assert (maintenance["Status"], maintenance["Notes"]) == ("critical", "upgrade")
        assert passing == []

        c.agent.service.maintenance(name, "false")
        assert len(c.health.service(name, passing=True)[1]) == 1
    finally:
        c.agent.service.deregister(name)


# ---- TTL checks


def test_ttl_check_pass_warn_fail_and_update(agent: Agent, name: str) -> None:
    c = agent.sync()
    check_id = f"service:{name}"
    c.agent.service.register(name, service_id=name, check=consul.Check.ttl("30s"))
    try:
        c.agent.check.ttl_pass(check_id, "all good")
        assert (c.agent.checks()[check_id]["Status"], c.agent.checks()[check_id]["Output"]) == (
            "passing",
            "all good",
        )
        assert check_id in checks_by_id(c.health.state("passing")[1])

        c.agent.check.ttl_warn(check_id, "slow")
        assert c.agent.checks()[check_id]["Status"] == "warning"
        c.agent.check.ttl_fail(check_id, "down")
        assert c.agent.checks()[check_id]["Status"] == "critical"

        updated = requests.put(
            f"{agent.url}/v1/agent/check/update/{check_id}",
            data=json.dumps({"Status": "passing", "Output": "updated"}),
            timeout=5,
        )
        assert updated.status_code == 200
        assert (c.agent.checks()[check_id]["Status"], c.agent.checks()[check_id]["Output"]) == (
            "passing",
            "updated",
        )

        refused = requests.put(
            f"{agent.url}/v1/agent/check/update/{check_id}",
            data=json.dumps({"Status": "sideways"}),
            timeout=5,
        )
        assert refused.status_code == 400
    finally:
        c.agent.service.deregister(name)


def test_ttl_pass_on_unknown_check_is_refused(agent: Agent, name: str) -> None:
    c = agent.sync()

    try:
        accepted = c.agent.check.ttl_pass(f"{name}-missing")
    except consul.ConsulException:
        accepted = False

    assert accepted is False


def test_ttl_check_goes_critical_when_not_refreshed(agent: Agent, name: str) -> None:
    c = agent.sync()
    check_id = f"service:{name}"
    c.agent.service.register(name, service_id=name, check={"ttl": "1s"})
    try:
        c.agent.check.ttl_pass(check_id, "last words")

        _, checks = wait_until(
            lambda index: c.health.checks(name, index=index, wait="2s"),
            lambda checks: checks and checks[0]["Status"] == "critical",
        )

        output = c.agent.checks()[check_id]["Output"]
        assert output == "TTL expired (last output before timeout follows): last words"
    finally:
        c.agent.service.deregister(name)


def test_deregister_critical_service_after_removes_service(agent: Agent, name: str) -> None:
    agent.require_standin("Consul refuses DeregisterCriticalServiceAfter below 1 minute")
    c = agent.sync()
    c.agent.service.register(
        name, service_id=name, check={"ttl": "30s", "DeregisterCriticalServiceAfter": "2s"}
    )
    try:
        assert name in c.agent.services()

        wait_until(
            lambda index: c.catalog.service(name, index=index, wait="2s"),
            lambda instances: instances == [],
        )

        assert name not in c.agent.services()
        assert f"service:{name}" not in c.agent.checks()
    finally:
        c.agent.service.deregister(name)


# ---- checks the agent runs: gRPC, HTTP, TCP


@pytest.fixture
async def grpc_health_server() -> Any:
    server = grpc.aio.server()
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port, health
    await server.stop(None)


async def test_grpc_check_follows_serving_status_and_wakes_blocking_query(
    agent: Agent, name: str, grpc_health_server: tuple[int, Any]
) -> None:
    port, health = grpc_health_server
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    target = f"127.0.0.1:{port}"

    async with agent.aio() as c:
        await c.agent.service.register(
            name,
            service_id=name,
            address="127.0.0.1",
            port=port,
            check=consul.Check.grpc(target, "1s", timeout="2s"),
        )
        try:
            index, entries = await await_until(
                lambda index: c.health.service(name, index=index, wait="5s", passing=True),
                lambda entries: len(entries) == 1,
            )
            check = checks_by_id(entries[0]["Checks"])[f"service:{name}"]
            assert (check["Type"], check["Output"]) == ("grpc", f"gRPC check {target}: success")

            await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            woken_index, woken = await c.health.service(name, index=index, wait="5s", passing=True)

            # Back before the wait ran out: the index moved, so the change woke the query.
            assert int(woken_index) > int(index)
            await await_until(
                lambda index: c.health.service(name, index=index, wait="5s", passing=True),
                lambda entries: entries == [],
            )
            _, checks = await c.health.checks(name)
            assert checks[0]["Status"] == "critical"
            assert "NOT_SERVING" in checks[0]["Output"]
        finally:
            await c.agent.service.deregister(name)


async def test_grpc_check_asks_for_the_named_service(
    agent: Agent, name: str, grpc_health_server: tuple[int, Any]
) -> None:
    port, health = grpc_health_server
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await health.set("heraldo.v1.NotifierService", health_pb2.HealthCheckResponse.SERVING)

    async with agent.aio() as c:
        await c.agent.service.register(
            name,
            service_id=name,
            check=consul.Check.grpc(f"127.0.0.1:{port}/heraldo.v1.NotifierService", "1s"),
        )
        try:
            _, entries = await await_until(
                lambda index: c.health.service(name, index=index, wait="5s", passing=True),
                lambda entries: len(entries) == 1,
            )

            assert entries[0]["Service"]["ID"] == name
        finally:
            await c.agent.service.deregister(name)


@pytest.fixture
async def http_target() -> Any:
    """An HTTP server with a healthy, a busy, a broken and a hanging endpoint."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=429, text="slow down")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(60)
        return web.Response(text="too late")

    app = web.Application()
    app.add_routes(
        [
            web.get("/ok", ok),
            web.get("/busy", busy),
            web.get("/broken", broken),
            web.get("/hang", hang),
        ]
    )
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def test_http_and_tcp_checks_report_status_and_output(
    agent: Agent, name: str, http_target: int
) -> None:
    base = f"http://127.0.0.1:{http_target}"
    refused = closed_port()
    checks = {
        "ok": consul.Check.http(f"{base}/ok", "1s", timeout="2s"),
        "busy": consul.Check.http(f"{base}/busy", "1s", timeout="2s"),
        "broken": consul.Check.http(f"{base}/broken", "1s", timeout="2s"),
        "hang": consul.Check.http(f"{base}/hang", "1s", timeout="1s"),
        "tcp-open": consul.Check.tcp("127.0.0.1", http_target, "1s", timeout="2s"),
        "tcp-closed": consul.Check.tcp("127.0.0.1", refused, "1s", timeout="2s"),
    }

    async with agent.aio() as c:
        await c.agent.service.register(name, service_id=name)
        try:
            for label, check in checks.items():
                await c.agent.check.register(
                    label, check=check, check_id=f"{name}-{label}", service_id=name
                )

            async def read_agent_checks(_: str | None) -> tuple[None, dict[str, Any]]:
                # Output-only changes reach a real agent's catalog minutes later; the agent's
                # own view has them at once, so poll that.
                await asyncio.sleep(0.2)
                found = await c.agent.checks()
                return None, {cid.removeprefix(f"{name}-"): v for cid, v in found.items()}

            _, seen = await await_until(
                read_agent_checks,
                lambda seen: (
                    all(label in seen and seen[label]["Output"] for label in checks)
                    and seen["ok"]["Status"] == "passing"
                    and seen["busy"]["Status"] == "warning"
                    and seen["tcp-open"]["Status"] == "passing"
                ),
            )

            assert seen["ok"]["Output"] == f"HTTP GET {base}/ok: 200 OK Output: fine"
            assert seen["busy"]["Output"].startswith(f"HTTP GET {base}/busy: 429 Too Many")
            assert seen["broken"]["Status"] == "critical"
            assert seen["broken"]["Output"] == (
                f"HTTP GET {base}/broken: 500 Internal Server Error Output: boom"
            )
            assert seen["hang"]["Status"] == "critical"
            assert "deadline exceeded" in seen["hang"]["Output"]
            assert seen["tcp-open"]["Output"] == f"TCP connect 127.0.0.1:{http_target}: Success"
            assert seen["tcp-closed"]["Status"] == "critical"
            assert seen["tcp-closed"]["Output"].startswith(f"dial tcp 127.0.0.1:{refused}")
            assert (seen["ok"]["Type"], seen["tcp-open"]["Type"]) == ("http", "tcp")
        finally:
            await c.agent.service.deregister(name)


# ---- KV


def test_kv_put_get_shapes_flags_and_missing_key(agent: Agent, name: str) -> None:
    c = agent.sync()
    key = f"{name}/greeting"
    try:
        assert c.kv.put(key, "hello", flags=42) is True

        index, entry = c.kv.get(key)
        missing_index, missing = c.kv.get(f"{name}/absent")
        raw = requests.get(f"{agent.url}/v1/kv/{key}?raw", timeout=5)

        assert KV_KEYS <= entry.keys()
        assert (entry["Key"], entry["Value"], entry["Flags"]) == (key, b"hello", 42)
        assert entry["CreateIndex"] == entry["ModifyIndex"] == int(index)
        assert missing is None and int(missing_index) >= 1
        assert (raw.status_code, raw.content) == (200, b"hello")
        assert requests.get(f"{agent.url}/v1/kv/{name}/absent", timeout=5).status_code == 404
    finally:
        c.kv.delete(name, recurse=True)


def test_kv_empty_value_reads_as_none(agent: Agent, name: str) -> None:
    c = agent.sync()
    try:
        c.kv.put(f"{name}/empty", "")

        _, entry = c.kv.get(f"{name}/empty")

        assert entry["Value"] is None
    finally:
        c.kv.delete(name, recurse=True)


def test_kv_check_and_set(agent: Agent, name: str) -> None:
    c = agent.sync()
    key = f"{name}/config"
    try:
        assert c.kv.put(key, "v1", cas=0) is True
        assert c.kv.put(key, "v2", cas=0) is False

        _, entry = c.kv.get(key)
        modify_index = entry["ModifyIndex"]
        assert c.kv.put(key, "v2", cas=modify_index + 1000) is False
        assert c.kv.put(key, "v2", cas=modify_index) is True
        assert c.kv.put(key, "v3", cas=modify_index) is False
        assert c.kv.get(key)[1]["Value"] == b"v2"

        _, entry = c.kv.get(key)
        assert c.kv.delete(key, cas=entry["ModifyIndex"] + 1000) is False
        assert c.kv.get(key)[1] is not None
        assert c.kv.delete(key, cas=entry["ModifyIndex"]) is True
        assert c.kv.get(key)[1] is None
    finally:
        c.kv.delete(name, recurse=True)


def test_kv_recurse_keys_separator_and_delete_tree(agent: Agent, name: str) -> None:
    c = agent.sync()
    for suffix in ("b", "c/d", "c/e", "f"):
        c.kv.put(f"{name}/a/{suffix}", suffix)
    c.kv.put(f"{name}/z", "outside")
    try:
        _, entries = c.kv.get(f"{name}/a/", recurse=True)
        _, keys = c.kv.get(f"{name}/a/", keys=True)
        _, shallow = c.kv.get(f"{name}/a/", keys=True, separator="/")

        assert [entry["Key"] for entry in entries] == [
            f"{name}/a/{suffix}" for suffix in ("b", "c/d", "c/e", "f")
        ]
        assert [entry["Value"] for entry in entries] == [b"b", b"c/d", b"c/e", b"f"]
        assert keys == [f"{name}/a/{suffix}" for suffix in ("b", "c/d", "c/e", "f")]
        assert shallow == [f"{name}/a/b", f"{name}/a/c/", f"{name}/a/f"]

        assert c.kv.delete(f"{name}/a/", recurse=True) is True
        assert c.kv.get(f"{name}/a/", recurse=True)[1] is None
        assert c.kv.get(f"{name}/a/", keys=True)[1] is None
        assert c.kv.get(f"{name}/z")[1]["Value"] == b"outside"
    finally:
        c.kv.delete(name, recurse=True)


async def test_blocking_kv_get_wakes_on_put(agent: Agent, name: str) -> None:
    key = f"{name}/watched"
    async with agent.aio() as c:
        await c.kv.put(key, "before")
        index, _ = await c.kv.get(key)
        try:
            waiting = asyncio.create_task(c.kv.get(key, index=index, wait="5s"))
            await asyncio.sleep(0.2)
            await c.kv.put(key, "after")

            new_index, entry = await waiting

            # Back before the wait ran out: the index moved past the one we held.
            assert int(new_index) > int(index)
            assert entry["Value"] == b"after" and entry["ModifyIndex"] == int(new_index)
        finally:
            await c.kv.delete(name, recurse=True)


async def test_blocking_recurse_get_wakes_on_delete(agent: Agent, name: str) -> None:
    async with agent.aio() as c:
        await c.kv.put(f"{name}/x", "1")
        index, _ = await c.kv.get(f"{name}/", recurse=True)

        waiting = asyncio.create_task(c.kv.get(f"{name}/", recurse=True, index=index, wait="5s"))
        await asyncio.sleep(0.2)
        await c.kv.delete(f"{name}/x")
        new_index, entries = await waiting

        assert int(new_index) > int(index)
        assert entries is None


# ---- blocking queries and indexes


def test_index_is_never_zero(agent: Agent, name: str) -> None:
    c = agent.sync()
    node = c.agent.self()["Config"]["NodeName"]

    indexes = [
        c.health.service(name)[0],
        c.health.checks(name)[0],
        c.health.state("any")[0],
        c.health.node(node)[0],
        c.catalog.services()[0],
        c.catalog.service(name)[0],
        c.catalog.nodes()[0],
        c.kv.get(f"{name}/nothing")[0],
        c.kv.get(f"{name}/", recurse=True)[0],
    ]

    assert all(int(index) >= 1 for index in indexes), indexes


def test_blocking_query_returns_same_index_when_nothing_changes(agent: Agent, name: str) -> None:
    c = agent.sync()
    index, _ = c.health.service(name)

    same_index, entries = c.health.service(name, index=index, wait="1s")

    assert (same_index, entries) == (index, [])


def test_index_from_before_a_restart_is_answered_at_once(agent: Agent, name: str) -> None:
    agent.require_standin("Consul would hold this query for the whole wait")
    c = agent.sync()
    index, _ = c.health.service(name)
    from_before_restart = int(index) + 1_000_000

    answered_index, _ = c.health.service(name, index=from_before_restart, wait="5m")

    assert int(answered_index) < from_before_restart


def test_catalog_services_index_moves_on_registration(agent: Agent, name: str) -> None:
    c = agent.sync()
    index, _ = c.catalog.services()
    c.agent.service.register(name, service_id=name)
    try:
        new_index, services = c.catalog.services(index=index, wait="5s")

        assert int(new_index) > int(index)
        assert name in services
    finally:
        c.agent.service.deregister(name)


def test_blocking_query_parameters_are_validated(agent: Agent) -> None:
    bad_wait = requests.get(f"{agent.url}/v1/catalog/services?index=1&wait=soon", timeout=5)
    bad_index = requests.get(f"{agent.url}/v1/catalog/services?index=first", timeout=5)

    assert bad_wait.status_code == 400 and bad_wait.text
    assert bad_index.status_code == 400 and bad_index.text


def test_blocking_headers_are_present(agent: Agent) -> None:
    response = requests.get(f"{agent.url}/v1/health/state/any", timeout=5)

    assert int(response.headers["X-Consul-Index"]) >= 1
    assert response.headers["X-Consul-KnownLeader"] == "true"
    assert response.headers["X-Consul-LastContact"] == "0"


# ---- errors


def test_errors_use_consul_status_codes(agent: Agent, name: str) -> None:
    c = agent.sync()

    unknown_route = requests.get(f"{agent.url}/v1/no-such-endpoint", timeout=5)
    bad_json = requests.put(f"{agent.url}/v1/agent/service/register", data="{nope", timeout=5)
    bad_state = requests.get(f"{agent.url}/v1/health/state/sideways", timeout=5)

    assert unknown_route.status_code == 404
    assert bad_json.status_code == 400 and bad_json.text
    assert bad_state.status_code == 400 and bad_state.text
    assert c.agent.service.deregister(f"{name}-never-registered") is False
    with pytest.raises(BadRequest):
        c.agent.service.register("")
    with pytest.raises(BadRequest):
        c.kv.put("", "no key")


# ---- stand-in only: the page, --data-dir, in-process use


def test_ui_page_lists_services_checks_and_escaped_kv(agent: Agent, name: str) -> None:
    agent.require_standin("the HTML page is the stand-in's own")
    c = agent.sync()
    c.agent.service.register(name, service_id=name, check={"ttl": "30s"})
    c.kv.put(f"{name}/<script>alert(1)</script>", "<b>bold</b>")
    try:
        page = requests.get(f"{agent.url}/ui/", timeout=5)
        bare = requests.get(f"{agent.url}/ui", timeout=5)

        assert page.status_code == bare.status_code == 200
        assert page.headers["Content-Type"].startswith("text/html")
        assert name in page.text and f"service:{name}" in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert "<script>alert" not in page.text and "<b>bold</b>" not in page.text
        assert "http-equiv='refresh'" in page.text
    finally:
        c.agent.service.deregister(name)
        c.kv.delete(name, recurse=True)


def test_data_dir_keeps_kv_across_restart(agent: Agent, tmp_path: Path) -> None:
    agent.require_standin("--data-dir is a stand-in option")
    data_dir = tmp_path / "data"
    log_path = tmp_path / "standin.log"

    process, port = start_standin(log_path, "--data-dir", str(data_dir))
    first = consul.Consul(host="127.0.0.1", port=port)
    first.kv.put("config/application/greeting", "hola")
    _, before = first.kv.get("config/application/greeting")
    assert stop_standin(process) == 0

    process, port = start_standin(log_path, "--data-dir", str(data_dir))
    try:
        after_index, after = consul.Consul(host="127.0.0.1", port=port).kv.get(
            "config/application/greeting"
        )
    finally:
        assert stop_standin(process) == 0

    assert after["Value"] == b"hola"
    assert after["ModifyIndex"] == before["ModifyIndex"] == int(after_index)


async def test_in_process_server(agent: Agent) -> None:
    agent.require_standin("exercises the stand-in's Python API")

    async with ConsulDevServer("127.0.0.1", 0) as server:
        async with consul.aio.Consul(host="127.0.0.1", port=server.port) as c:
            assert await c.kv.put("in-process", "yes") is True
            _, entry = await c.kv.get("in-process")

    assert entry["Value"] == b"yes"
