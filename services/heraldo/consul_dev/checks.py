"""Run health checks the way a Consul agent does: gRPC, HTTP and TCP probes, and TTL timers.

Each check gets its own asyncio task, so a check that hangs holds up nobody else; its Timeout
(10 s unless the definition says otherwise) bounds every probe. Results go through the same
thresholds as Consul's (SuccessBeforePassing, FailuresBeforeWarning, FailuresBeforeCritical)
and the Output texts follow Consul's wording, so what an operator reads in the stand-in's health
endpoints matches what a real agent would have written.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from multidict import CIMultiDict

from heraldo.consul_dev.durations import format_duration
from heraldo.consul_dev.errors import ConsulDevError
from heraldo.consul_dev.state import CRITICAL, PASSING, WARNING, Check, CheckDefinition, ConsulState

logger = logging.getLogger(__name__)

#: Consul keeps at most this much of a check's output (check_output_max_size's default).
OUTPUT_MAX_BYTES = 4096
#: Extra time past a check's own Timeout before the runner gives up on a probe that ignores it.
PROBE_GRACE_S = 1.0
HTTP_USER_AGENT = "Consul Health Check"


@dataclass
class _Streak:
    """Consecutive results of one check, for Consul's success and failure thresholds."""

    successes: int = 0
    failures: int = 0


class CheckRunner:
    """Starts, restarts and stops the probe or TTL timer behind each registered check."""

    def __init__(self, state: ConsulState) -> None:
        self._state = state
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._streaks: dict[str, _Streak] = {}
        self._last_ttl_output: dict[str, str] = {}
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # Consul's HTTP checks open a new connection every time (no keep-alive), so a check
        # notices a server that restarted on the same port.
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

    async def close(self) -> None:
        for check_id in list(self._tasks):
            self.unwatch(check_id)
        if self._http is not None:
            await self._http.close()

    def watch(self, check: Check) -> None:
        """Start (or restart, after a re-registration) whatever keeps this check's status."""
        self.unwatch(check.check_id)
        definition = check.definition
        if definition.kind == "ttl":
            self._arm_ttl(check.check_id, definition.ttl_s)
        elif definition.kind in ("http", "tcp", "grpc"):
            self._streaks[check.check_id] = _Streak()
            self._tasks[check.check_id] = asyncio.create_task(
                self._monitor(check.check_id, definition), name=f"check {check.check_id}"
            )

    def unwatch(self, check_id: str) -> None:
        task = self._tasks.pop(check_id, None)
        if task is not None:
            task.cancel()
        self._streaks.pop(check_id, None)
        self._last_ttl_output.pop(check_id, None)

    def update_ttl(self, check_id: str, status: str, output: str) -> None:
        """Record a status an application reported for its TTL check, and restart the TTL.

        Raises:
            ConsulDevError: there is no TTL check by that ID (Consul answers 500 here too).
        """
        check = self._state.checks.get(check_id)
        if check is None or check.definition.kind != "ttl":
            raise ConsulDevError(f'CheckID "{check_id}" does not have associated TTL')
        output = _truncate(output)
        self._state.set_check_status(check_id, status, output)
        self._last_ttl_output[check_id] = output
        self._arm_ttl(check_id, check.definition.ttl_s)

    # ---- TTL checks

    def _arm_ttl(self, check_id: str, ttl_s: float) -> None:
        task = self._tasks.pop(check_id, None)
        if task is not None:
            task.cancel()
        self._tasks[check_id] = asyncio.create_task(
            self._expire(check_id, ttl_s), name=f"ttl {check_id}"
        )

    async def _expire(self, check_id: str, ttl_s: float) -> None:
        await asyncio.sleep(ttl_s)
        last_output = self._last_ttl_output.get(check_id, "")
        output = "TTL expired"
        if last_output:
            output = f"{output} (last output before timeout follows): {last_output}"
        logger.warning("check %s missed its TTL of %s", check_id, format_duration(ttl_s))
        self._state.set_check_status(check_id, CRITICAL, output)

    # ---- interval checks

    async def _monitor(self, check_id: str, definition: CheckDefinition) -> None:
        # Consul waits a random part of the interval before the first probe; the stand-in
        # probes at once, so a freshly started service turns passing without that delay.
        while True:
            status, output = await self._probe_once(check_id, definition)
            self._record(check_id, definition, status, _truncate(output))
            await asyncio.sleep(definition.interval_s)

    async def _probe_once(self, check_id: str, definition: CheckDefinition) -> tuple[str, str]:
        probes = {"grpc": self._probe_grpc, "http": self._probe_http, "tcp": self._probe_tcp}
        try:
            return await asyncio.wait_for(
                probes[definition.kind](definition), definition.timeout_s + PROBE_GRACE_S
            )
        except TimeoutError:
            return CRITICAL, f"Timed out ({format_duration(definition.timeout_s)}) running check"
        except Exception as exc:
            # A probe failing in a way nobody foresaw must not stop the check for good.
            logger.exception("check %s probe failed unexpectedly", check_id)
            return CRITICAL, f"{type(exc).__name__}: {exc}"

    def _record(self, check_id: str, definition: CheckDefinition, status: str, output: str) -> None:
        streak = self._streaks.get(check_id)
        if streak is None:
            return
        if status == PASSING:
            streak.successes, streak.failures = streak.successes + 1, 0
            if streak.successes >= definition.success_before_passing:
                self._state.set_check_status(check_id, PASSING, output)
            return

        streak.successes, streak.failures = 0, streak.failures + 1
        before_warning = definition.failures_before_warning or definition.failures_before_critical
        if streak.failures >= definition.failures_before_critical:
            self._state.set_check_status(check_id, status, output)
        elif streak.failures >= before_warning:
            self._state.set_check_status(check_id, WARNING, output)

    async def _probe_grpc(self, definition: CheckDefinition) -> tuple[str, str]:
        server, _, service = definition.target.partition("/")
        if definition.grpc_use_tls:
            options = []
            if definition.tls_server_name:
                options.append(("grpc.ssl_target_name_override", definition.tls_server_name))
            channel = grpc.aio.secure_channel(server, grpc.ssl_channel_credentials(), options)
        else:
            channel = grpc.aio.insecure_channel(server)

        try:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=service)
            response = await stub.Check(request, timeout=definition.timeout_s)
        except grpc.aio.AioRpcError as exc:
            return CRITICAL, f"rpc error: code = {_go_code(exc.code())} desc = {exc.details()}"
        finally:
            await channel.close()

        if response.status != health_pb2.HealthCheckResponse.SERVING:
            status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            return CRITICAL, f"gRPC {definition.target} serving status: {status_name}"
        return PASSING, f"gRPC check {definition.target}: success"

    async def _probe_http(self, definition: CheckDefinition) -> tuple[str, str]:
        assert self._http is not None, "CheckRunner.start() was not awaited"
        method = definition.method or "GET"
        headers = CIMultiDict(
            (name, value) for name, values in definition.header.items() for value in values
        )
        headers.setdefault("User-Agent", HTTP_USER_AGENT)
        headers.setdefault("Accept", "text/plain, text/*, */*")

        try:
            async with self._http.request(
                method,
                definition.target,
                headers=headers,
                data=definition.body.encode() if definition.body else None,
                timeout=aiohttp.ClientTimeout(total=definition.timeout_s),
                ssl=False if definition.tls_skip_verify else True,
            ) as response:
                body = await _read_tail(response, OUTPUT_MAX_BYTES)
                code, reason = response.status, response.reason or ""
        except TimeoutError:
            detail = "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            return CRITICAL, f'{method.title()} "{definition.target}": {detail}'
        except aiohttp.ClientConnectorError as exc:
            detail = f"dial tcp {exc.host}:{exc.port}: connect: {_os_reason(exc.os_error)}"
            return CRITICAL, f'{method.title()} "{definition.target}": {detail}'
        except (aiohttp.ClientError, ValueError) as exc:
            return CRITICAL, f'{method.title()} "{definition.target}": {exc}'

        output = f"HTTP {method} {definition.target}: {code} {reason} Output: {body}"
        if 200 <= code <= 299:
            return PASSING, output
        if code == 429:
            # Too Many Requests: the service is up but shedding load.
            return WARNING, output
        return CRITICAL, output

    async def _probe_tcp(self, definition: CheckDefinition) -> tuple[str, str]:
        host, _, port = definition.target.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)), definition.timeout_s
            )
        except TimeoutError:
            return CRITICAL, f"dial tcp {definition.target}: i/o timeout"
        except (OSError, ValueError) as exc:
            return CRITICAL, f"dial tcp {definition.target}: connect: {_os_reason(exc)}"
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return PASSING, f"TCP connect {definition.target}: Success"


async def _read_tail(response: aiohttp.ClientResponse, limit: int) -> str:
    """Read a response body, keeping only its last ``limit`` bytes, as Consul does."""
    tail = b""
    async for chunk in response.content.iter_chunked(16 * 1024):
        tail = (tail + chunk)[-limit:]
    return tail.decode("utf-8", errors="replace")


def _truncate(output: str) -> str:
    encoded = output.encode("utf-8")
    if len(encoded) <= OUTPUT_MAX_BYTES:
        return output
    kept = encoded[:OUTPUT_MAX_BYTES].decode("utf-8", errors="ignore")
    return f"{kept} ... (captured {OUTPUT_MAX_BYTES} of {len(encoded)} bytes)"


def _go_code(code: grpc.StatusCode) -> str:
    """Spell a status code as Go's gRPC prints it: DEADLINE_EXCEEDED -> DeadlineExceeded."""
    return "".join(part.capitalize() for part in code.name.split("_"))


def _os_reason(exc: BaseException | None) -> str:
    errno = getattr(exc, "errno", None)
    if errno:
        return os.strerror(errno).lower()
    return str(exc)
