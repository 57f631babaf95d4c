"""``heraldo``: the command line for operators.

    heraldo setup                 seed Consul KV with the defaults and create the database schema
    heraldo probe HOST:PORT       exit 0 when the gRPC service there reports SERVING
    heraldo import ...            load invoices (see ``heraldo import --help``)

Errors are one readable line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from heraldo import db
from heraldo.errors import ConfigError, HeraldoError, Unavailable
from heraldo.registry import ConsulAddress, seed_kv
from heraldo.settings import load_seed

PROBE_TIMEOUT_S = 3.0


def parse_overrides(text: str) -> dict[str, str]:
    """``key=value,key=value`` (from ``HERALDO_SEED_OVERRIDES``) as a dict; raises ConfigError."""
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("config/"):
            raise ConfigError(f"HERALDO_SEED_OVERRIDES: {item!r} is not config/<key>=<value>")
        overrides[key] = value
    return overrides


async def setup() -> int:
    address = ConsulAddress.from_env()
    seed = {**load_seed(), **parse_overrides(os.environ.get("HERALDO_SEED_OVERRIDES", ""))}
    client = address.client()
    try:
        written = await seed_kv(client, seed)
    except Exception as exc:  # noqa: BLE001 - any failure here means Consul is not usable
        raise Unavailable(f"cannot reach Consul at {address.url}: {exc}") from exc
    finally:
        await client.http._session.close()
    engine = db.create_engine(db.database_url())
    try:
        await db.create_schema(engine)
    finally:
        await engine.dispose()
    print(f"seeded {written} new KV keys at {address.url}; "
          f"schema ready in {db.describe(db.database_url())}")
    return 0


async def probe(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"{target}: {exc.code().name} {exc.details()}") from exc
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["import"]:
        from heraldo.importer.__main__ import main as import_main

        return import_main(argv[1:])
    parser = argparse.ArgumentParser(prog="heraldo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("setup", help="seed Consul KV and create the schema")
    probe_parser = commands.add_parser("probe", help="gRPC health check of HOST:PORT")
    probe_parser.add_argument("target")
    commands.add_parser("import", help="load invoices (heraldo import --help)")
    args = parser.parse_args(argv)
    try:
        if args.command == "setup":
            return asyncio.run(setup())
        return asyncio.run(probe(args.target))
    except HeraldoError as exc:
        print(f"heraldo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
