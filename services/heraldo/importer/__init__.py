"""Loaders for customers and invoices: the Online Retail data set and a demo set.

Both are idempotent: loading the same input again changes nothing.
"""

from heraldo.importer.demo import DemoReport, load_demo
from heraldo.importer.online_retail import (
    ImportReport,
    SourceFileError,
    check_source,
    import_online_retail,
)

__all__ = [
    "DemoReport",
    "ImportReport",
    "SourceFileError",
    "check_source",
    "import_online_retail",
    "load_demo",
]
