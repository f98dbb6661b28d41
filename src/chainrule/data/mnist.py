"""MNIST: read the four IDX files, find them on disk, or download them once.

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

Any folder holding the same four file names (gzipped or not) loads the same way, so Fashion-MNIST,
KMNIST or a hand-made set in MNIST layout work with `--data DIR` unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from chainrule.data.locate import cache_dir, candidate_dirs
from chainrule.errors import DataError
from chainrule.files import atomic_open

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# The mirror torchvision uses since yann.lecun.com started refusing downloads; the hashes are of
# the gzipped files as served there.
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

IMAGE_SIZE = 28
NUM_CLASSES = 10
_UBYTE = 0x08
# No IDX file of this kind comes near this; a header claiming more is corrupt, and refusing it
# keeps a damaged header from asking for gigabytes of memory.
_MAX_BYTES = 1 << 31


def _open(path: Path):
    """Open `path` for reading bytes, through gzip when its first two bytes say it is gzipped."""
    with open(path, "rb") as f:
        head = f.read(2)
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


def read_idx(path, ndim: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes with `ndim` dimensions, gzipped or not.

    Raises:
        DataError: empty, not gzip though named .gz, truncated, trailing bytes, wrong magic
            number, wrong element type or number of dimensions, or a zero dimension.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    with _open(path) as f:
        header = _read_exact(f, 4, path, "header")
        if header[0] != 0 or header[1] != 0:
            raise DataError(f"{path}: bad magic number 0x{header.hex()} (not an IDX file)")
        if header[2] != _UBYTE:
            raise DataError(f"{path}: element type 0x{header[2]:02x}, expected 0x08 (unsigned byte)")
        if header[3] != ndim:
            raise DataError(f"{path}: {header[3]} dimensions, expected {ndim}")
        shape = tuple(int(d) for d in np.frombuffer(_read_exact(f, 4 * ndim, path, "header"), dtype=">u4"))
        size = int(np.prod(shape, dtype=np.int64))
        if size == 0 or size > _MAX_BYTES:
            raise DataError(f"{path}: implausible dimensions {shape}")
        data = _read_exact(f, size, path, "data")
        try:
            extra = f.read(1)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc})") from exc
        if extra:
            raise DataError(f"{path}: {shape} needs {size} bytes of data but the file holds more")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()  # writable, owns its memory


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_files(split: str, data_dir=None) -> tuple[Path, Path] | None:
    """The (images, labels) paths for `split` in the first folder that holds both, or None."""
    images_name, labels_name = FILES[split]
    for directory in candidate_dirs("mnist", data_dir):
        images, labels = _find(directory, images_name), _find(directory, labels_name)
        if images is not None and labels is not None:
            return images, labels
    return None


def download(directory=None, progress: bool = True) -> Path:
    """Download the four MNIST files into `directory` (default: the user cache), verifying each.

    Each file is streamed to a temporary file beside its destination, checked against its SHA-256
    and only then renamed into place, so an interrupted or tampered download never leaves a file
    that looks complete.
    """
    from tqdm.auto import tqdm

    directory = Path(directory) if directory is not None else cache_dir("mnist")
    directory.mkdir(parents=True, exist_ok=True)
    for name, expected in SHA256.items():
        target = directory / name
        if target.is_file():
            continue
        url = MIRROR + name
        digest = hashlib.sha256()
        # written beside the target and renamed into place only if the checksum matches
        with atomic_open(target) as out, urllib.request.urlopen(url, timeout=30) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress,
                      leave=False) as bar:
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if digest.hexdigest() != expected:
                raise DataError(f"{url}: SHA-256 {digest.hexdigest()} does not match the expected {expected}")
    return directory


def _where_to_put(data_dir) -> str:
    names = ", ".join(f"{n}.gz" for n in FILES["train"] + FILES["test"])
    places = " or ".join(str(d) for d in candidate_dirs("mnist", data_dir))
    return f"put {names} in {places} (or pass --data DIR)"


def load_mnist(split: str = "train", data_dir=None, download_missing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load one MNIST split as `(images, labels)`.

    Looks in `data_dir` (the folder itself or its `mnist/` subfolder), else `$CHAINRULE_DATA/mnist`,
    else the user cache; only when none has the files, and no `data_dir` was given, it downloads
    them into the user cache.

    Returns:
        images: uint8 array (n, 28, 28), ink high (0 = background, 255 = full ink).
        labels: uint8 array (n,), values 0-9.

    Raises:
        DataError: a file is corrupt, or the data cannot be found or downloaded.
    """
    if split not in FILES:
        raise ValueError(f"load_mnist: split must be 'train' or 'test', got {split!r}")
    found = find_files(split, data_dir)
    if found is None:
        if data_dir is not None or not download_missing:
            raise DataError(f"MNIST {split} files not found: {_where_to_put(data_dir)}")
        try:
            download()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DataError(f"MNIST not found and the download failed ({reason}): {_where_to_put(None)}") from exc
        found = find_files(split, None)
        if found is None:  # $CHAINRULE_DATA holds an incomplete set that shadows the cache
            found = (cache_dir("mnist") / f"{FILES[split][0]}.gz", cache_dir("mnist") / f"{FILES[split][1]}.gz")
    images_path, labels_path = found
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels but {images_path.name} has {len(images)} images")
    if labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(f"{labels_path}: label {labels[bad]} at index {bad} is not a class 0-9")
    return images, labels
