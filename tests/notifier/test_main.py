"""``python -m heraldo.notifier`` as a process: start, serve, stop on SIGTERM, fail clearly.

Consul is played by a few lines of aiohttp answering the three calls the notifier makes (KV read,
register, deregister); nothing else about Consul is exercised here.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from aiohttp import web

from heraldo.v1 import notification_pb2 as pb
from heraldo.v1 import notification_pb2_grpc

from .conftest import make_request

START_TIMEOUT_S = 30


@dataclass
class ConsulKV:
    port: int
    registered: list[dict] = field(default_factory=list)
    deregistered: list[str] = field(default_factory=list)


@pytest.fixture
async def consul_kv() -> AsyncIterator[ConsulKV]:
    state = ConsulKV(port=0)
    override = base64.b64encode(b"3").decode()

    async def kv(request: web.Request) -> web.Response:
        return web.json_response([{"Key": "config/notifier/max_in_flight", "Value": override,
                                   "ModifyIndex": 1, "CreateIndex": 1, "Flags": 0}],
                                 headers={"X-Consul-Index": "1"})

    async def register(request: web.Request) -> web.Response:
        # Consul reads these keys case-insensitively; py-consul sends them in lower case.
        state.registered.append({k.lower(): v for k, v in (await request.json()).items()})
        return web.Response()

    async def deregister(request: web.Request) -> web.Response:
        state.deregistered.append(request.match_info["service_id"])
        return web.Response()

    app = web.Application()
    app.router.add_get("/v1/kv/{key:.*}", kv)
    app.router.add_put("/v1/agent/service/register", register)
    app.router.add_put("/v1/agent/service/deregister/{service_id}", deregister)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    yield state
    await runner.cleanup()


def notifier_env(tmp_path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HERALDO_")}
    env.update({"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'heraldo.db'}",
                "HERALDO_GRPC_PORT": "0", "HERALDO_METRICS_PORT": "0",
                "HERALDO_INSTANCE_ID": "notifier-test-1", **extra})
    return env


async def run_to_exit(env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "heraldo.notifier", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT_S)
    return process.returncode, stderr.decode()


async def test_unreachable_consul_exits_with_one_line_naming_it(tmp_path):
    code, stderr = await run_to_exit(notifier_env(tmp_path, CONSUL_HTTP_ADDR="127.0.0.1:1"))

    assert code == 2
    assert stderr.strip().splitlines() == [stderr.strip()]
    assert stderr.startswith("heraldo-notifier: cannot reach Consul at http://127.0.0.1:1")


async def test_unreachable_database_exits_with_one_line_naming_it(tmp_path, consul_kv):
    env = notifier_env(tmp_path, CONSUL_HTTP_ADDR=f"127.0.0.1:{consul_kv.port}",
                       DATABASE_URL="postgresql://postgres@127.0.0.1:1/heraldo")

    code, stderr = await run_to_exit(env)

    assert code == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("heraldo-notifier: cannot reach the database "
                           "postgresql+asyncpg://postgres@127.0.0.1:1/heraldo")


async def test_serves_registers_sends_and_stops_on_sigterm(tmp_path, consul_kv, smtp_server):
    env = notifier_env(tmp_path, CONSUL_HTTP_ADDR=f"127.0.0.1:{consul_kv.port}",
                       HERALDO_SMTP_PORT=str(smtp_server.port))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "heraldo.notifier", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []
    try:
        port = await asyncio.wait_for(_serving_port(process, lines), START_TIMEOUT_S)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            result = await notification_pb2_grpc.NotifierServiceStub(channel).Send(
                make_request(1))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    rest = await asyncio.wait_for(process.stderr.read(), START_TIMEOUT_S)
    code = await process.wait()
    log = "".join(lines) + rest.decode()

    assert result.status == pb.DELIVERY_STATUS_SENT
    assert result.replica_id == "notifier-test-1"
    assert code == 0
    assert consul_kv.registered[0]["name"] == "heraldo-notifier"
    assert consul_kv.registered[0]["port"] == port
    assert consul_kv.deregistered == ["notifier-test-1"]
    assert "max_in_flight=3" in log
    assert "send notification_id=job-1:1 to=c***@example.com status=sent" in log
    assert "customer1@example.com" not in log


async def _serving_port(process: asyncio.subprocess.Process, lines: list[str]) -> int:
    while True:
        line = (await process.stderr.readline()).decode()
        if not line:
            raise AssertionError("the notifier exited before serving:\n" + "".join(lines))
        lines.append(line)
        match = re.search(r"serving service=heraldo-notifier .* port=(\d+)", line)
        if match:
            return int(match.group(1))


async def test_sigterm_lets_a_message_in_flight_finish_before_exiting(
        tmp_path, consul_kv, smtp_server):
    env = notifier_env(tmp_path, CONSUL_HTTP_ADDR=f"127.0.0.1:{consul_kv.port}",
                       HERALDO_SMTP_PORT=str(smtp_server.port), HERALDO_SHUTDOWN_GRACE_S="20")
    handler = smtp_server.handler
    handler.gate.clear()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "heraldo.notifier", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []
    try:
        port = await asyncio.wait_for(_serving_port(process, lines), START_TIMEOUT_S)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = asyncio.ensure_future(
                notification_pb2_grpc.NotifierServiceStub(channel).Send(make_request(1)))
            async with handler.reached_data:
                await asyncio.wait_for(handler.reached_data.wait_for(lambda: handler.in_data),
                                       START_TIMEOUT_S)

            # Held at DATA: the stop signal arrives while the message is in flight.
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(_wait_for_line(process, lines, "deregistered"),
                                   START_TIMEOUT_S)
            handler.gate.set()
            result = await asyncio.wait_for(call, START_TIMEOUT_S)
    finally:
        handler.gate.set()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    rest = await asyncio.wait_for(process.stderr.read(), START_TIMEOUT_S)
    code = await process.wait()

    assert result.status == pb.DELIVERY_STATUS_SENT
    assert handler.received_ids() == ["job-1:1"]
    assert code == 0
    assert consul_kv.deregistered == ["notifier-test-1"]
    assert "cancelled" not in "".join(lines) + rest.decode()


async def _wait_for_line(process: asyncio.subprocess.Process, lines: list[str],
                         text: str) -> None:
    while not any(text in line for line in lines):
        line = (await process.stderr.readline()).decode()
        if not line:
            raise AssertionError(f"the notifier exited before logging {text!r}:\n"
                                 + "".join(lines))
        lines.append(line)
