"""``python -m heraldo.notifier``: one notifier replica, registered in Consul as heraldo-notifier.

Reads its settings from the KV seed, Consul KV and ``HERALDO_*`` variables; the replica id comes
from ``HERALDO_INSTANCE_ID`` and the port from ``HERALDO_GRPC_PORT`` (default 50061). Exits with
one line on stderr and status 2 when Consul or the database cannot be reached.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from email.utils import parseaddr

from heraldo import logs
from heraldo.db import create_engine, create_schema, database_url, describe
from heraldo.notifier.reload import LiveConfig
from heraldo.notifier.render import InvalidTemplate, Renderer, overrides_from_kv
from heraldo.notifier.servicer import NotifierServicer, build_mailer
from heraldo.notifier.settings import SERVICE_SCOPE, NotifierSettings
from heraldo.registry import ConsulAddress, read_kv_tree
from heraldo.runtime import (
    Instance,
    RunningService,
    Servicer,
    load_settings,
    run_main,
    wait_for_shutdown_signal,
)
from heraldo.settings import load_seed
from heraldo.v1 import notification_pb2, notification_pb2_grpc

logger = logging.getLogger("heraldo.notifier")

SERVICE_NAME = "heraldo-notifier"
#: The least time deliveries still running get at shutdown once the grace is spent.
MIN_CLOSE_S = 2.0
DEFAULT_GRPC_PORT = 50061


async def startup_renderer(consul_address: ConsulAddress,
                           settings: NotifierSettings) -> Renderer:
    """The renderer with the template overrides in KV now, so that a default template set
    defined there exists from the first request. Overrides that cannot be used are left out, as
    the live reload leaves them out."""
    client = consul_address.client()
    try:
        overrides = overrides_from_kv(await read_kv_tree(client))
    finally:
        await client.close()
    company = parseaddr(settings.sender)[0]
    try:
        return Renderer(company=company, default_locale=settings.default_locale,
                        overrides=overrides)
    except InvalidTemplate as exc:
        logger.warning("rejected template override %s; starting with the built-in templates", exc)
        return Renderer(company=company, default_locale=settings.default_locale)


async def main() -> None:
    logs.configure(os.environ.get("HERALDO_LOG_LEVEL", "INFO"), service=SERVICE_NAME)
    consul_address = ConsulAddress.from_env()
    settings = await load_settings(NotifierSettings, SERVICE_SCOPE, consul_address)
    logs.configure(settings.log_level, service=SERVICE_NAME)

    url = database_url()
    # The delivery log retries a statement once on a dead connection (see delivery_log).
    engine = create_engine(url, pre_ping=False)
    try:
        await create_schema(engine)
        instance = Instance.from_env(SERVICE_NAME, DEFAULT_GRPC_PORT)
        servicer = NotifierServicer(settings=settings, engine=engine,
                                    mailer=build_mailer(settings),
                                    replica_id=instance.instance_id,
                                    renderer=await startup_renderer(consul_address, settings))
        service = RunningService(
            instance=instance,
            servicers=[Servicer(
                servicer, notification_pb2_grpc.add_NotifierServiceServicer_to_server,
                notification_pb2.DESCRIPTOR.services_by_name["NotifierService"].full_name)],
            consul_address=consul_address, check_interval_s=settings.check_interval_s,
            deregister_critical_after_s=settings.deregister_critical_after_s)
        logger.info("starting replica=%s smtp=%s:%d tls=%s database=%s max_in_flight=%d "
                    "rate_per_s=%g", instance.instance_id, settings.smtp_host, settings.smtp_port,
                    settings.smtp_tls, describe(url), settings.max_in_flight, settings.rate_per_s)
        await service.start()
        consul_client = consul_address.client()
        # Settings, templates and the number of live replicas follow Consul from here on.
        live = asyncio.create_task(LiveConfig(servicer=servicer, seed=load_seed(),
                                              service_name=SERVICE_NAME).run(consul_client))
        try:
            await wait_for_shutdown_signal()
        finally:
            live.cancel()
            await asyncio.gather(live, return_exceptions=True)
            await consul_client.close()
            settings = servicer.settings
            stopping = time.monotonic()
            await service.stop(settings.shutdown_grace_s)
            # One grace for the whole stop, so a supervisor's wait (15 s in the local mesh)
            # covers it; deliveries still running get at least a moment to record their outcome.
            left_s = settings.shutdown_grace_s - (time.monotonic() - stopping)
            await servicer.close(max(left_s, MIN_CLOSE_S))
    finally:
        await engine.dispose()


if __name__ == "__main__":
    run_main(main, what=SERVICE_NAME)
