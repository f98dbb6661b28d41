"""Independent tasks on every core: `fork_map(fn, tasks)`, the results in order.

Parsing mail and training committee members are pure Python or hold the GIL often enough that
threads do not help, so the work goes to forked processes. Why not `multiprocessing.Pool`: a pool
starts its workers and three helper threads, pickles every task over to them, and leaves this
process waiting. Here the children are forked with the tasks already in their memory (`fn` may be
a closure: nothing is pickled on the way out), this process works too (n cores need n - 1 forks),
and only the results come back, pickled, one pipe per child. On a 2-core machine that halves the
fixed cost of classifying a batch of mail.

Load balancing: the task numbers wait in a pipe, and every process reads the next one when it is
free (a read of 4 bytes from a pipe is atomic), so a slow task delays only itself. If a child dies,
this process runs the tasks it did not send back; a task that raises raises here.

`BlasThreads` is the other half of using the cores well: how many threads NumPy's BLAS may use
while another process wants a core too (see its docstring). While it runs (inside `fit`),
`in_parts(fn, n, size)` runs large element-wise passes on that many cores too, one thread each
(`by_outer_axis` cuts arrays into such parts).
"""

from __future__ import annotations

import contextvars
import gc
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")

_ID_BYTES = 4
MAX_TASKS = 65536 // _ID_BYTES  # the task numbers are written up front: at most one pipe buffer
_EXITING: set[int] = set()  # children that sent their results and are not yet reaped


def fork_map(fn: Callable[[T], R], tasks: Sequence[T], processes: int | None = None) -> list[R]:
    """[fn(t) for t in tasks], computed by this process and `processes - 1` forked children.

    `processes` defaults to the number of cores; with one process, one task, or no `os.fork`
    (Windows) everything runs here. Keep tasks coarse (chunks of work, at most `MAX_TASKS`): each
    result crosses a pipe.
    """
    _reap()
    processes = min(processes or os.cpu_count() or 1, len(tasks))
    if processes <= 1 or not hasattr(os, "fork"):
        return [fn(t) for t in tasks]
    if len(tasks) > MAX_TASKS:
        raise ValueError(f"fork_map takes at most {MAX_TASKS} tasks, got {len(tasks)}: group them into chunks")
    claims, claims_in = os.pipe()
    os.write(claims_in, b"".join(i.to_bytes(_ID_BYTES, "little") for i in range(len(tasks))))
    os.close(claims_in)  # once the numbers run out, a read returns b"": no task left
    # A garbage collection walks every object and writes to it, which would copy each memory page
    # the children share with this process; frozen objects are left out of collections.
    was_frozen = gc.get_freeze_count() > 0
    gc.freeze()
    children: list[tuple[int, int]] = []
    try:
        for _ in range(processes - 1):
            children.append(_fork_child(fn, tasks, claims))
        results = _run_claimed(fn, tasks, claims)
        while children:
            results.update(_collect(*children.pop(0)))
    finally:
        os.close(claims)
        for pid, pipe in children:  # only after an exception here (Ctrl-C): stop the children
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(pipe)
        if not was_frozen:
            gc.unfreeze()
    return [results[i] if i in results else fn(tasks[i]) for i in range(len(tasks))]


def _reap() -> None:
    """Wait for the children of earlier calls that have exited since."""
    for pid in list(_EXITING):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # already reaped (someone called wait())
            done = pid
        if done:
            _EXITING.discard(pid)


def _run_claimed(fn, tasks, claims: int) -> dict:
    """{task number: result} for every task this process claims from the pipe until it is empty."""
    done = {}
    while number := os.read(claims, _ID_BYTES):
        i = int.from_bytes(number, "little")
        done[i] = fn(tasks[i])
    return done


def _fork_child(fn, tasks, claims: int) -> tuple[int, int]:
    """Fork a child that runs the tasks it claims and writes {number: result}, pickled, to a pipe:
    (its pid, the pipe's read end)."""
    pipe, pipe_in = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(pipe)
            with os.fdopen(pipe_in, "wb") as out:
                pickle.dump(_run_claimed(fn, tasks, claims), out, protocol=pickle.HIGHEST_PROTOCOL)
            code = 0
        finally:  # never return into the parent's code, and skip its atexit handlers and buffers
            os._exit(code)
    os.close(pipe_in)
    return pid, pipe


def _collect(pid: int, pipe: int) -> dict:
    """The child's {number: result}, or {} if it died before sending them all.

    The child is not waited for once its pipe is closed: the kernel takes milliseconds to tear
    down its copy of a large address space. It is reaped by the next call (or, as an orphan, by
    init when this process exits).
    """
    try:
        with os.fdopen(pipe, "rb") as f:
            data = f.read()
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    _EXITING.add(pid)
    try:
        return pickle.loads(data)
    except (pickle.UnpicklingError, EOFError, ValueError):
        return {}


class BlasThreads:
    """NumPy's BLAS threads, as many as the other processes leave cores free (Linux).

    Why. OpenBLAS, as NumPy's wheels ship it, makes its threads wait for each other by spinning
    rather than sleeping: on an idle machine that is what makes a training step's small matrix
    products fast. When another process wants a core too, a thread spins on while the thread it
    waits for is not running, and steps stall: on 2 cores with one competing process, a 6 ms MLP
    step often took 70-130 ms, and the epoch ran at half the
    speed it reaches with one BLAS thread. So: all of BLAS's threads while the rest of the machine
    leaves the cores free, fewer while it keeps them busy.

    Call `adapt()` once per training step. Every `every` seconds it measures how many cores the
    rest of the machine kept busy (the busy time in /proc/stat minus this process's own CPU time)
    and gives BLAS the cores left, at least 1 and at most the count BLAS started with (which a
    user's OPENBLAS_NUM_THREADS sets). The element-wise passes of `in_parts` then run in as many
    parts. `restore()`, or leaving the `with` block, puts BLAS's count back and the passes whole
    again. Where there is no /proc/stat, nothing changes.

    The price: OpenBLAS rounds some products differently on one thread than on two, and the step
    at which the count changes depends on timing, so under load the same seed gives the same
    weights bit for bit only with BLAS held to one thread (OPENBLAS_NUM_THREADS=1; README, "Digits").
    """

    def __init__(self, every: float = 0.5):
        self.every = every
        # threadpoolctl's handle on BLAS is made at the first call (importing it and finding the
        # libraries takes ~4 ms), so that `in_parts` uses every core from the first step on; the
        # first measurement of the other processes follows `every` seconds later
        self._blas = None
        self.start: int | None = None  # the count BLAS started with, and the count now, once known
        self.threads: int | None = None
        self._off = False  # no /proc/stat, no BLAS, or a BLAS of one thread: nothing to adapt
        self._last: tuple[float, float, float] | None = None  # (wall, machine busy, own CPU) seconds
        self._next = time.monotonic()

    def adapt(self) -> int | None:
        """Re-measure if `every` seconds have passed and set the thread count; returns it (from
        the first call on: BLAS's own count until the first measurement)."""
        now = time.monotonic()
        if self._off or now < self._next:
            return self.threads
        self._next = now + self.every
        if self._blas is None:
            self._blas = blas_controller()
            self.start = self.threads = min((lib.num_threads for lib in self._blas.lib_controllers),
                                            default=1) if self._blas else 1
            self._off = self._blas is None or self.start < 2
        busy, own = _machine_busy_seconds(), time.process_time()  # every thread of this process
        if self._off or busy is None:
            self._off = True
            return self.threads
        if self._last is not None:
            wall, last_busy, last_own = self._last
            others = max(0.0, (busy - last_busy) - (own - last_own)) / (now - wall)
            threads = threads_for(others, os.cpu_count() or 1, self.start)
            if threads != self.threads:
                self._blas.limit(limits=threads)
                self.threads = threads
        self._last = (now, busy, own)
        _use_cores(self.threads, self._blas)
        return self.threads

    def restore(self) -> None:
        _use_cores(1, None)
        if self._blas is not None and self.threads != self.start:
            self._blas.limit(limits=self.start)
            self.threads = self.start

    def __enter__(self) -> BlasThreads:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def threads_for(others: float, cores: int, most: int) -> int:
    """BLAS threads for a machine of `cores` where other processes keep `others` cores busy: the
    cores left, rounded (a process using under half a core leaves that core to BLAS), 1 to `most`."""
    return max(1, min(most, round(cores - others)))


# Element-wise work on every core. NumPy releases the GIL inside its loops, so a pass over a large
# array cut into parts, one per thread, runs on as many cores at once. `BlasThreads` sets how many
# (inside `fit`: the cores the rest of the machine leaves free); elsewhere passes stay whole.
_parts = 1
_MIN_SIZE = 1 << 18  # values a pass must touch (1 MB of float32, ~0.1 ms) to be worth ~50 µs of hand-offs
_HELPER = "chainrule-part"  # the helper threads' name prefix
_helpers: ThreadPoolExecutor | None = None
_stop_blas_threads = None  # OpenBLAS's blas_thread_shutdown_, where NumPy's BLAS is OpenBLAS on pthreads


def in_parts(fn: Callable[[int, int, int], None], n: int, size: int) -> None:
    """fn(part, lo, hi) for the consecutive ranges [lo, hi) that cover range(n), one range per core,
    all at once; `part` numbers them from 0 (for per-part scratch space). Where a split does not pay
    (a pass over fewer than `_MIN_SIZE` values, one core in use) or is not safe (see
    `_stop_spinning`), fn(0, 0, n) runs here alone."""
    parts = min(_parts, n) if splits(size) else 1
    if parts < 2 or not _stop_spinning():
        fn(0, 0, n)
        return
    global _helpers
    if _helpers is None:  # its threads start as the parts first need them, one per core at most
        _helpers = ThreadPoolExecutor(max(1, (os.cpu_count() or 1) - 1), thread_name_prefix=_HELPER,
                                      initializer=_leave_signals_to_the_main_thread)
    bounds = [n * i // parts for i in range(parts + 1)]
    # each part in a copy of this thread's context, so NumPy's error state (np.errstate) holds there too
    others = [_helpers.submit(contextvars.copy_context().run, fn, i, bounds[i], bounds[i + 1])
              for i in range(1, parts)]
    try:
        fn(0, bounds[0], bounds[1])
    finally:
        for f in others:
            f.result()


def splits(size: int) -> bool:
    """Whether `in_parts` may cut a pass touching `size` values (more than one core in use, and
    enough values to pay for the hand-offs); where it may not, a caller can skip preparing parts."""
    return _parts > 1 and size >= _MIN_SIZE


def by_outer_axis(fn: Callable[..., object], *arrays: np.ndarray, shared: int | None = None) -> None:
    """fn(*parts), with `parts` the arrays cut into ranges, one per core, all at once (see
    `in_parts`), along the one of their first `shared` axes (all of them by default: arrays of one
    shape) that is outermost in the first array's memory: the batch axis of a C-ordered batch, the
    channel axis of a Conv2D's batch-last output, each range one stretch of memory. Only the axes
    the arrays share may be cut: a pooled array is shorter along the rows and columns of the input
    it came from. A pass that stays whole gets the arrays themselves."""
    like = arrays[0]
    if like.ndim == 0 or not splits(like.size):  # one whole pass (a single example's, say)
        fn(*arrays)
        return
    axis = 0 if like.flags.c_contiguous else max(range(like.ndim if shared is None else shared),
                                                 key=like.strides.__getitem__)
    n = like.shape[axis]

    def part(_, lo, hi):
        if hi - lo == n:
            fn(*arrays)
        else:
            index = (slice(None),) * axis + (slice(lo, hi),)
            fn(*(a[index] for a in arrays))

    in_parts(part, n, like.size)


def _leave_signals_to_the_main_thread() -> None:
    """Block Ctrl-C and the other signals that stop a process in a helper thread, so the kernel hands
    them to a thread that is not one of ours: Python raises KeyboardInterrupt in the main thread
    only, and a signal taken by a helper reaches it by a longer way."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT})


def _stop_spinning() -> bool:
    """Stop OpenBLAS's idle threads, and say whether the helper threads may run now.

    After each product OpenBLAS's threads spin for a while waiting for the next (see `BlasThreads`),
    so a helper thread finds its core taken: a ReLU over 12.8 MB took 1.17 ms in one thread, 1.47 ms
    in two beside a spinning BLAS thread, 0.78 ms in two after OpenBLAS's own `blas_thread_shutdown_`
    (what it calls before a fork), which stops them in ~16 µs; its next product starts them again in
    ~20 µs. Stopping them while another thread is inside a BLAS call hangs that call, so this
    happens only while the main thread is the only thread besides the helpers and tqdm's monitor
    (which a progress bar, such as a download's, leaves running; it only redraws bars; known by its
    class's module, tqdm's, since the class itself is private). Elsewhere
    (another BLAS than OpenBLAS), the helpers just run.
    """
    if _stop_blas_threads is None:
        return True
    main = threading.main_thread()
    if threading.current_thread() is not main or any(
            t is not main and not t.name.startswith(_HELPER) and not type(t).__module__.startswith("tqdm")
            for t in threading.enumerate()):
        return False
    _stop_blas_threads()
    return True


def _use_cores(parts: int, blas) -> None:
    """How many parts `in_parts` may run at once from now on (at most one per core), and the BLAS
    libraries (threadpoolctl's handle) whose idle threads it stops first."""
    global _parts, _stop_blas_threads
    _parts = min(parts, os.cpu_count() or 1)
    _stop_blas_threads = None
    for lib in blas.lib_controllers if blas is not None else ():
        if lib.internal_api == "openblas" and lib.threading_layer == "pthreads":
            _stop_blas_threads = getattr(lib.dynlib, "blas_thread_shutdown_", None)


def _forget_helpers() -> None:
    """In a forked child the helper threads are gone: start new ones when needed."""
    global _helpers
    _helpers = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)


def blas_controller():
    """threadpoolctl's handle on the BLAS libraries loaded in this process (NumPy's, SciPy's), or
    None if none is loaded."""
    # imported here, not at the top: it takes ~17 ms, which `spam classify` would pay at every start
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    return blas if blas.lib_controllers else None


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_seconds() -> float | None:
    """CPU seconds every core of the machine has spent busy since boot (user, system, interrupts,
    and time a hypervisor gave to other machines), from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != b"cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS
