"""IDX image sets: MNIST and Fashion-MNIST from the real files, every corruption case, class names,
the lookup order of a named set, and downloads verified on their decompressed bytes (served over
HTTP from 127.0.0.1, never fetched from the network)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import http.server
import io
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainrule.cli import main
from chainrule.data import idx
from chainrule.data.idx import KNOWN_SETS, identify, load_image_set, read_idx
from chainrule.data.mnist import load_mnist
from chainrule.errors import DataError
from conftest import damaged

DATA = os.environ.get("CHAINRULE_DATA")
pytestmark = pytest.mark.skipif(not DATA, reason="CHAINRULE_DATA is not set")
NAMES = [n for split in ("train", "test") for n in idx.FILES[split]]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


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
        for name, arr in zip(idx.FILES[split], (images, labels), strict=True):
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


# -- the real files ---------------------------------------------------------------------------------


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


def test_fashion_by_name_with_its_class_names(fashion_dir):
    images, labels, classes, name, known, _ = load_image_set("fashion", "test")
    assert name == known == "fashion" and classes == FASHION and idx.title(name) == "Fashion-MNIST"
    assert images.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10
    assert list(labels[:5]) == [9, 2, 1, 1, 6]  # ankle boot, pullover, trouser, trouser, shirt
    assert images[:, 0, 0].mean() < 2  # the product on black, like MNIST's ink
    train = load_image_set("fashion", "train")
    assert train.images.shape == (60000, 28, 28) and train.classes == FASHION
    # MNIST by name: the digits
    mnist = load_image_set("mnist", "test")
    assert mnist.name == "mnist" and mnist.classes == [str(k) for k in range(10)]


def test_a_folder_holding_a_known_set_is_recognised_by_its_labels(fashion_dir, tmp_path):
    """The Debian folder, or any copy of the files, is Fashion-MNIST whatever the folder is called;
    MNIST's folder given as its parent is MNIST."""
    copy = tmp_path / "my clothes"
    copy.mkdir()
    for f in fashion_dir.iterdir():
        (copy / f.name).symlink_to(f)
    for folder in (fashion_dir, copy):
        s = load_image_set(folder, "test")
        assert s.name == "fashion" and s.classes == FASHION
        assert identify(folder) == ("fashion", "fashion")
    assert load_image_set(DATA, "test", default="mnist").name == "mnist"
    assert identify(DATA, default="mnist") == ("mnist", "mnist")


def test_a_folder_of_a_known_sets_files_with_test_files_or_names_of_its_own_is_that_folder(fashion_dir, tmp_path):
    """Fashion-MNIST's training files beside test files of the folder's own, or its four files with
    a classes.txt naming the classes otherwise, were named "fashion": what loads the set again
    (`name`) then loaded the published test set and its names, not the folder's. Such a folder is
    itself, holding Fashion-MNIST's images (`known`, whose presets suit them); the set as published
    is still "fashion", with a classes.txt that names its classes as it does too."""
    own = tmp_path / "own test"
    own.mkdir()
    for f in fashion_dir.glob("train-*"):
        (own / f.name).symlink_to(f)
    published = load_image_set("fashion", "test")
    for name, array in zip(idx.FILES["test"], (published.images[:300], published.labels[:300]), strict=True):
        (own / name).write_bytes(idx_bytes(array))
    train, test = load_image_set(own, "train"), load_image_set(own, "test")
    assert (train.name, train.known, train.classes) == (str(own.resolve()), "fashion", FASHION)
    assert (test.name, test.known, len(test.labels)) == (str(own.resolve()), None, 300)
    assert identify(own) == (str(own.resolve()), "fashion")
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for f in fashion_dir.iterdir():
        (renamed / f.name).symlink_to(f)
    french = ["T-shirt", "Pantalon", "Pull", "Robe", "Manteau", "Sandale", "Chemise", "Basket", "Sac", "Bottine"]
    (renamed / "classes.txt").write_text("\n".join(french) + "\n")
    s = load_image_set(renamed, "test")
    assert (s.name, s.known, s.classes) == (str(renamed.resolve()), "fashion", french)
    assert identify(renamed) == (str(renamed.resolve()), "fashion")
    (renamed / "classes.txt").write_text("\n".join(FASHION) + "\n")  # its own names: the set as published
    assert load_image_set(renamed, "test").name == "fashion" and identify(renamed) == ("fashion", "fashion")


def test_a_folder_whose_name_is_not_utf8_is_titled_with_the_replacement_character(tmp_path, test_split):
    """A folder named in Latin-1 ("donn\\xe9es") holds a byte no UTF-8 has, which Python keeps as a
    lone surrogate: its title went into the figures as that, and matplotlib refused it (TypeError,
    after a whole training run). Its title shows U+FFFD there, as serve shows such a path."""
    folder = write_set(tmp_path / os.fsdecode(b"donn\xe9es"), test_split[0][:20], test_split[1][:20])
    s = load_image_set(folder, "test")
    assert s.name == str(folder.resolve())  # (what loads it again: its bytes, kept)
    assert idx.title(s.name) == "donn\ufffdes"


def test_data_dir_may_be_the_folder_or_its_parent(test_split):
    images, _ = load_mnist("test", Path(DATA) / "mnist")
    np.testing.assert_array_equal(images, test_split[0])


def test_uncompressed_and_other_datasets_in_the_same_layout_load_the_same_way(tmp_path, test_split):
    images, labels = test_split[0][:300], test_split[1][:300]
    other = write_set(tmp_path / "other", 255 - images, labels[::-1].copy(), gz=False)
    got_images, got_labels = load_mnist("test", other)
    np.testing.assert_array_equal(got_images, 255 - images)
    np.testing.assert_array_equal(got_labels, labels[::-1])
    write_set(tmp_path / "zipped", images, labels, gz=True)
    np.testing.assert_array_equal(load_mnist("train", tmp_path / "zipped")[0], images)


def test_loading_a_folder_searches_once_and_hashes_its_labels_once(tmp_path, test_split, monkeypatch):
    """load_image_set looked for the folders to search twice (itself, then find_files), and hashed
    the labels twice (to tell a known set's other split, then to name the set)."""
    folder = write_set(tmp_path / "set", test_split[0][:300], test_split[1][:300])
    calls = {"_search_dirs": 0, "_idx_sha256": 0}

    def counting(name):
        original = getattr(idx, name)

        def counted(*args):
            calls[name] += 1
            return original(*args)
        return counted

    for name in calls:
        monkeypatch.setattr(idx, name, counting(name))
    assert load_image_set(folder, "test").name == str(folder.resolve())
    assert calls == {"_search_dirs": 1, "_idx_sha256": 1}


# -- class names --------------------------------------------------------------------------------------


def test_class_names_of_a_folder_come_from_classes_txt_else_from_the_labels(tmp_path, test_split):
    images, labels = test_split[0][:200], test_split[1][:200]
    five = np.where(labels < 5, labels, 0).astype(np.uint8)  # only the digits 0-4 occur
    folder = write_set(tmp_path / "five", images, five)
    s = load_image_set(folder, "test")
    assert s.classes == ["0", "1", "2", "3", "4"]  # no names known: the label numbers
    assert s.name == str(folder.resolve()) and idx.title(s.name) == "five"
    assert identify(folder) == (str(folder.resolve()), None)
    (folder / "classes.txt").write_text("zero\nun\n zwei \ndrie\nquattro\ncinq\n\n\n", encoding="utf-8")
    s = load_image_set(folder, "train")
    assert s.classes == ["zero", "un", "zwei", "drie", "quattro", "cinq"]  # more names than labels is fine
    np.testing.assert_array_equal(s.labels, five)
    # lines end at \n, \r\n or \r, not inside a name at U+2028 or U+2029 (str.splitlines' other breaks; a
    # form feed among them is a control character, refused below)
    (folder / "classes.txt").write_text("zero\r\nun\u2029one\nzwei\u2028two\rdrie\nquattro\n", encoding="utf-8")
    assert load_image_set(folder, "test").classes == ["zero", "un\u2029one", "zwei\u2028two", "drie", "quattro"]


@pytest.mark.parametrize(("text", "expected"), [
    (b"cat\n\ndog\n", "line 2 is blank"),
    (b"cat\ndog\ncat\n", "line 3 repeats the class name 'cat'"),
    (b"cat\n", "1 class names; a classifier needs at least 2"),
    (b"", "0 class names"),
    (b"\xff\xfecat\n", "not UTF-8"),
    ("\n".join(str(k) for k in range(300)).encode(), "at most 256"),
    (b"cat\ndog\n", "label 7 at index 0 has no class"),
    # (printed as they are, a terminal acted on them: a colour, a column, a forged line)
    (b"cat\x1b[31mRED\ndog\n", r"line 1: the class name 'cat\x1b[31mRED' holds a control character"),
    (b"cat\ndog\tpuppy\n", r"line 2: the class name 'dog\tpuppy' holds a control character"),
    (b"cat\ndog\x0cpuppy\n", r"line 2: the class name 'dog\x0cpuppy' holds a control character"),
], ids=["blank line", "repeated", "one name", "empty", "not utf-8", "300 names", "too few for the labels", "escape",
        "tab", "form feed"])
def test_bad_classes_txt_is_refused_naming_the_file(tmp_path, test_split, text, expected):
    folder = write_set(tmp_path / "set", test_split[0][:20], test_split[1][:20])  # labels 7 2 1 0 4 ...
    (folder / "classes.txt").write_bytes(text)
    with pytest.raises(DataError) as exc_info:
        load_image_set(folder, "test")
    assert expected in one_line_error(exc_info, folder)


def test_a_huge_classes_txt_is_read_no_further_than_its_first_megabyte(tmp_path, test_split):
    """read_classes read the whole file, then cut it to the megabyte it looks at: a 3 GB classes.txt
    took 15 s and 3.2 GB of memory before it was refused."""
    folder = write_set(tmp_path / "set", test_split[0][:20], test_split[1][:20])
    with open(folder / "classes.txt", "wb") as f:
        f.write(b"cat\ndog\n")
        f.truncate(64 << 20)  # (sparse: zeros on no disk)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="line 3: the class name .* holds a control character"):
            idx.read_classes(folder / "classes.txt")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak:,} bytes at the peak"


def test_load_mnist_refuses_labels_that_are_not_digits(tmp_path, test_split):
    labels = test_split[1][:50].copy()
    labels[49] = 12
    folder = write_set(tmp_path / "set", test_split[0][:50], labels)
    with pytest.raises(DataError, match="label 12 at index 49 is not a digit"):
        load_mnist("test", folder)
    assert load_image_set(folder, "test").classes == [str(k) for k in range(13)]  # as a general set: 13 classes


def test_check_labels_names_the_first_label_beyond_the_classes():
    """One check for every reader of labels (a set's classes.txt, load_mnist, a model's outputs),
    which each wrote it out."""
    labels = np.array([0, 3, 1, 5, 4], np.uint8)
    idx.check_labels(labels, 6, "set", " has no class")
    idx.check_labels(labels[:0], 1, "set", " has no class")  # (an empty share of a set: nothing to refuse)
    with pytest.raises(DataError, match=r"^set: label 5 at index 3 has no class$"):
        idx.check_labels(labels, 5, "set", " has no class")


# -- corrupt files ------------------------------------------------------------------------------------


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
    ],
)
def test_corrupt_files_are_refused_naming_the_file(good_set, which, transform, expected):
    name = idx.FILES["test"][0 if which == "images" else 1]
    path = good_set / f"{name}.gz"
    _rewrite(path, transform)
    with pytest.raises(DataError) as exc_info:
        load_image_set(good_set, "test")
    msg = one_line_error(exc_info, path)
    assert expected in msg


@settings(max_examples=150, deadline=None)
@given(which=st.sampled_from([0, 1]), form=st.sampled_from(["plain", "gzipped", "gzip damaged"]), data=st.data())
def test_any_damage_to_a_file_is_a_data_error_or_a_consistent_set(test_split, tmp_path_factory, which, form, data):
    """Whatever is done to the bytes of a set's images or labels (cut short, bytes changed, bytes
    inserted; in a plain file, inside a gzip file, or to the gzip file's own bytes), loading it
    gives images and labels that agree, or a DataError: never another exception."""
    folder = write_set(tmp_path_factory.mktemp("set"), test_split[0][:20], test_split[1][:20], gz=False)
    path = folder / idx.FILES["test"][which]
    raw = path.read_bytes()
    if form != "gzip damaged":
        raw = bytearray(raw)
        cut = data.draw(st.integers(0, len(raw)))
        raw[cut:cut] = data.draw(st.binary(max_size=8))
        for where, byte in data.draw(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 255)), max_size=4)):
            if where < len(raw):  # (the headers and the first bytes of data: where damage is interesting)
                raw[where] = byte
        raw = bytes(raw[:data.draw(st.integers(0, len(raw)))])
    if form != "plain":
        path.unlink()
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw, mtime=0)
        if form == "gzip damaged":
            raw = damaged(raw, data)
    path.write_bytes(raw)
    try:
        images, labels, classes, _, _, _ = load_image_set(folder, "test")
    except DataError:
        return
    assert images.shape[1:] == (28, 28) and len(images) == len(labels) and len(classes) > int(labels.max())


def test_truncated_gzip_stream(good_set):
    path = good_set / f"{idx.FILES['test'][0]}.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as exc_info:
        load_mnist("test", good_set)
    assert "corrupt gzip" in one_line_error(exc_info, path)


def test_empty_file(good_set):
    path = good_set / f"{idx.FILES['test'][1]}.gz"
    path.write_bytes(b"")
    with pytest.raises(DataError) as exc_info:
        load_mnist("test", good_set)
    assert "empty" in one_line_error(exc_info, path)


def test_not_gzip(good_set):
    path = good_set / f"{idx.FILES['test'][0]}.gz"
    path.write_bytes(gzip.decompress(path.read_bytes()))  # plain IDX under a .gz name
    with pytest.raises(DataError) as exc_info:
        load_mnist("test", good_set)
    assert "not a gzip" in one_line_error(exc_info, path)
    # the same bytes under the plain name load fine
    path.rename(path.with_suffix(""))
    assert load_mnist("test", good_set)[0].shape == (50, 28, 28)


@pytest.mark.parametrize("which, count, expected", [
    (0, 2_000_000, "50 labels but t10k-images-idx3-ubyte.gz has 2000000 images"),
    (1, 50_000_000, "50000000 labels but t10k-images-idx3-ubyte.gz has 50 images"),
])
def test_images_and_labels_are_checked_against_each_other_from_their_headers_before_their_data(
        good_set, which, count, expected):
    # a 2 MB gzip file can declare (and inflate to) 2 GB: the counts in the two headers are compared
    # before either file's data is read (the data here holds 50 of each only)
    path = good_set / f"{idx.FILES['test'][which]}.gz"
    _rewrite(path, lambda b: b[:4] + count.to_bytes(4, "big") + b[8:])
    with pytest.raises(DataError) as exc_info:
        load_image_set(good_set, "test")
    assert expected in str(exc_info.value)


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
    # 2^32-1 x 2^32-1 x 1 bytes: a product that wrapped round in 64 bits passed as plausible, and NumPy
    # refused the array ("array is too big", a ValueError, not the DataError documented)
    path.write_bytes(bytes([0, 0, 8, 3]) + np.array([2**32 - 1, 2**32 - 1, 1], dtype=">u4").tobytes())
    with pytest.raises(DataError, match=r"implausible dimensions \(4294967295, 4294967295, 1\)"):
        read_idx(path, 3)


def test_what_is_neither_a_name_nor_a_folder(tmp_path):
    with pytest.raises(DataError, match=r"fashon: no such folder, and not a known data set \(mnist, fashion\)"):
        load_image_set("fashon", "test")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        load_image_set(tmp_path / "file", "test")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # (was "no such folder")
    with pytest.raises(DataError, match="loop: a loop of symbolic links, and not a known data set"):
        load_image_set(tmp_path / "loop", "test")
    with pytest.raises(DataError, match="no data set given: --data mnist or --data fashion or --data DIR"):
        load_image_set(None, "test")


# -- where a named set is looked for ------------------------------------------------------------------


@pytest.fixture()
def isolated(tmp_path, monkeypatch):
    """No $CHAINRULE_DATA, a private user cache, and MNIST and Fashion-MNIST with a system folder
    of the test's own (`tmp_path / "system" / <folder>`) and a download address that refuses."""
    monkeypatch.delenv("CHAINRULE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name, known in KNOWN_SETS.items():
        monkeypatch.setitem(KNOWN_SETS, name, dataclasses.replace(
            known, system_dir=str(tmp_path / "system" / known.folder), url="http://127.0.0.1:9/"))
    return tmp_path / "cache" / "chainrule"


def test_lookup_order_system_folder_then_chainrule_data_then_cache(tmp_path, monkeypatch, isolated, test_split):
    """A name is looked for in the folder a distribution package installs it to, then in
    $CHAINRULE_DATA/<folder>, then in the user cache; an explicit folder wins over all three."""
    images, labels = test_split
    write_set(isolated / "fashion-mnist", images[:20], labels[:20])
    assert len(load_image_set("fashion", "test").images) == 20  # found in the user cache
    env = tmp_path / "env"
    write_set(env / "fashion-mnist", images[:30], labels[:30])
    monkeypatch.setenv("CHAINRULE_DATA", str(env))
    assert len(load_image_set("fashion", "test").images) == 30  # $CHAINRULE_DATA wins
    write_set(tmp_path / "system" / "fashion-mnist", images[:40], labels[:40])
    s = load_image_set("fashion", "test")
    assert len(s.images) == 40 and s.classes == FASHION and s.name == "fashion"  # the system folder wins
    assert len(load_image_set(isolated / "fashion-mnist", "test").images) == 20  # a folder given wins over all
    # MNIST the same way, in its own folders
    write_set(isolated / "mnist", images[:25], labels[:25])
    assert len(load_mnist("test")[0]) == 25
    write_set(env / "mnist", images[:35], labels[:35])
    assert len(load_mnist("test")[0]) == 35
    assert len(load_mnist("test", isolated)[0]) == 25  # a folder's mnist/ sub-folder


def test_another_known_set_in_a_sets_place_is_refused(isolated, fashion_dir):
    """Fashion-MNIST's files under MNIST's names in the cache were read as MNIST: a digits model
    scored 4.56% on them without a word. (A slice of the set itself is taken as it: tests use them.)"""
    (isolated / "mnist").mkdir(parents=True)
    for f in fashion_dir.glob("t10k-*"):
        (isolated / "mnist" / f.name).symlink_to(f)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: these are Fashion-MNIST's test labels, in "
                                        r"MNIST's place: put MNIST's files there"):
        load_mnist("test")


def test_a_sets_other_split_in_a_splits_place_is_refused(isolated, tmp_path):
    """MNIST's training files copied in its test files' place were taken as its test set: `digits
    train` said "test accuracy 15.50% (9297/60000)", scored on the images it had learned; the splits
    swapped, it trained on the 10,000 test images without a word. So in a folder given."""
    mnist = Path(DATA) / "mnist"
    for folder, holds in ((isolated / "mnist", {"train": "train", "test": "train"}),
                          (tmp_path / "swapped", {"train": "test", "test": "train"})):
        folder.mkdir(parents=True)
        for split, source in holds.items():
            for name, its in zip(idx.FILES[split], idx.FILES[source], strict=True):
                (folder / f"{name}.gz").symlink_to(mnist / f"{its}.gz")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: these are MNIST's train labels, in the test "
                                        r"labels' place: put MNIST's test files there$"):
        load_mnist("test")
    assert len(load_mnist("train")[0]) == 60000  # (in their own place)
    with pytest.raises(DataError, match=r"swapped/train-labels-idx1-ubyte.gz: these are MNIST's test labels, in the "
                                        r"train labels' place: put MNIST's train files there$"):
        load_image_set(tmp_path / "swapped", "train")
    with pytest.raises(DataError, match=r"swapped/t10k-labels-idx1-ubyte.gz: these are MNIST's train labels"):
        load_image_set(tmp_path / "swapped", "test")


def test_debian_folder_is_where_fashion_is_found_first(fashion_dir):
    if fashion_dir != Path(KNOWN_SETS["fashion"].system_dir):
        pytest.skip("Fashion-MNIST comes from $CHAINRULE_DATA here, not from Debian's dataset-fashion-mnist")
    assert idx.find_files("test", "fashion")[0].parent == fashion_dir


def test_offline_with_nothing_found_says_where_to_put_the_files(isolated):
    with pytest.raises(DataError) as exc_info:
        load_image_set("fashion", "train")
    msg = str(exc_info.value)
    assert "\n" not in msg and "Fashion-MNIST not found and the download failed" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert str(isolated / "fashion-mnist") in msg and "train-images-idx3-ubyte[.gz]" in msg
    assert not (isolated / "fashion-mnist").exists() or not any((isolated / "fashion-mnist").iterdir())
    with pytest.raises(DataError, match="MNIST not found and the download failed"):
        load_mnist("train")


def test_a_set_named_like_a_folder_here_says_how_to_name_the_folder(isolated, tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()  # `--data mnist` is the data set; the folder is --data ./mnist
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"the folder mnist here is --data \./mnist\)$"):
        load_image_set("mnist", "train")


def test_explicit_folder_without_files_is_an_error_not_a_download(tmp_path, monkeypatch):
    monkeypatch.setattr(idx.urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(DataError, match="not found"):
        load_mnist("test", tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_image_set(tmp_path, "test")


def test_a_folder_without_the_test_files_asks_for_those_alone(tmp_path):
    """Scoring a model needs the two test files; the message asked for the training files too."""
    with pytest.raises(DataError) as exc_info:
        load_image_set(tmp_path, "test")
    assert one_line_error(exc_info, tmp_path).endswith(
        "test files not found: put t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] (gzipped or not) in "
        + str(tmp_path))
    with pytest.raises(DataError, match=re.escape("put train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                                                  "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] "
                                                  "(gzipped or not) in ")):
        load_image_set(tmp_path, "train")  # (a run trains on the one and is scored on the other)


def test_what_stands_in_a_data_files_place_is_named(tmp_path, test_split):
    """Kaggle's MNIST unpacks each file into a folder of its name (train-images-idx3-ubyte/train-
    images-idx3-ubyte); a broken link or a FIFO may stand in a file's place too. Each was "not
    found", the message asking for a file of the very name taken."""
    kaggle = tmp_path / "kaggle"
    for name in NAMES:
        (kaggle / name).mkdir(parents=True)
        (kaggle / name / name).write_bytes(b"")
    in_the_way = f"({kaggle / 'train-images-idx3-ubyte'}: a folder, not a file)"
    with pytest.raises(DataError) as exc_info:
        identify(kaggle)
    assert in_the_way in one_line_error(exc_info, kaggle)
    with pytest.raises(DataError) as exc_info:
        load_image_set(kaggle, "train", default="mnist")
    assert in_the_way in one_line_error(exc_info, kaggle)
    folder = write_set(tmp_path / "set", test_split[0][:20], test_split[1][:20])
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.unlink()
    labels.symlink_to(tmp_path / "nowhere")
    with pytest.raises(DataError) as exc_info:
        load_image_set(folder, "test")
    assert one_line_error(exc_info, folder).endswith(
        f"{folder} files not found ({labels}: a broken symbolic link): put t10k-labels-idx1-ubyte[.gz] (gzipped or "
        f"not) in {folder}")
    labels.unlink()
    os.mkfifo(folder / "t10k-labels-idx1-ubyte")  # (never opened: a reader would wait for a writer)
    with pytest.raises(DataError, match=re.escape(f"({folder / 't10k-labels-idx1-ubyte'}: not a regular file)")):
        load_image_set(folder, "test")


def test_a_folder_given_as_the_default_is_named_when_its_files_are_gone(tmp_path):
    """A model trained on a folder names it as its default set; once its test files had gone,
    evaluating the model said "None test files not found"."""
    with pytest.raises(DataError) as exc_info:
        load_image_set(None, "test", default=str(tmp_path))
    assert str(exc_info.value).startswith(f"{tmp_path} test files not found: put t10k-images")


def test_the_files_asked_for_may_be_gzipped_or_not(tmp_path, test_split):
    """A folder of uncompressed IDX files is read as well as one of .gz files, but the message for a
    folder without the test files asked for the .gz names alone."""
    write_set(tmp_path / "set", test_split[0][:12], test_split[1][:12], gz=False)
    for name in idx.FILES["test"]:
        (tmp_path / "set" / name).rename(tmp_path / name)
    with pytest.raises(DataError) as exc_info:
        load_image_set(tmp_path / "set", "test")
    assert one_line_error(exc_info, tmp_path).endswith(
        "test files not found: put t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] (gzipped or not) in "
        + str(tmp_path / "set"))
    for name in idx.FILES["test"]:  # (put there as they are)
        (tmp_path / name).rename(tmp_path / "set" / name)
    assert len(load_image_set(tmp_path / "set", "test").labels) == 12


def test_the_first_folder_holding_any_of_a_sets_files_is_read_whatever_the_cache_holds(
        tmp_path, monkeypatch, isolated, test_split):
    """$CHAINRULE_DATA/mnist holding part of MNIST was read or passed over by what the cache held: its
    test files alone were evaluated on with an empty cache, the cache's with a full one; its training
    files alone were trained on and the model tested on a test set downloaded beside them (from the
    next run on, the cache, complete by then, was read in their place). The first folder holding any
    of a set's files is read, whatever later ones hold, and where it lacks some it is refused, naming
    them, and nothing is downloaded."""
    monkeypatch.setattr(idx.urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    images, labels = test_split
    test_only, train_only = tmp_path / "test only", tmp_path / "train only"
    write_set(test_only / "mnist", images[:30], labels[:30])
    write_set(train_only / "mnist", images[:40], labels[:40])
    for name in idx.FILES["train"]:
        (test_only / "mnist" / f"{name}.gz").unlink()
    for name in idx.FILES["test"]:
        (train_only / "mnist" / f"{name}.gz").unlink()
    for cache_holds in (0, 20):
        if cache_holds:
            write_set(isolated / "mnist", images[:cache_holds], labels[:cache_holds])
        monkeypatch.setenv("CHAINRULE_DATA", str(test_only))
        assert len(load_mnist("test")[0]) == 30  # (a folder of test files is evaluated on)
        with pytest.raises(DataError) as exc_info:
            load_mnist("train")
        assert one_line_error(exc_info, test_only / "mnist") == (
            f"the test files are in {test_only / 'mnist'} but the train files in {isolated / 'mnist'}: put the four "
            "files of one set in one folder" if cache_holds else
            "MNIST train files not found: put train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz] (gzipped or "
            f"not) in {test_only / 'mnist'}, beside its other files (a set is read whole from the first folder that "
            "holds any of its files)")
        monkeypatch.setenv("CHAINRULE_DATA", str(train_only))
        for split in ("train", "test"):  # (a run trains, then is tested: both need the test files)
            with pytest.raises(DataError) as exc_info:
                load_mnist(split)
            assert one_line_error(exc_info, train_only / "mnist") == (
                f"the train files are in {train_only / 'mnist'} but the test files in {isolated / 'mnist'}: put the "
                "four files of one set in one folder" if cache_holds else
                "MNIST test files not found: put t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] (gzipped "
                f"or not) in {train_only / 'mnist'}, beside its other files (a set is read whole from the first "
                "folder that holds any of its files)")
    assert len(load_mnist("test", isolated)[0]) == 20  # (the cache, given as the folder)


def test_an_interrupted_download_is_completed(tmp_path, monkeypatch, isolated):
    """The cache holding some of a set's files, those of a download that broke off, is completed by
    the next download, not refused as a folder that lacks some."""
    source = Path(DATA) / "mnist"
    (isolated / "mnist").mkdir(parents=True)
    shutil.copy(source / "train-images-idx3-ubyte.gz", isolated / "mnist")
    with serving(source) as url:
        monkeypatch.setitem(KNOWN_SETS, "mnist", dataclasses.replace(KNOWN_SETS["mnist"], url=url))
        assert len(load_mnist("train")[0]) == 60000
    assert sorted(p.name for p in (isolated / "mnist").iterdir()) == sorted(f"{n}.gz" for n in NAMES)


def test_the_test_split_alone_downloads_the_test_files_alone(monkeypatch, isolated):
    """Scoring a model (`evaluate`, `gradcheck`) needs the two test files, 1.6 MB; found nowhere,
    the whole set was downloaded, 11 MB, its training files too. A training run completes the set."""
    with serving(Path(DATA) / "mnist") as url:
        monkeypatch.setitem(KNOWN_SETS, "mnist", dataclasses.replace(KNOWN_SETS["mnist"], url=url))
        assert len(load_mnist("test")[0]) == 10000
        assert sorted(p.name for p in (isolated / "mnist").iterdir()) == sorted(f"{n}.gz" for n in idx.FILES["test"])
        assert len(load_mnist("train")[0]) == 60000
    assert sorted(p.name for p in (isolated / "mnist").iterdir()) == sorted(f"{n}.gz" for n in NAMES)


def test_the_splits_of_a_set_never_come_from_two_folders(tmp_path, test_split):
    # a training set in DIR/mnist and another set's test files in DIR: not one set, refused
    write_set(tmp_path / "mnist", test_split[0][:30], test_split[1][:30])
    for name in idx.FILES["test"]:
        (tmp_path / "mnist" / f"{name}.gz").rename(tmp_path / f"{name}.gz")
    for split in ("train", "test"):
        with pytest.raises(DataError, match=r"files are in .* but the .* files in .*: put the four files of one "
                                            "set in one folder"):
            load_mnist(split, tmp_path)
    shutil.rmtree(tmp_path / "mnist")  # test files alone: those can be evaluated on
    assert len(load_mnist("test", tmp_path)[0]) == 30


# -- downloads ----------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no line on stderr per request
        pass


@contextlib.contextmanager
def serving(folder: Path, handler_class=_QuietHandler):
    """An HTTP server on 127.0.0.1 handing out the files of `folder`; yields its base URL."""
    handler = functools.partial(handler_class, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()


def _tampered_copy(source: Path, target: Path, tamper: dict[str, bytes]) -> Path:
    """`source`'s four .gz files in `target`, with the file named in `tamper` replaced."""
    target.mkdir()
    for name in NAMES:
        data = tamper.get(name)
        (target / f"{name}.gz").write_bytes(data if data is not None else (source / f"{name}.gz").read_bytes())
    return target


@pytest.mark.parametrize("name", ["mnist", "fashion"])
def test_download_is_verified_on_the_decompressed_bytes(name, tmp_path, monkeypatch, isolated, request):
    """The real files, served from 127.0.0.1, pass the stored SHA-256 of their decompressed bytes,
    although they are recompressed copies (Debian's, and $CHAINRULE_DATA's) whose .gz bytes differ
    from upstream's. A file with one bit flipped in its content, however well compressed, is
    refused and leaves nothing behind; the download then completes once it is served intact."""
    source = Path(DATA) / "mnist" if name == "mnist" else request.getfixturevalue("fashion_dir")
    labels = gzip.decompress((source / "t10k-labels-idx1-ubyte.gz").read_bytes())
    flipped = labels[:100] + bytes([labels[100] ^ 1]) + labels[101:]
    bad = _tampered_copy(source, tmp_path / "bad", {"t10k-labels-idx1-ubyte": gzip.compress(flipped)})
    cache = isolated / KNOWN_SETS[name].folder
    with serving(bad) as url:
        monkeypatch.setitem(KNOWN_SETS, name, dataclasses.replace(KNOWN_SETS[name], url=url))
        with pytest.raises(DataError, match="SHA-256 of the decompressed file"):
            load_image_set(name, "test")
    present = sorted(p.name for p in cache.iterdir())
    assert "t10k-labels-idx1-ubyte.gz" not in present
    assert all(not p.startswith(".") for p in present)  # no temporary files left
    with serving(source) as url:
        monkeypatch.setitem(KNOWN_SETS, name, dataclasses.replace(KNOWN_SETS[name], url=url))
        s = load_image_set(name, "test")
    assert s.images.shape == (10000, 28, 28) and s.name == name
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in idx.FILES["test"])


def test_a_download_draws_no_progress_bar_where_stderr_is_not_a_terminal(monkeypatch, isolated, capfd):
    """Piped or logged, a bar's redrawn frames are kilobytes of carriage returns per file."""
    with serving(Path(DATA) / "mnist") as url:
        monkeypatch.setitem(KNOWN_SETS, "mnist", dataclasses.replace(KNOWN_SETS["mnist"], url=url))
        assert len(load_mnist("test")[1]) == 10000
    assert "\r" not in capfd.readouterr().err


def test_quiet_training_draws_no_download_bar_on_a_terminal(monkeypatch, isolated, tmp_path, capsys):
    """`digits train --quiet` ("no progress bar") drew the download's bar on a terminal."""
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    with serving(Path(DATA) / "mnist") as url:
        monkeypatch.setitem(KNOWN_SETS, "mnist", dataclasses.replace(KNOWN_SETS["mnist"], url=url))
        # (stopped once the training set is read: its size is refused)
        assert main(["digits", "train", "--quiet", "--train-size", "99999", "--out", str(tmp_path / "run")]) == 2
    drawn = sys.stderr.getvalue()
    assert "--train-size 99,999 is more than the 60,000 training images" in drawn and "\r" not in drawn
    assert sorted(p.name for p in (isolated / "mnist").iterdir()) == sorted(f"{n}.gz" for n in NAMES)


class _UnsizedHandler(_QuietHandler):
    """Says its files' length in words, as a broken proxy might."""

    def send_header(self, keyword, value):
        super().send_header(keyword, "unknown" if keyword == "Content-Length" else value)


def test_a_download_with_a_length_that_is_no_number_is_read(monkeypatch, isolated):
    """The length only sizes the progress bar: a Content-Length that is no number was an internal
    error (ValueError from int())."""
    with serving(Path(DATA) / "mnist", _UnsizedHandler) as url:
        monkeypatch.setitem(KNOWN_SETS, "mnist", dataclasses.replace(KNOWN_SETS["mnist"], url=url))
        assert len(load_mnist("test")[1]) == 10000


def test_a_download_cut_short_or_not_gzip_is_refused(tmp_path, monkeypatch, isolated):
    source = Path(DATA) / "mnist"
    whole = (source / "t10k-labels-idx1-ubyte.gz").read_bytes()
    for content, expected in ((whole[: len(whole) // 2], "ends early"), (b"<html>gone</html>", "not valid gzip")):
        bad = _tampered_copy(source, tmp_path / f"bad{len(content)}", {"t10k-labels-idx1-ubyte": content})
        with serving(bad) as url:
            monkeypatch.setitem(KNOWN_SETS, "mnist", dataclasses.replace(KNOWN_SETS["mnist"], url=url))
            with pytest.raises(DataError, match=expected):
                load_mnist("test")
        assert not (isolated / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()


class _EndlessHandler(_QuietHandler):
    """Streams gzip members of `content`, with no Content-Length, as a proxy, a captive portal or a
    broken mirror might without end: here `members` of them, so that a client that reads them all
    fails on their SHA-256 in the end rather than never."""

    content, members = b"", 0

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        member = gzip.compress(self.content)
        with contextlib.suppress(OSError):  # (the client gave up)
            for _ in range(self.members // 100):
                self.wfile.write(member * 100)


@pytest.mark.parametrize(("content", "members", "said"), [
    (bytes(1 << 20), 1000, "decompresses to more than the file's 7,840,016 bytes"),
    (b"", 1_000_000, "more than 7,848,856 bytes came, more than a gzip of the file's 7,840,016 bytes can be"),
], ids=["inflating", "empty members"])
def test_a_download_that_never_ends_is_given_up_past_the_files_size(isolated, monkeypatch, content, members, said):
    """A server streaming without end was written to the cache's temporary file for as long as it
    went on: the files' sizes are known, and the download stops past what the file can be."""
    handler = type("Endless", (_EndlessHandler,), {"content": content, "members": members})
    with serving(isolated, handler) as url:
        monkeypatch.setitem(KNOWN_SETS, "mnist", dataclasses.replace(KNOWN_SETS["mnist"], url=url))
        with pytest.raises(DataError) as exc_info:
            load_mnist("test")
    assert f"download failed ({url}t10k-images-idx3-ubyte.gz: {said}): put " in one_line_error(exc_info, isolated)
    assert not (isolated / "mnist").exists()  # (no temporary file, and the folders made removed)


def test_a_gzip_file_of_several_members_is_read_whole(tmp_path, monkeypatch, isolated):
    """gzip allows members one after another (`cat a.gz b.gz`); the check hashes all of them."""
    source = Path(DATA) / "mnist"
    labels = gzip.decompress((source / "t10k-labels-idx1-ubyte.gz").read_bytes())
    two = gzip.compress(labels[:5000]) + gzip.compress(labels[5000:])
    served = _tampered_copy(source, tmp_path / "two", {"t10k-labels-idx1-ubyte": two})
    with serving(served) as url:
        monkeypatch.setitem(KNOWN_SETS, "mnist", dataclasses.replace(KNOWN_SETS["mnist"], url=url))
        assert len(load_mnist("test")[1]) == 10000


def test_a_server_that_does_not_speak_http_is_a_one_line_error(isolated, monkeypatch):
    """A proxy address where another server answers (an SSH server, say): urllib passes on the HTTP
    layer's BadStatusLine, which was an internal error."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        def answer():
            connection, _ = server.accept()
            with connection:
                connection.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")

        threading.Thread(target=answer, daemon=True).start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/"
        monkeypatch.setitem(KNOWN_SETS, "mnist", dataclasses.replace(KNOWN_SETS["mnist"], url=url))
        with pytest.raises(DataError, match=rf"MNIST not found and the download failed \({url}t10k-images-idx3-ubyte"
                                            r"\.gz: BadStatusLine: SSH-2\.0"):
            load_mnist("test")


def test_a_connection_reset_is_the_downloads_error_not_the_cache_files(isolated, monkeypatch):
    """A connection reset, before the reply or part-way through the file, was reported as an error of
    the file in the cache: "[Errno 104] Connection reset by peer: '.../chainrule/mnist/train-images-
    idx3-ubyte.gz'". It names the address, and leaves no temporary file."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        def reset(replies: list[bytes]):
            for reply in replies:
                connection, _ = server.accept()
                connection.recv(4096)
                connection.sendall(reply)
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # (close: RST)
                connection.close()

        part = b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n" + gzip.compress(bytes(100000))[:50]
        threading.Thread(target=reset, args=([b"", part],), daemon=True).start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/"
        monkeypatch.setitem(KNOWN_SETS, "mnist", dataclasses.replace(KNOWN_SETS["mnist"], url=url))
        for _ in range(2):
            with pytest.raises(DataError) as exc_info:
                load_mnist("train")
            assert one_line_error(exc_info, isolated / "mnist").startswith(
                f"MNIST not found and the download failed ({url}train-images-idx3-ubyte.gz: Connection reset by "
                "peer): put train-images-idx3-ubyte[.gz]")
    assert not (isolated / "mnist").exists() or not any((isolated / "mnist").iterdir())


def test_what_a_failed_download_says_names_what_was_looked_for_and_the_address(isolated, monkeypatch, tmp_path):
    """The download's own errors went past the sentence saying that the set was not found and a
    download was tried ("/.../afile/chainrule/mnist: /.../afile is a file, not a folder"), and an
    HTTP error did not name the address ("...the download failed (Not Found)"); a failed download
    left the cache folders it had made, empty."""
    (tmp_path / "empty").mkdir()
    with serving(tmp_path / "empty") as url:
        monkeypatch.setitem(KNOWN_SETS, "mnist", dataclasses.replace(KNOWN_SETS["mnist"], url=url))
        with pytest.raises(DataError) as exc_info:
            load_mnist("test")
    assert one_line_error(exc_info, isolated / "mnist").startswith(
        f"MNIST not found and the download failed ({url}t10k-images-idx3-ubyte.gz: HTTP Error 404: File not found): "
        "put t10k-images-idx3-ubyte[.gz]")
    assert not (tmp_path / "cache").exists()
    (tmp_path / "cache").write_text("")
    with pytest.raises(DataError) as exc_info:
        load_mnist("test")
    assert one_line_error(exc_info, isolated / "mnist").startswith(
        f"MNIST not found and the download failed ({isolated / 'mnist'}: {tmp_path / 'cache'} is a file, not a "
        "folder): put ")


def test_a_download_stopped_by_sigterm_leaves_no_partial_file(tmp_path):
    """SIGTERM (kill, systemd, timeout) during a download left its partial file (up to 10 MB, hidden:
    ".train-images-idx3-ubyte.gz.XXXXXXXX.tmp") in the cache for good. The download deletes it, and
    the process still ends by SIGTERM."""
    start = (Path(DATA) / "mnist" / "train-images-idx3-ubyte.gz").read_bytes()[:100_000]
    with socket.create_server(("127.0.0.1", 0)) as server:
        def answer_slowly():  # (the start of the file, then nothing until the client is gone)
            connection, _ = server.accept()
            with connection:
                connection.recv(4096)
                connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 9719438\r\n\r\n" + start)
                connection.recv(1)

        threading.Thread(target=answer_slowly, daemon=True).start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/"
        folder = tmp_path / "cache" / "mnist"
        code = ("import dataclasses, sys; from chainrule.data import idx; idx.KNOWN_SETS['mnist'] = "
                "dataclasses.replace(idx.KNOWN_SETS['mnist'], url=sys.argv[1]); idx.download('mnist', sys.argv[2])")
        with subprocess.Popen([sys.executable, "-c", code, url, str(folder)], stderr=subprocess.PIPE) as proc:
            deadline = time.monotonic() + 60
            while not any(p.stat().st_size for p in folder.glob(".*.tmp")) and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.terminate()
            assert proc.wait(timeout=60) == -signal.SIGTERM, proc.stderr.read()
    assert not folder.exists()  # (no partial file, and the folders it made are removed)


def test_partial_files_of_killed_downloads_are_removed_by_a_later_one(tmp_path, monkeypatch):
    """SIGKILL (or a power cut) cannot be caught: what such a download leaves, a later download
    removes once no one has written to it for an hour, the partial file of one under way never."""
    folder = tmp_path / "cache" / "mnist"
    folder.mkdir(parents=True)
    killed = [folder / f".{name}.gz.k1ll3d0{i}.tmp" for i, name in enumerate(NAMES)]
    under_way = folder / f".{NAMES[2]}.gz.w0rk1ng0.tmp"
    for path in (*killed, under_way):
        path.write_bytes(b"partial")
    for path in killed:
        os.utime(path, (time.time() - 3700, time.time() - 3700))
    with serving(Path(DATA) / "mnist") as url:
        monkeypatch.setitem(KNOWN_SETS, "mnist", dataclasses.replace(KNOWN_SETS["mnist"], url=url))
        idx.download("mnist", folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([under_way.name, *(f"{n}.gz" for n in NAMES)])


def test_a_file_or_folder_in_the_way_of_the_download_is_named_before_it(isolated, monkeypatch):
    monkeypatch.setattr(idx.urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    isolated.mkdir(parents=True)
    (isolated / "mnist").write_text("")  # a file where the cache folder goes ("File exists" before)
    with pytest.raises(DataError, match="mnist: exists and is not a folder"):
        load_mnist("test")
    (isolated / "mnist").unlink()
    (isolated / "mnist" / "t10k-images-idx3-ubyte.gz").mkdir(parents=True)  # (found after downloading it)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is a folder, not the data file"):
        load_mnist("test")


def test_unreachable_source_is_a_one_line_error(isolated, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(idx.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as exc_info:
        load_mnist("train")
    assert "\n" not in str(exc_info.value) and "Name or service not known" in str(exc_info.value)
