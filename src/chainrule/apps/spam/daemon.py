"""`chainrule spam daemon`: the spam filter as a server that speaks SpamAssassin's spamc/spamd protocol.

Starting an interpreter and loading a model for every delivered message costs half a second; a
daemon loads the model once and answers in milliseconds. Speaking spamd's protocol (version 1.5, as
described in "SPAMC/SPAMD Protocol As Implemented by SpamAssassin" and implemented by spamc and
spamd 4.0) means Debian's unmodified `spamc` is the client, and with it everything that already
knows spamc: procmail and maildrop recipes, Postfix pipes, Exim's `spam =` ACL, Dovecot Sieve.

The protocol itself (requests, answers, the probability -> score mapping) is
`chainrule.apps.spam.protocol`; this module is the server: filters, listeners, connections,
learning and reloading.

**The filter.** `SpamFilter` (`check`, `learn`, `forget`, `changed_on_disk`) wraps a model of
`chainrule.apps.spam` and is the one place that knows how a model is loaded, scored, explained and
taught; `learn` and `forget` return a new filter and leave the old one untouched, so that it goes on
classifying until the new one replaces it.

**Concurrency.** One asyncio event loop (uvloop's, where it is installed) accepts and reads
connections. It accepts them itself (`_accept`), not through asyncio's servers: out of file
descriptors, libuv's server drops the clients waiting to be accepted without a word, and asyncio's
logs a traceback for every try; here they wait in the kernel's listen queue, tried again every
`ACCEPT_RETRY` seconds and said in the log once a minute (`chainrule.open_files`). A message of up
to `INLINE_BYTES` and `INLINE_PARTS` is classified on the loop itself: that takes a few tenths of a
millisecond, less than handing it to a thread and back, and the threads could not run Python side
by side anyway. Larger messages, messages of many MIME parts (the email
package's work grows with their parts times their lines: up to half a second for 64 KB, which on the
loop would hold up every other client) and REPORT's explanations run on a small thread pool
against the loaded filter (its network's passes take turns on the model's lock: the layers keep
what a backward pass would need, and REPORT's explanation runs one). Learning (TELL) and reloading
run one at a time on a thread of their own, and loading a user's model not yet in memory on another
(a check for them must not wait behind a lesson): a TELL is applied with the same learner as
`chainrule spam learn`, under the same lock of the model directory, to the model as it is on disk
then (a `spam learn` from cron may have saved since this one was loaded), saved in one commit, and
the new filter replaces the old one only when it is complete, so classification never waits for it.
TELLs that arrive while one is being learned are learned together, in one step and one save.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import itertools
import logging
import os
import re
import signal
import socket
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:  # asyncio's event loop written in C: accepting and reading a connection cost ~0.1 ms less
    import uvloop
except ImportError:  # (not on Windows)
    uvloop = None

from chainrule import __version__
from chainrule.apps.spam.explain import explain_row
from chainrule.apps.spam.features import featurize, item_tokens
from chainrule.apps.spam.learning import (
    AGAIN,
    LEARNED,
    RELEARNED,
    UNLEARNED,
    Learned,
    LearningStopped,
    describe,
    learn,
    open_for_learning,
    unlearn,
)
from chainrule.apps.spam.model import load_spam_model
from chainrule.apps.spam.protocol import (
    CHUNK,
    EX_CONFIG,
    EX_DATAERR,
    EX_IOERR,
    EX_SOFTWARE,
    EX_TIMEOUT,
    EX_UNAVAILABLE,
    PONG,
    THRESHOLD,
    ProtocolError,
    Request,
    Verdict,
    answer,
    format_score,
    read_request,
    spooled_answer_head,
    tell_answer,
)
from chainrule.data.corpora import HAM, SPAM
from chainrule.data.mime import boundary_matches
from chainrule.errors import ModelFileError, TrainingDiverged, UserError, one_line
from chainrule.files import file_id
from chainrule.listeners import tcp_listeners
from chainrule.model_file import model_directory, model_stamp
from chainrule.open_files import OUT_OF_DESCRIPTORS, AcceptFailures, shortfall

log = logging.getLogger("chainrule.spamd")

DEFAULT_PORT = 783  # spamd's port
INLINE_BYTES = 64 << 10  # messages up to this size are classified on the event loop, larger ones on a thread
INLINE_PARTS = 16  # and up to this many lines that may open a MIME part ("--" first), more on a thread
INLINE_MATCHES = 1 << 16  # and up to this many line-against-boundary matches (`boundary_matches`)
BACKLOG = 100  # connections the kernel holds for the daemon to accept (asyncio's default)
ACCEPT_RETRY = 0.1  # seconds before another accept after one failed for want of a descriptor
# Seconds a client has to take the rest of an answer already written (an error's status line, the
# end of an answer as its connection closes): one that stopped reading would hold its connection,
# and a place among --max-connections, for ever.
FLUSH_TIMEOUT = 5.0


def checked_inline(message: bytes) -> bool:
    """Whether a check of `message` is quick enough for the event loop (see Concurrency above)."""
    parts = message.count(b"\n--") + message.count(b"\r--")  # (a lone "\r" ends a line too)
    return len(message) <= INLINE_BYTES and parts <= INLINE_PARTS and boundary_matches(message) <= INLINE_MATCHES



class SpamFilter:
    """The daemon's spam filter: a model directory written by `chainrule spam train`, loaded."""

    def __init__(self, bundle, spam_cutoff: float | None = None, ham_cutoff: float | None = None,
                 stamp: tuple = ()):
        self.bundle = bundle
        self.directory = Path(bundle.directory)
        self._cutoffs = (spam_cutoff, ham_cutoff)  # overrides, kept for the next load
        self._stamp = stamp

    @classmethod
    def load(cls, directory, spam_cutoff: float | None = None, ham_cutoff: float | None = None) -> SpamFilter:
        """Load a model directory; raises ModelFileError (a UserError) with a one-line reason."""
        stamp = model_stamp(directory)  # before loading: a change during the load shows next time
        return cls(load_spam_model(directory, spam_cutoff, ham_cutoff), spam_cutoff, ham_cutoff, stamp)

    def __repr__(self) -> str:
        b = self.bundle
        return f"{self.directory} (spam >= {b.spam_cutoff:.4f}, ham < {b.ham_cutoff:.4f})"

    def check(self, raw: bytes, explain: bool = False) -> Verdict:
        b = self.bundle
        if not explain:
            p, problems = b.score([("mail", raw)], processes=1)
            return Verdict(float(p[0]), b.spam_cutoff, b.ham_cutoff, problem=problems[0])
        tokens, problem = item_tokens("mail", raw, b.config)
        p, to_spam, to_ham = explain_row(b, tokens, top=10)
        return Verdict(p, b.spam_cutoff, b.ham_cutoff, tuple(to_spam), tuple(to_ham), problem)

    def learn(self, examples: Sequence[tuple[bytes, int]], stop: threading.Event) -> tuple[SpamFilter, Learned]:
        """`chainrule spam learn` on these (message, SPAM or HAM) pairs; see `_relearn`."""
        labels = np.array([label for _, label in examples])
        return self._relearn([raw for raw, _ in examples], lambda b, x: learn(b, x, labels), stop)

    def forget(self, raws: Sequence[bytes], stop: threading.Event) -> tuple[SpamFilter, Learned]:
        """`chainrule spam learn --unlearn` on these messages; see `_relearn`."""
        return self._relearn(raws, unlearn, stop)

    def _relearn(self, raws: Sequence[bytes], teach, stop: threading.Event) -> tuple[SpamFilter, Learned]:
        """Apply `teach(bundle, x)` to the model on disk (not to the one serving: another learner
        may have saved since it was loaded), under the lock of its directory, which `teach` saves
        into. Returns the filter that holds the result, and what became of each message. The lock
        is waited for until `stop` is set (`LearningStopped`): another writer (`spam train` into
        the folder) may hold it for minutes, and a daemon asked to stop must not wait for it."""
        with open_for_learning(self.directory, *self._cutoffs, stop=stop) as b:
            x, _ = featurize([("mail", raw) for raw in raws], b.config, processes=1, idf=b.idf)
            learned = teach(b, x)
            stamp = model_stamp(self.directory)  # (under the lock) our own save is not a change to reload
        return SpamFilter(b, *self._cutoffs, stamp), learned

    def changed_on_disk(self) -> bool:
        """Whether the model's files changed since it was loaded or since this last said so: a
        change that fails to load is tried again when the files change again (or on SIGHUP), not
        at every look."""
        stamp = model_stamp(self.directory)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True


# ---------------------------------------------------------------------------------------------
# The server.


@dataclass
class DaemonOptions:
    """Everything `run_daemon` needs. The command line (`chainrule spam daemon`) fills it in, and
    its options' defaults are the daemon's."""

    model: Path
    listen: list[tuple[str, int]]  # empty and no socket: 127.0.0.1:783
    socket: Path | None
    socket_mode: int
    allowed_ips: list[str]
    allow_tell: bool
    user_models: Path | None  # a directory of per-user model directories, named by user
    max_size: int  # bytes; a larger message is passed back unchecked
    max_connections: int  # served at once; more wait for a free place
    read_timeout: float  # seconds for a client to send its whole request
    timeout: float  # seconds for a whole connection: waiting, reading, checking, answering
    reload_interval: float  # seconds between looks at the model files (0: only on SIGHUP)
    threads: int  # threads for REPORTs and messages over INLINE_BYTES
    spam_cutoff: float | None  # None: the model's own
    ham_cutoff: float | None
    max_user_models: int = 8  # per-user filters held in memory at once (least recently used go); no option


@functools.lru_cache(maxsize=1024)
def _allowed_address(host: str, allowed: tuple) -> bool:
    """Whether the address `host` lies in one of the networks `allowed`; remembered, since a mail
    server's few addresses connect again and again and `ipaddress` takes tens of microseconds."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in allowed)


_USER_DIR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}")


@dataclass
class _Lesson:
    key: str | None  # whose filter: None for the default one
    raw: bytes
    label: int | None  # SPAM or HAM; None: forget
    done: asyncio.Future


class DaemonServer:
    """The spamd-protocol server: filters, listeners, connections, learning and reloading."""

    def __init__(self, options: DaemonOptions):
        self.options = options
        self.filter: SpamFilter | None = None
        self._user_filters: OrderedDict[str, SpamFilter] = OrderedDict()
        self._allowed = tuple(ipaddress.ip_network(a, strict=False) for a in options.allowed_ips)
        self._check_pool = ThreadPoolExecutor(options.threads, thread_name_prefix="spamd-check")
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="spamd-model")  # learning and reloads, in turn
        # a user's model that is not in memory is loaded on a thread of its own, so that a check for
        # it never waits behind a lesson (which may wait for the model directory's lock: a cron job)
        self._load_pool = ThreadPoolExecutor(1, thread_name_prefix="spamd-load")
        self._loading: dict[str, asyncio.Future] = {}  # user -> their model's load in progress
        self._broken: dict[str, tuple] = {}  # user -> the `model_stamp` of their model's files that failed to load
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task] = []  # `_accept` on each listener
        self._accept_failures = AcceptFailures(log)
        self._connections: set[asyncio.Task] = set()
        # (asyncio's queues, semaphores and events take the event loop that first waits on them)
        self._lessons: asyncio.Queue[_Lesson | None] = asyncio.Queue()
        self._slots = asyncio.Semaphore(options.max_connections)
        self._stopping = asyncio.Event()
        # set when the stopping daemon stops waiting: --timeout after the stop signal, or a second one
        self._hurry = asyncio.Event()
        self._give_up = threading.Event()  # (the same, for the learning threads)
        self._stopped_by: int | None = None  # the second signal, which stops the daemon at once
        self._not_learned = 0  # lessons given up then
        self._reloads: set[asyncio.Task] = set()
        self._learning: asyncio.Task | None = None  # `_learner`, once started
        self._background: list[asyncio.Task] = []  # it and the model watcher
        self.addresses: list[str] = []  # where it listens, once started
        self._socket_id: tuple[int, int] | None = None  # (device, inode) of the Unix socket it made and removes

    # -- filters --------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the default filter (before the loop starts, so that a bad model fails at once)."""
        self.filter = SpamFilter.load(self.options.model, self.options.spam_cutoff, self.options.ham_cutoff)
        if warning := self.filter.bundle.untrained_on("mail"):  # (spamc sends mail)
            log.warning("warning: %s", warning)
        folder = model_directory(self.options.model)
        if self.options.allow_tell and not os.access(folder, os.W_OK | os.X_OK):  # (else found at the first TELL)
            log.warning("warning: --allow-tell: TELLs will fail: this user may not write to the model's folder %s",
                        folder)

    def _user_dir(self, user: str | None) -> Path | None:
        root = self.options.user_models
        if root is None or not _accepted_user(user):
            return None
        d = root / user
        try:
            return d if (d / "model.json").is_file() else None
        except PermissionError:  # a folder the daemon may not enter: a model it cannot load (`_load_user`)
            return d

    async def _filter_for(self, user: str | None) -> tuple[str | None, SpamFilter]:
        """(key, filter) for a request's User: the user's own model if `user_models` has one,
        else the default."""
        d = self._user_dir(user)
        if d is None or (user in self._broken and self._broken[user] == _user_stamp(d)):
            return None, self.filter  # (a model that failed to load is tried again once its files change)
        f = self._user_filters.get(user)
        if f is None:
            # one load per user at a time, shared by every request that needs it (two loads could
            # finish out of order and put the older model in service after a lesson's newer one)
            loading = self._loading.get(user)
            if loading is None:
                loading = self._loading[user] = asyncio.ensure_future(self._load_user(user, d))
                loading.add_done_callback(lambda _: self._loading.pop(user, None))
            try:
                f = await asyncio.shield(loading)  # (a request that times out leaves the load to the others)
            except (UserError, OSError):  # (reported once by _load_user): the default filters their mail
                return None, self.filter
        if user in self._user_filters:  # (another user's load may have evicted it since)
            self._user_filters.move_to_end(user)
        return user, f

    async def _load_user(self, user: str, d: Path) -> SpamFilter:
        stamp = _user_stamp(d)
        try:
            f = await asyncio.get_running_loop().run_in_executor(
                self._load_pool, SpamFilter.load, d, self.options.spam_cutoff, self.options.ham_cutoff)
        except (UserError, OSError) as exc:  # (OSError: a model.json the daemon may not read)
            log.error("%s's model cannot be loaded, using the default model until its files change: %s", user,
                      one_line(exc))
            self._broken[user] = stamp
            raise
        self._broken.pop(user, None)
        log.info("loaded %s's model %s", user, f)
        if user in self._user_filters:  # a lesson installed a newer one while this was loading
            return self._user_filters[user]
        self._user_filters[user] = f
        while len(self._user_filters) > self.options.max_user_models:
            self._user_filters.popitem(last=False)
        return f

    def _install(self, key: str | None, f: SpamFilter) -> None:
        if key is None:
            self.filter = f
        else:
            self._user_filters[key] = f

    async def _in_model_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._model_pool, fn, *args)

    async def reload(self, only_changed: bool = False) -> None:
        """Load the default model and the per-user ones in memory again (with `only_changed`, those
        whose files changed). A model that fails to load is reported and the old one stays in service."""
        if not only_changed:  # (SIGHUP: a user's model that failed to load is tried again at their next request)
            self._broken.clear()
        filters = [(None, self.filter)] + list(self._user_filters.items())
        for key, f in filters:
            if key is not None and self._user_dir(key) is None:  # removed: the default serves the user
                if self._user_filters.pop(key, None) is not None:
                    log.info("%s's model is gone; the default model checks their mail", key)
                continue
            if only_changed and not f.changed_on_disk():
                continue
            path = self.options.model if key is None else self.options.user_models / key
            try:
                new = await self._in_model_thread(SpamFilter.load, path, self.options.spam_cutoff,
                                                  self.options.ham_cutoff)
            except Exception as exc:  # noqa: BLE001 (a broken model file must not stop the daemon)
                log.error("reload of %s failed, still serving the model loaded before: %s", path, exc)
                continue
            if key is None or key in self._user_filters:
                self._install(key, new)
            log.info("reloaded %s", new)

    def reload_soon(self) -> None:
        """`reload()` as a task of its own (what SIGHUP does), kept until it is done."""
        task = asyncio.ensure_future(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _watch_models(self) -> None:
        while True:
            await asyncio.sleep(self.options.reload_interval)
            await self.reload(only_changed=True)

    # -- learning -------------------------------------------------------------------------------

    async def _learner(self) -> None:
        """Apply lessons in order; consecutive ones of one kind (learn, forget) for the same filter
        together, in one step and one save. Ends at a None, which the daemon stopping queues after
        the lessons it received: those are all applied first, unless it gives up waiting for them
        (`_give_up`): then the group being applied is finished (or dropped, if it still waits for
        its model's lock) and the rest are dropped."""
        while True:
            batch = [await self._lessons.get()]
            while not self._lessons.empty():
                batch.append(self._lessons.get_nowait())
            stopping = None in batch
            batch = [x for x in batch if x is not None]  # (one after the None: a connection that was late)
            for _, group in itertools.groupby(batch, key=lambda x: (x.key, x.label is None)):
                if self._give_up.is_set():
                    self._drop(list(group))
                else:
                    await self._apply(list(group))
            if stopping or self._give_up.is_set():
                return

    def _drop(self, lessons: list[_Lesson]) -> None:
        """Lessons the stopping daemon gave up on (`_give_up`): counted for its last word, and their
        clients, if still there, told."""
        for x in lessons:
            self._not_learned += 1
            if not x.done.done():
                x.done.set_exception(LearningStopped("the daemon stopped before the lesson was learned"))

    async def _apply(self, group: list[_Lesson]) -> None:
        key = group[0].key
        f = self.filter if key is None else self._user_filters.get(key)
        try:
            if f is None:  # a user's filter dropped from memory since: load it again
                key, f = await self._filter_for(key)
            if group[0].label is None:
                new, learned = await self._in_model_thread(f.forget, [x.raw for x in group], self._give_up)
            else:
                new, learned = await self._in_model_thread(f.learn, [(x.raw, x.label) for x in group],
                                                           self._give_up)
            self._install(key, new)
        except LearningStopped:
            self._drop(group)
            return
        except Exception as exc:  # noqa: BLE001 (reported to the clients that asked)
            if isinstance(exc, (UserError, OSError, TrainingDiverged)):  # the model on disk cannot be read,
                log.error("learning failed: %s", one_line(exc))  # written or learned into
            else:
                log.exception("learning failed")
            for x in group:
                if not x.done.done():
                    x.done.set_exception(exc)
            return
        for x, status, was in zip(group, learned.status, learned.was, strict=True):
            if x.done.cancelled():  # (the lesson stands: a TELL sent again is recognised, not counted twice)
                log.info("TELL %s for %s, after its client had given up waiting (--timeout)",
                         describe(status, x.label, was), key or "the default model")
            elif not x.done.done():
                x.done.set_result((status, was))

    # -- connections ----------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection, on a task of its own (`_streams`), and close it. The stopping
        daemon cancels the tasks of the connections it stops waiting for (`_close_connections`):
        such a connection is cut off, and its task ends as if it had ended by itself, for Python
        3.11's StreamReaderProtocol asks a cancelled one for its exception, which raises into the log."""
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            await self._serve_connection(reader, writer)
            writer.close()
            try:  # (until the answer has left: a stopping daemon must not cut it off)
                await asyncio.wait_for(writer.wait_closed(), FLUSH_TIMEOUT)
            except (ConnectionError, OSError, asyncio.TimeoutError):
                writer.transport.abort()
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            self._connections.discard(task)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")  # (None for a TCP client that reset at once)
        unix = writer.get_extra_info("socket").family == socket.AF_UNIX
        who = "unix socket" if unix else f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "TCP client"
        try:
            if not unix and not isinstance(peer, tuple):
                log.warning("%s: connection lost before it could be served", who)
                return
            # A Unix socket's file mode decides who may connect to it; a TCP client, --allowed-ips
            if not unix and not _allowed_address(peer[0], self._allowed):
                log.warning("refused connection from %s: not in --allowed-ips", who)
                return
            refused = await asyncio.wait_for(self._converse(reader, writer, who), self.options.timeout)
            # (outside the connection slot: a client still sending must not hold one)
            if refused and not writer.is_closing():
                if writer.can_write_eof():
                    writer.write_eof()  # the answer is complete: a client reading to the end sees it
                await _drop_the_rest(reader)
        except asyncio.TimeoutError:
            log.warning("%s: no answer within %.0f s (--timeout); connection closed", who, self.options.timeout)
            await self._send(writer, ProtocolError(EX_TIMEOUT, "Timeout: (connection took too long)").status_line())
        except (ConnectionError, OSError) as exc:
            log.warning("%s: connection lost (%s)", who, exc.strerror or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 (one bad connection must never stop the daemon)
            if isinstance(exc, RuntimeError) and writer.is_closing():  # (uvloop's, on a write to a closed connection)
                log.warning("%s: connection lost", who)
            else:
                log.exception("%s: internal error", who)
                await self._send(writer, ProtocolError(EX_SOFTWARE, "EX_SOFTWARE internal error").status_line())

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if writer.is_closing():  # (uvloop raises RuntimeError on a write to a closed transport)
            return  # the client is gone; nothing more to tell it
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), FLUSH_TIMEOUT)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass

    async def _converse(self, reader, writer, who: str) -> bool:
        """Read one request and answer it; True if it was refused before it was read to the end."""
        async with self._slots:
            started = time.perf_counter()
            try:
                req = await asyncio.wait_for(read_request(reader, self.options.max_size), self.options.read_timeout)
            except asyncio.TimeoutError:
                log.warning("%s: request not received within %.0f s (--read-timeout)", who, self.options.read_timeout)
                await self._send(writer, ProtocolError(EX_TIMEOUT, "Timeout: (reading the request took too long)")
                                 .status_line())
                return False  # (a client this slow is not waited for again: its connection closes)
            except ProtocolError as exc:
                log.warning("%s: bad request: %s", who, exc.text)
                await self._send(writer, exc.status_line())
                return True
            try:
                await self._serve(req, writer, who, started)
            except ProtocolError as exc:
                log.warning("%s: %s: %s", who, req.command, exc.text)
                await self._send(writer, exc.status_line())
            finally:
                if req.spool is not None:
                    req.spool.close()
            return False

    async def _serve(self, req: Request, writer: asyncio.StreamWriter, who: str, started: float) -> None:
        def ms():
            return 1000 * (time.perf_counter() - started)

        user = _logged_user(req.user)
        if req.command == "PING":
            writer.write(PONG)
            await writer.drain()
            return
        if req.command == "SKIP":
            log.info("SKIP from %s", who)
            return
        if req.command == "TELL":
            await self._tell(req, writer, who, user, ms)
            return
        if req.too_big:
            if req.spool is not None:  # (PROCESS, HEADERS) the message or its header block back, unchanged
                writer.write(spooled_answer_head(req))
                while data := req.spool.read(CHUNK):
                    writer.write(data)
                    await writer.drain()
            else:
                writer.write(answer(req, None))
                await writer.drain()
            log.info("%s skipped for %s: %s bytes over --max-size %d, %.1f ms, %s", req.command, user,
                     req.size_text, self.options.max_size, ms(), who)
            return
        _, f = await self._filter_for(req.user)
        explain = req.command in ("REPORT", "REPORT_IFSPAM")
        try:
            if explain or not checked_inline(req.body):
                v = await asyncio.get_running_loop().run_in_executor(self._check_pool, f.check, req.body, explain)
            else:
                v = f.check(req.body)
        except ModelFileError as exc:  # (weights so large that the logit overflows: no verdict, not a NaN one)
            raise ProtocolError(EX_CONFIG, f"EX_CONFIG not checked: {f.directory}: {one_line(exc)}") from None
        writer.write(answer(req, v))
        await writer.drain()
        log.info("%s %s (%s/%.1f, P(spam) %.4f) for %s in %.1f ms, %d bytes, %s", req.command, v.label,
                 format_score(v.score, v.label), THRESHOLD, v.probability, user, ms(), req.size, who)

    async def _tell(self, req: Request, writer, who: str, user: str, ms) -> None:
        if not self.options.allow_tell:
            raise ProtocolError(EX_UNAVAILABLE, "Service Unavailable: TELL commands are not enabled, "
                                "start the daemon with --allow-tell.")
        if req.too_big:
            raise ProtocolError(EX_DATAERR, f"EX_DATAERR message of {req.size_text} bytes is over --max-size "
                                f"{self.options.max_size}; not learned")
        if not req.body.strip():  # (an empty message is judged, as spamd judges it: a mail system asked)
            raise ProtocolError(EX_DATAERR, "EX_DATAERR empty message; not learned")
        changed = False
        if req.set_local or req.remove_local:
            if self.options.user_models is not None and req.user and not _accepted_user(req.user):
                # (its mail is checked by the shared model; its lessons must not go into that one)
                raise ProtocolError(EX_CONFIG, "EX_CONFIG not learned: user names for --user-models are letters, "
                                    "digits and ._@+- (at most 128, no '..')")
            key, _ = await self._filter_for(req.user)
            if key is None and self._user_dir(req.user) is not None:  # never into the shared model instead
                raise ProtocolError(EX_CONFIG, f"EX_CONFIG not learned: {req.user}'s model cannot be loaded")
            label = None if req.remove_local else SPAM if req.message_class == "spam" else HAM
            done = asyncio.get_running_loop().create_future()
            self._lessons.put_nowait(_Lesson(key, req.body, label, done))
            try:
                status, was = await done
            except UserError as exc:
                raise ProtocolError(EX_CONFIG, f"EX_CONFIG not learned: {exc}") from None
            except OSError as exc:  # (a full disk, a model made read-only)
                raise ProtocolError(EX_IOERR, f"EX_IOERR not learned: {one_line(exc)}") from None
            except TrainingDiverged as exc:  # (logged by `_apply`; the model is as it was)
                raise ProtocolError(EX_SOFTWARE, f"EX_SOFTWARE not learned: learning diverged: {exc.where()}") from None
            changed = status in (LEARNED, RELEARNED, AGAIN, UNLEARNED)
            what = describe(status, label, was)
        else:
            what = "nothing to do (no Set: local or Remove: local)"
        writer.write(tell_answer(req, changed))
        gone = ""
        try:
            await writer.drain()
        except ConnectionError:
            # A client that gave up waiting (spamc -t) closed its connection. It had closed its
            # sending half after the request, so only this answer shows it: on a Unix socket at
            # once; over TCP the answer goes out, and the client's reset comes back after it.
            gone = ", after its client had given up waiting (connection closed),"
        log.info("TELL %s for %s%s in %.1f ms, %d bytes, %s", what, user, gone, ms(), req.size, who)

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the listeners and start the learner and the model watcher."""
        listen = self.options.listen or ([] if self.options.socket else [("127.0.0.1", DEFAULT_PORT)])
        for host, port in listen:
            for sock in tcp_listeners(host, port, BACKLOG):
                self._listeners.append(sock)
                addr = sock.getsockname()
                self.addresses.append(f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}")
        if self.options.socket is not None:
            self._listeners.append(self._listen_unix(self.options.socket))
            self.addresses.append(str(self.options.socket))
        self._accepting = [asyncio.create_task(self._accept(sock)) for sock in self._listeners]
        self._learning = asyncio.create_task(self._learner())
        self._background = [self._learning]
        if self.options.reload_interval > 0:
            self._background.append(asyncio.create_task(self._watch_models()))

    def _listen_unix(self, path: Path) -> socket.socket:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISSOCK(mode):
            raise UserError(f"cannot listen on {path}: a file that is not a socket is there")
        if mode is not None:
            try:
                live = _answers(path)
            except PermissionError as exc:  # (whether its owner's daemon listens there, this user cannot tell)
                raise UserError(f"cannot listen on {path}: a socket this user may not use is there ({exc.strerror}): "
                                "remove it, or run the daemon as its owner") from exc
            if live:
                raise UserError(f"cannot listen on {path}: a running daemon is listening there")
            path.unlink()  # left behind by a daemon that did not exit cleanly
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            sock.listen(BACKLOG)
            os.chmod(path, self.options.socket_mode)
            self._socket_id = file_id(path)
        except OSError as exc:
            sock.close()
            raise UserError(f"cannot listen on {path}: {exc.strerror or exc}") from exc
        sock.setblocking(False)
        return sock

    async def _accept(self, listener: socket.socket) -> None:
        """Accept connections on `listener` until the daemon stops, each served by `_connection` on
        a task of its own (what asyncio's servers do). A connection that cannot be accepted for want
        of a file descriptor waits in the kernel's listen queue and is tried again, as one over
        --max-connections waits for a place; the log says so once a minute (`AcceptFailures`)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except ConnectionAbortedError:  # (a client that reset while it waited)
                continue
            except OSError as exc:
                if exc.errno in OUT_OF_DESCRIPTORS:
                    self._accept_failures.failed(exc)
                else:  # (a network error of the client's, which Linux's accept(2) reports and says to retry on)
                    log.warning("a connection could not be accepted: %s", exc.strerror or exc)
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            try:
                await loop.connect_accepted_socket(self._streams, sock)
            except OSError as exc:
                sock.close()
                log.warning("a connection could not be opened: %s", exc.strerror or exc)

    def _streams(self) -> asyncio.StreamReaderProtocol:
        """A connection's protocol, as asyncio.start_server makes it: a reader and writer for `_connection`."""
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), self._connection)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """SIGTERM or SIGINT: stop (`serve_until_stopped`). A second one while stopping (Ctrl-C
        again) stops at once, as a daemon that is told twice should: the connections in progress
        are closed and the lessons not yet learned are dropped, counted in the log."""
        if not self._stopping.is_set():
            self._stopping.set()
        elif self._stopped_by is None:
            self._stopped_by = signum
            log.warning("second %s: stopping at once; %d connection(s) in progress are closed, TELLs not yet "
                        "learned are dropped", signal.Signals(signum).name, len(self._connections))
            self._stop_waiting()

    def _stop_waiting(self) -> None:
        self._hurry.set()
        self._give_up.set()  # (a group being learned is finished and saved; one waiting for the lock is not)

    async def _until_hurried(self, tasks) -> None:
        """Wait for `tasks` to end, or until the stopping daemon stops waiting (`_hurry`)."""
        ended, hurry = asyncio.ensure_future(asyncio.wait(tasks)), asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait({ended, hurry}, return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()  # (the tasks themselves go on)
        hurry.cancel()

    async def _close_connections(self) -> None:
        """Cut off the connections still open once the stopping daemon has stopped waiting for them
        (after the learner, whose last lessons' clients may still be told), and wait for their tasks
        to end (`_connection`): left to the event loop's shutdown, they would be cancelled there."""
        if not self._connections:
            return
        if self._stopped_by is None:  # (a second signal has said so itself)
            log.warning("stopping: %d connection(s) still open after --timeout (%g s) are closed",
                        len(self._connections), self.options.timeout)
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def serve_until_stopped(self) -> int:
        """Serve until `stop()` (SIGTERM): then stop accepting, let the connections in progress and
        the lessons already received finish, and close. Returns the exit code: 0, or 128 + the
        number of a second signal that stopped it at once.

        All of it within one --timeout of the signal (systemd's TimeoutStopSec allows a little
        more), after which the connections still open are closed and the lessons still waiting for
        the model's lock are dropped (another writer may hold it for minutes): the log says how
        many, which a SIGKILL from systemd would not let it say."""
        await self._stopping.wait()
        tell_systemd("STOPPING=1")
        deadline = asyncio.get_running_loop().call_later(self.options.timeout, self._stop_waiting)
        log.info("stopping: finishing %d connection(s) in progress", len(self._connections))
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        for sock in self._listeners:
            sock.close()
        if self._connections:
            await self._until_hurried(set(self._connections))
        # The lessons received are learned, those whose clients gave up waiting included (each is
        # logged as it is), unless the model's lock stays taken past the deadline.
        self._lessons.put_nowait(None)
        others = [task for task in self._background if task is not self._learning]
        for task in others:
            task.cancel()
        await self._until_hurried({self._learning})
        await self._learning
        deadline.cancel()
        while not self._lessons.empty():
            lesson = self._lessons.get_nowait()
            if lesson is not None:
                self._drop([lesson])
        if self._not_learned:
            why = "stopped at once" if self._stopped_by else f"within --timeout ({self.options.timeout:g} s)"
            log.warning("stopping: %d TELL(s) received were not learned %s", self._not_learned, why)
        await self._close_connections()
        await asyncio.gather(*others, return_exceptions=True)
        if self.options.socket is not None:
            try:  # ours only: a daemon started on the same path since may be listening there now
                if file_id(self.options.socket) == self._socket_id:
                    self.options.socket.unlink()
            except OSError:
                pass
        self._check_pool.shutdown(wait=True)
        self._model_pool.shutdown(wait=True)
        self._load_pool.shutdown(wait=True)
        return 0 if self._stopped_by is None else 128 + self._stopped_by


def _user_stamp(d: Path) -> tuple:
    """`model_stamp` of a user's model folder `d`, with the change times of the folder and of its
    model.json: a chmod or chown that lets the daemon read a model it could not changes those
    only, and the model is tried again then."""
    def changed(path: Path) -> int | None:
        try:
            return path.stat().st_ctime_ns
        except OSError:
            return None

    return model_stamp(d), changed(d), changed(d / "model.json")


def _accepted_user(user: str | None) -> bool:
    """Whether `user` may name a folder of --user-models (nothing that leads out of it)."""
    return bool(user) and _USER_DIR.fullmatch(user) is not None and ".." not in user


def _logged_user(user: str | None) -> str:
    """A request's User as the log shows it: at most 64 characters (a client may send thousands)."""
    if not user:
        return "(unknown)"
    return user if len(user) <= 64 else f"{user[:64]}... ({len(user)} characters)"


async def _drop_the_rest(reader: asyncio.StreamReader, seconds: float = 2.0) -> None:
    """Read and drop what the client still sends (the rest of a request refused part-way, say a
    header line of megabytes), for up to `seconds`: a socket closed with unread data sends a reset,
    and the client loses the answer it has not read yet."""
    async def drop() -> None:
        while await reader.read(CHUNK):
            pass

    try:
        await asyncio.wait_for(drop(), seconds)
    except (asyncio.TimeoutError, ConnectionError, OSError):
        pass


def _answers(path: Path) -> bool:
    """Whether a process may be listening on the Unix socket at `path`: only a refused connection
    shows it stale (a live daemon with a full backlog answers EAGAIN, and counts as live). Raises
    PermissionError for a socket this user may not connect to (another user's), live or not."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except PermissionError:
            raise
        except OSError:
            return True
    return True


def tell_systemd(state: str) -> None:
    """Tell systemd what the daemon is doing, under a Type=notify unit (sd_notify(3): a datagram to
    $NOTIFY_SOCKET; nothing without one): "READY=1" once it serves, so that `systemctl start`
    returns then and a `systemctl reload` asked for meanwhile waits for it (as Type=simple, its
    SIGHUP could come before any handler was in place, while Python started, and end the daemon);
    "STOPPING=1" when it stops."""
    named = os.environ.get("NOTIFY_SOCKET", "")
    if not named:
        return
    address = "\0" + named[1:] if named.startswith("@") else named  # ("@": an abstract socket)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("could not tell systemd %s through NOTIFY_SOCKET %s: %s", state, named, exc.strerror or exc)


def run_daemon(options: DaemonOptions) -> int:
    """Load the model, listen, and serve until SIGTERM or SIGINT; SIGHUP reloads the model(s).
    Returns the exit code (`DaemonServer.serve_until_stopped`). A model that cannot be loaded, an
    address that cannot be bound, or an open-file limit that cannot hold --max-connections (the soft
    limit is first raised to the hard one: `chainrule.open_files`) raises UserError before anything
    is served."""
    if (short := shortfall(options.max_connections)) is not None:
        limit, needed = short
        raise UserError(f"--max-connections {options.max_connections} needs up to {needed} open files, and this "
                        f"process may open {limit} (`ulimit -Hn`; systemd's LimitNOFILE=): lower --max-connections "
                        "or raise the limit")
    server = DaemonServer(options)
    # A SIGHUP (systemctl reload) may come while the model loads, before the event loop's handlers
    # are in place: by default it would end the daemon, which systemd counts as a clean exit and
    # does not restart. It is remembered and done once the daemon serves, for the model may have
    # been replaced after the load read it.
    hup = threading.Event()
    before = signal.signal(signal.SIGHUP, lambda *_: hup.set())
    try:
        server.load()
        return (asyncio.run if uvloop is None else uvloop.run)(_main(server, hup))
    finally:
        signal.signal(signal.SIGHUP, before)


async def _main(server: DaemonServer, hup: threading.Event) -> int:
    loop = asyncio.get_running_loop()
    await server.start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.stop, signum)
    loop.add_signal_handler(signal.SIGHUP, server.reload_soon)
    log.info("chainrule spamd %s ready: listening on %s; model %s; max size %d bytes; TELL %s",
             __version__, ", ".join(server.addresses), server.filter, server.options.max_size,
             "allowed" if server.options.allow_tell else "off")
    tell_systemd("READY=1")
    if hup.is_set():
        log.info("SIGHUP received while starting: reloading")
        server.reload_soon()
    code = await server.serve_until_stopped()
    log.info("stopped")
    return code
