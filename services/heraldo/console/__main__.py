"""``python -m heraldo.console --port 8090``: serve the job console (behind Envoy's edge).

Port 0 picks a free port; the start line says which one was taken. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from aiohttp import web

from heraldo import logs
from heraldo.console.server import CONSOLE_PREFIX, make_app

logger = logging.getLogger("heraldo.console")

DEFAULT_PORT = 8090


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]
    logger.info("serving console host=%s port=%d prefix=%s", host, bound, CONSOLE_PREFIX)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    logger.info("console stopped port=%d", bound)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m heraldo.console",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port ({DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logs.configure(args.log_level, service="console")
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
