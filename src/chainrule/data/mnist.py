"""MNIST, the handwritten digits: `load_mnist`, the loader most scripts and tests start from.

A thin layer over `chainrule.data.idx`, which reads any IDX image set; here the set is MNIST and
the labels must be the digits 0-9.
"""

from __future__ import annotations

import numpy as np

from chainrule.data.idx import FILES, check_labels, load_image_set

__all__ = ["NUM_CLASSES", "load_mnist"]

NUM_CLASSES = 10


def load_mnist(split: str = "train", data_dir=None, download_missing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load one MNIST split as `(images, labels)`.

    Looks in `data_dir` (the folder itself or its `mnist/` subfolder), else `$CHAINRULE_DATA/mnist`,
    else the user cache; only when none has the files, and no `data_dir` was given, it downloads
    them into the user cache.

    Returns:
        images: uint8 array (n, 28, 28), ink high (0 = background, 255 = full ink).
        labels: uint8 array (n,), values 0-9.

    Raises:
        DataError: a file is corrupt, a label is not a digit, or the data cannot be found or downloaded.
    """
    if split not in FILES:
        raise ValueError(f"load_mnist: split must be 'train' or 'test', got {split!r}")
    images, labels = load_image_set(data_dir, split, default="mnist", download_missing=download_missing)[:2]
    check_labels(labels, NUM_CLASSES, f"MNIST {split} labels", " is not a digit 0-9")
    return images, labels
