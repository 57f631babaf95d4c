"""A development stand-in for Consul: the part of its HTTP API that Heraldo and py-consul use.

No Consul binary and no Docker exist on the development machines, so local runs and tests start
this small server instead when no real agent is reachable. It implements agent service and check
registration with gRPC, HTTP, TCP and TTL checks that it really runs, DeregisterCriticalService-
After, the health and catalog reads, the KV store with CAS and recurse, and blocking queries with
X-Consul-Index, following Consul's published HTTP API documentation. It is a development tool,
never the production path: it has one node, no ACLs, sessions, prepared queries, Connect or
filter expressions, and it keeps only the KV store across restarts (with ``--data-dir``).

Run it with ``python -m heraldo.consul_dev --http-addr 127.0.0.1:8500``, or in-process with
``async with ConsulDevServer("127.0.0.1", 0) as server: ...``.
"""

from heraldo.consul_dev.server import ConsulDevServer, create_app, serve

__all__ = ["ConsulDevServer", "create_app", "serve"]
