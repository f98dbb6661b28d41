"""The clothing augmentation: random left-right mirroring and whole-pixel shifts (Fashion-MNIST)."""

from __future__ import annotations

import numpy as np
import pytest

from chainrule.data.augment import clothing_augmenter, random_flip_shift


def _images(n: int, seed: int = 0) -> np.ndarray:
    """Random positive images: every pixel is distinguishable from the zero fill of a shift."""
    return np.random.default_rng(seed).uniform(0.5, 1.0, (n, 1, 28, 28)).astype(np.float32)


def _identify(original: np.ndarray, out: np.ndarray, max_shift: int) -> tuple[bool, int, int]:
    """The (mirrored, dy, dx) that turns `original` into `out`, found by trying every one."""
    found = []
    for mirrored in (False, True):
        source = original[:, ::-1] if mirrored else original
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                want = np.zeros_like(original)
                rows, cols = slice(max(dy, 0), 28 + min(dy, 0)), slice(max(dx, 0), 28 + min(dx, 0))
                src_rows, src_cols = slice(max(-dy, 0), 28 + min(-dy, 0)), slice(max(-dx, 0), 28 + min(-dx, 0))
                want[rows, cols] = source[src_rows, src_cols]
                if np.array_equal(out, want):
                    found.append((mirrored, dy, dx))
    assert len(found) == 1, f"expected exactly one mirror/shift to explain the output, found {found}"
    return found[0]


def test_every_output_is_the_input_mirrored_or_not_and_shifted_within_bounds():
    x = _images(200)
    out = random_flip_shift(x, np.random.default_rng(1), flip=True, max_shift=2)
    draws = [_identify(x[k, 0], out[k, 0], 2) for k in range(len(x))]
    shifts = np.array([(dy, dx) for _, dy, dx in draws])
    assert np.abs(shifts).max() <= 2
    # all 5 shifts per axis occur in 200 images, in both directions
    assert set(shifts[:, 0]) == set(shifts[:, 1]) == {-2, -1, 0, 1, 2}
    assert 0 < sum(m for m, _, _ in draws) < len(draws)


def test_about_half_of_a_large_batch_is_mirrored():
    # Images whose left half is 1 and right half 0: a mirrored one has its ink on the right.
    x = np.zeros((20000, 28, 28), np.float32)
    x[:, :, :14] = 1.0
    out = random_flip_shift(x, np.random.default_rng(3), flip=True, max_shift=0)
    mirrored = out[:, :, 14:].sum(axis=(1, 2)) > out[:, :, :14].sum(axis=(1, 2))
    np.testing.assert_array_equal(out[mirrored], x[mirrored][:, :, ::-1])
    np.testing.assert_array_equal(out[~mirrored], x[~mirrored])
    # binomial(20000, 1/2): the standard deviation of the fraction is 0.0035, so 0.48-0.52 is over 5 sigma
    assert 0.48 < mirrored.mean() < 0.52


def test_without_flip_nothing_is_mirrored_and_without_shift_nothing_moves():
    x = _images(100)
    no_flip = random_flip_shift(x, np.random.default_rng(0), flip=False, max_shift=1)
    assert not any(_identify(x[k, 0], no_flip[k, 0], 1)[0] for k in range(len(x)))
    np.testing.assert_array_equal(random_flip_shift(x, np.random.default_rng(0), flip=False, max_shift=0), x)


def test_shape_dtype_and_layouts():
    """(n, 784) for dense networks and (n, 1, 28, 28) for conv ones give the same images back."""
    image_batch = _images(16)
    flat_batch = image_batch.reshape(16, 784)
    for dtype in (np.float32, np.float64):
        a = random_flip_shift(image_batch.astype(dtype), np.random.default_rng(7))
        b = random_flip_shift(flat_batch.astype(dtype), np.random.default_rng(7))
        assert a.shape == (16, 1, 28, 28) and b.shape == (16, 784)
        assert a.dtype == b.dtype == dtype
        np.testing.assert_array_equal(a.reshape(16, 784), b)
    assert not np.shares_memory(a, image_batch)


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    x = _images(64)
    augment = clothing_augmenter(flip=True, max_shift=2)
    first = augment(x, np.random.default_rng(11))
    np.testing.assert_array_equal(first, augment(x, np.random.default_rng(11)))
    assert not np.array_equal(first, augment(x, np.random.default_rng(12)))
    np.testing.assert_array_equal(x, _images(64))  # the input is left alone


def test_clothing_augmenter_is_fit_s_augment_callable():
    """Through `fit`, a seeded run sees the same augmented batches twice."""
    import chainrule as cr

    rng = np.random.default_rng(0)
    x = rng.random((64, 784), np.float32)
    y = rng.integers(0, 10, 64)
    seen = []

    def recording(augment):
        def wrapped(xb, r):
            out = augment(xb, r)
            seen.append(out)
            return out
        return wrapped

    for _ in range(2):
        model = cr.Sequential([cr.Linear(784, 10)], input_shape=(784,), seed=0)
        cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters(), lr=0.1), epochs=1, batch_size=32,
               augment=recording(clothing_augmenter()), verbose=False, seed=5)
    assert len(seen) == 4
    for a, b in zip(seen[:2], seen[2:], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [-1, 1.5, 28, True])
def test_bad_max_shift_is_refused_with_the_value(bad):
    with pytest.raises(ValueError, match=f"max_shift .*got {bad!r}"):
        clothing_augmenter(max_shift=bad)
    with pytest.raises(ValueError, match=f"max_shift .*got {bad!r}"):
        random_flip_shift(_images(2), np.random.default_rng(0), max_shift=bad)


def test_a_batch_that_is_not_28x28_images_is_refused():
    with pytest.raises(ValueError, match="28x28"):
        random_flip_shift(np.zeros((2, 100), np.float32), np.random.default_rng(0))


def test_shards_of_a_global_batch_get_the_moves_the_whole_batch_gets():
    """Data-parallel training: each process augments its rows of a global batch with the moves
    drawn for the whole batch (its generator advancing alike in every process)."""
    x = _images(20)
    augment = clothing_augmenter(flip=True, max_shift=2)
    whole = augment(x, np.random.default_rng(4))
    shards = [augment(x[a:b], np.random.default_rng(4), batch_rows=(a, 20)) for a, b in ((0, 7), (7, 14), (14, 20))]
    np.testing.assert_array_equal(np.concatenate(shards), whole)
    assert not np.array_equal(whole, augment(x, np.random.default_rng(5)))
