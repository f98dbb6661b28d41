"""Training-time augmentation for 28×28 images: random variants of each training batch.

An image still shows the same thing when it is moved a little, so showing the network such
variants of the training images teaches it that invariance instead of letting it memorise exact
pixels. Which variants keep the label depends on the data set:

- handwritten digits (`digit_augmenter`): small rotations, scalings and shifts. A digit is never
  mirrored (a mirrored 2 is no digit, and 3 becomes ε).
- clothing (`clothing_augmenter`, Fashion-MNIST): left-right mirroring and whole-pixel shifts. A
  shirt mirrored is still a shirt, and the photos are upright, so rotations add nothing useful.

Every image of a batch gets its own random draw, and all of them are applied at once in NumPy,
with no Python loop over the images. For the affine maps of `random_affine`, the source point of
each output pixel p is

    s = A⁻¹ (p - c - t) + c,    A = scale · R(angle)

(c the image centre, t the shift), and its value is interpolated from the four pixels around s,
with zeros outside the image (the background of both MNIST and Fashion-MNIST).
"""

from __future__ import annotations

import numpy as np


def random_affine(x: np.ndarray, rng: np.random.Generator, max_rotation: float = 10.0,
                  max_scale: float = 0.1, max_shift: float = 2.0, size: int = 28) -> np.ndarray:
    """Randomly rotate, scale and shift every image of a batch.

    Args:
        x: a batch of `size`×`size` images of any shape (N, ...) holding N·size² values, e.g.
            (N, 784) for a dense network or (N, 1, 28, 28) for a convolutional one; ink is positive,
            background 0.
        rng: the random generator (`fit` passes its own, so a seeded run is reproducible).
        max_rotation: largest rotation, in degrees, either way.
        max_scale: the scale factor is drawn from [1 - max_scale, 1 + max_scale].
        max_shift: largest shift in pixels, along each axis.

    Returns:
        A new array with the shape and dtype of `x`.
    """
    return apply_affine(x, draw_affine(rng, x.shape[0], max_rotation, max_scale, max_shift), size)


def draw_affine(rng: np.random.Generator, n: int, max_rotation: float = 10.0, max_scale: float = 0.1,
                max_shift: float = 2.0) -> np.ndarray:
    """The random maps of n images, one row each: (angle in radians, scale, row shift, column shift).

    Drawn apart from applying them so that data-parallel training can draw the maps of a whole
    global batch (the generator advancing alike in every process) and apply only its shard's rows.
    """
    angle = np.deg2rad(rng.uniform(-max_rotation, max_rotation, n))
    scale = rng.uniform(1 - max_scale, 1 + max_scale, n)
    shift = rng.uniform(-max_shift, max_shift, (n, 2))  # (rows, columns)
    return np.column_stack([angle, scale, shift])


def apply_affine(x: np.ndarray, maps: np.ndarray, size: int = 28) -> np.ndarray:
    """Each image of the batch `x` moved by its row of `maps` (from `draw_affine`), by bilinear
    interpolation; a new array with the shape and dtype of `x`."""
    n = x.shape[0]
    if x.size != n * size * size:
        raise ValueError(f"random_affine: expected a batch of {size}x{size} images, got shape {x.shape}")
    images = x.reshape(n, size, size)
    angle, scale, shift = maps[:, 0], maps[:, 1], maps[:, 2:]

    centre = (size - 1) / 2
    grid = np.arange(size, dtype=np.float64) - centre
    # output coordinates relative to the centre, minus the shift: (n, size, size) each
    dy = grid[None, :, None] - shift[:, 0, None, None]
    dx = grid[None, None, :] - shift[:, 1, None, None]
    # A⁻¹ = R(-angle) / scale
    cos = (np.cos(angle) / scale)[:, None, None]
    sin = (np.sin(angle) / scale)[:, None, None]
    src_x = cos * dx + sin * dy + centre
    src_y = -sin * dx + cos * dy + centre

    # Bilinear interpolation from a copy with a one-pixel border of zeros: indices clipped into
    # [-1, size] land on that border, so points outside the image read 0.
    padded = np.zeros((n, size + 2, size + 2), x.dtype)
    padded[:, 1:-1, 1:-1] = images
    x0 = np.floor(src_x)
    y0 = np.floor(src_y)
    fx = (src_x - x0).astype(x.dtype)
    fy = (src_y - y0).astype(x.dtype)
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    # both neighbours clipped separately (a neighbour computed from a clipped one could land inside)
    x1, y1 = np.clip(x0 + 1, -1, size) + 1, np.clip(y0 + 1, -1, size) + 1
    x0, y0 = np.clip(x0, -1, size) + 1, np.clip(y0, -1, size) + 1
    flat = padded.reshape(n, -1)
    row = size + 2

    def at(yy, xx):  # padded[k, yy, xx] for every image k
        return np.take_along_axis(flat, (yy * row + xx).reshape(n, -1), axis=1).reshape(n, size, size)

    out = (at(y0, x0) * (1 - fx) + at(y0, x1) * fx) * (1 - fy) + (at(y1, x0) * (1 - fx) + at(y1, x1) * fx) * fy
    return out.astype(x.dtype, copy=False).reshape(x.shape)


def digit_augmenter(max_rotation: float = 10.0, max_scale: float = 0.1, max_shift: float = 2.0):
    """`random_affine` with fixed ranges, as the `augment=` callable `(x_batch, rng) -> x_batch` of
    `chainrule.fit`. Ranges suit MNIST: larger rotations start turning 6s into 9s' cousins.

    In data-parallel training `fit` passes `batch_rows=(first, total)`: `x_batch` is rows first..
    of a global batch of `total`; the maps of all `total` images are drawn and the batch's own used.
    """

    def augment(x: np.ndarray, rng: np.random.Generator, batch_rows: tuple[int, int] | None = None) -> np.ndarray:
        first, total = batch_rows or (0, x.shape[0])
        maps = draw_affine(rng, total, max_rotation, max_scale, max_shift)
        return apply_affine(x, maps[first : first + x.shape[0]])

    return augment


def _whole_shift(caller: str, max_shift, size: int) -> int:
    if isinstance(max_shift, bool) or int(max_shift) != max_shift or not 0 <= max_shift < size:
        raise ValueError(f"{caller}: max_shift must be a whole number of pixels in [0, {size}), got {max_shift!r}")
    return int(max_shift)


def random_flip_shift(x: np.ndarray, rng: np.random.Generator, flip: bool = True, max_shift: int = 2,
                      size: int = 28) -> np.ndarray:
    """Mirror each image left-right with probability 1/2, then shift it by whole pixels.

    The shift (dy, dx) is drawn uniformly from the integers in [-max_shift, max_shift] along each
    axis, and the edge it uncovers is filled with zeros:

        out[i, j] = image'[i - dy, j - dx],    image'[r, c] = image[r, size - 1 - c] if mirrored

    which is the "pad by max_shift, crop at a random offset" augmentation of CIFAR training.
    Whole pixels keep the images sharp (bilinear sub-pixel shifts would blur them).

    Args:
        x: a batch of `size`×`size` images of any shape (N, ...) holding N·size² values, e.g.
            (N, 784) for a dense network or (N, 1, 28, 28) for a convolutional one; background 0.
        rng: the random generator (`fit` passes its own, so a seeded run is reproducible).
        flip: mirror half of the images (chosen at random) left-right.
        max_shift: largest shift in pixels along each axis; 0 for none.

    Returns:
        A new array with the shape and dtype of `x`.
    """
    return apply_flip_shift(x, draw_flip_shift(rng, x.shape[0], flip, max_shift, size), size)


def draw_flip_shift(rng: np.random.Generator, n: int, flip: bool = True, max_shift: int = 2,
                    size: int = 28) -> np.ndarray:
    """The random moves of n images, one row each: (mirrored 0 or 1, row shift, column shift).

    Drawn apart from applying them, like `draw_affine`, so that data-parallel training can draw
    the moves of a whole global batch and apply only its shard's rows.
    """
    m = _whole_shift("random_flip_shift", max_shift, size)
    mirrored = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    shift = rng.integers(-m, m + 1, size=(n, 2))  # (rows, columns)
    return np.column_stack([mirrored, shift])


def apply_flip_shift(x: np.ndarray, moves: np.ndarray, size: int = 28) -> np.ndarray:
    """Each image of the batch `x` mirrored and shifted by its row of `moves` (from
    `draw_flip_shift`); a new array with the shape and dtype of `x`."""
    n = x.shape[0]
    if x.size != n * size * size:
        raise ValueError(f"random_flip_shift: expected a batch of {size}x{size} images, got shape {x.shape}")
    mirrored, shift = moves[:, 0].astype(bool), moves[:, 1:]
    m = int(np.abs(shift).max(initial=0))
    # Read every output pixel from a copy with an m-pixel border of zeros, where image[r, c] sits
    # at padded[r + m, c + m]: source indices then stay inside the padded copy for any shift.
    padded = np.zeros((n, size + 2 * m, size + 2 * m), x.dtype)
    padded[:, m:m + size, m:m + size] = x.reshape(n, size, size)
    pixels = np.arange(size)
    rows = pixels[None, :] - shift[:, 0, None]  # (n, size): row i - dy of the unshifted image
    cols = pixels[None, :] - shift[:, 1, None]
    cols = np.where(mirrored[:, None], size - 1 - cols, cols)
    out = padded[np.arange(n)[:, None, None], rows[:, :, None] + m, cols[:, None, :] + m]
    return out.reshape(x.shape)


def clothing_augmenter(flip: bool = True, max_shift: int = 2):
    """`random_flip_shift` with fixed settings, as the `augment=` callable `(x_batch, rng) -> x_batch`
    of `chainrule.fit`. For upright photos of objects that look the same mirrored, as in Fashion-MNIST.

    In data-parallel training `fit` passes `batch_rows=(first, total)`, as for `digit_augmenter`:
    the moves of all `total` images are drawn and the batch's own used.
    """
    _whole_shift("clothing_augmenter", max_shift, 28)  # a bad setting fails here, not at the first batch

    def augment(x: np.ndarray, rng: np.random.Generator, batch_rows: tuple[int, int] | None = None) -> np.ndarray:
        first, total = batch_rows or (0, x.shape[0])
        moves = draw_flip_shift(rng, total, flip, max_shift)
        return apply_flip_shift(x, moves[first : first + x.shape[0]])

    return augment
