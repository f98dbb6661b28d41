"""Atomic writes: a file appears whole or not at all, with the permissions a plain write would give."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from chainrule.errors import ModelFileError
from chainrule.files import (
    LOCK_FILE,
    STAGING_PREFIX,
    STALE_STAGING_S,
    atomic_open,
    atomic_write_bytes,
    folder_problem,
    locked_directory,
    npz_headers,
    read_npz,
    signals_held,
    written_together,
)


@pytest.fixture
def umask():
    """Set the process umask for one test, and put the old one back."""
    old = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(old)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_honour_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_bytes(tmp_path / "model.json", b"{}")
    assert stat.S_IMODE((tmp_path / "model.json").stat().st_mode) == expected


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the umask from Linux's /proc")
def test_the_umask_is_read_without_being_changed(tmp_path, umask, monkeypatch):
    """Setting the umask to read it, even for an instant, is process-wide: a file another thread
    (the web app's, the daemon's) created in that instant would get the wrong permissions."""
    umask(0o027)

    def changed(_):
        raise AssertionError("the umask was changed to read it")

    monkeypatch.setattr(os, "umask", changed)
    atomic_write_bytes(tmp_path / "model.json", b"{}")
    assert stat.S_IMODE((tmp_path / "model.json").stat().st_mode) == 0o640


def test_replacing_a_file_keeps_its_permissions(tmp_path, umask):
    path = tmp_path / "model.npz"
    path.write_bytes(b"old")
    path.chmod(0o640)
    umask(0o000)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("crash in the middle")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_write_into_a_folder_it_may_not_write_names_the_folder(tmp_path, monkeypatch):
    """`spam learn` on a model folder this user may not write said "models/spam/model-6340...npz:
    Permission denied": a file of a new name each run, that did not exist, and not that the folder
    could not be written. (Root writes any folder: mkstemp refuses here as it refuses another user.)"""
    def refused(**kwargs):
        raise PermissionError(13, "Permission denied", os.path.join(kwargs["dir"], kwargs["prefix"] + "x.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(OSError) as exc_info, atomic_open(tmp_path / "model-0123456789abcdef.npz"):
        pass
    assert exc_info.value.filename == str(tmp_path)
    assert exc_info.value.strerror == "cannot be written to (Permission denied)"


@pytest.mark.parametrize("name", ["y" * 251 + ".png", "é" * 125 + "a.png"])  # 255 bytes: the longest a name may be
def test_a_file_of_the_longest_name_is_written(tmp_path, name, monkeypatch):
    """The temporary file's name is 14 bytes longer than the file's: a figure asked for under a
    name of 242-255 bytes (`show --out`) was refused as too long."""
    seen = []
    mkstemp = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda **kw: seen.append(kw["prefix"]) or mkstemp(**kw))
    with atomic_open(tmp_path / name) as f:
        f.write(b"figure")
    assert seen[0].isprintable()  # (cut between characters: "é" is 2 bytes, and was cut in two)
    assert [p.name for p in tmp_path.iterdir()] == [name] and (tmp_path / name).read_bytes() == b"figure"


def test_the_directory_lock_is_reentrant_in_a_thread_and_makes_others_wait(tmp_path):
    order = []

    def other():
        with locked_directory(tmp_path):
            order.append("other")

    with locked_directory(tmp_path):
        with locked_directory(tmp_path):  # (a save inside a load-learn-save block)
            order.append("inner")
        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.3)
        order.append("outer done")
    t.join(5)
    assert order == ["inner", "outer done", "other"] and (tmp_path / LOCK_FILE).is_file()


def test_the_directory_lock_held_shared_admits_others_so_and_no_writer(tmp_path):
    """What `images evaluate` and `show` hold while they read a model: each other's hold let
    neither run ("another run is writing to this folder"). A writer refused by their holds is told
    so (`HeldByReaders`): it was told that another run was writing."""

    def try_lock(shared: bool) -> str:
        code = ("import sys\nfrom chainrule.files import locked_directory\n"
                "with locked_directory(sys.argv[1], wait=False, shared=sys.argv[2] == 'shared'):\n    print('held')")
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path), "shared" if shared else "writer"],
                           capture_output=True, text=True, timeout=60)
        return r.stdout.strip() or r.stderr.strip().splitlines()[-1].split(":")[0]

    with locked_directory(tmp_path, shared=True):
        assert (try_lock(shared=True), try_lock(shared=False)) == ("held", "chainrule.files.HeldByReaders")
        with locked_directory(tmp_path, shared=True):  # (re-entrant, as a writer's)
            pass
        with pytest.raises(RuntimeError, match="held shared by this thread"), locked_directory(tmp_path):
            pass  # (a save inside a shared hold would save with readers at work)
    with locked_directory(tmp_path):
        assert (try_lock(shared=True), try_lock(shared=False)) == ("BlockingIOError", "BlockingIOError")
    assert try_lock(shared=False) == "held"


def test_ctrl_c_during_the_commit_takes_effect_once_model_and_files_are_all_in_place(tmp_path):
    """The model was saved, then the files renamed one by one: Ctrl-C in between left a new model
    with the old run's history, or a new evaluation beside an old mistakes.png."""
    names = ("metrics.json", "history.csv", "mistakes.png")
    for name in (*names, "model.json"):
        (tmp_path / name).write_bytes(b"old")

    def save_model():
        atomic_write_bytes(tmp_path / "model.json", b"new")
        os.kill(os.getpid(), signal.SIGINT)  # (Ctrl-C, sent to the process, between the model's save and the renames)
        time.sleep(0.1)  # (time for it to arrive, on whichever thread the kernel picks)

    # another thread, as BLAS's are: the kernel may hand the signal to it (a signal mask on the main
    # thread alone held nothing)
    idle = threading.Event()
    other = threading.Thread(target=idle.wait)
    other.start()
    try:
        with pytest.raises(KeyboardInterrupt), written_together(tmp_path, names, commit=save_model) as new:
            for name in names:
                atomic_write_bytes(new / name, b"new")
    finally:
        idle.set()
        other.join()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.startswith(".")} == \
        dict.fromkeys((*names, "model.json"), b"new")


def test_every_signal_held_is_sent_again_and_every_handler_put_back():
    """A Ctrl-C replayed first stopped the loop before SIGTERM was (it was lost); a handler that
    could not be put back stayed the hold's own, swallowing every later SIGTERM."""
    terms = []
    term_handler = signal.signal(signal.SIGTERM, lambda sig, frame: terms.append(sig))
    try:
        with pytest.raises(KeyboardInterrupt), signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
            assert terms == []  # (held)
        assert terms == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert terms == [signal.SIGTERM] * 2  # (the test's handler is back)
    finally:
        signal.signal(signal.SIGTERM, term_handler)


def test_an_npy_header_that_does_not_parse_is_a_damaged_file(tmp_path):
    """An unclosed bracket in a member's header made NumPy raise tokenize's TokenError: an internal
    error for `evaluate`, and a `serve` that stopped instead of passing the model over."""
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,\n"
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(12)
    with zipfile.ZipFile(tmp_path / "model.npz", "w") as z:
        z.writestr("params.npy", member)
    with pytest.raises(ModelFileError, match="not a readable .npz file"):
        npz_headers(tmp_path / "model.npz")


def test_an_npz_file_that_cannot_be_opened_says_why_not_that_it_is_damaged(tmp_path):
    """A weights file this user may not read was "model-0c5a.npz: not a readable .npz file ([Errno
    13] Permission denied: 'model-0c5a.npz')": the path twice, and as if the file were damaged.
    (Root reads any file: a folder in its place fails to open likewise, with the file's name.)"""
    (tmp_path / "model.npz").mkdir()
    for read in (npz_headers, lambda path: read_npz(path, ["params"])):
        with pytest.raises(ModelFileError) as exc_info:
            read(tmp_path / "model.npz")
        assert str(exc_info.value) == f"{tmp_path / 'model.npz'}: Is a directory"


def test_staging_folders_killed_writers_left_are_removed_once_stale(tmp_path):
    """`spam train` killed while it wrote its figures left a .writing-* folder for ever (image runs
    cleared theirs at their next start; now every writer's next write does)."""
    old, young = tmp_path / f"{STAGING_PREFIX}killed", tmp_path / f"{STAGING_PREFIX}writing-now"
    for folder in (old, young):
        folder.mkdir()
        (folder / "metrics.json").write_bytes(b"{}")
    an_hour_ago = time.time() - STALE_STAGING_S - 60
    os.utime(old, (an_hour_ago, an_hour_ago))
    with written_together(tmp_path, ("metrics.json",)) as new:
        atomic_write_bytes(new / "metrics.json", b"{}")
    assert not old.exists() and young.is_dir()  # (a writer still at work has a young one)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="acting as a writer without the right to write another user's files needs root and setpriv")
def test_a_lock_file_another_user_made_still_locks(tmp_path):
    """The first writer's umask leaves model.lock 0644: a second user allowed to write the model's
    folder could not open it for writing, and so could not learn at all ("Permission denied")."""
    lock = tmp_path / LOCK_FILE
    lock.write_bytes(b"")
    os.chown(lock, 1234, 1234)
    lock.chmod(0o644)
    code = "import sys\nfrom chainrule.files import locked_directory\n" \
           "with locked_directory(sys.argv[1], wait=False):\n    print('held')"
    src = str(Path(__file__).resolve().parents[1] / "src")
    # root without the capabilities that let it write any file: as another user as far as files go
    args = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", sys.executable, "-c", code,
            str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": src}
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert (r.returncode, r.stdout) == (0, "held\n"), r.stderr
    with locked_directory(tmp_path):  # and it is the same lock: held here, it is refused there
        r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "BlockingIOError" in r.stderr
    # no lock file, and a folder this user may not write: "Permission denied", not "No such file"
    lock.unlink()
    os.chown(tmp_path, 1234, 1234)
    tmp_path.chmod(0o755)
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "PermissionError" in r.stderr and "FileNotFoundError" not in r.stderr, r.stderr


def test_the_lock_of_a_folder_on_a_read_only_file_system(read_only_copy, tmp_path):
    """Opening model.lock to write failed there ("m/model.lock: Read-only file system"), before
    any command could say that the folder cannot be written to, or that evaluate could be given
    --out. Its lock file is opened to read, as another user's is; with none, the folder is named."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / LOCK_FILE).write_bytes(b"")
    with locked_directory(read_only_copy(folder), shared=True), locked_directory(read_only_copy(folder)):
        pass
    with pytest.raises(OSError) as exc_info, locked_directory(read_only_copy(folder, leave_out=(LOCK_FILE,))):
        pass
    assert exc_info.value.filename == str(tmp_path / "ro2" / "m")
    assert exc_info.value.strerror == "cannot be written to (Read-only file system)"


def test_a_broken_symbolic_link_where_a_folder_should_be_is_named_as_one(tmp_path):
    """It was "a file, not a folder," about the folder above it, or "File exists"."""
    (tmp_path / "www").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert folder_problem(tmp_path / "dangling") == f"{tmp_path / 'dangling'} is a broken symbolic link"
    assert folder_problem(tmp_path / "dangling" / "run") == f"{tmp_path / 'dangling'} is a broken symbolic link"
    with pytest.raises(NotADirectoryError, match="a broken symbolic link is in the way") as exc:
        atomic_write_bytes(tmp_path / "dangling" / "metrics.json", b"{}")
    assert exc.value.filename == str(tmp_path / "dangling")
    assert folder_problem(tmp_path / "www" / "new") is None
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # (was "a broken symbolic link")
    assert folder_problem(tmp_path / "loop" / "run") == f"{tmp_path / 'loop'} is a loop of symbolic links"
    with pytest.raises(NotADirectoryError, match="a loop of symbolic links is in the way"):
        atomic_write_bytes(tmp_path / "loop" / "metrics.json", b"{}")


@pytest.mark.parametrize("below", ["x.png", "a/b/x.png"])
def test_a_file_where_a_folder_of_the_path_should_be_is_named(tmp_path, below):
    """`show --out afile/x.png` said "afile: File exists"."""
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="a file, not a folder, is in the way") as exc:
        atomic_write_bytes(tmp_path / "afile" / below, b"figure")
    assert exc.value.filename == str(tmp_path / "afile")


def test_files_written_together_appear_together_or_not_at_all(tmp_path, umask):
    names = ("a.json", "b.png")
    for name in names:
        (tmp_path / name).write_bytes(b"old")
    (tmp_path / "a.json").chmod(0o640)
    umask(0o022)
    with pytest.raises(RuntimeError), written_together(tmp_path, names) as new:  # stopped part-way
        atomic_write_bytes(new / "a.json", b"new")
        raise RuntimeError("Ctrl-C")
    with pytest.raises(FileNotFoundError, match="b.png"), written_together(tmp_path, names) as new:
        atomic_write_bytes(new / "a.json", b"new")  # (b.png never written: neither appears)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {"a.json": b"old", "b.png": b"old"}
    with written_together(tmp_path, names) as new:
        for name in names:
            atomic_write_bytes(new / name, b"new")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {"a.json": b"new", "b.png": b"new"}
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640  # the permissions it replaced
    # an error about a file names the one asked for, not its stand-in in the staging folder
    with pytest.raises(OSError) as exc_info, written_together(tmp_path, names) as new:
        (new / "b.png").mkdir()
        atomic_write_bytes(new / "b.png", b"new")
    assert exc_info.value.filename == str(tmp_path / "b.png")
