"""A service that cannot reach Consul or its database, or is given no address for Consul, exits
at once with one line naming which."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from heraldo.consul_dev import ConsulDevServer

SERVICES = ["heraldo.batch", "heraldo.notifier", "heraldo.controlplane"]


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def run_service(module: str, **env: str) -> subprocess.CompletedProcess:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "HERALDO_GRPC_PORT": "0", **env})
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    return subprocess.CompletedProcess(module, process.returncode, stdout.decode(),
                                       stderr.decode())


@pytest.mark.parametrize("module", SERVICES)
async def test_unreachable_consul_is_one_line_naming_its_address(module):
    port = unused_port()

    result = await run_service(module, CONSUL_HTTP_ADDR=f"127.0.0.1:{port}")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot reach Consul at http://127.0.0.1:{port}" in lines[0]


@pytest.mark.parametrize("module", ["heraldo.batch", "heraldo.notifier"])
async def test_unreachable_database_is_one_line_naming_it(module):
    port = unused_port()
    async with ConsulDevServer("127.0.0.1", 0) as consul:
        result = await run_service(
            module, CONSUL_HTTP_ADDR=f"127.0.0.1:{consul.port}",
            DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/heraldo")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "database" in lines[0] and f"127.0.0.1:{port}" in lines[0]


@pytest.mark.parametrize("module", SERVICES)
async def test_a_consul_address_that_is_no_address_is_one_line_naming_it(module):
    result = await run_service(module, CONSUL_HTTP_ADDR="127.0.0.1:abc")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "CONSUL_HTTP_ADDR='127.0.0.1:abc' is not host:port or an http(s) URL" in lines[0]
