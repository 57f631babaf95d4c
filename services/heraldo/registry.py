"""Consul: the service registry and the KV store every service reads its settings from."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import consul
import consul.aio

from heraldo.errors import Unavailable

logger = logging.getLogger(__name__)

DEFAULT_CONSUL_ADDR = "127.0.0.1:8500"
#: How long one blocking query waits in Consul before answering "nothing changed".
BLOCKING_WAIT = "30s"


@dataclass(frozen=True)
class ConsulAddress:
    host: str
    port: int
    scheme: str = "http"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConsulAddress:
        """Reads ``CONSUL_HTTP_ADDR`` the way the consul CLI does: ``host:port`` or a URL."""
        env = os.environ if env is None else env
        raw = env.get("CONSUL_HTTP_ADDR", DEFAULT_CONSUL_ADDR)
        parts = urlsplit(raw if "://" in raw else f"http://{raw}")
        return cls(host=parts.hostname or "127.0.0.1", port=parts.port or 8500, scheme=parts.scheme)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def client(self) -> consul.aio.Consul:
        return consul.aio.Consul(host=self.host, port=self.port, scheme=self.scheme)


async def read_kv_tree(client: consul.aio.Consul, prefix: str = "config/") -> dict[str, str]:
    """Returns every key under ``prefix`` with its value decoded as UTF-8."""
    _, entries = await client.kv.get(prefix, recurse=True)
    return {
        entry["Key"]: (entry["Value"] or b"").decode("utf-8")
        for entry in entries or []
        if not entry["Key"].endswith("/")
    }


async def seed_kv(client: consul.aio.Consul, seed: Mapping[str, str]) -> int:
    """Writes each seed key that KV does not hold yet (CAS 0), so operators' values survive.

    Returns the number of keys written.
    """
    written = 0
    for key, value in seed.items():
        if await client.kv.put(key, value, cas=0):
            written += 1
    return written


@dataclass
class ServiceRegistration:
    """One service instance in Consul's catalog, health-checked over the gRPC health protocol."""

    name: str
    instance_id: str
    address: str
    port: int
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    check_interval_s: float = 2.0
    deregister_critical_after_s: float = 30.0

    def check(self) -> dict:
        check = consul.Check.grpc(
            f"{self.address}:{self.port}",
            f"{self.check_interval_s:g}s",
            timeout=f"{max(self.check_interval_s, 1):g}s",
            deregister=f"{self.deregister_critical_after_s:g}s",
        )
        check["CheckID"] = f"service:{self.instance_id}"
        check["Name"] = f"{self.name} gRPC health"
        return check

    async def register(self, client: consul.aio.Consul) -> None:
        """Raises Unavailable when Consul cannot be reached or refuses the registration."""
        try:
            await client.agent.service.register(
                self.name, service_id=self.instance_id, address=self.address, port=self.port,
                tags=self.tags, meta=self.meta, check=self.check(), replace_existing_checks=True,
            )
        except (TimeoutError, aiohttp.ClientError, OSError, consul.ConsulException) as exc:
            raise Unavailable(f"cannot register {self.instance_id} in Consul: {exc}") from exc
        logger.info("registered service=%s id=%s address=%s:%d",
                    self.name, self.instance_id, self.address, self.port)

    async def deregister(self, client: consul.aio.Consul) -> None:
        """Best effort: a failure is logged; DeregisterCriticalServiceAfter cleans up anyway."""
        try:
            await client.agent.service.deregister(self.instance_id)
        except (TimeoutError, aiohttp.ClientError, OSError, consul.ConsulException) as exc:
            logger.warning("could not deregister id=%s: %s", self.instance_id, exc)
            return
        logger.info("deregistered service=%s id=%s", self.name, self.instance_id)
