"""Files chainrule writes and reads back: atomic writes, and `.npz` files read headers first.

Writes go to a temporary file in the same directory, then a rename: a rename within one directory
is atomic on POSIX, so a reader (or a crash) sees either the old file or the complete new one,
never half of it.

Reads of `.npz` files (weights, idf weights, checkpoints) start from what each array's `.npy`
header claims, its shape and dtype (`npz_headers`), so that a loader can hold those claims against
what it expects and refuse a file asking for gigabytes before reading or allocating any of it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import io
import math
import os
import shutil
import signal
import stat
import tempfile
import threading
import time
import tokenize
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from chainrule.errors import ModelFileError


@contextmanager
def atomic_open(path) -> Iterator[BinaryIO]:
    """A binary file to write that appears at `path` only when the `with` block completes.

    It is a temporary file beside `path`; on success it is flushed to disk and renamed into
    place, and on any exception (a failed checksum, a full disk, Ctrl-C) it is deleted and `path`
    is untouched.
    """
    path = Path(path)
    _make_folder(path.parent)
    mode = _mode_for(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path.name), suffix=".tmp")
    except OSError as exc:  # (a read-only folder: name it, not a temporary file or one not written yet)
        raise OSError(exc.errno, f"cannot be written to ({exc.strerror})", str(path.parent)) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno:  # a full disk, a folder in the way: name the file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc  # asked for, not the temporary one
        raise


def remove_stale_temporary_files(path) -> None:
    """Delete what `atomic_open(path)` calls left beside `path` in processes killed before they could
    clean up (SIGKILL, a power cut): temporary files not written to for `STALE_STAGING_S`. (One still
    being written is younger: a download, say, writes every few seconds, or gives up.)"""
    path = Path(path)
    for left in path.parent.glob(glob.escape(_temporary_prefix(path.name)) + "*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if _stale(left):
                left.unlink()


# The longest file name most file systems take, in bytes (NAME_MAX)
NAME_MAX = 255


def _temporary_prefix(name: str) -> str:
    """".NAME.", the start of the name of NAME's temporary file, with NAME cut short where it would
    make that name longer than `NAME_MAX` bytes (mkstemp adds 8 characters and ".tmp"): a name of
    the longest length a file may have was refused as too long."""
    room = NAME_MAX - len("..") - 8 - len(".tmp")
    raw = os.fsencode(name)
    if len(raw) > room:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:  # (bytes in no charset: cut where they are cut)
            name = os.fsdecode(raw[:room])
        else:  # (a UTF-8 name is cut between characters: "ignore" drops a character cut in two)
            name = raw[:room].decode("utf-8", "ignore")
    return f".{name}."


def _make_folder(directory: Path) -> None:
    """Make `directory` and its parents where missing; a file in the way is named in the error."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # (mkdir's words for a file where a folder should be)
        blocking = _nearest(directory)
        what = link_problem(blocking) or "a file, not a folder,"
        raise NotADirectoryError(errno.ENOTDIR, f"{what} is in the way", str(blocking)) from None


def _nearest(path: Path) -> Path:
    """`path`, or the nearest folder above it, that is there (a broken link counts: it is there)."""
    return next(p for p in (path, *path.parents) if os.path.lexists(p))


def link_problem(path) -> str | None:
    """Why `path` leads nowhere though a symbolic link is there: "a broken symbolic link" (a link
    to nothing) or "a loop of symbolic links" (links that lead round, at `path` or in a folder on
    the way to it); None where neither is so. (`Path.exists` says False to both alike, as to a
    name that is nowhere: a loop was reported as "no such file".)"""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a loop of symbolic links"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and os.path.islink(path):
            return "a broken symbolic link"
    return None


def file_problem(path) -> str | None:
    """Why `path` is not a regular file to read: "not found", a link that leads nowhere
    (`link_problem`), "a folder, not a file" or "not a regular file" (a FIFO, which would block a
    reader, a device such as /dev/zero, which never ends); None where it is one."""
    link = link_problem(path)
    if link:
        return link
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return exc.strerror or str(exc)
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    return None if stat.S_ISREG(mode) else "not a regular file"


def file_id(path) -> tuple[int, int] | None:
    """(device, inode) of what is at `path`, or None where nothing is: a file renamed into place
    there has another, whatever its time stamps say."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def folder_problem(directory) -> str | None:
    """Why `directory` cannot be made, or written into, where it is (a file in its place or above
    it, a folder this process may not write), or None: what a command checks before it works for
    minutes towards writing there."""
    directory = Path(directory).absolute()
    there = _nearest(directory)  # (where it is, or will be made)
    link = link_problem(there)
    if link:
        return f"{there} is {link}"
    if not there.is_dir():
        return "exists and is not a folder" if there == directory else f"{there} is a file, not a folder"
    if not os.access(there, os.W_OK | os.X_OK):
        return f"{there} cannot be written to"
    return None


# `written_together`'s staging folders begin so (one a killed process left is a run folder's leftover).
STAGING_PREFIX = ".writing-"
# Drawing the files of a run takes seconds: a staging folder older than this was left by a killed writer.
STALE_STAGING_S = 3600


def _stale(left: Path) -> bool:
    """Whether `left`, a temporary file or staging folder, was last written to `STALE_STAGING_S` ago:
    a killed writer's leftover (a living writer's is younger)."""
    return time.time() - left.stat().st_mtime > STALE_STAGING_S


@contextmanager
def written_together(directory, names: tuple[str, ...], commit: Callable[[], object] | None = None) -> Iterator[Path]:
    """A folder in which to write the files `names` (each atomically, as usual), which then appear
    in `directory` together when the `with` block completes: a run that fails or is interrupted
    part-way leaves `directory` as it was, never a mix of new and old files. (Each is renamed into
    place in turn, with Ctrl-C and SIGTERM held until the last is; what could stop a rename, a
    folder by that name, is refused before the block.) `commit`, the save of the model the files
    describe, runs just before the renames, held likewise: the model and its files, or neither.
    Staging folders that killed writers left are removed once stale (`STALE_STAGING_S`)."""
    directory = Path(directory)
    for name in names:
        if (directory / name).is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(directory / name))
    _make_folder(directory)
    for left in directory.glob(f"{STAGING_PREFIX}*"):  # (one of a writer still at work is younger)
        with contextlib.suppress(FileNotFoundError):
            if _stale(left):
                shutil.rmtree(left, ignore_errors=True)
    try:
        stage = tempfile.TemporaryDirectory(dir=directory, prefix=STAGING_PREFIX)
    except OSError as exc:  # (a read-only folder: name it, not the staging folder it could not make)
        raise OSError(exc.errno, exc.strerror, str(directory)) from exc
    with stage as staging:
        staging = Path(staging)
        try:
            yield staging
        except OSError as exc:  # (name the file asked for, not its stand-in in the staging folder)
            if exc.filename and Path(exc.filename).parent == staging:
                raise OSError(exc.errno, exc.strerror, str(directory / Path(exc.filename).name)) from exc
            raise
        missing = [name for name in names if not (staging / name).is_file()]
        if missing:
            raise FileNotFoundError(errno.ENOENT, "was not written", str(directory / missing[0]))
        for name in names:  # each keeps the permissions of the file it replaces, as atomic_open's do
            os.chmod(staging / name, _mode_for(directory / name))
        with signals_held():
            if commit is not None:
                commit()
            for name in names:
                os.replace(staging / name, directory / name)


@contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back until the block has run: for steps that must not stop half-way,
    such as renaming a set of files into place. A signal sent meanwhile takes effect as the block
    ends. (Python-level handlers, not a signal mask: the kernel hands a signal to any thread that
    does not block it, BLAS's for one, while Python runs every handler in the main thread.)"""
    if threading.current_thread() is not threading.main_thread():  # (handlers can be set there only)
        yield
        return
    caught: list[int] = []
    before = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not None:  # (a handler set in C could not be put back: left alone)
                before[sig] = signal.signal(sig, lambda sig, frame: caught.append(sig))
        yield
    finally:
        # the handlers put back, then each signal caught sent again, every step even where one
        # before it raises (a replayed Ctrl-C, or a real one arriving meanwhile)
        with contextlib.ExitStack() as steps:
            for sig in reversed(list(dict.fromkeys(caught))):
                steps.callback(signal.raise_signal, sig)
            for sig, handler in before.items():
                steps.callback(signal.signal, sig, handler)


class _Terminated(BaseException):
    """SIGTERM, raised by `sigterm_cleans_up` (not an Exception: no `except Exception` swallows it)."""


@contextmanager
def sigterm_cleans_up() -> Iterator[None]:
    """SIGTERM in the block stops it as Ctrl-C does, running the cleanups on the way out (`atomic_open`
    deletes its temporary file), and then ends the process as SIGTERM would have, on the spot: a
    download killed so left its partial file behind for good. Only where SIGTERM would end the
    process (no handler of the program's own, which is left alone) and in the main thread (where
    Python runs handlers)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL):
        yield
        return

    def stop(signum, frame):
        raise _Terminated

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
        raise  # (only where SIGTERM is blocked, which the handler could not have run under)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _mode_for(path: Path) -> int:
    """The permissions a plain `open(path, "w")` would give: those of the file being replaced, or
    0666 less the umask. (mkstemp makes its file 0600, so without this every model would be private
    to its writer whatever the umask says.)"""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status):
    setting it and putting it back, the only portable way, would give a file another thread
    creates in between the wrong permissions (the web app and the daemon write from threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is never left half-written."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_npz(path, arrays: dict[str, np.ndarray]) -> None:
    """Save arrays as an uncompressed `.npz`, atomically."""
    atomic_write_bytes(path, _npz_bytes(arrays))


def write_npz_named_by_content(directory, stem: str, arrays: dict[str, np.ndarray]) -> str:
    """Save arrays as `<stem>-<digest>.npz` in `directory`, atomically; returns the file's name.

    The digest (the first 16 hex digits of the file's SHA-256) gives new content a new name, so
    the file never replaces one that a reader may be in the middle of: it only becomes part of a
    model when a model.json naming it is renamed into place.
    """
    data = _npz_bytes(arrays)
    name = f"{stem}-{hashlib.sha256(data).hexdigest()[:16]}.npz"
    atomic_write_bytes(Path(directory) / name, data)
    return name


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    for name, values in arrays.items():  # (savez would pickle them, and our readers never unpickle)
        if np.asarray(values).dtype.hasobject:
            raise ValueError(f"array {name!r} holds Python objects; only numeric arrays can be saved")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


LOCK_FILE = "model.lock"  # in a model directory: the lock its writers take (`locked_directory`)

_held = threading.local()  # the directories whose lock this thread holds, by real path


# What opening a file to write says where this process may not write: a mode or an attribute
# (chattr +i) that forbids it, or a file system mounted read-only.
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class HeldByReaders(BlockingIOError):
    """A writer's hold of `locked_directory`, not waited for, refused because only readers hold the
    lock (shared), not another writer: what a command says of the refusal differs."""


@contextmanager
def locked_directory(directory, wait: bool = True, shared: bool = False) -> Iterator[None]:
    """Hold the writers' lock of `directory` for the `with` block: writers that take it run one at
    a time, so that one that loads a model, changes it and saves it (`spam learn`, the daemon's
    TELL) never overwrites what another saved meanwhile. Readers need not take it. With `wait`
    False, a lock another writer holds raises `BlockingIOError` at once (`HeldByReaders`, to a
    writer, where only readers hold it). `shared`, it is held with others that take it so, while no
    writer does: what a reader that writes files about the model beside it (`images evaluate`,
    `show`) holds, so that the model stays while it reads.

    The lock is a POSIX `flock` on the file `model.lock` in the directory (created if missing; a
    lock file rather than the directory itself, since flock on NFS needs a file open for writing;
    one that another user created, and this one may only read, or one on a read-only file system,
    is opened to read: enough locally; where there is none and none can be made, an OSError names
    the directory as one that cannot be written to).
    It is re-entrant within a thread, so that `Sequential.save` inside a held load-change-save block
    does not wait for itself; another thread or process waits. (A shared hold is not made the
    writer's so: a save inside one is a bug, refused.)
    """
    directory = Path(directory)
    key = os.path.realpath(directory)
    held = _held.__dict__.setdefault("paths", {})  # {path: held shared}
    if key in held:
        if held[key] and not shared:
            raise RuntimeError(f"{directory}: its lock is held shared by this thread; a writer's is asked for")
        yield
        return
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as denied:  # another user's lock file (0644 by their umask), a read-only file system
        if denied.errno not in _NOT_WRITABLE:
            raise
        try:
            fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
        except FileNotFoundError:  # (none there, and none can be made: the folder, not the file, is the matter)
            raise OSError(denied.errno, f"cannot be written to ({denied.strerror})", str(directory)) from None
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError as busy:
            if shared or not _only_readers(fd):
                raise
            raise HeldByReaders(busy.errno, "commands reading the model hold it", str(directory / LOCK_FILE)) from None
        held[key] = shared
        yield
    finally:
        held.pop(key, None)
        os.close(fd)  # (closing releases the lock)


def _only_readers(fd: int) -> bool:
    """Whether the lock of `fd`'s file, refused to a writer, is held shared alone (by readers): flock
    does not say who holds a lock, but grants a shared hold only while no writer has it. (One granted
    here goes with `fd`'s close; a writer that let go in between is taken for readers.)"""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# What reading a damaged .npz raises: zipfile's errors, and for flags a damaged zip header may set
# (encryption, a newer zip version, patched data) its RuntimeError and NotImplementedError.
# (A damaged .npy header can make NumPy's reader of its dict raise tokenize's TokenError or a SyntaxError.)
_DAMAGED_ZIP = (OSError, EOFError, ValueError, RuntimeError, zipfile.BadZipFile, tokenize.TokenError, SyntaxError)


def npz_headers(path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, dtype)} of every array in the `.npz` file at `path`, from the headers alone.

    Only what `np.savez` writes is accepted: uncompressed `.npy` members of plain (non-object)
    arrays, each exactly as long as its header says. A compressed member is refused because it
    could claim gigabytes in a few bytes, which only inflating it would disprove; an uncompressed
    one is checked against the zip directory and the file's size. Raises `ModelFileError`.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        headers = {}
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = info.filename.removesuffix(".npy")
                if name == info.filename:
                    raise ValueError(f"member {info.filename!r} is not an array")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ValueError(f"array {name!r} is compressed (chainrule writes plain np.savez files)")
                if info.header_offset + info.compress_size > size:
                    raise ValueError(f"array {name!r} runs past the end of the file")
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version not in ((1, 0), (2, 0)):
                        raise ValueError(f"array {name!r} has .npy format version {version}")
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(f)
                    header_bytes = f.tell()
                if dtype.hasobject:
                    raise ValueError(f"array {name!r} holds Python objects")
                if header_bytes + math.prod(shape) * dtype.itemsize != info.file_size:
                    raise ValueError(f"array {name!r} is not the size its header says, {shape} {dtype}")
                headers[name] = (shape, dtype)
        return headers
    except RecursionError:  # (a RuntimeError, but a bug's, not the file's)
        raise
    except _DAMAGED_ZIP as exc:
        raise _npz_error(path, exc) from exc


def read_npz(path, names) -> dict[str, np.ndarray]:
    """The arrays `names` of the `.npz` file at `path` (and no others), never unpickled.

    Call it after `npz_headers` has shown that those arrays are the sizes expected: this reads them
    in full. Raises `ModelFileError`.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in names}
    except RecursionError:
        raise
    except (*_DAMAGED_ZIP, KeyError) as exc:
        raise _npz_error(path, exc) from exc


def _npz_error(path, exc: Exception) -> ModelFileError:
    """Why the `.npz` file at `path` could not be read: the system's reason where it could not be
    opened (no permission to read it), which names the file; else a damaged archive's."""
    if isinstance(exc, OSError) and exc.filename:
        return ModelFileError(f"{path}: {exc.strerror or exc}")
    return ModelFileError(f"{path}: not a readable .npz file ({exc})")
