"""Data parallelism over MPI, run for real: `mpirun --oversubscribe -np 2` and `-np 4` started from
here, against the same work in one process.

What is checked: N processes give the weights of one up to floating-point summation order (the
tolerance below, measured), and the same accuracy; every rank ends with exactly the same weights;
a checkpoint written by N processes resumes on another N after a rank is killed; a failing or
interrupted rank stops the job with its one-line error instead of a hang; `spam classify` prints in
input order, and refuses ranks that loaded different filters; and one process, without mpirun or
under `mpirun -np 1`, never imports mpi4py. Skipped only where mpi4py or mpirun is not
installed, and never in CI (CI set), where that fails instead.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import chainrule as cr
from chainrule import distributed
from chainrule.data import idx
from chainrule.errors import UserError
from conftest import blobs

DATA = os.environ.get("CHAINRULE_DATA")
HERE = Path(__file__).parent
CLI = [sys.executable, "-c", "import sys; from chainrule.cli import main; sys.exit(main())"]
# ‖w_N - w_1‖ / ‖w_1‖ for the weights and for each layer buffer (batch-norm running statistics)
# after a short run. Measured: 4e-8 (mlp, Adam, 1 epoch = 9 steps), 1e-7 to 5e-7 (cnn, SGD); the
# sums differ only in the order their terms are added, at float32's 6e-8 per rounding.
RELATIVE_TOLERANCE = 1e-5
TIMEOUT = 240  # seconds for any one mpirun: a job that hangs fails the test instead of the suite


@pytest.fixture(scope="session")
def mpirun() -> list[str]:
    """The start of an mpirun command line (`--oversubscribe`: 4 ranks on 2 cores); skips where
    mpi4py or mpirun is missing, fails there under CI."""
    launcher = shutil.which("mpirun")
    missing = [name for name, found in (("mpi4py", importlib.util.find_spec("mpi4py")), ("mpirun", launcher))
               if not found]
    if missing:
        message = f"{' and '.join(missing)} not installed (pip install 'chainrule[mpi]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    command = [launcher, "--oversubscribe"]
    if os.geteuid() == 0:
        command.append("--allow-run-as-root")
    # One BLAS thread per rank (several ranks share 2 cores); the test's environment passed on.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name in ("PYTHONPATH", "CHAINRULE_DATA", "MPLBACKEND", "OMP_NUM_THREADS"):
        if name in os.environ:
            command += ["-x", name]
    return command


def run(command: list, timeout: float = TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout, **kwargs)


def our_lines(stderr: str) -> list[str]:
    """The lines chainrule wrote to stderr under mpirun. prterun ends its MPI_ABORT notice with a
    stray NUL byte (fixed upstream in openpmix/prrte#1905), which can land at the start of the
    next forwarded line: it is prterun's, not ours, so it is dropped first. And the notice, framed
    by lines of dashes, can start before the line ending of the rank's last forwarded line reaches
    prterun's output ("...spam classify)-----"): its dashes end a line too."""
    lines = re.sub(r"-{20,}", "\n", stderr.replace("\0", "")).splitlines()
    return [line for line in lines if line.startswith("chainrule")]


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


# -- one process: nothing changes ------------------------------------------------------------------


def test_one_process_without_mpirun_never_imports_mpi4py():
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_VARIABLES}
    code = (
        "import sys\n"
        "import chainrule as cr, chainrule.cli\n"
        "from chainrule import distributed\n"
        "from conftest import blobs, small_mlp\n"
        "world = distributed.world()\n"
        "x, y = blobs()\n"
        "model = small_mlp(dropout=0.2)\n"
        "cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters()), epochs=2, verbose=False, world=world)\n"
        "print(world.size, 'mpi4py' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=HERE,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "False"]


def test_a_launcher_without_mpi4py_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # `import mpi4py` now raises ImportError
    distributed.world.cache_clear()
    try:
        with pytest.raises(UserError, match=r"mpi4py is not installed: pip install 'chainrule\[mpi\]'"):
            distributed.world()
        monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")  # mpirun -np 1: one process, nothing to share
        distributed.world.cache_clear()
        assert distributed.world().size == 1
    finally:
        distributed.world.cache_clear()


def test_one_process_under_mpirun_never_imports_mpi4py(mpirun):
    """`mpirun -np 1` starts one process: nothing to share, so MPI is never set up (mpi4py was
    imported, and MPI initialised, for a world of one)."""
    code = ("import sys\n"
            "from chainrule.cli import main\n"
            "code = main(['explain', '--epochs', '10'])\n"
            "print('mpi4py imported:', 'mpi4py' in sys.modules)\n"
            "sys.exit(code)\n")
    proc = run([*mpirun, "-np", 1, sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "mpi4py imported: False"


def test_gradient_buckets_cover_the_flat_buffer_once_in_whole_layers():
    model = cr.Sequential([cr.Linear(784, 512), cr.ReLU(), cr.Dropout(0.2), cr.Linear(512, 512), cr.ReLU(),
                           cr.Linear(512, 10)], seed=0)
    for bucket_bytes, lowest_layers in ((16 * 1024, [0, 3, 5]), (256 * 1024, [0, 3])):
        buckets = distributed.GradientBuckets(model, distributed.World(), bucket_bytes)
        pieces = sorted(buckets.starts.values())
        assert pieces[0][0] == 0 and pieces[-1][1] == model.flat_grads.size
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))  # contiguous, no overlap
        # keyed by the layer whose backward completes the bucket: at 16 KB every Linear has its
        # own; at 256 KB the last one (5,130 values, 20 KB) waits to share layer 3's
        assert sorted(buckets.starts) == lowest_layers
        assert buckets.starts[lowest_layers[-1]][1] == model.flat_grads.size


def test_world_shards_split_evenly_in_rank_order():
    class Four(distributed.World):
        size = 4

    world = Four()
    assert [world.shard(10, r) for r in range(4)] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert [world.shard(3, r) for r in range(4)] == [(0, 0), (0, 1), (1, 2), (2, 3)]


def test_fit_refuses_a_batch_smaller_than_the_processes_and_augment_without_batch_rows():
    class Two(distributed.World):
        size = 2

    x, y = blobs()
    model = cr.Sequential([cr.Linear(10, 3)], seed=0)
    with pytest.raises(ValueError, match="batch_size 1 is smaller than the 2 processes"):
        cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), batch_size=1, world=Two())
    with pytest.raises(ValueError, match="augment must take batch_rows"):
        cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), augment=lambda xb, rng: xb,
               world=Two())
    with pytest.raises(ValueError, match="1 training examples for 2 processes"):  # (not 0 steps, then 0/0)
        cr.fit(model, x[:1], y[:1], cr.CrossEntropy(), cr.SGD(model.parameters()), batch_size=4, world=Two())


# -- the same answer at any N ----------------------------------------------------------------------

needs_data = pytest.mark.skipif(not DATA, reason="CHAINRULE_DATA is not set")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """run(preset, optimizer, images) -> the worker's output for one process without mpirun (cached)."""
    done = {}

    def result(preset: str, optimizer: str, images: int = 600) -> dict:
        if (preset, optimizer, images) not in done:
            out = tmp_path_factory.mktemp("one") / f"{preset}-{optimizer}-{images}.npz"
            proc = run([sys.executable, HERE / "mpi_fit_worker.py", preset, images, 64, optimizer, out])
            assert proc.returncode == 0, proc.stderr
            done[preset, optimizer, images] = arrays(out)
        return done[preset, optimizer, images]

    return result


@needs_data
@pytest.mark.parametrize("preset, optimizer", [("mlp", "preset"), ("cnn", "sgd"), ("mlp", "sgd-weighted")])
@pytest.mark.parametrize("ranks", [2, 4])
def test_n_processes_train_the_weights_of_one(mpirun, one_process, tmp_path, preset, optimizer, ranks):
    """One epoch (9 steps of a global batch of 64) of a digits preset: mlp has dropout and
    augmentation, cnn batch norm too (here with SGD: Adam's first steps divide each gradient by
    its own size, so a gradient that is ~0 takes a full step whose sign is rounding noise — the
    cnn with Adam ends 1e-3 apart after 9 steps although its gradients agree to 7e-7). With class
    weights, a shard's share of the batch's loss is its share of the batch's weight, not of its size."""
    out = tmp_path / "w.npz"
    proc = run([*mpirun, "-np", ranks, sys.executable, HERE / "mpi_fit_worker.py", preset, 600, 64, optimizer, out])
    assert proc.returncode == 0, proc.stderr
    one, many = one_process(preset, optimizer), arrays(out)
    assert int(many["ranks"]) == ranks
    assert bool(many["same_on_every_rank"]), "the ranks' weights drifted apart"
    for key in one:
        if one[key].dtype.kind == "f":
            assert relative_difference(one[key], many[key]) < RELATIVE_TOLERANCE, key
    logs_one, logs_many = (json.loads(bytes(r["logs"])) for r in (one, many))
    assert logs_many["accuracy"] == logs_one["accuracy"] and logs_many["val_accuracy"] == logs_one["val_accuracy"]
    assert logs_many["loss"] == pytest.approx(logs_one["loss"], rel=RELATIVE_TOLERANCE)
    assert logs_many["val_loss"] == pytest.approx(logs_one["val_loss"], rel=RELATIVE_TOLERANCE)


@needs_data
def test_two_processes_merge_a_lone_leftover_example_as_one_does(mpirun, one_process, tmp_path):
    """629 images: 52 for validation, 577 = 9 x 64 + 1 to train on. One process folds the single
    leftover example into the last batch; two processes must take the same 9 steps (they left it
    out, and trained on other examples)."""
    out = tmp_path / "w.npz"
    proc = run([*mpirun, "-np", 2, sys.executable, HERE / "mpi_fit_worker.py", "mlp", 629, 64, "preset", out])
    assert proc.returncode == 0, proc.stderr
    one, two = one_process("mlp", "preset", 629), arrays(out)
    for key in one:
        if one[key].dtype.kind == "f":
            assert relative_difference(one[key], two[key]) < RELATIVE_TOLERANCE, key


RUN = ("digits", "train", "--model", "mlp", "--train-size", "1200", "--batch-size", "64", "--seed", "5", "--quiet")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """`chainrule digits train` of RUN with 6 epochs, in one process without mpirun."""
    out = tmp_path_factory.mktemp("digits") / "one"
    proc = run([*CLI, *RUN, "--epochs", "6", "--out", out])
    assert proc.returncode == 0, proc.stderr
    return out


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = arrays(cr.model_files(a)["model"]), arrays(cr.model_files(b)["model"])
    for key in wa:
        assert relative_difference(wa[key], wb[key]) < RELATIVE_TOLERANCE, key
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["epochs_run"] == mb["epochs_run"] and ma["best_epoch"] == mb["best_epoch"]
    assert ma["test"]["accuracy"] == mb["test"]["accuracy"]  # on the 10,000 test images


@needs_data
def test_digits_train_on_two_processes_matches_one(mpirun, uninterrupted, tmp_path):
    out = tmp_path / "two"
    proc = run([*mpirun, "-np", 2, *CLI, *RUN, "--epochs", "6", "--out", out])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("test accuracy") == 1, proc.stdout  # rank 0 alone reports
    assert_same_run(uninterrupted, out)
    assert json.loads((out / "model.json").read_text())["metadata"]["processes"] == 2


def test_fashion_train_on_two_processes_matches_one(mpirun, fashion_dir, tmp_path):
    """The Fashion-MNIST presets augment by mirroring and shifting: each rank must draw the moves
    of the whole global batch, as one process does, and use its own rows."""
    run_args = ("images", "train", "--data", "fashion", "--model", "mlp", "--train-size", "1200", "--batch-size",
                "64", "--seed", "5", "--quiet", "--epochs", "2")
    one, two = tmp_path / "one", tmp_path / "two"
    proc = run([*CLI, *run_args, "--out", one])
    assert proc.returncode == 0, proc.stderr
    proc = run([*mpirun, "-np", 2, *CLI, *run_args, "--out", two])
    assert proc.returncode == 0, proc.stderr
    assert_same_run(one, two)


def _rank_pid(rank: int, out: Path) -> int:
    """The process id of the given rank of the job writing to `out` (from /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if str(out).encode() in cmdline and f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no rank {rank} writing to {out}")


@needs_data
def test_a_killed_rank_leaves_a_checkpoint_that_resumes_on_another_n(mpirun, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    job = subprocess.Popen([str(c) for c in [*mpirun, "-np", 2, *CLI, *RUN, "--epochs", "6", "--out", out]],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while not (out / "checkpoint.npz").exists():
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(_rank_pid(1, out), signal.SIGKILL)
    _, stderr = job.communicate(timeout=60)  # mpirun must notice and end the job, not hang
    assert job.returncode != 0
    with np.load(out / "checkpoint.npz", allow_pickle=False) as npz:
        done = json.loads(npz["json"].tobytes())["epochs_done"]
    assert 1 <= done < 6, "killed mid-run: after a checkpoint, before the end"
    assert not (out / "model.json").exists()

    resumed = run([*mpirun, "-np", 4, *CLI, "digits", "train", "--out", out, "--resume", "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(uninterrupted, out)


@needs_data
@pytest.mark.parametrize("interrupted", [[1], [0, 1]], ids=["one rank", "every rank"])
def test_ctrl_c_ends_the_job_with_one_line(mpirun, tmp_path, interrupted):
    """SIGINT to one rank, or to every rank at once (`scancel --signal=INT`, srun passing on a
    Ctrl-C): the interrupted rank returned 130 and waited in MPI_Finalize, the others for it in a
    collective operation, all spinning, for ever. It says so and ends the job; rank 0 says how to
    continue. (With every rank interrupted, rank 0 may be held in a collective operation until the
    other rank's end of the job stops it: then the other rank's line is the one.)"""
    out = tmp_path / "out"
    job = subprocess.Popen([str(c) for c in [*mpirun, "-np", 2, *CLI, *RUN, "--epochs", "6", "--out", out]],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / "checkpoint.npz").exists():
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        for pid in [_rank_pid(rank, out) for rank in interrupted]:
            os.kill(pid, signal.SIGINT)
        _, stderr = job.communicate(timeout=60)  # the job must end, not hang
    finally:
        job.kill()  # (a job that hung: not left spinning after the test)
        job.wait()
    assert job.returncode == 130, stderr
    ours = our_lines(stderr)
    hint = (f"chainrule: rank 0 of 2: interrupted; the last completed epoch is saved in {out / 'checkpoint.npz'}; "
            f"continue with: chainrule digits train --out {out} --resume")
    if interrupted == [1]:
        assert ours == ["chainrule: rank 1 of 2: interrupted"], stderr
    else:
        assert ours in ([hint], ["chainrule: rank 1 of 2: interrupted"]), stderr
    assert "Traceback" not in stderr and not (out / "model.json").exists()


# -- failures: one line, no hang -------------------------------------------------------------------


@needs_data
def test_a_failing_rank_stops_the_job_with_its_one_line_error(mpirun, data_root, tmp_path):
    # MPMD: rank 0 has its data and waits for rank 1 inside the first collective operation; rank 1
    # finds MNIST under its own CHAINRULE_DATA, with a damaged training-images file. (Options are
    # rank 0's, broadcast to all, so the damage is in what rank 1 alone reads.)
    damaged = tmp_path / "damaged" / "mnist"
    damaged.mkdir(parents=True)
    for f in (data_root / "mnist").glob("*-ubyte.gz"):
        (damaged / f.name).write_bytes(f.read_bytes())
    images = damaged / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:100_000]))
    common = [*CLI, *RUN, "--epochs", "2", "--out", tmp_path / "out"]
    proc = run([*mpirun, "-np", 1, *common, ":", "-np", 1, "-x", f"CHAINRULE_DATA={damaged.parent}", *common])
    assert proc.returncode == 2
    ours = our_lines(proc.stderr)
    assert len(ours) == 1, proc.stderr
    assert ours[0].startswith(f"chainrule: error: rank 1 of 2: {images}"), ours[0]
    assert "Traceback" not in proc.stderr


@needs_data
def test_ranks_that_read_different_data_sets_stop_with_one_line(mpirun, tmp_path):
    """Rank 1's CHAINRULE_DATA holds other images under MNIST's names (here: MNIST's from the
    1,201st on): the job trained a model on a mix of both; with other sizes its ranks waited for ever."""
    other = tmp_path / "other" / "mnist"
    other.mkdir(parents=True)
    for split, (images_name, labels_name) in idx.FILES.items():
        s = idx.load_image_set(DATA, split, default="mnist")
        for name, array in ((images_name, s.images[1200:]), (labels_name, s.labels[1200:])):
            header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
            (other / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes(), compresslevel=1))
    common = [*CLI, *RUN, "--epochs", "1", "--out", tmp_path / "out"]
    proc = run([*mpirun, "-np", 1, *common, ":", "-np", 1, "-x", f"CHAINRULE_DATA={other.parent}", *common])
    assert proc.returncode == 2, proc.stderr
    ours = our_lines(proc.stderr)
    assert len(ours) == 1 and ours[0].startswith("chainrule: error: rank 0 of 2: the processes read different data "
                                                 "sets (rank 0: 1,200, rank 1: 1,200 training images;"), proc.stderr
    assert not (tmp_path / "out" / "model.json").exists()


@needs_data
def test_a_damaged_checkpoint_stops_every_rank_with_one_line(mpirun, uninterrupted, tmp_path):
    # Rank 0 alone reads the checkpoint (the others wait for its arrays): its error must end them.
    out = tmp_path / "damaged"
    shutil.copytree(uninterrupted, out)
    (out / "checkpoint.npz").write_bytes(b"PK\x03\x04 cut short")
    proc = run([*mpirun, "-np", 2, *CLI, "digits", "train", "--out", out, "--resume", "--quiet"])
    assert proc.returncode == 2
    ours = our_lines(proc.stderr)
    assert len(ours) == 1, proc.stderr
    assert ours[0].startswith("chainrule: error: rank 0 of 2: ")
    assert "checkpoint.npz: not a readable .npz file" in ours[0]
    assert "delete it to start afresh" in ours[0] and "Traceback" not in proc.stderr


def test_under_mpirun_usage_errors_are_said_once_and_standard_input_is_refused(mpirun, spam_model, tmp_path):
    """Every rank parses the same command line: one usage error, not one per rank. Open MPI's
    forwarding of standard input hangs (even for cat), so classify refuses '-' at once."""
    proc = run([*mpirun, "-np", 2, *CLI, "digits", "train", "--epochs", "0", "--out", tmp_path / "x"])
    assert proc.returncode == 2 and proc.stderr.count("error: argument --epochs") == 1, proc.stderr
    proc = run([*mpirun, "-np", 2, *CLI, "digits", "train", "--help"])  # (each rank printed it)
    assert proc.returncode == 0 and proc.stdout.count("usage: ") == 1, proc.stdout
    # a batch that cannot be shared out: the option's error, not an internal one, and no run folder
    proc = run([*mpirun, "-np", 2, *CLI, "digits", "train", "--batch-size", "1", "--out", tmp_path / "x"])
    assert proc.returncode == 2 and our_lines(proc.stderr) == [
        "chainrule: error: rank 0 of 2: --batch-size 1 is smaller than the 2 processes that share each batch"], \
        proc.stderr
    assert not (tmp_path / "x").exists()
    sms = tmp_path / "sms.txt"
    sms.write_text("ham\tsee you at eight\nspam\tWIN a FREE prize now\n" * 20)
    spam_train = [*CLI, "spam", "train", "--sms", sms, "--batch-size", "1", "--epochs", "1", "--hash-bits", "10",
                  "--quiet", "--seed", "0"]
    proc = run([*mpirun, "-np", 2, *spam_train, "--folds", "0", "--out", tmp_path / "one"])
    assert proc.returncode == 2 and our_lines(proc.stderr) == [
        "chainrule: error: rank 0 of 2: --batch-size 1 is smaller than the 2 processes that share each batch with "
        "--folds 0"], proc.stderr
    # a committee's members train one to a process: any batch size will do
    proc = run([*mpirun, "-np", 2, *spam_train, "--folds", "2", "--out", tmp_path / "committee"])
    assert proc.returncode == 0 and (tmp_path / "committee" / "model.json").is_file(), proc.stderr
    message = tmp_path / "m.eml"
    message.write_bytes(b"From: a@b.c\nSubject: hi\n\nhello\n")
    with open(message, "rb") as stdin:
        proc = run([*mpirun, "-np", 2, *CLI, "spam", "classify", spam_model], stdin=stdin)
    assert proc.returncode == 3 and "standard input is not read under mpirun" in proc.stderr


@pytest.mark.parametrize("args", [["spam", "explain", "{model}", "-"], ["spam", "learn", "{copy}", "--spam", "-"],
                                  ["spam", "classify", "{model}", "/dev/stdin"],
                                  ["spam", "explain", "{model}", "//dev/stdin"],
                                  ["spam", "explain", "{model}", "{up}dev/stdin"]])
def test_standard_input_is_refused_under_mpirun_by_every_command_that_reads_it(mpirun, spam_model, tmp_path, args):
    """Only `spam classify -` refused it: under `mpirun -np 1` explain, learn (holding the model's
    lock) and images/digits predict waited for ever on Open MPI's forwarding, and classify naming
    /dev/stdin on two processes too; then //dev/stdin and a relative path to it still did."""
    shutil.copytree(spam_model, tmp_path / "copy")
    message = tmp_path / "m.eml"
    message.write_bytes(b"From: a@b.c\nSubject: hi\n\nhello\n")
    up = "../" * (len(Path.cwd().parts) - 1)  # (a relative path to /dev/stdin)
    args = [a.format(model=spam_model, copy=tmp_path / "copy", up=up) for a in args]
    with open(message, "rb") as stdin:
        proc = run([*mpirun, "-np", 2 if args[1] == "classify" else 1, *CLI, *args], stdin=stdin, timeout=60)
    assert proc.returncode != 0 and "standard input is not read under mpirun" in proc.stderr, proc.stderr


def test_a_command_for_one_process_refuses_to_run_on_several(mpirun, tmp_path):
    proc = run([*mpirun, "-np", 2, *CLI, "digits", "evaluate", tmp_path])
    assert proc.returncode == 2
    ours = our_lines(proc.stderr)
    assert ours == ["chainrule: error: rank 0 of 2: this command runs in one process; start it without mpirun "
                    "(these run on several: digits train, images train, spam train, spam classify)"], proc.stderr


# -- spam ------------------------------------------------------------------------------------------


@needs_data
def test_spam_train_on_two_processes_writes_the_filter_of_one(mpirun, data_root, tmp_path):
    """A committee of 5 dealt out to 2 ranks, each member trained alone: bit for bit the same."""
    sms = tmp_path / "sms.txt"
    sms.write_text("".join((data_root / "sms-spam" / "SMSSpamCollection").read_text().splitlines(True)[:800]))
    args = ["spam", "train", "--sms", sms, "--hash-bits", "12", "--hidden", "8", "--epochs", "5", "--quiet"]
    one = run([*CLI, *args, "--out", tmp_path / "one"])
    two = run([*mpirun, "-np", 2, *CLI, *args, "--out", tmp_path / "two"])
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    one_files, two_files = (cr.model_files(tmp_path / d) for d in ("one", "two"))
    assert one_files.keys() == two_files.keys()
    for name in one_files:  # the weights, idf weights and replay sample
        assert one_files[name].read_bytes() == two_files[name].read_bytes(), name
    assert two.stdout.count("validation:") == 1


def test_spam_train_refuses_ranks_that_read_different_messages(mpirun, data_root, tmp_path):
    """Each rank reads the corpus itself: one that read another (a message delivered into the
    Maildir while the ranks started, say) had its rows glued to rank 0's labels, a ham trained as
    spam and exit 0. Refused, in one line, before training."""
    lines = (data_root / "sms-spam" / "SMSSpamCollection").read_text().splitlines(True)[:400]
    for rank, kept in ((0, lines), (1, lines[:-1])):  # rank 1's copy lacks the last text
        (tmp_path / f"sms{rank}.txt").write_text("".join(kept))
    script = (f"exec {shlex.join(map(str, CLI))} spam train --sms {tmp_path}/sms$OMPI_COMM_WORLD_RANK.txt "
              f"--hash-bits 12 --hidden 4 --epochs 2 --quiet --out {tmp_path / 'm'}")
    proc = run([*mpirun, "-np", 2, "sh", "-c", script])
    assert proc.returncode == 2, proc.stderr
    ours = our_lines(proc.stderr)
    assert len(ours) == 1 and "the processes read different messages" in ours[0], proc.stderr
    assert not (tmp_path / "m").exists()


@needs_data
@pytest.mark.parametrize("ranks", [2, 4])
def test_spam_classify_on_n_processes_prints_in_input_order(mpirun, spam_model, spam_corpus, ranks):
    """The same lines in the same order as one process prints. A probability may differ in its
    last float32 digits, and so in the last printed one: a message is scored in a batch of other
    rows on each process, and BLAS rounds a product by its number of rows (measured: up to 6e-7
    for one 40x1 product, 5e-5 for a 784x512 one), as it does between batches in one process."""
    args = ["spam", "classify", spam_model, spam_corpus[1], spam_corpus[0] / "spam", "--json"]
    one = run([*CLI, *args])
    many = run([*mpirun, "-np", ranks, *CLI, *args])
    assert one.returncode == many.returncode == 0, one.stderr + many.stderr
    ones, manys = ([json.loads(line) for line in out.stdout.splitlines()] for out in (one, many))
    assert len(ones) == 280 and [d["source"] for d in manys] == [d["source"] for d in ones]
    for a, b in zip(ones, manys, strict=True):
        assert abs(a.pop("probability") - b.pop("probability")) < 2e-6 and a == b, (a, b)


@needs_data
def test_spam_classify_annotate_passes_on_a_message_over_max_bytes_on_every_rank(mpirun, spam_model, spam_corpus):
    """--annotate of a message over --max-bytes: rank 0 passed it on and returned, while the other
    rank waited for the next batch, for ever. Now the job ends as one process does: the message
    whole, a warning, exit 0."""
    message = next(p for p in sorted((spam_corpus[1] / "spam").iterdir())
                   if p.stat().st_size > 4000 and p.read_bytes().isascii())
    args = ["spam", "classify", spam_model, "--annotate", "--max-bytes", 1000, message]
    one = run([*CLI, *args])
    two = run([*mpirun, "-np", 2, *CLI, *args], timeout=120)  # (seconds when it works)
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    assert two.stdout == one.stdout == message.read_text()
    assert our_lines(two.stderr) == [f"chainrule: warning: {message}: larger than --max-bytes; passed on without "
                                     "annotation"], two.stderr


@needs_data
def test_spam_classify_refuses_ranks_that_loaded_different_filters(mpirun, spam_model, spam_corpus, tmp_path):
    """Every rank loads the filter itself: one that loaded another (another machine's copy of the
    folder, or one that `spam learn` or the daemon's TELL saved between the ranks' loads) scored
    its share of the messages with it, judged by rank 0's cut-offs, exit 0. Copies of one filter
    are the same filter; a copy that has learned a lesson is refused, in one line."""
    for rank in (0, 1):
        shutil.copytree(spam_model, tmp_path / str(rank) / "spam")
    script = (f"cd {tmp_path}/$OMPI_COMM_WORLD_RANK && exec {shlex.join(map(str, CLI))} spam classify spam "
              f"{spam_corpus[1] / 'spam'}")
    proc = run([*mpirun, "-np", 2, "sh", "-c", script])
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 40, proc.stderr
    lesson = sorted((spam_corpus[1] / "easy_ham").iterdir())[0]
    taught = run([*CLI, "spam", "learn", tmp_path / "1" / "spam", "--spam", lesson, "--seed", 0, "--quiet"])
    assert taught.returncode == 0, taught.stderr
    proc = run([*mpirun, "-np", 2, "sh", "-c", script])
    assert proc.returncode == 3, proc.stderr
    ours = our_lines(proc.stderr)
    assert len(ours) == 1 and ours[0].startswith("chainrule: error: rank 0 of 2: the processes loaded different "
                                                 "spam filters from spam (rank 1: not rank 0's): "), proc.stderr
    assert proc.stdout == ""


# -- deploy/slurm-train.sh on a one-node Slurm -----------------------------------------------------

SLURM_CONF = """\
ClusterName=chainrule-test
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm (Debian's slurm-wlm: slurmctld and slurmd on this machine, on free ports,
    without munge: auth/none), for as long as the tests need it; yields its environment."""
    tools = ["slurmctld", "slurmd", "sbatch", "sinfo", "scontrol"]
    missing = [t for t in tools if shutil.which(t) is None]
    if missing or os.geteuid() != 0:
        message = f"a one-node Slurm needs root and slurm-wlm ({', '.join(missing) or 'root'} missing)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("slurm")
    (root / "state").mkdir()
    (root / "spool").mkdir()
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=socket.gethostname(), ctld_port=_free_port(), d_port=_free_port(),
                                      root=root, cpus=os.cpu_count()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for daemon in (["slurmctld", "-i"], ["slurmd"]):
        started = subprocess.run([*daemon, "-f", str(conf)], env=env, capture_output=True, text=True, timeout=60)
        assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 60
        while run(["sinfo", "-h", "-o", "%T"], env=env).stdout.strip() != "idle":
            assert time.monotonic() < deadline, (root / "slurmctld.log").read_text()[-2000:]
            time.sleep(0.5)
        yield env
    finally:
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True, timeout=60)
        for pid_file in ("slurmctld.pid", "slurmd.pid"):
            try:
                pid = int((root / pid_file).read_text())
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                pass  # already gone


@needs_data
def test_the_slurm_batch_script_trains_on_two_ranks(mpirun, slurm, tmp_path):
    out = tmp_path / "run"
    env = {**slurm, "CHAINRULE_OUT": str(out), "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "CHAINRULE_ARGS": "--model mlp --train-size 1200 --epochs 1 --batch-size 64"}
    job = run(["sbatch", "--wait", "--nodes=1", "--ntasks=2", "--ntasks-per-node=2", f"--output={tmp_path}/job.out",
               Path(__file__).parents[1] / "deploy" / "slurm-train.sh"], env=env)
    log = (tmp_path / "job.out").read_text() if (tmp_path / "job.out").exists() else ""
    assert job.returncode == 0, job.stderr + log
    assert "test accuracy" in log
    assert json.loads((out / "model.json").read_text())["metadata"]["processes"] == 2


def test_the_mpijob_manifest_runs_a_chainrule_command_on_all_its_workers():
    """What can be checked of deploy/mpijob.yaml without a Kubernetes cluster: mpirun starts one
    rank per worker slot, and what it runs is a command chainrule's own parser accepts."""
    import yaml

    from chainrule.cli import build_parser

    job = yaml.safe_load((Path(__file__).parents[1] / "deploy" / "mpijob.yaml").read_text())
    assert job["apiVersion"] == "kubeflow.org/v2beta1" and job["kind"] == "MPIJob"
    spec = job["spec"]
    launcher = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    command = launcher["command"] + launcher["args"]
    assert command[0] == "mpirun"
    # the workers come from the operator's hostfile, named to mpirun: Open MPI 5 ignores the
    # OMPI_MCA_orte_default_hostfile the operator sets (every rank ran in the launcher pod)
    assert command[command.index("--hostfile") + 1] == "/etc/mpi/hostfile"
    ranks = int(command[command.index("-np") + 1])
    assert ranks == spec["mpiReplicaSpecs"]["Worker"]["replicas"] * spec["slotsPerWorker"]
    args = build_parser().parse_args(command[command.index("chainrule") + 1:])
    assert args.mpi and args.func.__module__ == "chainrule.cli.images"
    mounts = {m["mountPath"] for m in launcher["volumeMounts"]}
    assert str(Path(args.out).parents[-2]) in mounts  # the output is written to a shared volume
