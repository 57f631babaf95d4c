"""A notifier starts with the template sets that Consul KV defines, so a default template set
defined there exists from its first request."""

from __future__ import annotations

import dataclasses

from heraldo.consul_dev.server import ConsulDevServer
from heraldo.notifier.__main__ import startup_renderer
from heraldo.notifier.settings import NotifierSettings
from heraldo.registry import ConsulAddress
from heraldo.settings import load_seed, resolve

from .conftest import template_set


async def test_a_notifier_starts_with_the_template_sets_kv_defines():
    server = ConsulDevServer("127.0.0.1", 0)
    await server.start()
    address = ConsulAddress(host="127.0.0.1", port=server.port)
    client = address.client()
    try:
        for key, value in template_set("acme").items():
            await client.kv.put(key, value)
        settings = dataclasses.replace(resolve(NotifierSettings, "notifier", load_seed(), env={}),
                                       default_template="acme")

        renderer = await startup_renderer(address, settings)
    finally:
        await client.close()
        await server.stop()

    assert {"invoice", "acme"} <= renderer.template_sets
