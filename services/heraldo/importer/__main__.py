"""Command line: ``online-retail FILE`` or ``demo [--invoices N] [--seed S]``.

Writes to ``DATABASE_URL`` (the embedded SQLite file when unset), creating the schema
first. Exit status: 0 done; 2 an error, one line on stderr: bad input (nothing written) or a
database that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

import sqlalchemy as sa

from heraldo import db, logs
from heraldo.argparsing import OneLineParser, whole_number
from heraldo.errors import HeraldoError, Unavailable
from heraldo.importer.demo import DEFAULT_INVOICES, DEFAULT_SEED, load_demo
from heraldo.importer.online_retail import SourceFileError, check_source, import_online_retail

logger = logging.getLogger(__name__)

PROG = "python -m heraldo.importer"
#: Every error exits 2 with one line, as the heraldo command's others do.
EXIT_ERROR = 2


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """``prog`` names the command in usage and errors (``heraldo import`` from the CLI)."""
    args = _parser(prog).parse_args(argv)
    logs.configure("WARNING")
    try:
        return asyncio.run(_run(args))
    except SourceFileError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (HeraldoError, sa.exc.SQLAlchemyError, OSError) as exc:
        # One readable line: a failed statement's SQL and parameters are no use here.
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{prog}: {detail}", file=sys.stderr)
        return EXIT_ERROR


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description=__doc__.splitlines()[0].replace("``", ""))
    commands = parser.add_subparsers(dest="command", required=True)
    retail = commands.add_parser("online-retail", help="import the UCI Online Retail CSV (.csv.gz)")
    retail.add_argument("file", help="online_retail.csv.gz or a plain CSV with the same header")
    demo = commands.add_parser("demo", help="load the deterministic demo data set")
    demo.add_argument("--invoices", type=whole_number(1, "a positive number"),
                      default=DEFAULT_INVOICES,
                      help="how many documents to generate (%(default)s)")
    demo.add_argument("--seed", type=int, default=DEFAULT_SEED,
                      help="the generator's seed; the same seed gives the same data (%(default)s)")
    return parser


async def _run(args: argparse.Namespace) -> int:
    # The file is checked before the database is touched: bad input writes nothing.
    if args.command == "online-retail":
        check_source(args.file)
    url = db.database_url()
    engine = db.create_engine(url)
    try:
        await db.create_schema(engine)
        print(f"loading into {db.describe(url)}", file=sys.stderr)
        if args.command == "online-retail":
            report = await import_online_retail(engine, args.file, progress=_print_progress)
        else:
            report = await load_demo(engine, invoices=args.invoices, seed=args.seed)
    except sa.exc.SQLAlchemyError as exc:
        raise Unavailable(f"loading into {db.describe(url)} failed: {exc}") from exc
    finally:
        await engine.dispose()
    print(report.summary())
    if args.command == "online-retail" and report.lines_read and \
            report.lines_rejected == report.lines_read:
        # Nothing was written: more likely the wrong file than a file of bad lines.
        raise SourceFileError(f"every line of {args.file} was rejected; nothing was imported")
    return 0


def _print_progress(lines_read: int) -> None:
    print(f"{lines_read:,} lines read", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
