"""MNIST loader: real files, every corruption case, lookup order, verified download."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from chainrule.data import mnist
from chainrule.data.mnist import DataError, load_mnist, read_idx

DATA = os.environ.get("CHAINRULE_DATA")
pytestmark = pytest.mark.skipif(not DATA, reason="CHAINRULE_DATA is not set")
NAMES = [n for split in ("train", "test") for n in mnist.FILES[split]]


def idx_bytes(array: np.ndarray) -> bytes:
    """An array of uint8 as IDX: 00 00 08 ndim, big-endian dims, data."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


@pytest.fixture(scope="module")
def test_split():
    return load_mnist("test", DATA)


def write_set(folder: Path, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> Path:
    """Write a complete four-file set in MNIST layout (same data for train and test)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        for name, arr in zip(mnist.FILES[split], (images, labels), strict=True):
            data = idx_bytes(arr)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


def one_line_error(exc_info, path: Path) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    assert str(path) in msg, msg
    return msg


def test_real_files_have_the_documented_shapes(test_split):
    images, labels = test_split
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == set(range(10))
    assert images.max() == 255 and images.min() == 0
    # ink high on a zero background: the corners are background in every MNIST digit
    assert images[:, 0, 0].max() == 0
    train_images, train_labels = load_mnist("train", DATA)
    assert train_images.shape == (60000, 28, 28) and len(train_labels) == 60000
    # the famous first labels of each set
    assert list(train_labels[:5]) == [5, 0, 4, 1, 9] and list(labels[:5]) == [7, 2, 1, 0, 4]


def test_data_dir_may_be_the_folder_or_its_parent(test_split):
    images, _ = load_mnist("test", Path(DATA) / "mnist")
    np.testing.assert_array_equal(images, test_split[0])


def test_uncompressed_and_other_datasets_in_the_same_layout_load_the_same_way(tmp_path, test_split):
    images, labels = test_split[0][:300], test_split[1][:300]
    # a different data set in the same layout (here: the digits inverted, like a Fashion-MNIST stand-in)
    other = write_set(tmp_path / "other", 255 - images, labels[::-1].copy(), gz=False)
    got_images, got_labels = load_mnist("test", other)
    np.testing.assert_array_equal(got_images, 255 - images)
    np.testing.assert_array_equal(got_labels, labels[::-1])
    write_set(tmp_path / "zipped", images, labels, gz=True)
    np.testing.assert_array_equal(load_mnist("train", tmp_path / "zipped")[0], images)


@pytest.fixture()
def good_set(tmp_path, test_split):
    return write_set(tmp_path / "set", test_split[0][:50], test_split[1][:50])


def _rewrite(path: Path, transform) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(transform(raw)))


@pytest.mark.parametrize(
    ("which", "transform", "expected"),
    [
        ("images", lambda b: b[:-100], "truncated"),
        ("labels", lambda b: b[:-1], "truncated"),
        ("images", lambda b: b[:10], "truncated"),
        ("images", lambda b: b"\x08\x03" + b[2:], "magic"),
        ("labels", lambda b: b[:2] + b"\x0d" + b[3:], "element type"),
        ("images", lambda b: b[:3] + b"\x02" + b[4:], "dimensions"),
        ("images", lambda b: b + b"\x00", "more"),
        ("labels", lambda b: b[:4] + (60).to_bytes(4, "big") + b[8:] + bytes(10), "60 labels but"),
        ("images", lambda b: b[:4] + (0).to_bytes(4, "big") + b[8:], "implausible"),
        ("labels", lambda b: b[:-1] + b"\x0c", "label 12"),
    ],
)
def test_corrupt_files_are_refused_naming_the_file(good_set, which, transform, expected):
    name = mnist.FILES["test"][0 if which == "images" else 1]
    path = good_set / f"{name}.gz"
    _rewrite(path, transform)
    with pytest.raises(DataError) as exc_info:
        load_mnist("test", good_set)
    msg = one_line_error(exc_info, path)
    assert expected in msg


def test_truncated_gzip_stream(good_set):
    path = good_set / f"{mnist.FILES['test'][0]}.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as exc_info:
        load_mnist("test", good_set)
    assert "corrupt gzip" in one_line_error(exc_info, path)


def test_empty_file(good_set):
    path = good_set / f"{mnist.FILES['test'][1]}.gz"
    path.write_bytes(b"")
    with pytest.raises(DataError) as exc_info:
        load_mnist("test", good_set)
    assert "empty" in one_line_error(exc_info, path)


def test_not_gzip(good_set):
    path = good_set / f"{mnist.FILES['test'][0]}.gz"
    path.write_bytes(gzip.decompress(path.read_bytes()))  # plain IDX under a .gz name
    with pytest.raises(DataError) as exc_info:
        load_mnist("test", good_set)
    assert "not a gzip" in one_line_error(exc_info, path)
    # the same bytes under the plain name load fine
    path.rename(path.with_suffix(""))
    assert load_mnist("test", good_set)[0].shape == (50, 28, 28)


def test_image_size_must_be_28x28(tmp_path):
    folder = write_set(tmp_path / "big", np.zeros((5, 32, 32), np.uint8), np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="32x32, expected 28x28"):
        load_mnist("test", folder)


def test_read_idx_reports_what_it_found(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(idx_bytes(np.arange(7, dtype=np.uint8)))
    np.testing.assert_array_equal(read_idx(path, 1), np.arange(7))
    with pytest.raises(DataError, match="1 dimensions, expected 3"):
        read_idx(path, 3)


@pytest.fixture()
def isolated(tmp_path, monkeypatch):
    """No $CHAINRULE_DATA, and a private user cache directory."""
    monkeypatch.delenv("CHAINRULE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "chainrule" / "mnist"


def test_lookup_order_env_before_cache(tmp_path, monkeypatch, isolated, test_split):
    write_set(isolated, test_split[0][:20], test_split[1][:20])
    assert len(load_mnist("test")[0]) == 20  # found in the user cache
    env = tmp_path / "env"
    write_set(env / "mnist", test_split[0][:30], test_split[1][:30])
    monkeypatch.setenv("CHAINRULE_DATA", str(env))
    assert len(load_mnist("test")[0]) == 30  # $CHAINRULE_DATA wins
    assert len(load_mnist("test", isolated)[0]) == 20  # and an explicit folder wins over both


def test_offline_with_nothing_found_says_where_to_put_the_files(isolated, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(mnist.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as exc_info:
        load_mnist("train")
    msg = str(exc_info.value)
    assert "\n" not in msg and "download failed" in msg
    assert str(isolated) in msg and "train-images-idx3-ubyte.gz" in msg
    assert not isolated.exists() or not any(isolated.iterdir())  # no partial downloads left


def test_explicit_folder_without_files_is_an_error_not_a_download(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist.urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(DataError, match="not found"):
        load_mnist("test", tmp_path)


class _Response(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def test_download_verifies_sha256_and_renames_atomically(isolated, monkeypatch):
    served = {name: (Path(DATA) / "mnist" / f"{name}.gz").read_bytes() for name in NAMES}
    monkeypatch.setattr(mnist, "SHA256", {f"{n}.gz": hashlib.sha256(b).hexdigest() for n, b in served.items()})
    tampered = {"t10k-labels-idx1-ubyte.gz"}

    def fake_urlopen(url, timeout=None):
        name = url.rsplit("/", 1)[1]
        data = served[name.removesuffix(".gz")]
        if name in tampered:  # one flipped bit in transit
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        return _Response(data)

    monkeypatch.setattr(mnist.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(DataError, match="SHA-256"):
        load_mnist("test")
    # nothing half-written: only the files that verified are there, and no temporary files
    present = sorted(p.name for p in isolated.iterdir())
    assert "t10k-labels-idx1-ubyte.gz" not in present
    assert all(not name.startswith(".") for name in present)
    tampered.clear()
    images, labels = load_mnist("test")
    assert images.shape == (10000, 28, 28) and len(labels) == 10000
    assert sorted(p.name for p in isolated.iterdir()) == sorted(f"{n}.gz" for n in NAMES)


def test_incomplete_folder_is_skipped(tmp_path, monkeypatch, isolated, test_split):
    env = tmp_path / "env"
    write_set(env / "mnist", test_split[0][:30], test_split[1][:30])
    (env / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    write_set(isolated, test_split[0][:20], test_split[1][:20])
    monkeypatch.setenv("CHAINRULE_DATA", str(env))
    assert len(load_mnist("test")[0]) == 20
    assert len(load_mnist("train")[0]) == 30
    shutil.rmtree(isolated)
    monkeypatch.setattr(mnist.urllib.request, "urlopen",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    with pytest.raises(DataError, match="download failed"):
        load_mnist("test")
