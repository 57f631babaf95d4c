"""Command line: ``python -m heraldo.consul_dev --http-addr 127.0.0.1:8500 [--data-dir DIR]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from heraldo.consul_dev.server import ConsulDevServer

logger = logging.getLogger("heraldo.consul_dev")


def parse_http_addr(text: str) -> tuple[str, int]:
    """Split "host:port" (or "[::1]:port") into its parts.

    Raises:
        argparse.ArgumentTypeError: the text is not host:port with a port from 0 to 65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m heraldo.consul_dev",
        description="Development stand-in for Consul's HTTP API (not for production).",
    )
    parser.add_argument(
        "--http-addr",
        type=parse_http_addr,
        default=("127.0.0.1", 8500),
        help="address to listen on, host:port (default 127.0.0.1:8500; port 0 picks a free one)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="keep the KV store in DIR across restarts"
    )
    parser.add_argument("--node", default=None, help="node name (default: this host's name)")
    parser.add_argument("--datacenter", default="dc1", help="datacenter name (default dc1)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    return parser


async def run(args: argparse.Namespace) -> None:
    host, port = args.http_addr
    server = ConsulDevServer(
        host, port, data_dir=args.data_dir, node_name=args.node, datacenter=args.datacenter
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    await server.start()
    try:
        await stop.wait()
        logger.info("consul stand-in stopping on signal")
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
