"""The local mesh: every component as a real process on this machine, started in dependency order.

Consul (a real agent when one is on PATH or ``CONSUL_HTTP_ADDR`` names one, otherwise the
development stand-in), the database (``DATABASE_URL``, else PostgreSQL on 127.0.0.1:5432, else the
embedded SQLite file), the SMTP sink, the control plane, Envoy, one batch service and the notifier
replicas. The supervisor stays alive while they run: Envoy exits when the process that started it
exits.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import aiohttp
import asyncpg

from heraldo import db
from heraldo.errors import HeraldoError
from heraldo.mesh.credentials import EdgeCredentials, generate
from heraldo.mesh.envoy_config import render_bootstrap
from heraldo.mesh.ports import free_port, free_port_range, port_is_free
from heraldo.mesh.processes import Child, child_env, python_module
from heraldo.registry import ConsulAddress, seed_kv
from heraldo.settings import load_seed

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DESCRIPTOR_PATH = PROJECT_ROOT / "envoy" / "heraldo.pb"
#: The server the local mesh looks for when DATABASE_URL is unset; ``HERALDO_LOCAL_POSTGRES``
#: points elsewhere (an unused port makes the mesh fall back to the embedded database).
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432"
STARTUP_TIMEOUT_S = 60.0
#: Written to the workdir once the mesh is up: its addresses, read by the heraldo CLI.
MESH_FILE = "mesh.json"


class MeshError(HeraldoError):
    """A component of the local mesh did not start; the message names it and its log."""


@dataclass(frozen=True)
class MeshPorts:
    """Ports of the local mesh; each one can be overridden with ``HERALDO_<NAME>_PORT``."""

    consul: int = 8500
    edge: int = 8080
    mesh: int = 9090
    envoy_admin: int = 9901
    controlplane: int = 18000
    batch: int = 50051
    first_notifier: int = 50061
    smtp: int = 1025
    sink_web: int = 8025
    console: int = 8090

    @classmethod
    def from_env(cls) -> MeshPorts:
        """The defaults, with each ``HERALDO_<NAME>_PORT`` set in the environment.

        Raises:
            MeshError: a variable is not a port number.
        """
        overrides = {}
        for item in fields(cls):
            variable = f"HERALDO_{item.name.upper()}_PORT"
            raw = os.environ.get(variable, "").strip()
            if raw:
                if not raw.isdecimal() or not 1 <= int(raw) <= 65535:
                    raise MeshError(f"{variable}={raw!r} is not a port number (1-65535)")
                overrides[item.name] = int(raw)
        return cls(**overrides)

    @classmethod
    def free(cls, notifiers: int = 3) -> MeshPorts:
        """Ports free now: for tests that run beside a developer's mesh."""
        chosen = {item.name: free_port() for item in fields(cls) if item.name != "first_notifier"}
        # Notifier replicas take consecutive ports.
        return cls(first_notifier=free_port_range(notifiers).start, **chosen)


@dataclass
class LocalMesh:
    """Starts and stops the whole mesh. Use as an async context manager."""

    workdir: Path
    ports: MeshPorts = field(default_factory=MeshPorts)
    notifiers: int = 3
    database_url: str = ""
    kv_overrides: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    consul_address: ConsulAddress | None = None
    database_description: str = ""
    consul_description: str = ""
    #: The edge's key set and a token for it, written to ``workdir`` at start (credentials.json).
    credentials: EdgeCredentials | None = None
    #: The environment every child started with, kept so one can be started again alike.
    child_base_env: dict[str, str] = field(default_factory=dict)

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.edge}"

    @property
    def sink_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.sink_web}"

    @property
    def console_url(self) -> str:
        return f"{self.edge_url}/console/"

    @property
    def auth_headers(self) -> dict[str, str]:
        """What a REST client of the edge sends: ``Authorization: Bearer <token>``."""
        return self.credentials.headers if self.credentials else {}

    def notifier_ids(self) -> list[str]:
        return [f"notifier-{index + 1}" for index in range(self.notifiers)]

    async def __aenter__(self) -> LocalMesh:
        try:
            await self.start()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.stop()

    async def start(self) -> None:
        """Raises MeshError naming the component (or the taken port) that did not start."""
        self._check_ports_free()
        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self.database_url = await choose_database(
            self.database_url, name=database_name_for(self.workdir)) or (
            f"sqlite+aiosqlite:///{(self.workdir / 'heraldo.db').resolve()}")
        self.database_description = db.describe(db.database_url(self.database_url))
        await self._start_consul()
        await self._seed_settings()
        env = child_env(CONSUL_HTTP_ADDR=f"{self.consul_address.host}:{self.consul_address.port}",
                        DATABASE_URL=self.database_url)
        self.child_base_env = env
        engine = db.create_engine(db.database_url(self.database_url))
        try:
            await db.create_schema(engine)
        finally:
            await engine.dispose()

        self._spawn("sink", python_module(
            "heraldo.sink", "--smtp-port", str(self.ports.smtp),
            "--http-port", str(self.ports.sink_web), "--dir", str(self.workdir / "sink")), env)
        self._spawn("controlplane", python_module("heraldo.controlplane"), env,
                    HERALDO_GRPC_PORT=str(self.ports.controlplane),
                    HERALDO_INSTANCE_ID="controlplane-1")
        self._spawn("console", python_module(
            "heraldo.console", "--port", str(self.ports.console)), env)
        self._start_envoy(env)
        self._spawn("batch", python_module("heraldo.batch"), env,
                    HERALDO_GRPC_PORT=str(self.ports.batch), HERALDO_INSTANCE_ID="batch-1")
        for index, replica in enumerate(self.notifier_ids()):
            self._spawn(replica, python_module("heraldo.notifier"), env,
                        HERALDO_GRPC_PORT=str(self.ports.first_notifier + index),
                        HERALDO_INSTANCE_ID=replica)

        await self._wait_until_healthy()
        self._write_address_book()
        logger.info("mesh ready in %.1f s (database: %s; consul: %s)",
                    time.perf_counter() - started, self.database_description,
                    self.consul_description)

    def _check_ports_free(self) -> None:
        """Every port this mesh will listen on must be free before anything starts.

        Envoy binds with SO_REUSEPORT, so a second Envoy on a taken port would start and share
        it silently; and a second Consul stand-in would fail only after the first mesh's KV was
        rewritten. Checking first turns both into one line naming the setting to change.
        """
        wanted = [(item.name, getattr(self.ports, item.name)) for item in fields(self.ports)
                  if item.name != "first_notifier"]
        wanted += [("first_notifier", self.ports.first_notifier + index)
                   for index in range(self.notifiers)]
        if os.environ.get("CONSUL_HTTP_ADDR"):
            wanted = [(name, port) for name, port in wanted if name != "consul"]
        if any(port > 65535 for _, port in wanted):
            raise MeshError(f"notifier replicas take {self.notifiers} ports from "
                            f"{self.ports.first_notifier}: past 65535 "
                            "(HERALDO_FIRST_NOTIFIER_PORT)")
        first_user: dict[int, str] = {}
        for name, port in wanted:
            other = first_user.setdefault(port, name)
            if other != name:
                raise MeshError(
                    f"port {port} is given to both HERALDO_{other.upper()}_PORT and "
                    f"HERALDO_{name.upper()}_PORT: move one of them")
        taken = [f"{port} (HERALDO_{name.upper()}_PORT)" for name, port in wanted
                 if not port_is_free(port)]
        if taken:
            raise MeshError(
                f"port {', '.join(taken)} already in use on 127.0.0.1: stop what holds it "
                "(another mesh?) or move it with the variable named")

    def _write_address_book(self) -> None:
        """``mesh.json`` in the workdir: where this mesh answers, for the heraldo CLI."""
        (self.workdir / MESH_FILE).write_text(json.dumps({
            "edge_url": self.edge_url,
            "consul_http_addr": f"{self.consul_address.host}:{self.consul_address.port}",
            "database_url": self.database_url,
            "credentials": str((self.workdir / "credentials.json").resolve()),
        }, indent=2) + "\n")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], **extra: str) -> Child:
        child = Child(name, argv, self.workdir / "logs" / f"{name}.log", env=extra)
        child.start(env)
        self.children.append(child)
        return child

    async def _start_consul(self) -> None:
        if os.environ.get("CONSUL_HTTP_ADDR"):
            self.consul_address = ConsulAddress.from_env()
            self.consul_description = f"external agent at {self.consul_address.url}"
        else:
            self.consul_address = ConsulAddress("127.0.0.1", self.ports.consul)
            agent = shutil.which("consul")
            if agent:
                self._spawn("consul", [agent, "agent", "-dev", "-client", "127.0.0.1",
                                       "-bind", "127.0.0.1", "-http-port",
                                       str(self.ports.consul)], child_env())
                self.consul_description = f"consul agent -dev at {self.consul_address.url}"
            else:
                self._spawn("consul", python_module(
                    "heraldo.consul_dev", "--http-addr", f"127.0.0.1:{self.ports.consul}",
                    "--data-dir", str(self.workdir / "consul")), child_env())
                self.consul_description = (
                    f"development stand-in at {self.consul_address.url} (no consul on PATH)")
        await self._poll(self._consul_has_leader, f"Consul at {self.consul_address.url}")

    async def _consul_has_leader(self, session: aiohttp.ClientSession) -> bool:
        async with session.get(f"{self.consul_address.url}/v1/status/leader") as response:
            return response.status == 200 and bool((await response.text()).strip('"\n '))

    async def _seed_settings(self) -> None:
        seed = load_seed()
        client = self.consul_address.client()
        try:
            written = await seed_kv(client, seed)
            # Settings the mesh itself depends on (ports it chose) are written unconditionally.
            for key, value in {**self._port_settings(), **self.kv_overrides}.items():
                await client.kv.put(key, value)
        finally:
            await client.http._session.close()
        logger.info("seeded KV keys=%d", written)

    def _port_settings(self) -> dict[str, str]:
        return {"config/notifier/smtp_port": str(self.ports.smtp),
                "config/batch/mesh_address": f"127.0.0.1:{self.ports.mesh}"}

    def _start_envoy(self, env: dict[str, str]) -> None:
        # A fresh key set per start: nothing to leak from a previous run, nothing hard-coded.
        self.credentials = generate(self.workdir)
        bootstrap = self.workdir / "envoy.yaml"
        bootstrap.write_text(render_bootstrap(
            edge_port=self.ports.edge, mesh_port=self.ports.mesh,
            admin_port=self.ports.envoy_admin, xds_host="127.0.0.1",
            # The edge finds batch replicas through the control plane like the notifiers, so
            # it follows them when one dies and another takes over its jobs.
            xds_port=self.ports.controlplane, batch_address=None,
            descriptor_path=str(DESCRIPTOR_PATH), node_id="edge-1",
            jwks_path=self.credentials.jwks_path,
            console_address=f"127.0.0.1:{self.ports.console}"))
        envoy = shutil.which("envoy") or str(Path(os.sys.executable).parent / "envoy")
        # A base id of its own per mesh lets two meshes (a developer's and a test's) share a host.
        self._spawn("envoy", [envoy, "-c", str(bootstrap), "--base-id",
                              str(self.ports.envoy_admin), "--log-level", "warn"], env)

    async def _wait_until_healthy(self) -> None:
        # The sink reads the mail it kept from earlier runs before it listens: seconds, for many.
        await self._poll(self._sink_serving, "the SMTP sink (reading the mail kept in its folder)")
        await self._poll(self._envoy_ready, "Envoy (admin /ready)")
        await self._poll(self._console_serving, "the job console")
        await self._poll(self._services_passing, "every service passing its Consul health check")
        await self._poll(self._envoy_sees_notifiers,
                         f"Envoy's notifier cluster to hold {self.notifiers} healthy replicas")
        await self._poll(self._envoy_sees_batch, "Envoy's batch cluster to hold the batch")

    async def _envoy_ready(self, session: aiohttp.ClientSession) -> bool:
        async with session.get(f"http://127.0.0.1:{self.ports.envoy_admin}/ready") as response:
            return response.status == 200

    async def _sink_serving(self, session: aiohttp.ClientSession) -> bool:
        async with session.get(f"{self.sink_url}/api/stats") as response:
            return response.status == 200

    async def _console_serving(self, session: aiohttp.ClientSession) -> bool:
        url = f"http://127.0.0.1:{self.ports.console}/console/healthz"
        async with session.get(url) as response:
            return response.status == 200

    async def _services_passing(self, session: aiohttp.ClientSession) -> bool:
        expected = {"heraldo-batch": 1, "heraldo-notifier": self.notifiers,
                    "heraldo-controlplane": 1}
        for service, count in expected.items():
            url = f"{self.consul_address.url}/v1/health/service/{service}?passing=1"
            async with session.get(url) as response:
                if response.status != 200 or len(await response.json()) < count:
                    return False
        return True

    async def _envoy_sees_notifiers(self, session: aiohttp.ClientSession) -> bool:
        return len(await envoy_healthy_hosts(session, self.ports.envoy_admin, "notifier")) >= \
            self.notifiers

    async def _envoy_sees_batch(self, session: aiohttp.ClientSession) -> bool:
        return bool(await envoy_healthy_hosts(session, self.ports.envoy_admin, "batch"))

    async def _poll(self, probe, what: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            while time.monotonic() < deadline:
                self._check_children()
                try:
                    if await probe(session):
                        return
                except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
                    pass
                await asyncio.sleep(0.2)
        raise MeshError(f"timed out after {timeout_s:.0f} s waiting for {what}; "
                        f"logs are in {self.workdir / 'logs'}")

    def _check_children(self) -> None:
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                raise MeshError(
                    f"{child.name} exited with code {child.process.returncode}; "
                    f"last lines of {child.log_path}:\n{child.log_tail()}")

    def child(self, name: str) -> Child:
        return next(child for child in self.children if child.name == name)

    def kill(self, name: str) -> None:
        """SIGKILL one component and reap it: a crash, with no graceful shutdown at all."""
        child = self.child(name)
        if child.running:
            child.process.kill()
            child.process.wait()
        logger.info("killed component=%s", name)

    def stop_component(self, name: str) -> None:
        """SIGTERM one component and wait for it (its graceful shutdown)."""
        self.child(name).stop()
        logger.info("stopped component=%s", name)

    def start_component(self, name: str) -> None:
        """Starts a stopped or killed component again, as it was first started.

        Raises:
            MeshError: it is still running.
        """
        child = self.child(name)
        if child.running:
            raise MeshError(f"{name} is still running (pid {child.process.pid})")
        child.start(self.child_base_env if name != "consul" else child_env())
        logger.info("started component=%s pid=%d", name, child.process.pid)

    def restart(self, name: str) -> None:
        self.stop_component(name)
        self.start_component(name)

    def add_notifier(self) -> str:
        """Starts one more notifier replica on a free port; returns its instance id.

        It registers in Consul like the others, so Envoy learns of it through the control plane.
        """
        self.notifiers += 1
        replica = f"notifier-{self.notifiers}"
        self._spawn(replica, python_module("heraldo.notifier"), self.child_base_env,
                    HERALDO_GRPC_PORT=str(free_port()), HERALDO_INSTANCE_ID=replica)
        logger.info("added component=%s", replica)
        return replica

    def start_batch_replica(self, replica_id: str) -> Child:
        """Starts one more batch replica on a free port; it shares the jobs of the first one.

        It does not wait: the replica registers in Consul and starts claiming partitions once up.
        """
        env = child_env(CONSUL_HTTP_ADDR=f"{self.consul_address.host}:{self.consul_address.port}",
                        DATABASE_URL=self.database_url)
        return self._spawn(replica_id, python_module("heraldo.batch"), env,
                           HERALDO_GRPC_PORT=str(free_port()), HERALDO_INSTANCE_ID=replica_id)

    def stop(self) -> None:
        """Stops the batch replicas first, then the rest in reverse order of start: a batch
        replica finishes its chunk in flight while the notifiers still answer, and the services
        stop before the infrastructure they deregister from."""
        batches = [child for child in self.children if child.name.startswith("batch")]
        for child in [*batches, *(c for c in reversed(self.children) if c not in batches)]:
            if child.running:
                child.stop()
                logger.info("stopped component=%s", child.name)
        self.children.clear()


async def envoy_healthy_hosts(session: aiohttp.ClientSession, admin_port: int,
                              cluster: str) -> set[str]:
    """Hosts of ``cluster`` that Envoy would route to now, from its admin ``/clusters`` page."""
    async with session.get(f"http://127.0.0.1:{admin_port}/clusters?format=json") as response:
        status = await response.json(content_type=None)
    healthy = set()
    for entry in status.get("cluster_statuses", []):
        if entry.get("name") != cluster:
            continue
        for host in entry.get("host_statuses", []):
            health = host.get("health_status", {})
            failing = ("failed_outlier_check", "failed_active_health_check",
                       "pending_dynamic_removal")
            if health.get("eds_health_status", "HEALTHY") == "HEALTHY" and not any(
                    health.get(flag) for flag in failing):
                address = host["address"]["socket_address"]
                healthy.add(f"{address['address']}:{address['port_value']}")
    return healthy


def database_name_for(workdir: Path) -> str:
    """One database per mesh working directory: two checkouts on one machine never share jobs."""
    digest = hashlib.sha1(str(workdir.resolve()).encode()).hexdigest()[:8]
    return f"heraldo_{digest}"


async def choose_database(configured: str = "", *, name: str = "heraldo") -> str:
    """``DATABASE_URL``, else a local PostgreSQL server (database ``name``), else embedded.

    Returns the URL to give the services; an empty string means the embedded SQLite database.
    """
    url = configured or os.environ.get("DATABASE_URL", "")
    if url:
        return url
    server = os.environ.get("HERALDO_LOCAL_POSTGRES", LOCAL_POSTGRES).rstrip("/")
    try:
        conn = await asyncpg.connect(f"{server}/postgres", timeout=3)
    except (OSError, TimeoutError) as exc:
        logger.info("no PostgreSQL at %s (%s): using the embedded SQLite database", server, exc)
        return ""
    except asyncpg.PostgresError as exc:
        logger.info("PostgreSQL at %s refused us (%s): using the embedded SQLite database",
                    server, exc)
        return ""
    except (asyncpg.ClientConfigurationError, ValueError) as exc:
        raise MeshError(f"HERALDO_LOCAL_POSTGRES={server!r} is not a PostgreSQL server URL like "
                        f"{LOCAL_POSTGRES}: {exc}") from exc
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{server}/{name}"
