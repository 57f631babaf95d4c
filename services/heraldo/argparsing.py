"""Command-line parsing shared by Heraldo's commands."""

from __future__ import annotations

import argparse
from typing import NoReturn

#: What a usage error exits with, as every other error of the commands does.
USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr, not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")
