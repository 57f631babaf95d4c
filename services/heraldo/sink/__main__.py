"""``python -m heraldo.sink``: a development SMTP server that accepts everything and keeps it.

    python -m heraldo.sink --smtp-port 1025 --http-port 8025 --dir var/sink

Port 0 picks a free port; the start line on stderr says which ones were taken. SIGTERM or SIGINT
stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from heraldo import logs
from heraldo.sink.store import MessageStore
from heraldo.sink.web import make_app

logger = logging.getLogger("heraldo.sink")

SERVICE_NAME = "heraldo-sink"
#: Generous: the notifier's messages are a few kilobytes; this only stops runaway input.
DATA_SIZE_LIMIT_BYTES = 32 * 1024 * 1024
#: Kept messages read between two looks at the signals: a few milliseconds' work.
KEPT_MESSAGES_STEP = 200


class SinkHandler:
    """aiosmtpd handler: every message is accepted and stored."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message = self.store.add(envelope.original_content or envelope.content or b"",
                                 envelope.mail_from or "")
        return f"250 2.0.0 Ok: stored as {message.n}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m heraldo.sink", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--smtp-port", type=int, default=1025, help="SMTP port (1025)")
    parser.add_argument("--http-port", type=int, default=8025, help="web view port (8025)")
    parser.add_argument("--dir", type=Path, default=Path("var/sink"),
                        help="where .eml files are kept (var/sink)")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    # Installed before the kept messages are read: a large folder takes seconds to index, and
    # a SIGINT or SIGTERM meanwhile must stop the sink, not wait for the reading to end.
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    store = MessageStore(args.dir, load=False)
    for count in store.loading(step=KEPT_MESSAGES_STEP):
        if count == KEPT_MESSAGES_STEP:
            logger.info("reading kept messages dir=%s", args.dir)
        await asyncio.sleep(0)
        if stop.is_set():
            logger.info("stopped while reading kept messages read=%d dir=%s", count, args.dir)
            return
    handler = SinkHandler(store)

    smtp_server = await loop.create_server(
        lambda: SMTP(handler, hostname="heraldo-sink", data_size_limit=DATA_SIZE_LIMIT_BYTES,
                     enable_SMTPUTF8=True, decode_data=False),
        host=args.host, port=args.smtp_port)
    runner = web.AppRunner(make_app(store), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.http_port)
    await site.start()

    smtp_port = smtp_server.sockets[0].getsockname()[1]
    http_port = runner.addresses[0][1]
    logger.info("listening smtp=%s:%d http=http://%s:%d/ dir=%s stored=%d", args.host, smtp_port,
                args.host, http_port, args.dir, store.stats()["count"])

    try:
        await stop.wait()
    finally:
        smtp_server.close()
        await runner.cleanup()
        logger.info("stopped messages=%d", store.stats()["count"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.configure(args.log_level, service=SERVICE_NAME)
    # aiosmtpd logs every SMTP command at INFO; a sink taking thousands of mails would drown.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        raise SystemExit(f"{SERVICE_NAME}: cannot listen on {args.host}: {exc}") from exc


if __name__ == "__main__":
    main()
