"""A server's open-file limit: raised as far as it goes, held against the connections it serves at
once, and a connection that cannot be accepted for want of a file descriptor said in the log.

Every connection holds a file descriptor. The soft limit on them (RLIMIT_NOFILE, `ulimit -n`) is
often 1,024, a shell's and systemd's default, while the hard limit, up to which a process may raise
its soft one without privileges, is far higher (systemd's is 524,288): the low soft limit protects
old programs that pass descriptors to select(), and those that need more are meant to raise it
themselves, as nginx does (`worker_rlimit_nofile`) and Go does for every program since 1.19.

A server out of descriptors cannot accept. uvloop's libuv then accepts and closes the waiting
connections without a word (spamc reads that as a daemon that is down and passes the mail
unchecked), and asyncio logs a traceback for every try, hundreds a second. A server that counts the
failures (`AcceptFailures`) and tries again a moment later leaves its clients waiting in the
kernel's listen queue instead, served as connections end.
"""

from __future__ import annotations

import errno
import logging
import sys
import time

try:
    import resource
except ImportError:  # (Windows: no such limit)
    resource = None

# accept(2)'s errors for want of a descriptor (EMFILE: this process's; ENFILE: the system's) or of
# the kernel memory for one, as asyncio lists them
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# A connection holds its socket, and may hold a temporary file besides: the spam daemon's spool of a
# PROCESS or HEADERS over --max-size, an upload to `serve` of over a megabyte (Starlette spools it to disk).
PER_CONNECTION = 2
# The rest of the process: the interpreter's standard streams, the event loop's, the listeners' (15
# for the spam daemon at rest under uvloop, 9 under asyncio; 9 for `serve`), and what a model's
# reload or a lesson opens meanwhile (its files, the model folder's lock, a temporary file).
RESERVED = 32
MACOS_OPEN_MAX = 10240  # macOS refuses a soft limit above OPEN_MAX ("use min(OPEN_MAX, rlim_max)": setrlimit(2))


def descriptors_for(connections: int) -> int:
    """The file descriptors a server needs to hold `connections` connections at once."""
    return RESERVED + PER_CONNECTION * connections


def raise_open_file_limit() -> int | None:
    """Raise this process's soft limit on open files to its hard limit (what `ulimit -Hn` says;
    systemd's LimitNOFILE= sets both). Returns the limit now in effect (`open_file_limit`).

    Processes started from here inherit the raised limit: the servers start none that pass
    descriptors to select()."""
    if resource is not None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = min(hard, MACOS_OPEN_MAX) if sys.platform == "darwin" else hard
        if soft < wanted:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            except (ValueError, OSError):  # (a kernel that refuses it: the soft limit stays, and is what counts)
                pass
    return open_file_limit()


def shortfall(connections: int) -> tuple[int, int] | None:
    """Raise the soft limit as far as it goes (`raise_open_file_limit`); then (the limit, the
    descriptors needed) where it still cannot hold `connections` connections at once, else None."""
    limit, needed = raise_open_file_limit(), descriptors_for(connections)
    return (limit, needed) if limit is not None and limit < needed else None


def open_file_limit() -> int | None:
    """This process's soft limit on open files; None where there is none (Windows)."""
    if resource is None:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


class AcceptFailures:
    """Connections that could not be accepted for want of a file descriptor, said in `log` at the
    first failure and then at most once a minute, with the number of failed tries since the last
    line: one line, where asyncio logs a traceback for each try and uvloop nothing at all.

    `failed(exc)` counts one; an instance is also an asyncio exception handler
    (`loop.set_exception_handler`), for a server whose accepting asyncio does (uvicorn's): it takes
    asyncio's "socket.accept() out of system resource" and passes anything else on to the loop's
    default handler.
    """

    def __init__(self, log: logging.Logger, prefix: str = "", every: float = 60.0):
        self.log = log
        self.prefix = prefix  # what the server's log lines start with ("chainrule serve: ")
        self.every = every  # seconds
        self._tries = 0  # failed since the last line
        self._since: float | None = None  # (monotonic) when the last line was written

    def failed(self, exc: OSError) -> None:
        self._tries += 1
        now = time.monotonic()
        if self._since is not None and now < self._since + self.every:
            return
        limit = open_file_limit() if exc.errno == errno.EMFILE else None
        why = exc.strerror or str(exc)
        if limit is not None:
            why += f" (this process may open {limit}: `ulimit -n`, systemd's LimitNOFILE=)"
        again = f"; {self._tries} failed tries in the last {now - self._since:.0f} s" if self._since is not None else ""
        self.log.warning("%scannot accept connections: %s; clients wait until connections end%s",
                         self.prefix, why, again)
        self._tries = 0
        self._since = now

    def __call__(self, loop, context: dict) -> None:
        exc = context.get("exception")
        if (isinstance(exc, OSError) and exc.errno in OUT_OF_DESCRIPTORS
                and context.get("message", "").startswith("socket.accept()")):
            self.failed(exc)
        else:
            loop.default_exception_handler(context)
