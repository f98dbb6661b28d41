"""Pieces every command group shares: the parser class and the argument types.

`Parser` lets a command choose the exit code of its usage errors: `spam classify` answers mail
recipes with 0 spam / 1 ham / 2 unsure / 3 error, so its usage errors must exit 3, where argparse
always exits 2 (which a procmail recipe would read as "unsure").
"""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose usage errors exit with `error_exit` (default 2, argparse's)."""

    def __init__(self, *args, error_exit: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.error_exit = error_exit
        self.set_defaults(error_exit=error_exit)

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(self.error_exit, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value
