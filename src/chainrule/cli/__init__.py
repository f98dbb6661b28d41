"""The `chainrule` command line.

Each application adds its own sub-commands (`add_commands(subparsers)` in its module); this file
only builds the parser and turns user errors into one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from chainrule import web
from chainrule.apps import digits
from chainrule.cli import spam
from chainrule.cli.options import Parser
from chainrule.errors import DataError, ModelFileError, UserError


def _cmd_gradcheck(args) -> int:
    from chainrule.apps.checks import gradcheck_report

    return gradcheck_report(args.model, data=args.data, samples=args.samples)


def _cmd_explain(args) -> int:
    from chainrule.explain import explain

    print(explain(seed=args.seed, epochs=args.epochs))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="chainrule",
        description="Neural networks trained by backpropagation, written out in NumPy.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("explain", help="walk through one backpropagation step on XOR with real numbers")
    p.add_argument("--seed", type=int, default=1, help="initialisation seed (default 1)")
    p.add_argument("--epochs", type=int, default=2000, help="epochs for the XOR training demo")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("gradcheck", help="check backprop gradients against finite differences")
    p.add_argument("model", nargs="?", help="a saved model directory (default: small networks of every layer type)")
    p.add_argument("--data", help="data directory for the model's real inputs")
    p.add_argument("--samples", type=int, default=30,
                   help="entries checked per parameter array of a saved model (default 30)")
    p.set_defaults(func=_cmd_gradcheck)

    digits.add_commands(sub)
    spam.add_commands(sub)
    web.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with np.errstate(over="ignore"):
            return int(args.func(args) or 0)
    except (UserError, ModelFileError, DataError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        msg = str(exc) if not isinstance(exc, OSError) or not exc.filename else f"{exc.filename}: {exc.strerror}"
        print(f"chainrule: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("chainrule: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
