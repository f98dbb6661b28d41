"""What the `chainrule` command groups share: the parser class, the types of their options and how they print results.

The types turn a bad number into a one-line usage error that quotes it ("argument --epochs:
expected a positive integer, got '0'") before any work starts, rather than a traceback minutes
into a run or a model file that can never be loaded.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import stat
import sys
import time

from chainrule.data.corpora import MAX_BYTES
from chainrule.distributed import launched_by_mpi, launcher_rank
from chainrule.errors import UserError

# How long a rank other than 0 waits before it reports its error and stops the job: an error that
# every rank meets at once (a missing file, a usage error) is then reported once, by rank 0, whose
# exit ends the others before they print. An error of one rank alone costs this much more time.
ABORT_GRACE_SECONDS = 1.0


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` that accepts options after positionals in every command, and whose usage
    errors exit with `error_exit` (argparse's 2 by default).

    `chainrule spam classify` sets `error_exit=3`: there 0, 1 and 2 are verdicts (spam, ham,
    unsure) that a procmail recipe acts on, so a usage error must not read as "unsure".
    Sub-parsers are made of their parent's class, so every command can take `error_exit`.
    """

    def __init__(self, *args, error_exit: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.error_exit = error_exit
        self.set_defaults(error_exit=error_exit)  # `main` exits with it on a run-time error too
        self.commands: argparse.Action | None = None  # the sub-commands, once there are some

    def add_subparsers(self, **kwargs):
        self.commands = super().add_subparsers(**kwargs)
        return self.commands

    def error(self, message: str):
        if launcher_rank() != 0:  # under mpirun every process parses the same line: rank 0 says so
            time.sleep(ABORT_GRACE_SECONDS)
            self.exit(self.error_exit)
        self.print_usage(sys.stderr)
        self.exit(self.error_exit, f"{self.prog}: error: {message}\n")

    def print_help(self, file=None):
        """Write the help, and flush it, where `main` reports a reader gone or a full disk as it does
        for any output: argparse lets the error pass, and the help was lost with exit 0, or Python's
        exit failed on it ("Exception ignored in: <_io.TextIOWrapper name='<stdout>' ...>", 120)."""
        if launcher_rank() == 0:  # (under mpirun every process reads the same `--help`)
            file = file or stdout()
            file.write(self.format_help())
            file.flush()

    def parse_args(self, args=None, namespace=None):
        """Parse the command line as users type it: `spam classify MODEL --json msg.eml` and
        `spam train spam/ --sms FILE ham/` as well as options first.

        argparse's `parse_intermixed_args` does that but refuses a parser with sub-commands, so
        the sub-command names at the front are followed down to the command they name, and that
        command's own parser reads the rest intermixed. (The parsers on the way hold nothing but
        their sub-commands, so nothing is skipped.) Anything else, such as `--help` or an unknown
        command, is left to argparse as usual.
        """
        args = sys.argv[1:] if args is None else list(args)
        namespace = argparse.Namespace() if namespace is None else namespace
        parser = self
        while isinstance(parser, Parser) and parser.commands is not None and args \
                and args[0] in parser.commands.choices:
            setattr(namespace, parser.commands.dest, args[0])
            parser, args = parser.commands.choices[args[0]], args[1:]
        if isinstance(parser, Parser) and parser.commands is None:
            parser._refuse_empty(args)
            return parser.parse_intermixed_args(args, namespace)
        return argparse.ArgumentParser.parse_args(parser, args, namespace)

    def _refuse_empty(self, args: list[str]) -> None:
        """A usage error for an empty argument (`--out ""`, `--out=`): no option takes one, and as
        a path it would mean the current folder (`--out "$DIR"` with DIR unset wrote a whole run
        there)."""
        for i, arg in enumerate(args):
            if arg.startswith("--") and arg.endswith("="):  # --out=
                self.error(f"argument {arg[:-1]}: an empty value (an unset shell variable?)")
            if arg == "":  # --out "", or a file named by an unset variable
                after = f" after {args[i - 1]}" if i and args[i - 1].startswith("-") else ""
                self.error(f"an empty argument{after} (an unset shell variable?)")


def stdout():
    """Standard output. Where the command was started with it closed (`>&-`), raises the OSError
    that writing to it would: Python has None there, and print() to None writes nothing, so a
    command's results were lost with exit 0."""
    if sys.stdout is None:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF), "standard output")
    return sys.stdout


def print_lines(lines) -> None:
    """Print `lines` (an iterable of lines, or a text of several), a line at a time. One write of
    more than a pipe holds (64 KB) is cut short when its reader goes away (`| head`), and CPython's
    unbuffered output (PYTHONUNBUFFERED=1, which containers and services often set) takes the short
    write as done: the command exited 0 with its output lost, not 141 as SIGPIPE's status says."""
    for line in lines.split("\n") if isinstance(lines, str) else lines:  # (only line breaks part them)
        print(line)


# Names of standard input other than '-' (`spam classify MODEL /dev/stdin`).
_STDIN_NAMES = ("/dev/stdin", "/dev/fd/0", "/proc/self/fd/0")


def _is_stdin(path: str) -> bool:
    """Whether `path` names standard input: '-', one of its names, or (`//dev/stdin`, a relative
    path or a link to it) the pipe that is this process's standard input."""
    if path == "-" or os.path.normpath(path) in _STDIN_NAMES:
        return True
    try:
        named, stdin = os.stat(path), os.fstat(0)
    except OSError:
        return False
    return os.path.samestat(named, stdin) and (stat.S_ISFIFO(stdin.st_mode) or stat.S_ISSOCK(stdin.st_mode))


def check_standard_input(paths: list[str]) -> None:
    """Refuse standard input among a command's inputs `paths` where it cannot be read: '-' named
    more than once (it can be read once, and a second read would find it empty), or any name of it
    under mpirun, even with -np 1 (Open MPI's forwarding of it never ends, so a read waits for
    ever: a `spam learn` holding its model's lock)."""
    if paths.count("-") > 1:
        raise UserError("'-' (standard input) can be given only once")
    if launched_by_mpi() and any(map(_is_stdin, paths)):
        raise UserError("standard input is not read under mpirun (Open MPI's forwarding of it hangs): give files, "
                        "folders, an mbox or a Maildir")


def diverged(exc, earlier=None, weight_decay: float = 0.0) -> str:
    """The one-line error of a `train` command whose loss blew up (`TrainingDiverged`): where, that
    the run saved no model, that the `earlier` run in its folder (if one) is still there, and what to
    lower: the learning rate, and the `weight_decay` where one was given (AdamW scales the weights by
    1 - lr·weight decay a step: past lr·weight decay = 2 they flip sign and grow, the lr fine alone)."""
    kept = f", the earlier run in {earlier} is as it was" if earlier is not None else ""
    lower = "--lr or --weight-decay" if weight_decay else "--lr"
    return f"training diverged: {exc.where()} (lr {exc.lr:g}); no model was saved{kept} — try a smaller {lower}"


def percent(value: float | None) -> str:
    """A rate as a percentage to two places, or "n/a" where it is None: a rate over no examples
    (a class never predicted or not in the set, no message of that class)."""
    return "n/a" if value is None else f"{100 * value:.2f}%"


def decimal(value: float | None) -> str:
    """A score (precision, F1, MCC, ROC AUC) to four places, or "n/a" where it is None."""
    return "n/a" if value is None else f"{value:.4f}"


def _number(text: str, kind: type, ok, expected: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not (ok(value) and (kind is int or math.isfinite(value))):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    if kind is int and value >= 2**63:  # (no count, size or seed is that large; NumPy takes none)
        raise argparse.ArgumentTypeError(f"expected {expected} below 2^63, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v > 0, "a positive integer")


def layer_width(text: str) -> int:
    # (wider, a layer's weights are past the size NumPy can even ask for: ValueError, not MemoryError)
    return _number(text, int, lambda v: 0 < v < 2**31, "a positive integer below 2^31")


def nonnegative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def char_ngrams(text: str) -> int:
    return _number(text, int, lambda v: v == 0 or v >= 3, "0 (off) or an integer >= 3")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a number > 0")


def nonnegative_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a number >= 0")


def probability(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v <= 1, "a probability from 0 to 1")


def fraction(text: str) -> float:
    """A share of something that cannot be all of it: a dropout rate, a held-out fraction."""
    return _number(text, float, lambda v: 0 <= v < 1, "a number from 0 to below 1")


MAX_EXPLAIN_EPOCHS = 1_000_000  # about a minute of XOR; the history keeps a loss per epoch


def explain_epochs(text: str) -> int:
    return _number(text, int, lambda v: 0 < v <= MAX_EXPLAIN_EPOCHS, f"an integer from 1 to {MAX_EXPLAIN_EPOCHS:,}")


MAX_MISTAKES_SHOWN = 500  # tiles in mistakes.png: 100 rows of 5, ~11,000 pixels tall


def mistakes_shown(text: str) -> int:
    return _number(text, int, lambda v: 0 < v <= MAX_MISTAKES_SHOWN, f"an integer from 1 to {MAX_MISTAKES_SHOWN}")


MAX_BYTES_LIMIT = 1 << 30  # a message is read whole into memory (and a read of N bytes may reserve N)


def max_bytes(text: str) -> int:
    return _number(text, int, lambda v: 0 < v <= MAX_BYTES_LIMIT, f"a positive integer up to {MAX_BYTES_LIMIT} (1 GiB)")


def add_max_bytes(parser: argparse.ArgumentParser) -> None:
    """`--max-bytes N`: the cap on the bytes read per message (`chainrule.data.corpora`)."""
    parser.add_argument("--max-bytes", type=max_bytes, default=MAX_BYTES,
                        help=f"bytes read per message at most (default {MAX_BYTES}, at most 1 GiB)")


def add_cutoffs(parser: argparse.ArgumentParser) -> None:
    """`--spam-cutoff P` and `--ham-cutoff P`: a spam filter's cut-offs for this run (default: the model's)."""
    parser.add_argument("--spam-cutoff", type=probability,
                        help="P(spam) at or above which a message is spam (default: the model's)")
    parser.add_argument("--ham-cutoff", type=probability,
                        help="P(spam) below which a message is ham (default: the model's)")
