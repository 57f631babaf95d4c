"""What every Heraldo gRPC service shares: server, health, reflection, metrics, Consul, shutdown.

A service's ``__main__`` builds its servicers and hands them to :func:`serve`, which starts a
grpc.aio server with the standard health service (what Consul checks) and server reflection (what
grpcurl uses), exposes Prometheus metrics, registers the instance in Consul, and on SIGTERM or
SIGINT turns health to NOT_SERVING, deregisters, drains in-flight RPCs and returns.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import inspect
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
import consul
import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram, start_http_server

try:
    import uvloop
except ImportError:  # not built for this platform (Windows)
    uvloop = None

from heraldo.errors import HeraldoError, InvalidArgument, Unavailable
from heraldo.registry import ConsulAddress, ServiceRegistration, read_kv_tree
from heraldo.settings import load_seed, resolve

logger = logging.getLogger(__name__)

SettingsT = TypeVar("SettingsT")
PROCESS_STARTED_AT = dt.datetime.now(dt.UTC)
#: Consul answers a local KV read in milliseconds; longer means it is not there.
CONSUL_TIMEOUT_S = 5.0

RPC_TOTAL = Counter("heraldo_rpc_total", "RPCs handled", ["method", "code"])
RPC_SECONDS = Histogram("heraldo_rpc_seconds", "RPC duration", ["method"])

#: Set by Envoy's edge on REST requests: the JSON body as the client sent it, base64-encoded.
JSON_BODY_HEADER = "x-heraldo-json-body"
UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)" at "([^"]+)"')
#: How protobuf's JSON parser leads into a nested field's error, once per level.
FIELD_IN_ERROR = re.compile(r"Failed to parse (\w+) field: ")
#: Where the parser says the error is, at the end of its message.
ERROR_LOCATION = re.compile(r" at [\w.\[\]]*\.?$")

#: Health and reflection calls come every few seconds from Consul and grpcurl; not worth a line.
QUIET_METHOD_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
#: How often a service checks that Consul still holds its registration. A restarted dev agent
#: (or a real one that lost its state) forgets every service; this bounds how long we stay absent.
REREGISTER_INTERVAL_S = 5.0


@dataclass(frozen=True)
class Instance:
    """Who this process is: read from the environment, since replicas of one service differ here.

    ``HERALDO_GRPC_PORT`` 0 picks a free port; ``HERALDO_ADVERTISE_ADDRESS`` is what Consul and
    Envoy use to reach it.
    """

    service: str
    instance_id: str
    bind_host: str
    advertise_address: str
    grpc_port: int
    metrics_port: int

    @classmethod
    def from_env(cls, service: str, default_port: int) -> Instance:
        port = int(os.environ.get("HERALDO_GRPC_PORT", default_port))
        host = os.environ.get("HERALDO_BIND_HOST", "127.0.0.1")
        advertise = os.environ.get("HERALDO_ADVERTISE_ADDRESS") or _reachable_address(host)
        instance_id = os.environ.get("HERALDO_INSTANCE_ID") or f"{service}-{socket.gethostname()}"
        return cls(service=service, instance_id=instance_id, bind_host=host,
                   advertise_address=advertise, grpc_port=port,
                   metrics_port=int(os.environ.get("HERALDO_METRICS_PORT", 0)))


def _reachable_address(bind_host: str) -> str:
    """The address others should dial: the bound one, or this host's own when bound to all.

    Replicas of one container image cannot be told their address in advance (compose scales
    them), so a wildcard bind advertises whatever the host name resolves to.
    """
    if bind_host not in ("0.0.0.0", "::", ""):
        return bind_host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _status_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Maps HeraldoError to its gRPC status and logs one line per RPC with its code and duration.

    Servicers raise our own errors; no SQLAlchemy or SMTP exception reaches a client, and an
    unexpected one is logged with its traceback and returned as INTERNAL without internals.
    """

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        quiet = method.startswith(QUIET_METHOD_PREFIXES)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, quiet),
                handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, quiet),
                handler.request_deserializer, handler.response_serializer)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method, quiet),
                handler.request_deserializer, handler.response_serializer)
        return grpc.stream_unary_rpc_method_handler(
            self._wrap_unary(handler.stream_unary, method, quiet),
            handler.request_deserializer, handler.response_serializer)

    @staticmethod
    async def _fail(context, method: str, exc: BaseException) -> None:
        if isinstance(exc, HeraldoError):
            await context.abort(exc.status_code, str(exc))
        logger.exception("unexpected error in rpc=%s", method)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")

    @staticmethod
    def _record(context, method: str, started: float, quiet: bool) -> None:
        elapsed_s = time.perf_counter() - started
        code = _status_name(context)
        RPC_TOTAL.labels(method, code).inc()
        RPC_SECONDS.labels(method).observe(elapsed_s)
        if not quiet:
            logger.info("rpc=%s code=%s elapsed_ms=%.1f", method, code, elapsed_s * 1000)

    def _wrap_unary(self, behavior, method: str, quiet: bool):
        async def unary(request, context):
            started = time.perf_counter()
            try:
                refuse_unknown_json_fields(request, context)
                return await behavior(request, context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:  # noqa: BLE001 - the one boundary that maps every error
                await self._fail(context, method, exc)
            finally:
                self._record(context, method, started, quiet)

        return unary

    def _wrap_stream(self, behavior, method: str, quiet: bool):
        async def stream(request, context):
            started = time.perf_counter()
            try:
                if inspect.isasyncgenfunction(behavior):
                    async for response in behavior(request, context):
                        yield response
                else:
                    await behavior(request, context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:  # noqa: BLE001 - the one boundary that maps every error
                await self._fail(context, method, exc)
            finally:
                self._record(context, method, started, quiet)

        return stream


def refuse_unknown_json_fields(request, context) -> None:
    """Raises InvalidArgument for a REST body field the request message does not have, or one
    whose value protobuf's JSON mapping does not allow.

    Envoy's transcoder silently drops unknown fields, so a misspelt ``chunkSize`` would run a job
    with the default; and it reads ``"newInstance": "yes"`` as true and ``"countries": "UK"`` as
    a list. The edge passes the body as sent in ``x-heraldo-json-body`` (base64); parsing it
    strictly names the field the transcoder let through.
    """
    if not hasattr(request, "DESCRIPTOR"):
        return
    encoded = next((value for key, value in context.invocation_metadata() or ()
                    if key == JSON_BODY_HEADER), None)
    if not encoded:
        return
    try:
        json_format.Parse(base64.b64decode(encoded), type(request)(),
                          ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        unknown = UNKNOWN_FIELD.search(str(exc))
        if unknown:
            # "at" names the enclosing message as Type.field.field: keep the field path only.
            name, where = unknown.groups()
            parents = where.split(".")[1:]
            raise InvalidArgument(".".join([*parents, name]), "unknown field") from exc
        path, rest = [], str(exc)
        while (field := FIELD_IN_ERROR.match(rest)) is not None:
            path.append(field.group(1))
            rest = rest[field.end():]
        if path:
            reason = ERROR_LOCATION.sub("", rest).rstrip(".")
            raise InvalidArgument(".".join(path), reason) from exc
    except (ValueError, binascii.Error):
        # Not JSON or not base64: the transcoder has already judged the body it could read.
        return


@dataclass
class Servicer:
    """A servicer, the generated function that adds it to a server, and its full service name."""

    implementation: object
    add_to_server: Callable[[object, grpc.aio.Server], None]
    full_name: str


class RunningService:
    """A started gRPC server with health, reflection, metrics and its Consul registration."""

    def __init__(self, *, instance: Instance, servicers: Iterable[Servicer],
                 consul_address: ConsulAddress, check_interval_s: float,
                 deregister_critical_after_s: float, tags: list[str] | None = None,
                 also_reflect: Iterable[str] = (),
                 max_message_bytes: int = 8 * 1024 * 1024) -> None:
        self.instance = instance
        self.servicers = list(servicers)
        self.consul = consul_address.client()
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[StatusInterceptor()],
            options=[("grpc.max_receive_message_length", max_message_bytes),
                     ("grpc.so_reuseport", 0)],
        )
        self.port = 0
        self.metrics_port = 0
        self._tags = tags or []
        self._also_reflect = list(also_reflect)
        self._check_interval_s = check_interval_s
        self._deregister_after_s = deregister_critical_after_s
        self.registration: ServiceRegistration | None = None
        self._keeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Raises Unavailable when the port is taken or Consul cannot be reached."""
        for servicer in self.servicers:
            servicer.add_to_server(servicer.implementation, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [s.full_name for s in self.servicers]
        reflection.enable_server_reflection(
            [*names, *self._also_reflect,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], self.server)

        self.port = self.server.add_insecure_port(
            f"{self.instance.bind_host}:{self.instance.grpc_port}")
        metrics_server, _ = start_http_server(self.instance.metrics_port,
                                              addr=self.instance.bind_host)
        self.metrics_port = metrics_server.server_port
        await self.server.start()

        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        instance_id = self.instance.instance_id
        self.registration = ServiceRegistration(
            name=self.instance.service, instance_id=instance_id,
            address=self.instance.advertise_address, port=self.port, tags=self._tags,
            # started_at tells peers which incarnation of a replica id is alive: a claim made
            # before it belongs to a process that died, even though the id is back.
            # pid: which process an operator signals or profiles, among identical command lines.
            meta={"metrics_port": str(self.metrics_port), "grpc_service": ",".join(names),
                  "started_at": PROCESS_STARTED_AT.isoformat(), "pid": str(os.getpid())},
            check_interval_s=self._check_interval_s,
            deregister_critical_after_s=self._deregister_after_s)
        await self.registration.register(self.consul)
        self._keeper = asyncio.create_task(self._keep_registered(), name="keep-registered")
        logger.info("serving service=%s id=%s port=%d metrics_port=%d pid=%d",
                    self.instance.service, instance_id, self.port, self.metrics_port, os.getpid())

    async def _keep_registered(self, interval_s: float = REREGISTER_INTERVAL_S) -> None:
        """Registers this instance again whenever Consul no longer lists it.

        Errors only log at debug: while Consul is down every attempt fails, and the last known
        endpoints keep serving meanwhile (the control plane holds them).
        """
        while True:
            await asyncio.sleep(interval_s)
            try:
                listed = await self.consul.agent.services()
                if self.registration.instance_id in (listed or {}):
                    continue
                logger.info("consul lost our registration id=%s; registering again",
                            self.registration.instance_id)
                await self.registration.register(self.consul)
            except (Unavailable, TimeoutError, OSError, aiohttp.ClientError,
                    consul.ConsulException) as exc:
                logger.debug("registration check failed id=%s: %r",
                             self.registration.instance_id, exc)

    async def stop(self, grace_s: float) -> None:
        """Graceful shutdown: NOT_SERVING first, so Consul and Envoy stop sending new work."""
        await self.health.enter_graceful_shutdown()
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        if self.registration is not None:
            await self.registration.deregister(self.consul)
        await self.server.stop(grace_s)
        await self.consul.http._session.close()
        logger.info("stopped service=%s id=%s", self.instance.service, self.instance.instance_id)


async def load_settings(settings_cls: type[SettingsT], service: str,
                        consul_address: ConsulAddress) -> SettingsT:
    """Reads the service's settings: the KV seed, then Consul KV, then the environment.

    The seed alone is the fallback, so a bad value in KV falls back to its default (and is logged
    with its key) instead of leaving the field without a value.

    Raises:
        Unavailable: Consul cannot be reached (the message says where).
        ConfigError: a value from the environment is invalid.
    """
    client = consul_address.client()
    try:
        async with asyncio.timeout(CONSUL_TIMEOUT_S):
            kv = await read_kv_tree(client)
    except (OSError, aiohttp.ClientError, consul.ConsulException, TimeoutError) as exc:
        raise Unavailable(f"cannot reach Consul at {consul_address.url} (CONSUL_HTTP_ADDR): "
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        await client.http._session.close()
    seed = load_seed()
    defaults = resolve(settings_cls, service, seed, env={})
    return resolve(settings_cls, service, {**seed, **kv}, fallback=defaults)


async def wait_for_shutdown_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def run_main(main: Callable[[], Awaitable[None]], *, what: str) -> None:
    """Runs a service's main coroutine; a HeraldoError at start becomes one line and exit code 2.

    The loop is uvloop's where it is installed (every Linux and macOS install): its transports
    and callbacks in C halve the CPU that SMTP, PostgreSQL and the event loop itself take per
    email. Elsewhere the standard loop runs the same code.
    """
    try:
        if uvloop is None:
            asyncio.run(main())
        else:
            uvloop.run(main())
    except HeraldoError as exc:
        print(f"{what}: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass
