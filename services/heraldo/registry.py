"""Consul: the service registry and the KV store every service reads its settings from."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import consul
import consul.aio

from heraldo.errors import ConfigError, Unavailable

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
        """Reads ``CONSUL_HTTP_ADDR`` the way the consul CLI does: ``host:port`` or a URL.

        Raises:
            ConfigError: it is neither.
        """
        env = os.environ if env is None else env
        return cls.parse(env.get("CONSUL_HTTP_ADDR", DEFAULT_CONSUL_ADDR), "CONSUL_HTTP_ADDR")

    @classmethod
    def parse(cls, raw: str, what: str) -> ConsulAddress:
        """``host:port`` or an http(s) URL; ``what`` names where it came from in an error.

        Raises:
            ConfigError: ``raw`` is neither, or its port is no port number.
        """
        text = raw.strip()
        parts = urlsplit(text if "://" in text else f"http://{text}")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or port == -1 or port == 0:
            raise ConfigError(f"{what}={raw!r} is not host:port or an http(s) URL "
                              f"(e.g. {DEFAULT_CONSUL_ADDR})")
        return cls(host=parts.hostname or "127.0.0.1", port=port or 8500, scheme=parts.scheme)

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


#: Pause after a failed blocking query, doubled per failure up to the maximum.
WATCH_RETRY_S = 0.5
WATCH_MAX_RETRY_S = 10.0
#: Extra time a blocking query gets beyond its ``wait`` before the client gives up on it.
WATCH_TIMEOUT_MARGIN_S = 5.0
#: Consul may answer a blocking query early without a change; never ask faster than this.
WATCH_MIN_INTERVAL_S = 0.1


async def _follow(read, on_change, *, what: str, wait_s: float) -> None:
    """Calls ``on_change(value)`` with the first answer and each changed one, until cancelled.

    ``read(index, wait)`` is one Consul blocking query returning ``(index, value)``. Failures are
    logged and retried with a growing pause, starting over with a non-blocking read, because
    Consul may come back restarted with a lower index.
    """
    index = 0
    last = None
    first = True
    failures = 0
    loop = asyncio.get_running_loop()
    while True:
        started_s = loop.time()
        try:
            # asyncio.timeout rather than wait_for, which on Python 3.11 can drop a cancellation.
            async with asyncio.timeout(wait_s * (1 + 1 / 16) + WATCH_TIMEOUT_MARGIN_S):
                new_index, value = await read(index or None, f"{wait_s:g}s")
        except (TimeoutError, aiohttp.ClientError, OSError, consul.ConsulException) as exc:
            failures += 1
            pause_s = min(WATCH_RETRY_S * 2 ** (failures - 1), WATCH_MAX_RETRY_S)
            logger.warning("consul watch failed what=%s attempt=%d retry_in_s=%.1f error=%r",
                           what, failures, pause_s, exc)
            index = 0
            await asyncio.sleep(pause_s)
            continue
        failures = 0
        new_index = int(new_index or 0)
        # An index that went backwards (a restarted Consul) means: read afresh. Never 0 after a
        # successful read, or every following query would answer at once.
        index = max(new_index, 1) if new_index >= index else 0
        if first or value != last:
            first, last = False, value
            try:
                on_change(value)
            except Exception:
                # A bug in one consumer must not end the watch that every later change needs.
                logger.exception("consul watch consumer failed what=%s", what)
        elapsed_s = loop.time() - started_s
        if elapsed_s < WATCH_MIN_INTERVAL_S:
            await asyncio.sleep(WATCH_MIN_INTERVAL_S - elapsed_s)


async def watch_kv_tree(client: consul.aio.Consul, on_change, prefix: str = "config/", *,
                        wait_s: float = 30.0) -> None:
    """Follows every key under ``prefix`` with blocking queries; runs until cancelled.

    ``on_change`` gets the whole tree (key to UTF-8 value) at first and after each change.
    """
    async def read(index, wait):
        new_index, entries = await client.kv.get(prefix, recurse=True, index=index, wait=wait)
        return new_index, {
            entry["Key"]: (entry["Value"] or b"").decode("utf-8")
            for entry in entries or [] if not entry["Key"].endswith("/")
        }

    await _follow(read, on_change, what=f"kv:{prefix}", wait_s=wait_s)


def _started_at(service: dict) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat((service.get("Meta") or {})["started_at"])
    except (KeyError, TypeError, ValueError):
        return None


async def watch_passing_instances(client: consul.aio.Consul, service: str, on_change, *,
                                  wait_s: float = 30.0) -> None:
    """Follows which instances of ``service`` pass their checks; runs until cancelled.

    ``on_change`` gets a dict of instance id to the time its process started (from the
    ``started_at`` service meta; None when an instance does not publish it).
    """
    async def read(index, wait):
        new_index, entries = await client.health.service(service, index=index, wait=wait,
                                                         passing=True)
        return new_index, {entry["Service"]["ID"]: _started_at(entry["Service"])
                           for entry in entries or []}

    await _follow(read, on_change, what=f"passing:{service}", wait_s=wait_s)
