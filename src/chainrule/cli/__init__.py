"""The `chainrule` command line: build the parser, run the command, and the one error boundary.

Each command group has its own module with an `add_commands(subparsers)` (`engine`: explain and
gradcheck; `images`: images and digits; `spam`; `serve`). Those modules parse and print; the work itself is done by
the library (`chainrule.apps`, `chainrule.web`, the engine), which raises `UserError` for what the
user got wrong. `main` turns any error into one line on stderr and the command's error exit code
(2, or 3 for `spam classify`, whose 0/1/2 mean spam/ham/unsure to a mail recipe).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np

from chainrule import distributed
from chainrule.cli import engine, images, serve, spam
from chainrule.cli.options import ABORT_GRACE_SECONDS, Parser, stdout
from chainrule.errors import UserError, one_line


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


# Commands that run as one job over the processes of `mpirun -np N` (`set_defaults(mpi=True)`).
MPI_COMMANDS = "digits train, images train, spam train, spam classify"


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code. The one place where errors become messages."""
    # A terminal that cannot show "·" or a class named "fünf" gets \xb7 and f\xfcnf, not a crash
    # part-way through the output; that includes the C locale's ASCII with surrogateescape, which
    # fails on them too (a file name's undecodable bytes are no loss: `printable` writes them as
    # \udcc3 before they get here). Standard error escapes so already.
    if getattr(sys.stdout, "errors", None) in ("strict", "surrogateescape") and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    _hold_standard_descriptors()
    parser = build_parser()
    args = argparse.Namespace()  # (parsed into below: an error while parsing still finds its error_exit)
    world = distributed.World()  # this process alone, until the launcher's world is known
    with _diagnostics(), _named_standard_output(), contextlib.ExitStack() as stack:
        terminated: list[int] = []
        try:
            parser.parse_args(argv, args)
            # standard output closed (`>&-`) is refused before the work, not found closed at its end;
            # the servers, which print nothing there (`set_defaults(prints=False)`), run without it
            if getattr(args, "prints", True):
                stdout()
            world = distributed.world()
            if world.size > 1 and not getattr(args, "mpi", False):
                raise UserError(f"this command runs in one process; start it without mpirun "
                                f"(these run on several: {MPI_COMMANDS})")
            # SIGTERM stops a command as Ctrl-C does; not a server, which stops on it its own way
            # (`set_defaults(server=True)`), nor the processes of an MPI job: mpirun ends them all
            # with it when one fails or is interrupted, and the line said is that one's (README)
            if world.size == 1 and not getattr(args, "server", False):
                terminated = stack.enter_context(_sigterm_as_ctrl_c())
            # The library reports progress through `logging`; on the command line those are plain
            # lines, from rank 0 alone when mpirun started several processes. Other libraries' say
            # only their warnings (matplotlib's INFO "generated new fontManager" came between ours).
            quiet = getattr(args, "quiet", False) or world.rank != 0
            logging.basicConfig(format="%(message)s", level=logging.WARNING, stream=sys.stderr, force=True)
            logging.getLogger("chainrule").setLevel(logging.WARNING if quiet else logging.INFO)
            # (NumPy's warnings of an overflow, or of the NaN it leads to, would come before the one
            # line: a network's outputs that overflowed are that line, `Sequential.checked_outputs`)
            with np.errstate(over="ignore", invalid="ignore"):
                code = int(args.func(args) or 0)
            if sys.stdout is not None:  # (None for a server started without it)
                sys.stdout.flush()  # (here, not at exit: a reader gone by now is a BrokenPipeError below)
            return code
        except KeyboardInterrupt as exc:
            # (a command that has more to say, such as how to continue, raises it with that message;
            # the status is the shell's for a process the signal ended: 128 + its number)
            return _stop(world, str(exc) or "interrupted", 128 + (signal.SIGTERM if terminated else signal.SIGINT))
        except BrokenPipeError:
            # the reader went away (`| head`): send what is still buffered nowhere, and stop quietly,
            # with the status of a program that SIGPIPE stopped (128 + 13), as `cat` or `grep` do: the
            # command did not finish (a verdict or exit code it would have given is lost)
            _drop(sys.stdout)
            return 141
        except (UserError, OSError) as exc:
            _flush_or_drop(sys.stdout)  # (standard output on a full disk: what is left in its buffer is dropped)
            return _fail(world, one_line(exc), args.error_exit)
        except MemoryError as exc:  # (no bug: a network too wide, a machine too small; NumPy's message says the size)
            return _fail(world, f"out of memory: {one_line(exc)}" if str(exc) else "out of memory", args.error_exit)
        except Exception as exc:
            if os.environ.get("CHAINRULE_DEBUG"):
                raise
            return _fail(world, f"internal error ({type(exc).__name__}: {one_line(exc)}); "
                         "this is a bug, CHAINRULE_DEBUG=1 shows the traceback", args.error_exit)


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[list[int]]:
    """SIGTERM (kill, systemd's stop, a batch system's time limit) raises KeyboardInterrupt, as
    Ctrl-C does, for the block: everything a command cleans up on Ctrl-C is cleaned up on its way
    out (the folder its figures are drawn in, an earlier run it set aside) and `main` says in one
    line why it stopped. By default it ended the process on the spot, without a word, leaving them.
    The list yielded gets the signal's number when one came (for the exit code). Left alone where
    SIGTERM already has a handler, or is ignored, and off the main thread (where Python runs them)."""
    caught: list[int] = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL):
        yield caught
        return

    def interrupt(signum, frame):
        caught.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield caught
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _named_standard_output():
    """Standard output, for the `with` block, as `_StandardOutput` that names itself in its write
    errors; closed (None), it stays so (`options.stdout` says so)."""
    return contextlib.nullcontext() if sys.stdout is None else contextlib.redirect_stdout(_StandardOutput(sys.stdout))


class _StandardOutput:
    """`stream` (standard output, or through `buffer` the binary stream beneath it), except that an
    error in writing it names it: "standard output: No space left on device" under `> FILE` on a
    full disk. The OSError a write raises names no file, and once it has, nothing else can tell
    whose it was: a second flush fails only where the failed write left its bytes in the buffer,
    not under PYTHONUNBUFFERED=1 nor where the output was longer than the buffer."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, data):
        with _named():
            return self.stream.write(data)

    def flush(self) -> None:
        with _named():
            self.stream.flush()

    @property
    def buffer(self):
        return _StandardOutput(self.stream.buffer)

    def __getattr__(self, name: str):  # (fileno, isatty, encoding, ...: the stream's own)
        return getattr(self.stream, name)


@contextlib.contextmanager
def _named() -> Iterator[None]:
    """An OSError of the block, with an errno, raised again naming standard output as its file
    (of the same class: a reader gone is still a BrokenPipeError)."""
    try:
        yield
    except OSError as exc:
        if exc.errno:
            raise OSError(exc.errno, exc.strerror, "standard output") from exc
        raise


def _hold_standard_descriptors() -> None:
    """/dev/null on descriptors 0, 1 and 2 where the command was started with them closed (`<&-`):
    the next file or socket opened would take the number, and the daemon's listening socket as
    descriptor 0 made uvloop abort the process as it closed it (exit 134). Python's sys.stdin,
    stdout and stderr stay None, so a closed stream is still found closed (`options.stdout`)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # (the lowest free number: this one, those below held already)


@contextlib.contextmanager
def _diagnostics():
    """Standard error made fit for what a command says on the side (warnings, progress, its error's
    line), which must change neither its results nor its exit code. Closed (`2>&-`: Python has None
    there, and print(..., file=None) writes to standard output, in among the results) it is
    /dev/null. A write that fails (a full disk, `2>/dev/full`) is let go (`_LetGo`), and what is
    still unwritten at the end is dropped, as a reader gone drops standard output's."""
    with (open(os.devnull, "w") if sys.stderr is None else contextlib.nullcontext(sys.stderr)) as stream, \
            contextlib.redirect_stderr(_LetGo(stream)):
        try:
            yield
        finally:
            _flush_or_drop(stream)  # (left there, Python's exit would fail on it: status 120)


class _LetGo:
    """`stream`, except that a write or flush that fails is let go. What a buffered stream failed to
    write stays in its buffer and goes with a later write that succeeds: a disk that is full no
    more gets a daemon's log again."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        with contextlib.suppress(OSError):
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.flush()

    def __getattr__(self, name: str):  # (isatty, fileno, encoding, ...: the stream's own)
        return getattr(self.stream, name)


def _flush_or_drop(stream) -> None:
    """Write what waits in `stream`'s buffer, or where it cannot be written, drop it (else Python's
    exit would fail on it again: with a traceback for standard output, and status 120)."""
    try:
        if stream is not None:
            stream.flush()
    except OSError:
        _drop(stream)


def _drop(stream) -> None:
    """Send what `stream` still holds, and whatever it is given from now on, nowhere."""
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), stream.fileno())


def _fail(world: distributed.World, message: str, code: int) -> int:
    """Report an error in one line and return `code` (`_stop`)."""
    return _stop(world, message, code, "error: ")


def _stop(world: distributed.World, message: str, code: int, kind: str = "") -> int:
    """Say why the command stops (an error, Ctrl-C) in one line and return `code`. In a job of
    several processes, first say which rank stops, then stop them all: the others may be waiting
    for this one inside a collective operation and would wait for ever."""
    if world.size == 1:
        print(f"chainrule: {kind}{message}", file=sys.stderr)
        return code
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (the job is ending: another Ctrl-C would only break that off)
    if world.rank > 0:
        time.sleep(ABORT_GRACE_SECONDS)
    print(f"chainrule: {kind}rank {world.rank} of {world.size}: {message}", file=sys.stderr, flush=True)
    world.abort(code)
    return code
