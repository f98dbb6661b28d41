"""The `chainrule` command line: build the parser, run the command, and the one error boundary.

Each command group has its own module with an `add_commands(subparsers)` (`engine`: explain and
gradcheck; `images`: images and digits; `spam`; `serve`). Those modules parse and print; the work itself is done by
the library (`chainrule.apps`, `chainrule.web`, the engine), which raises `UserError` for what the
user got wrong. `main` turns any error into one line on stderr and the command's error exit code
(2, or 3 for `spam classify`, whose 0/1/2 mean spam/ham/unsure to a mail recipe).
"""

from __future__ import annotations

import logging
import os
import sys

import numpy as np

from chainrule.cli import engine, images, serve, spam
from chainrule.cli.options import Parser
from chainrule.errors import UserError


def build_parser() -> Parser:
    parser = Parser(
        prog="chainrule",
        description="Neural networks trained by backpropagation, written out in NumPy.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    engine.add_commands(sub)
    images.add_commands(sub)
    spam.add_commands(sub)
    serve.add_commands(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code. The one place where errors become messages."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # The library reports progress through `logging`; on the command line those are plain lines.
    logging.basicConfig(format="%(message)s", level=logging.WARNING if getattr(args, "quiet", False)
                        else logging.INFO, stream=sys.stderr, force=True)
    try:
        with np.errstate(over="ignore"):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("chainrule: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): send what is still buffered nowhere, and stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UserError, OSError) as exc:
        print(f"chainrule: error: {_one_line(exc)}", file=sys.stderr)
        return args.error_exit
    except Exception as exc:
        if os.environ.get("CHAINRULE_DEBUG"):
            raise
        print(f"chainrule: error: internal error ({type(exc).__name__}: {_one_line(exc)}); "
              "this is a bug, CHAINRULE_DEBUG=1 shows the traceback", file=sys.stderr)
        return args.error_exit
