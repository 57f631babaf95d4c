"""Command-line parsing shared by Heraldo's commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

#: What a usage error exits with, as every other error of the commands does.
USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr, not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


def whole_number(minimum: int, expected: str,
                 maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``minimum`` to ``maximum`` (when given), else
    ``expected`` is said.

    It raises ArgumentTypeError for text that is no number too: argparse words a ValueError
    with the type function's name, which means nothing to the user.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse
