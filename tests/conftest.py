"""Shared fixtures and helpers. Tests that need real data skip only when $CHAINRULE_DATA is unset (CI sets it).

Helpers used by several test modules are plain functions here, imported as `from conftest import ...`
(pytest puts this directory on sys.path).
"""

from __future__ import annotations

import email.message
import errno
import os
import resource
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import strategies as st

import chainrule as cr
from chainrule import parallel
from chainrule.cli import main
from chainrule.data.corpora import read_messages
from chainrule.data.idx import find_files


@pytest.fixture(scope="session")
def data_root() -> Path:
    """$CHAINRULE_DATA, the folder holding mnist/, spamassassin/ and sms-spam/."""
    root = os.environ.get("CHAINRULE_DATA")
    if not root:
        pytest.skip("CHAINRULE_DATA is not set")
    return Path(root)


@pytest.fixture(scope="session")
def mnist_dir(data_root: Path) -> Path:
    """$CHAINRULE_DATA/mnist, the four gzipped IDX files."""
    return data_root / "mnist"


def require_fashion() -> Path:
    """The folder holding Fashion-MNIST (Debian's dataset-fashion-mnist, or $CHAINRULE_DATA/fashion-mnist),
    found without downloading; skips when it is nowhere, but fails in CI, which installs it."""
    found = find_files("train", "fashion")
    if found is None or find_files("test", "fashion") is None:
        if os.environ.get("CI"):
            pytest.fail("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    return found[0].parent


@pytest.fixture(params=[1, 2], ids=["whole", "in-2-parts"])
def parts(request, monkeypatch):
    """Element-wise passes whole, and cut into 2 parts run at once (as `fit` cuts them on a
    machine with cores to spare; see `chainrule.parallel.in_parts`) whatever their size, with
    OpenBLAS's threads stopped first where NumPy's BLAS is OpenBLAS."""
    monkeypatch.setattr(parallel, "_MIN_SIZE", 0)
    parallel._use_cores(request.param, parallel.blas_controller())
    # passes are cut only while no other thread runs (see parallel._stop_spinning)
    assert request.param == 1 or parallel._stop_spinning(), "a thread left running by an earlier test"
    yield request.param
    parallel._use_cores(1, None)


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """The folder holding Fashion-MNIST's four files; see `require_fashion`."""
    return require_fashion()


# ---------------------------------------------------------------------------------------------
# Mail and the spam filter: test_corpora, test_mime, test_text and the test_spam_* files.


@pytest.fixture(scope="session")
def spamassassin_messages(data_root: Path) -> list:
    """Every readable message of the three SpamAssassin tarballs (3,250), as `RawMessage`s."""
    return [m for m in read_messages(sorted((data_root / "spamassassin").glob("*.tar*"))) if not m.error]


@pytest.fixture(scope="session")
def spam_corpus(data_root: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(training folder, held-out folder): a small labelled corpus from the real SpamAssassin
    tarballs, each with spam/, easy_ham/ and hard_ham/ folders (160/200/40 messages to train on,
    the next 40 of each held out), each file as the tarball holds it (most start with an mbox
    "From " line)."""
    root = tmp_path_factory.mktemp("corpus")
    held = tmp_path_factory.mktemp("held")
    counts: dict[str, int] = {}
    for tarball in sorted((data_root / "spamassassin").glob("*.tar*")):
        with tarfile.open(tarball) as tar:
            for member in tar:
                folder, _, name = member.name.partition("/")
                if not member.isfile() or name == "cmds":  # (the corpus's list of shell commands)
                    continue
                k = counts.get(folder, 0)
                counts[folder] = k + 1
                limit = {"spam": 160, "easy_ham": 200, "hard_ham": 40}[folder]
                if k >= limit + 40:
                    break
                dest = (root if k < limit else held) / folder
                dest.mkdir(exist_ok=True)
                (dest / f"{k:04d}").write_bytes(tar.extractfile(member).read())
    return root, held


@pytest.fixture(scope="session")
def spam_model(spam_corpus: tuple[Path, Path], tmp_path_factory) -> Path:
    """A small spam filter trained by `chainrule spam train` on `spam_corpus`'s training folder:
    the default 5-member committee, 2^14 buckets, 8 hidden units each."""
    out = tmp_path_factory.mktemp("model") / "m"
    rc = main(["spam", "train", str(spam_corpus[0]), "--out", str(out), "--hash-bits", "14", "--hidden", "8",
               "--epochs", "12", "--batch-size", "64", "--quiet"])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def run_chainrule():
    """run_chainrule(args, stdin=b"") -> `subprocess.CompletedProcess` of the real `chainrule`
    command, in a fresh interpreter (exit codes and stderr exactly as a shell sees them)."""
    command = [sys.executable, "-c", "import sys; from chainrule.cli import main; sys.exit(main())"]

    def run(args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess:
        return subprocess.run([*command, *args], input=stdin, capture_output=True, check=False, timeout=300)

    return run


@pytest.fixture
def synthetic_spam_rows() -> tuple[sp.csr_matrix, np.ndarray]:
    """(x, y): 120 hashed rows of 64 buckets, 30 spam; spam and ham draw their 6 tokens each from
    overlapping bucket ranges, so a small network learns them in a few epochs, but not perfectly."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(90, int), np.ones(30, int)]
    rows = [rng.choice(np.arange(0, 40) if t == 0 else np.arange(25, 64), 6, replace=False) for t in y]
    x = sp.csr_matrix((np.full(6 * len(y), 0.4, np.float32), np.concatenate(rows), np.arange(0, 6 * len(y) + 1, 6)),
                      shape=(len(y), 64))
    return x, y


def blobs(n: int = 200, d: int = 10, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters, one per class: an easy problem for the training loop's bookkeeping tests."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(scale=2.0, size=(classes, d))
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def small_mlp(seed: int = 0, d: int = 10, classes: int = 3, dropout: float = 0.0, dtype=np.float32) -> cr.Sequential:
    """d-16-classes with a ReLU (and optional dropout): the network `blobs` is learned with."""
    layers = [cr.Linear(d, 16), cr.ReLU()]
    if dropout:
        layers.append(cr.Dropout(dropout))
    return cr.Sequential(layers + [cr.Linear(16, classes)], seed=seed, dtype=dtype)


class WeightRecorder(cr.Callback):
    """Keeps a copy of the weights after every epoch."""

    def __init__(self):
        self.states = []

    def on_epoch_end(self, epoch, logs, model):
        self.states.append(model.flat_params.copy())


def with_huge_weights(model: Path, copy: Path) -> Path:
    """A copy at `copy` of the model directory `model`, its network's weights multiplied by 1e30:
    each one finite, so that the model loads, but what the layers make of them overflows float32
    to infinity and NaN (inf - inf) on the way to the outputs."""
    shutil.copytree(model, copy)
    path = cr.model_files(copy)["model"]
    with np.load(path) as saved:
        arrays = dict(saved)
    arrays["params"] = arrays["params"] * np.float32(1e30)
    np.savez(path, **arrays)
    return copy


def blas_threads_now() -> int:
    """NumPy's BLAS thread count at this moment, as threadpoolctl reads it from the library."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return min(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")


def damaged(raw: bytes, data) -> bytes:
    """`raw` with a few bytes inserted, a few changed and perhaps the end cut off, as hypothesis's
    `data` draws them: what a bad disk, a cut download or a careless edit does to a file. Positions
    are drawn in a fixed range and taken modulo the length, so that a file whose length varies a
    little from run to run (one that records times) draws alike."""
    raw = bytearray(raw)
    at = st.integers(0, 1 << 22)
    cut = data.draw(at) % (len(raw) + 1)
    raw[cut:cut] = data.draw(st.binary(max_size=8))
    for where, byte in data.draw(st.lists(st.tuples(at, st.integers(0, 255)), max_size=4)):
        if raw:
            raw[where % len(raw)] = byte
    if data.draw(st.booleans()):
        raw = raw[: data.draw(at) % (len(raw) + 1)]
    return bytes(raw)


def mail_with_an_attachment() -> bytes:
    """An ordinary mail of 257 KB, a line of text and a PDF of 190 KB (random bytes): a message
    large enough that how many of them are held in memory at once shows."""
    mail = email.message.EmailMessage()
    mail["Subject"] = "the report"
    mail.set_content("Please find the report attached.\n")
    mail.add_attachment(os.urandom(190_000), maintype="application", subtype="pdf", filename="report.pdf")
    return mail.as_bytes()


def open_files(soft: int, hard: int):
    """A `preexec_fn` that starts a process under these limits on open files (`ulimit -Sn SOFT -Hn HARD`)."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 4 MB tmpfs, a real file system that fills up (`fill_disk`), unmounted after the test.
    Mounting needs root: skipped without it, and failed in CI."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(disk)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("a small tmpfs to fill needs root (mount -t tmpfs)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def fill_disk(disk: Path) -> Path:
    """Fill the file system of `disk` to the last byte with one file, returned (delete it to free the room)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def as_a_user() -> list[str]:
    """The start of a command line that runs it, where the tests run as root, without the capabilities
    that let root read, enter and write what file modes forbid and bind ports below 1024: what a
    server run by a user meets (root's chmod cannot refuse root). Nothing for another user."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("setpriv is not installed (apt-get install util-linux)")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-net_bind_service", "--inh-caps=-all"]


@pytest.fixture
def read_only_copy(tmp_path):
    """read_only_copy(folder, leave_out=()) -> a copy of `folder` (less the files named in
    `leave_out`) on a file system mounted read-only: a tmpfs, unmounted after the test. Root only
    (mount); skipped where this machine lets no tmpfs be mounted."""
    mounted = []

    def copy(folder: Path, leave_out=()) -> Path:
        where = tmp_path / f"ro{len(mounted)}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64M", "tmpfs", str(where)], capture_output=True,
                           text=True) if os.geteuid() == 0 and shutil.which("mount") else None
        if r is None or r.returncode != 0:
            pytest.skip("mounting a read-only file system needs root and mount" + (f": {r.stderr}" if r else ""))
        mounted.append(where)
        shutil.copytree(folder, where / folder.name, ignore=lambda _, names: [n for n in names if n in leave_out])
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        return where / folder.name

    yield copy
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)
