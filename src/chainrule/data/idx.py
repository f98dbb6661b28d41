"""IDX image sets (MNIST, Fashion-MNIST, any folder in their layout): read, find, or download once.

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/) is a tiny binary header followed
by raw bytes:

    bytes 0-1   zero
    byte  2     element type (0x08 = unsigned byte)
    byte  3     number of dimensions d
    4·d bytes   each dimension as a big-endian 32-bit integer
    the rest    prod(dimensions) elements, row-major

so images are `00 00 08 03 | n | 28 | 28 | n·784 bytes` and labels `00 00 08 01 | n | n bytes`.
Every field is checked, because a truncated download or a file from the wrong data set should fail
here with a sentence naming the file, not later as a shape error inside the network.

A data set is given by name or as a folder:

* a name (`mnist`, `fashion`) is looked for, in order, where a distribution package installs it
  (Debian's `dataset-fashion-mnist`: /usr/share/datasets/fashion-mnist), in `$CHAINRULE_DATA/<folder>`,
  in the user cache, and is otherwise downloaded into the cache from its canonical source (the
  files the split asked for needs, `needed_files`: the four for training, the two test files alone
  for testing). Each download is checked against the SHA-256 of the file's *decompressed* bytes:
  Debian recompresses the .gz files, so a hash of the compressed file would reject a correct copy;
* a folder is any folder holding the four files (gzipped or not).

A set is read whole from the first of its folders that holds any of its files (`find_files`): one
that lacks some is refused, naming them, never completed from a later folder, so that what an
earlier run left in the cache changes nothing.

Class names come from a `classes.txt` beside the files (one name per line), else from the known
set (a folder holding MNIST or Fashion-MNIST is recognised by its label file), else they are the
label numbers "0", "1", ... up to the largest label. A folder is named as that known set only where
it holds the set as published: test files of its own, or a classes.txt naming the classes otherwise,
make it a set of its own, whose images are the known set's.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import logging
import math
import os
import unicodedata
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from chainrule.data.locate import cache_dir, candidate_dirs
from chainrule.errors import DataError, one_line, without_surrogates
from chainrule.files import (
    atomic_open,
    file_problem,
    folder_problem,
    link_problem,
    remove_stale_temporary_files,
    sigterm_cleans_up,
)

log = logging.getLogger(__name__)

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Each file's size decompressed, the same in every known set (MNIST's layout: 60,000 training and 10,000
# test images of 28x28 and their labels, after the header): a download that inflates to more, or is
# more than a gzip of that can be, is not the file, and is given up (a server may stream without end).
_SIZES = {
    "train-images-idx3-ubyte": 16 + 60_000 * 28 * 28, "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * 28 * 28, "t10k-labels-idx1-ubyte": 8 + 10_000,
}
CLASSES_FILE = "classes.txt"
# The side of every image, in pixels: the sets read here are 28x28, as MNIST's, and so is every
# picture prepared for a model of them (`chainrule.data.images`).
IMAGE_SIZE = 28
_UBYTE = 0x08
# No IDX file of this kind comes near this; a header claiming more is corrupt, and refusing it
# keeps a damaged header from asking for gigabytes of memory.
_MAX_BYTES = 1 << 31
# A label is one unsigned byte, so no IDX set has more classes than this.
MAX_CLASSES = 256


@dataclass(frozen=True)
class KnownSet:
    """A data set that `--data NAME` names: what it is called, where to look, where to get it.

    Attributes:
        name: what `--data` takes.
        title: how people write it ("Fashion-MNIST"), for figures and the web page.
        folder: its folder under `$CHAINRULE_DATA` and the user cache.
        classes: the class names, in label order.
        url: where the four `<file>.gz` are downloaded from.
        sha256: file name (without .gz) -> SHA-256 of its decompressed bytes.
        system_dir: where a distribution package installs it, looked in first.
        package: that package, for the message when the set is found nowhere.
    """

    name: str
    title: str
    folder: str
    classes: tuple[str, ...]
    url: str
    sha256: dict[str, str]
    system_dir: str | None = None
    package: str | None = None


KNOWN_SETS = {
    "mnist": KnownSet(
        name="mnist", title="MNIST", folder="mnist", classes=tuple("0123456789"),
        # the mirror torchvision uses since yann.lecun.com started refusing downloads
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
    "fashion": KnownSet(
        name="fashion", title="Fashion-MNIST", folder="fashion-mnist",
        # Xiao, Rasul and Vollgraf (2017), in label order
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        system_dir="/usr/share/datasets/fashion-mnist",
        package="dataset-fashion-mnist",
    ),
}


class ImageSet(NamedTuple):
    """One split of an image set.

    Attributes:
        images: uint8 (n, 28, 28), ink (or object) high on a 0 background.
        labels: uint8 (n,), each below `len(classes)`.
        classes: the class names, in label order.
        name: what loads this set again: a known set's name (given by name, or a folder holding
            that set as published), or the folder's absolute path.
        known: the known set these images are (`name`'s, or the one a folder's labels are),
            whose presets suit them; None for other images.
        folder: the folder its files were read from, absolute (where a model of a known set
            trained from a folder given records it: `holds_set`).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str
    known: str | None
    folder: Path


def title(name: str) -> str:
    """How to call the set `name` (from `ImageSet.name`) in a sentence or a figure: a known set's
    title, else its folder's name, `without_surrogates` (one not in UTF-8 is no text to draw)."""
    return KNOWN_SETS[name].title if name in KNOWN_SETS else without_surrogates(Path(name).name)


# -- reading IDX files ----------------------------------------------------------------------------


def _open(path: Path):
    """Open `path` for reading bytes, through gzip when its first two bytes say it is gzipped."""
    with open(path, "rb") as f:
        head = f.read(2)
    if not head:
        raise DataError(f"{path}: empty file")
    if head == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if path.suffix == ".gz":
        raise DataError(f"{path}: not a gzip file (the name ends in .gz but the content is not gzip)")
    return open(path, "rb")


def _read_exact(f, n: int, path: Path, what: str) -> bytes:
    try:
        data = f.read(n)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: corrupt gzip data ({exc})") from exc
    if len(data) != n:
        raise DataError(f"{path}: truncated: expected {n} bytes of {what}, found {len(data)}")
    return data


def _read_into(f, out: np.ndarray, path: Path) -> None:
    """Fill `out` from `f`, a megabyte at a time (a gzip file's `readinto` reads as many bytes as
    asked for into a bytes object first, then copies: asked for all, it would double the memory)."""
    view, got = memoryview(out).cast("B"), 0
    try:
        while got < len(view):
            n = f.readinto(view[got : got + (1 << 20)])
            if not n:
                break
            got += n
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip data ({exc})") from exc
    if got != len(view):
        raise DataError(f"{path}: truncated: expected {len(view)} bytes of data, found {got}")


def _header(f, path: Path, ndim: int) -> tuple[int, ...]:
    """The shape an IDX file's header declares, checked: magic number, unsigned bytes, `ndim`
    dimensions, none 0, at most _MAX_BYTES in all."""
    header = _read_exact(f, 4, path, "header")
    if header[0] != 0 or header[1] != 0:
        raise DataError(f"{path}: bad magic number 0x{header.hex()} (not an IDX file)")
    if header[2] != _UBYTE:
        raise DataError(f"{path}: element type 0x{header[2]:02x}, expected 0x08 (unsigned byte)")
    if header[3] != ndim:
        raise DataError(f"{path}: {header[3]} dimensions, expected {ndim}")
    shape = tuple(int(d) for d in np.frombuffer(_read_exact(f, 4 * ndim, path, "header"), dtype=">u4"))
    size = math.prod(shape)  # (exact: three 32-bit dimensions overflow 64 bits, and NumPy's product wraps)
    if size == 0 or size > _MAX_BYTES:
        raise DataError(f"{path}: implausible dimensions {shape}")
    return shape


def idx_shape(path, ndim: int) -> tuple[int, ...]:
    """The shape an IDX file declares, from its header alone (see `read_idx`)."""
    path = Path(path)
    with _open(path) as f:
        return _header(f, path, ndim)


def read_idx(path, ndim: int, check=None) -> np.ndarray:
    """Read one IDX file of unsigned bytes with `ndim` dimensions, gzipped or not. `check(shape)`,
    if given, sees the shape the header declares before any data is read, and raises to refuse
    it (a small gzip file can declare, and inflate to, gigabytes).

    Raises:
        DataError: empty, not gzip though named .gz, truncated, trailing bytes, wrong magic
            number, wrong element type or number of dimensions, or a zero dimension.
    """
    path = Path(path)
    with _open(path) as f:
        shape = _header(f, path, ndim)
        size = math.prod(shape)
        if check is not None:
            check(shape)
        data = np.empty(shape, np.uint8)
        _read_into(f, data, path)
        try:
            extra = f.read(1)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc})") from exc
        if extra:
            raise DataError(f"{path}: {shape} needs {size} bytes of data but the file holds more")
    return data


def _idx_sha256(array: np.ndarray) -> str:
    """SHA-256 of the IDX file that holds exactly `array` (as `read_idx` returned it)."""
    header = bytes([0, 0, _UBYTE, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return hashlib.sha256(header + array.tobytes()).hexdigest()


def read_classes(path) -> list[str]:
    """The class names in a `classes.txt`: one per line, in label order (blank lines at the end
    are ignored, spaces around a name are not part of it). A name may not hold a control character
    (`control_character`)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(1 << 20)  # (no more: a list of at most 256 names is far shorter)
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    # lines end in \n, \r\n or \r only (str.splitlines also splits at \f, \x1c-\x1e, \x85, U+2028, ...)
    names = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while names and not names[-1]:
        names.pop()
    if "" in names:
        raise DataError(f"{path}: line {names.index('') + 1} is blank; give one class name per line")
    if len(names) < 2:
        raise DataError(f"{path}: {len(names)} class names; a classifier needs at least 2")
    if len(names) > MAX_CLASSES:
        raise DataError(f"{path}: {len(names)} class names, but IDX labels are bytes (at most {MAX_CLASSES})")
    seen = set()
    for i, name in enumerate(names):
        if name in seen:
            raise DataError(f"{path}: line {i + 1} repeats the class name {name!r}")
        if control_character(name):
            raise DataError(f"{path}: line {i + 1}: the class name {name!r} holds a control character")
        seen.add(name)
    return names


def control_character(name: str) -> bool:
    """Whether `name` holds a control character (an ESC, a TAB, a line break...): a class name is
    printed on a line of its own among others, and shown in figures, where a terminal would act on
    one and a font has no glyph for it. A lone surrogate counts too: it is no character at all (a
    model.json may write one, "\\udcff"), and no UTF-8 can carry it to a terminal, a figure or JSON."""
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in name)


# -- finding the files ----------------------------------------------------------------------------


def _search_dirs(source, default: str | None) -> tuple[list[Path], KnownSet | None]:
    """The folders to look in for `source`, in order, and the known set it names (None for a folder).

    `source` None means the `default` set. A folder given for a `default` set may be the set's own
    folder or its parent (`--data ../shared/data` and `--data ../shared/data/mnist` both work).
    """
    if source is None:
        if default is None:
            raise DataError(f"no data set given: --data {' or --data '.join(KNOWN_SETS)} or --data DIR")
        source = default
    if str(source) in KNOWN_SETS:
        known = KNOWN_SETS[str(source)]
        system = [Path(known.system_dir)] if known.system_dir else []
        return system + candidate_dirs(known.folder), known
    folder = Path(source).expanduser()
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else link_problem(folder) or "no such folder"
        raise DataError(f"{source}: {what}, and not a known data set ({', '.join(KNOWN_SETS)})")
    if default in KNOWN_SETS:
        return candidate_dirs(KNOWN_SETS[default].folder, folder), None
    return [folder], None


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _in_the_way(dirs: list[Path], names) -> str | None:
    """What stands, in one of `dirs`, where one of the files `names` (gzipped or not) should be but
    is no file to read, as "PATH: a folder, not a file" (`file_problem`), or None: Kaggle's MNIST
    unpacks each file into a folder of its name, and a broken link or a FIFO may stand there too.
    A message that said only "not found" asked for a file of the very name taken."""
    taken = (path for directory in dirs for name in names if _find(directory, name) is None
             for path in (directory / name, directory / f"{name}.gz") if os.path.lexists(path))
    path = next(taken, None)
    return None if path is None else f"{path}: {file_problem(path)}"


def _holds(directory: Path, names) -> bool:
    """Whether `directory` holds a file of each of `names` (gzipped or not)."""
    return all(_find(directory, name) is not None for name in names)


def _set_folder(dirs: list[Path]) -> Path | None:
    """The first of `dirs` that holds any of a set's four files: the one folder its files are read from."""
    return next((d for d in dirs if any(_find(d, name) is not None for name in FILES["train"] + FILES["test"])), None)


def needed_files(split: str) -> tuple[str, ...]:
    """The files (named as in `FILES`) a set's folder must hold for `split`: for "test" its two test
    files, which evaluating a model needs alone; for "train" all four, a training run being tested."""
    return (FILES["train"] if split == "train" else ()) + FILES["test"]


def find_files(split: str, source=None, default: str | None = "mnist") -> tuple[Path, Path] | None:
    """The (images, labels) paths for `split`, read from the first folder, in the order searched,
    that holds any of the set's files; None where none does (or only the user cache does, part of
    a known set: a download that broke off, or one of the test files alone, which `download` completes).

    A set's files always come from that one folder, whatever later folders hold (the cache above
    all, which holds whatever earlier runs downloaded): where it lacks some, that is an error naming
    them, not a model trained on one folder's files and tested on another's (a Fashion-MNIST
    training set beside MNIST's test files, say), nor a later folder read in its place. It must
    hold the test files, which evaluating needs alone (a folder of test files can be evaluated on)
    and a training run is tested on, and for "train" the training files too.
    """
    return _split_files(split, *_search_dirs(source, default), _what(source, default))


def _split_files(split: str, dirs: list[Path], known: KnownSet | None, what: str) -> tuple[Path, Path] | None:
    """`find_files` in the folders `dirs` searched for the known set `known` (None: a folder), which
    a message calls `what`."""
    folder = _set_folder(dirs)
    if folder is None:
        return None
    missing = [name for name in needed_files(split) if _find(folder, name) is None]
    if not missing:
        return _find(folder, FILES[split][0]), _find(folder, FILES[split][1])
    if known is not None and folder == cache_dir(known.folder):
        return None
    there = next((d for d in dirs if d != folder and _holds(d, missing)), None)
    if there is not None:
        present = [name for name in FILES["train"] + FILES["test"] if _find(folder, name) is not None]
        raise DataError(f"{_named(present)} are in {folder} but {_named(missing)} in {there}: put the four files "
                        "of one set in one folder")
    files = f"{_split_of(missing)} files" if _split_of(missing) else "files"
    beside = "" if folder == dirs[-1] else (", beside its other files (a set is read whole from the first folder "
                                            "that holds any of its files)")
    taken = _in_the_way([folder], missing)
    raise DataError(f"{what} {files} not found{f' ({taken})' if taken else ''}: put "
                    f"{', '.join(f'{n}[.gz]' for n in missing)} (gzipped or not) in {folder}{beside}")


def _split_of(names) -> str | None:
    """The split ("train" or "test") whose two files `names` are, or None."""
    return next((split for split, files in FILES.items() if tuple(names) == files), None)


def _named(names) -> str:
    """`names` in a sentence: "the test files" for a split's two, else the names as `_find` takes them."""
    split = _split_of(names)
    return f"the {split} files" if split else ", ".join(f"{name}[.gz]" for name in names)


def _what(source, default: str | None) -> str:
    """What a message calls the set `source` (or `default`) names: a known set's title, or the folder."""
    source = source if source is not None else default
    return KNOWN_SETS[str(source)].title if str(source) in KNOWN_SETS else str(source)


def where_to_put(source=None, default: str | None = "mnist", split: str = "train") -> str:
    """What to do when a set is found nowhere, as the end of a one-line message: where to put its
    four files, or for the "test" split its two test files (all that scoring a model needs)."""
    dirs, known = _search_dirs(source, default)
    needed = needed_files(split)
    names = ", ".join(f"{n}[.gz]" for n in needed)
    places = " or ".join(str(d) for d in dirs)
    hint = f"put {names} (gzipped or not) in {places}"  # (as `_find` takes them)
    if (taken := _in_the_way(dirs, needed)) is not None:
        hint += f" ({taken})"
    if known is not None and known.package:
        hint = f"install it (apt-get install {known.package}) or {hint}"
    if known is not None and source is not None and Path(str(source)).is_dir():  # a folder of that name here
        return hint + f" (or pass --data DIR: the folder {source} here is --data ./{source})"
    return hint + (" (or pass --data DIR)" if known is not None else "")


# -- downloading ----------------------------------------------------------------------------------


def _gunzip(chunks, url: str):
    """Decompress a stream of gzip chunks, yielding at most 1 MB at a time (a small response
    that inflates to gigabytes is hashed piece by piece, never held). Members may follow each other."""
    inflate = zlib.decompressobj(wbits=31)
    try:
        for chunk in chunks:
            while chunk:
                if inflate.eof:  # the previous member is complete and another follows
                    inflate = zlib.decompressobj(wbits=31)
                yield inflate.decompress(chunk, 1 << 20)
                chunk = inflate.unused_data if inflate.eof else inflate.unconsumed_tail
        yield inflate.flush()
    except zlib.error as exc:
        raise DataError(f"{url}: not valid gzip data ({exc})") from exc
    if not inflate.eof:
        raise DataError(f"{url}: the gzip stream ends early (an interrupted download?)")


def download(name: str = "mnist", directory=None, progress: bool = True, split: str = "train") -> Path:
    """Download the files of the known set `name` that `split` needs (`needed_files`: all four for
    "train", the two test files for "test") into `directory` (default: the user cache), those it
    does not hold yet.

    Each file is streamed to a temporary file beside its destination while its decompressed bytes
    are hashed; only when that SHA-256 is the expected one is it renamed into place, so an
    interrupted or tampered download never leaves a file that looks complete; one stopped by SIGTERM
    deletes it too, and one killed (SIGKILL) leaves it for a later download to remove. A download
    that fails removes the folders it made, where it left them empty.

    Raises:
        DataError: a file could not be downloaded (naming its address and why) or is not the one
            expected, or `directory` cannot be made or written to.
        OSError: a file could not be written (a full disk), naming it.
    """
    known = KNOWN_SETS[name]
    directory = Path(directory) if directory is not None else cache_dir(known.folder)
    if (problem := folder_problem(directory)) is not None:
        raise DataError(f"{directory}: {problem}")
    made = [folder for folder in (directory, *directory.parents) if not folder.exists()]  # (the deepest first)
    directory.mkdir(parents=True, exist_ok=True)
    with sigterm_cleans_up():
        try:
            for file in needed_files(split):
                target = directory / f"{file}.gz"
                if target.is_file():
                    continue
                if target.is_dir():  # (found before the download, not after it)
                    raise DataError(f"{target} is a folder, not the data file")
                remove_stale_temporary_files(target)  # (what a download killed by SIGKILL left)
                _download_file(known.url + target.name, target, known.sha256[file], _SIZES[file],
                               f"{known.title} {target.name}", progress)
        except BaseException:
            for folder in made:
                with contextlib.suppress(OSError):  # (not empty: files another download put there, say)
                    folder.rmdir()
            raise
    return directory


def _download_file(url: str, target: Path, expected: str, size: int, desc: str, progress: bool) -> None:
    """Download `url` to `target` (see `download`), its decompressed bytes' SHA-256 `expected`,
    with a progress bar described as `desc` where `progress` and stderr is a terminal. It is
    given up as soon as more comes than a gzip of `size` bytes can be, or than `size` bytes
    inflated: a server that streams without end would fill the disk."""
    # deflate stores what it cannot compress, 5 bytes added to each block of up to 64 KiB, and a gzip
    # member adds 18 of its own: a thousandth more, and a kilobyte, leaves room for both
    limit = size + size // 1000 + 1000
    try:
        response = urllib.request.urlopen(url, timeout=30)
    except _NETWORK_ERRORS as exc:
        raise DataError(f"{url}: {_failure(exc)}") from exc
    digest, inflated = hashlib.sha256(), 0
    # written beside the target and renamed into place only if the checksum matches
    with response, atomic_open(target) as out:
        length = response.headers.get("Content-Length", "")  # (for the bar alone: a broken one is none)
        total = int(length) if length.isdecimal() and int(length) > 0 else None
        log.info("downloading %s", url)
        # (disable=None: no bar where stderr is not a terminal, a log file or a pipe)
        with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=None if progress else True,
                  leave=False) as bar:

            def received():
                got = 0
                while True:
                    try:  # (a network error is the address's, not the file's that `atomic_open` names)
                        chunk = response.read(1 << 16)
                    except _NETWORK_ERRORS as exc:
                        raise DataError(f"{url}: {_failure(exc)}") from exc
                    if not chunk:
                        return
                    got += len(chunk)
                    if got > limit:
                        raise DataError(f"{url}: more than {limit:,} bytes came, more than a gzip of the file's "
                                        f"{size:,} bytes can be")
                    out.write(chunk)
                    bar.update(len(chunk))
                    yield chunk

            for data in _gunzip(received(), url):
                inflated += len(data)
                if inflated > size:
                    raise DataError(f"{url}: decompresses to more than the file's {size:,} bytes")
                digest.update(data)
        if digest.hexdigest() != expected:
            raise DataError(f"{url}: SHA-256 of the decompressed file is {digest.hexdigest()}, "
                            f"not the expected {expected}")


# What a download that fails on the way raises: urllib's URLError (its HTTPError for a reply such as
# 404) and the socket's errors (a connection reset), which are OSErrors, and the HTTP layer's own,
# which urllib passes on, for a reply that is not HTTP (a proxy address where another server
# answers, an SSH server say) or a body cut short.
_NETWORK_ERRORS = (OSError, http.client.HTTPException)


def _failure(exc: Exception) -> str:
    """Why a download failed, in words: an HTTP error's status ("HTTP Error 404: Not Found"), an
    HTTP layer's error with its name (its words alone say little: "SSH-2.0-OpenSSH_9.2"), else the
    system's reason ("Connection refused", which urllib wraps)."""
    if isinstance(exc, urllib.error.HTTPError):
        return str(exc)
    if isinstance(exc, http.client.HTTPException):
        return f"{type(exc).__name__}: {str(exc).strip()}"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return one_line(reason) if isinstance(reason, BaseException) else str(reason)


# -- loading --------------------------------------------------------------------------------------


def _class_names(directory: Path, labels: np.ndarray, known: KnownSet | None, labels_path: Path) -> list[str]:
    listed = directory / CLASSES_FILE
    if listed.is_file():
        names, source = read_classes(listed), f"{listed} names"
    elif known is not None:
        names, source = list(known.classes), f"{known.title} has"
    else:
        return [str(k) for k in range(int(labels.max()) + 1)]
    check_labels(labels, len(names), str(labels_path), f" has no class: {source} {len(names)} classes")
    return names


def check_labels(labels: np.ndarray, classes: int, where: str, why: str) -> None:
    """Refuse labels beyond the `classes` there are: a DataError "`where`: label L at index I`why`"
    naming the first label that is not below `classes` (a label file of another set, class names
    too few for it, a model with fewer outputs)."""
    if len(labels) and labels.max() >= classes:
        bad = int(np.argmax(labels >= classes))
        raise DataError(f"{where}: label {labels[bad]} at index {bad}{why}")


def load_image_set(source=None, split: str = "train", default: str | None = None,
                   download_missing: bool = True, progress: bool = True) -> ImageSet:
    """Load one split of an image set (`ImageSet`).

    Args:
        source: a known set's name (`mnist`, `fashion`; see `KNOWN_SETS`) or a folder holding the
            four IDX files; None for the `default` set.
        split: "train" or "test".
        default: the set `source` None stands for, and whose sub-folder a given folder may hold.
        download_missing: download a named set that is found nowhere (never a folder): the files
            `split` needs (`needed_files`).
        progress: draw the download's progress bar (where stderr is a terminal).

    Raises:
        DataError: a file is corrupt, the images are not 28x28, a label has no class name, the
            labels are a known set's other split (or, for a named set, another set's), or the data
            cannot be found or downloaded.
    """
    if split not in FILES:
        raise ValueError(f"load_image_set: split must be 'train' or 'test', got {split!r}")
    dirs, known = _search_dirs(source, default)
    what = _what(source, default)
    found = _split_files(split, dirs, known, what)
    if found is None:
        if known is None or not download_missing:
            raise DataError(f"{what} {split} files not found: {where_to_put(source, default, split)}")
        try:
            directory = download(known.name, progress=progress, split=split)
        except (DataError, OSError) as exc:  # (an OSError names a file it could not write: a full disk)
            raise DataError(f"{what} not found and the download failed ({one_line(exc)}): "
                            f"{where_to_put(source, default, split)}") from exc
        found = (directory / f"{FILES[split][0]}.gz", directory / f"{FILES[split][1]}.gz")
    images_path, labels_path = found
    # Both headers are checked against each other before either file's data is read: a small
    # gzip file can declare, and inflate to, gigabytes.
    n, height, width = idx_shape(images_path, 3)
    if (height, width) != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{images_path}: images are {height}x{width}, expected 28x28")

    def as_many_as_images(shape):
        if shape[0] != n:
            raise DataError(f"{labels_path}: {shape[0]} labels but {images_path.name} has {n} images")

    def as_its_header_said(shape):  # (the file changed since its header was read)
        if shape != (n, height, width):
            raise DataError(f"{images_path}: changed while it was being read")

    labels = read_idx(labels_path, 1, check=as_many_as_images)
    recognised = _recognise(labels)  # (a slice of a set is not: tests, and quick runs, take one)
    if recognised is not None and recognised[1] != split:  # (a model would be scored on what it learned)
        other, its_split = recognised
        raise DataError(f"{labels_path}: these are {other.title}'s {its_split} labels, in the {split} labels' "
                        f"place: put {(known or other).title}'s {split} files there")
    if known is None:
        name, known = _identify(labels_path, recognised, split)
    elif recognised is not None and recognised[0] is not known:
        raise DataError(f"{labels_path}: these are {recognised[0].title}'s {split} labels, in {known.title}'s "
                        f"place: put {known.title}'s files there")
    else:
        name = known.name
    images = read_idx(images_path, 3, check=as_its_header_said)
    classes = _class_names(images_path.parent, labels, known, labels_path)
    return ImageSet(images, labels, classes, name, known.name if known is not None else None,
                    images_path.parent.resolve())


def _recognise(labels: np.ndarray) -> tuple[KnownSet, str] | None:
    """The known set, and its split ("train" or "test"), whose labels are exactly `labels`: a folder
    holding MNIST or Fashion-MNIST is that set, whatever the folder is called, and a split copied in
    the other's place is seen."""
    digest = _idx_sha256(labels)
    return next(((known, split) for known in KNOWN_SETS.values() for split in FILES
                 if known.sha256[FILES[split][1]] == digest), None)


def _identify(labels_path: Path, recognised: tuple[KnownSet, str] | None, split: str) -> tuple[str, KnownSet | None]:
    """(`ImageSet.name`, the known set its images are) of the set in the folder of `labels_path`,
    whose `split` labels are those `recognised` (`_recognise`): a known set's name where the folder
    holds that set as published, else the folder's absolute path."""
    folder = labels_path.parent
    known = recognised[0] if recognised is not None else None
    if known is None or recognised[1] != split or not _as_published(folder, known, split):
        return str(folder.resolve()), known
    return known.name, known


def _as_published(folder: Path, known: KnownSet, split: str) -> bool:
    """Whether `folder`, whose `split` labels are `known`'s, holds that set as published: its other
    split's labels (where it has them) are `known`'s too, and a classes.txt names the classes as
    `known` does. Otherwise its test set, or its class names, are its own, and only loading the
    folder again gives them."""
    other = "test" if split == "train" else "train"
    other_labels = _find(folder, FILES[other][1])
    listed = folder / CLASSES_FILE
    try:
        if listed.is_file() and read_classes(listed) != list(known.classes):
            return False
        return other_labels is None or _recognise(read_idx(other_labels, 1)) == (known, other)
    except DataError:  # (a damaged file is not that set's; loading it says what is wrong)
        return False


def holds_set(folder, name: str, split: str) -> bool:
    """Whether `folder` holds the `split` files of the known set `name` as published, so that
    `load_image_set(folder, split)` loads them as `name` (reading its label files alone): a model
    of `name` trained from `folder` may be tested there while it does, and looks for `name` by
    name once it does not (moved, emptied, or holding other files now)."""
    folder = Path(folder)
    labels = _find(folder, FILES[split][1])
    if labels is None or _find(folder, FILES[split][0]) is None:
        return False
    try:
        return _identify(labels, _recognise(read_idx(labels, 1)), split)[0] == name
    except DataError:  # (damaged: not that set as published)
        return False


def identify(source=None, default: str | None = None) -> tuple[str, str | None]:
    """The `ImageSet.name` and `ImageSet.known` that `load_image_set(source, default=default)` gives
    the set, reading no more than its label files and classes.txt."""
    dirs, known = _search_dirs(source, default)
    if known is not None:
        return known.name, known.name
    folder = _set_folder(dirs)
    for split in FILES:
        labels = _find(folder, FILES[split][1]) if folder is not None else None
        if labels is not None:
            name, known = _identify(labels, _recognise(read_idx(labels, 1)), split)
            return name, known.name if known is not None else None
    raise DataError(f"{source}: no IDX image set there: {where_to_put(source, default)}")
