"""Follows Consul's health-checked catalog with blocking queries and feeds ``EndpointSnapshots``.

One task per Envoy cluster asks ``/v1/health/service/<name>?passing`` with the last
``X-Consul-Index``, so Consul answers as soon as a replica registers, deregisters or changes
health, and otherwise after ``wait``. While Consul cannot be reached the last known endpoints
stay in the snapshot: replicas keep receiving traffic, and Envoy's outlier detection still ejects
one that fails.

A Consul that comes back after an outage (or restarted, its index gone backwards) may have lost
every registration: the services register again within seconds, and their checks pass a moment
later. For ``recovery_grace_s`` after such a return the watcher only adds endpoints and removes
none, so that gap does not empty Envoy's clusters; then Consul's word is final again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Mapping

import aiohttp
import consul
import consul.aio

from heraldo.controlplane.snapshots import Endpoint, EndpointSnapshots

logger = logging.getLogger(__name__)

#: Consul adds up to wait/16 of jitter to a blocking query; this much more covers the round trip.
QUERY_TIMEOUT_MARGIN_S = 5.0
#: Consul may answer a blocking query early without a change; never ask faster than this.
MIN_QUERY_INTERVAL_S = 0.1

CONSUL_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, consul.ConsulException)


def backoff_delay_s(failures: int, *, initial_s: float, max_s: float) -> float:
    """Exponential backoff with jitter: somewhere in the upper half of the capped delay.

    The lower bound keeps even an unlucky draw from turning into a tight retry loop; the random
    half spreads several control planes' retries apart.
    """
    capped_s = min(max_s, initial_s * 2 ** max(failures - 1, 0))
    return capped_s / 2 + random.uniform(0, capped_s / 2)


class ConsulHealthWatcher:
    """Keeps one cluster's endpoints per Consul service up to date in ``snapshots``."""

    def __init__(self, *, client: consul.aio.Consul, snapshots: EndpointSnapshots,
                 services: Mapping[str, str], blocking_wait_s: float = 30.0,
                 retry_backoff_s: float = 0.5, retry_backoff_max_s: float = 10.0,
                 recovery_grace_s: float = 10.0) -> None:
        self._client = client
        self._snapshots = snapshots
        self._services = dict(services)
        self._wait_s = blocking_wait_s
        self._backoff_s = retry_backoff_s
        self._backoff_max_s = retry_backoff_max_s
        self._grace_s = recovery_grace_s
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        for cluster, service in self._services.items():
            self._tasks.append(asyncio.create_task(self._watch(cluster, service),
                                                   name=f"watch-{cluster}"))

    async def stop(self) -> None:
        # The flag ends a loop whose cancellation was lost because a query finished just then.
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _watch(self, cluster: str, service: str) -> None:
        loop = asyncio.get_running_loop()
        index = 0
        failures = 0
        hold_until_s = 0.0
        while not self._stopping:
            started_s = loop.time()
            holding_s = hold_until_s - started_s
            try:
                # While holding, the query returns when the grace ends, so removals it kept
                # back are applied then even if Consul has nothing new to say.
                wait_s = min(self._wait_s, holding_s) if holding_s > 0 else self._wait_s
                new_index, entries = await self._query(service, index, max(wait_s, 0.1))
            except CONSUL_ERRORS as exc:
                failures += 1
                delay_s = backoff_delay_s(failures, initial_s=self._backoff_s,
                                          max_s=self._backoff_max_s)
                # The first failure is worth a warning; the rest of an outage only at debug.
                log = logger.warning if failures == 1 else logger.debug
                log("consul query failed service=%s attempt=%d retry_in_s=%.2f error=%r; "
                    "serving the last known endpoints", service, failures, delay_s, exc)
                # Consul may come back restarted with a lower index; a fresh non-blocking read
                # gets the current state instead of blocking on an index it never reaches.
                index = 0
                await asyncio.sleep(delay_s)
                continue
            if failures:
                logger.info("consul reachable again service=%s after_failures=%d "
                            "recovery_grace_s=%g", service, failures, self._grace_s)
                failures = 0
                hold_until_s = loop.time() + self._grace_s

            went_back = 0 < new_index < index
            index = self._next_index(service, index, new_index)
            if went_back:
                hold_until_s = loop.time() + self._grace_s
            endpoints = await self._endpoints(service, entries)
            if loop.time() < hold_until_s:
                known = self._snapshots.snapshot().clusters.get(cluster, ())
                endpoints = [*known, *endpoints]
            self._snapshots.set_endpoints(cluster, endpoints)

            elapsed_s = loop.time() - started_s
            if elapsed_s < MIN_QUERY_INTERVAL_S:
                await asyncio.sleep(MIN_QUERY_INTERVAL_S - elapsed_s)

    async def _query(self, service: str, index: int, wait_s: float) -> tuple[int, list[dict]]:
        wait = f"{wait_s:.3g}s"
        timeout_s = wait_s * (1 + 1 / 16) + QUERY_TIMEOUT_MARGIN_S
        # asyncio.timeout rather than wait_for: on Python 3.11 wait_for drops a cancellation
        # that arrives as the query completes, and the watcher would then never stop.
        async with asyncio.timeout(timeout_s):
            new_index, entries = await self._client.health.service(
                service, index=index or None, wait=wait, passing=True)
        try:
            return int(new_index or 0), list(entries or [])
        except (TypeError, ValueError) as exc:
            raise consul.ConsulException(f"bad X-Consul-Index {new_index!r}") from exc

    @staticmethod
    def _next_index(service: str, index: int, new_index: int) -> int:
        """Consul's rules for the next blocking query's index."""
        if new_index < index:
            # A Consul restart or a snapshot restore: start over with a non-blocking read.
            logger.debug("consul index went backwards service=%s from=%d to=%d",
                         service, index, new_index)
            return 0
        # An index of 0 would make every following query return at once.
        return max(new_index, 1)

    async def _endpoints(self, service: str, entries: list[dict]) -> list[Endpoint]:
        endpoints = []
        for entry in entries:
            svc = entry.get("Service") or {}
            node = entry.get("Node") or {}
            host = svc.get("Address") or node.get("Address") or ""
            port = svc.get("Port") or 0
            instance_id = svc.get("ID") or ""
            if not host or not port:
                logger.warning("skipping instance without address service=%s id=%s",
                               service, instance_id)
                continue
            ip = await self._resolve(host, port)
            if ip is None:
                logger.warning("skipping unresolvable instance service=%s id=%s host=%s",
                               service, instance_id, host)
                continue
            endpoints.append(Endpoint(host=ip, port=int(port), instance_id=instance_id))
        return endpoints

    @staticmethod
    async def _resolve(host: str, port: int) -> str | None:
        """EDS needs IP addresses (Envoy rejects a name), but a container may advertise its name."""
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
        except OSError:
            return None
        return str(infos[0][4][0]) if infos else None
