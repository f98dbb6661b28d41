"""fork_map: the results of forked children and this process, in task order, whatever happens to a child."""

import gc
import io
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from tqdm import tqdm
from tqdm._monitor import TMonitor

from chainrule import parallel
from chainrule.parallel import MAX_TASKS, BlasThreads, fork_map, in_parts, threads_for
from conftest import blas_threads_now


def test_results_in_task_order_from_every_process():
    parent = os.getpid()
    offset = 1000  # a closure: forked children see it without pickling

    def task(i):
        time.sleep(0.005)  # long enough that the children start before this process claims them all
        return i + offset, os.getpid()

    out = fork_map(task, list(range(40)), processes=3)
    assert [r for r, _ in out] == [i + 1000 for i in range(40)]
    pids = {pid for _, pid in out}
    assert parent in pids  # this process takes tasks too
    assert len(pids) >= 2  # a child claimed some


def test_one_process_or_one_task_runs_here():
    parent = os.getpid()
    assert fork_map(lambda i: (i, os.getpid()), [1, 2, 3], processes=1) == [(1, parent), (2, parent), (3, parent)]
    assert fork_map(lambda i: (i, os.getpid()), [7], processes=4) == [(7, parent)]
    assert fork_map(lambda i: i, [], processes=4) == []


def test_tasks_a_dead_child_did_not_return_are_run_here():
    parent = os.getpid()

    def task(i):
        if os.getpid() != parent:
            os._exit(9)  # the child dies on its first task, sending nothing back
        return i * i

    assert fork_map(task, list(range(10)), processes=2) == [i * i for i in range(10)]


def test_a_failing_task_raises_in_the_caller():
    def task(i):
        if i == 5:
            raise ValueError("task 5 is broken")
        return i

    with pytest.raises(ValueError, match="task 5 is broken"):
        fork_map(task, list(range(10)), processes=2)


def test_garbage_collection_is_left_as_it_was():
    fork_map(lambda i: i, list(range(4)), processes=2)
    assert gc.get_freeze_count() == 0


def test_too_many_tasks_is_a_clear_error():
    with pytest.raises(ValueError, match="group them into chunks"):
        fork_map(lambda i: i, range(MAX_TASKS + 1), processes=2)


def test_children_are_reaped_by_the_next_call():
    from chainrule import parallel

    fork_map(lambda i: time.sleep(0.005) or i, list(range(20)), processes=2)
    for _ in range(100):  # the child has sent its results; it exits moments later
        fork_map(lambda i: i, [0], processes=1)
        if not parallel._EXITING:
            break
        time.sleep(0.01)
    assert not parallel._EXITING  # each was waited for: no zombie left behind


def test_threads_for_leaves_blas_the_cores_other_processes_do_not_use():
    assert threads_for(0.0, cores=2, most=2) == 2
    assert threads_for(0.3, cores=2, most=2) == 2  # a light background job: keep both
    assert threads_for(0.7, cores=2, most=2) == 1
    assert threads_for(1.9, cores=2, most=2) == 1  # never fewer than one
    assert threads_for(0.0, cores=64, most=8) == 8  # never more than BLAS started with
    assert threads_for(60.2, cores=64, most=8) == 4


def test_blas_threads_drop_to_one_while_another_process_computes():
    if not os.path.exists("/proc/stat") or (os.cpu_count() or 1) < 2 or blas_threads_now() < 2:
        pytest.skip("needs Linux's /proc/stat and a BLAS with at least 2 threads")
    start = blas_threads_now()
    a = np.ones((256, 256), np.float32)
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with BlasThreads(every=0.2) as blas:
            seen = set()
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                a @ a
                seen.add(blas.adapt())
            assert 1 in seen  # the competitor kept a core busy, so BLAS kept to one thread
            assert blas_threads_now() == blas.threads
    finally:
        competitor.kill()
        competitor.wait()
    assert blas_threads_now() == start  # leaving the block restores BLAS's own count


def _ranges_and_threads(n, size):
    seen = []
    in_parts(lambda part, lo, hi: seen.append((part, lo, hi, threading.current_thread().name)), n, size)
    return sorted(seen)


def test_in_parts_covers_the_range_once_on_every_core(monkeypatch):
    monkeypatch.setattr(parallel, "_MIN_SIZE", 100)
    parallel._use_cores(2, parallel.blas_controller())
    try:
        if parallel._parts < 2:
            pytest.skip("needs 2 cores")
        seen = _ranges_and_threads(7, size=100)
        assert [(part, lo, hi) for part, lo, hi, _ in seen] == [(0, 0, 3), (1, 3, 7)]
        assert seen[0][3] == "MainThread" and seen[1][3].startswith("chainrule-part")
        # a helper leaves Ctrl-C to the main thread, which raises KeyboardInterrupt
        masks = []
        in_parts(lambda part, lo, hi: masks.append((part, signal.pthread_sigmask(signal.SIG_BLOCK, []))), 2, 100)
        assert {part: signal.SIGINT in mask for part, mask in masks} == {0: False, 1: True}
        assert [p[:3] for p in _ranges_and_threads(7, size=99)] == [(0, 0, 7)]  # too small to split
        assert [p[:3] for p in _ranges_and_threads(1, size=100)] == [(0, 0, 1)]  # nothing to split

        def fails(part, lo, hi):
            if part == 1:
                raise ValueError("in a helper")

        with pytest.raises(ValueError, match="in a helper"):  # a helper's exception reaches the caller
            in_parts(fails, 4, 100)
        # tqdm's monitor thread (left by any progress bar with the default monitor_interval) only
        # redraws bars: passes are still cut
        with tqdm(total=1, disable=False, file=io.StringIO()):
            assert any(isinstance(t, TMonitor) for t in threading.enumerate())
            assert [p[:3] for p in _ranges_and_threads(7, size=100)] == [(0, 0, 3), (1, 3, 7)]
        # while another thread runs, it might be inside BLAS, whose threads are not stopped then:
        # the pass stays whole, in the calling thread
        release = threading.Event()
        other = threading.Thread(target=release.wait)
        other.start()
        try:
            assert [p[:3] + (p[3],) for p in _ranges_and_threads(7, size=100)] == [(0, 0, 7, "MainThread")]
        finally:
            release.set()
            other.join()
    finally:
        parallel._use_cores(1, None)
    assert [p[:3] for p in _ranges_and_threads(7, size=100)] == [(0, 0, 7)]  # outside fit: whole


def test_blas_threads_set_the_parts_of_element_wise_passes():
    """While a BlasThreads runs (inside fit), passes are cut into as many parts as BLAS may use
    threads (at most one per core); after it, they are whole again."""
    if not os.path.exists("/proc/stat") or (os.cpu_count() or 1) < 2 or blas_threads_now() < 2:
        pytest.skip("needs Linux's /proc/stat and a BLAS with at least 2 threads")
    a = np.ones((256, 256), np.float32)
    seen = []
    with BlasThreads(every=0.1) as blas:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            a @ a
            seen.append((blas.adapt(), parallel._parts))
    measured = [(threads, parts) for threads, parts in seen if threads is not None]
    assert measured and all(parts == min(threads, os.cpu_count()) for threads, parts in measured)
    assert parallel._parts == 1
