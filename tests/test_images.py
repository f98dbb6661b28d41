"""Image preprocessing: any picture of a digit -> MNIST-style 28x28, of an object -> Fashion-MNIST-style
28x28, and one-line errors for bad input."""

from __future__ import annotations

import gc
import io
import os
import struct
import sys
import threading
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, features

from chainrule.data.images import ImageError, preprocess_image

DATA = os.environ.get("CHAINRULE_DATA")
needs_data = pytest.mark.skipif(not DATA, reason="CHAINRULE_DATA is not set")


@pytest.fixture(scope="module")
def digits():
    from chainrule.data.mnist import load_mnist

    images, labels = load_mnist("test", DATA)
    return images[:40], labels[:40]


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def on_paper(digit: np.ndarray, scale: int = 1, offset=(0, 0), canvas=(100, 80), invert: bool = True) -> Image.Image:
    """An MNIST digit redrawn: optionally dark on white, enlarged, placed off-centre on a larger page."""
    img = Image.fromarray(255 - digit if invert else digit)
    if scale != 1:
        img = img.resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    page = Image.new("L", canvas, 255 if invert else 0)
    page.paste(img, offset)
    return page


def check_mnist_like(x: np.ndarray) -> None:
    assert x.shape == (28, 28) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() == pytest.approx(1.0)
    rows, cols = np.nonzero(x)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 <= 20  # fits the 20x20 box
    cy = (x.sum(1) * np.arange(28)).sum() / x.sum()
    cx = (x.sum(0) * np.arange(28)).sum() / x.sum()
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5  # centre of mass where MNIST has it


@needs_data
def test_polarity_and_position_do_not_matter(digits):
    for digit in digits[0][:10]:
        light_on_dark = preprocess_image(png(on_paper(digit, invert=False, offset=(5, 7))))
        dark_on_light = preprocess_image(png(on_paper(digit, invert=True, offset=(60, 40))))
        np.testing.assert_allclose(dark_on_light, light_on_dark, atol=1e-6)
        check_mnist_like(dark_on_light)


@needs_data
def test_light_falling_across_a_photographed_page_is_not_ink(digits):
    """A digit photographed on paper lit from one side (grey 215 fading to 151 across the page, with
    sensor noise) comes out as it does on evenly lit paper: the darker side of the page is paper,
    not a smear of ink that shifts the crop and shrinks the digit."""
    rng = np.random.default_rng(0)
    for digit in digits[0][:10]:
        even = on_paper(digit, scale=4, offset=(40, 20), canvas=(200, 160))
        ink = 1 - np.asarray(even, np.float64) / 255  # 0 on paper, 1 on the darkest stroke
        light = np.linspace(215, 151, 200)[None, :] * np.ones((160, 1))  # brighter on the left
        photo = light * (1 - 0.85 * ink) + rng.normal(0, 4, light.shape)
        x = preprocess_image(Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)))
        check_mnist_like(x)
        assert np.corrcoef(x.ravel(), preprocess_image(even).ravel())[0, 1] > 0.95


def _taken_in(photo: np.ndarray, light: float) -> np.ndarray:
    """`photo` (a page at level 230) as taken in `light` instead, prepared."""
    return preprocess_image(Image.fromarray(np.clip(photo * light / 230, 0, 255).astype(np.uint8)))


@needs_data
def test_a_page_photographed_in_dim_light_is_still_dark_ink_on_paper(digits):
    """White paper in dim light is a grey page, darker than mid-grey, with black ink on it: the same
    photo taken in a half or less of the light (every level, its sensor noise included, scaled down
    from a page at 230 to one at 100-140) comes out as it does in bright light. (Below mid-grey the
    page was taken for the ink: a solid block with the digit cut out of it.)"""
    rng = np.random.default_rng(0)
    for digit in digits[0][:10]:
        ink = 1 - np.asarray(on_paper(digit, scale=4, offset=(40, 20), canvas=(200, 160)), np.float64) / 255
        photo = 230 * (1 - 0.9 * ink) + rng.normal(0, 3, ink.shape)  # in bright light

        bright = _taken_in(photo, 230)
        for light in (100, 120, 140):
            x = _taken_in(photo, light)
            check_mnist_like(x)
            assert np.corrcoef(x.ravel(), bright.ravel())[0, 1] > 0.95, light


@needs_data
def test_a_page_brighter_in_its_middle_than_at_its_edges_is_still_dark_ink_on_paper(digits):
    """Vignetting (or a flash): a page at 235 in the middle, darker towards the corners. Its bright
    middle must not be taken for light ink on a darker ground (it was, by a rule summing how far
    pixels lie above and below the border's level)."""
    rng = np.random.default_rng(0)
    h, w = 160, 200
    r2 = ((np.arange(h)[:, None] - h / 2) ** 2 + (np.arange(w)[None, :] - w / 2) ** 2) / ((h / 2) ** 2 + (w / 2) ** 2)
    for strength in (40, 80):  # the corners at 195 and 155 (the paper's fitted plane cannot follow a curve,
        corr = []              # so some digits come out with a smear of corner: hence the median)
        for digit in digits[0][:10]:
            ink = 1 - np.asarray(on_paper(digit, scale=4, offset=(60, 20), canvas=(w, h)), np.float64) / 255
            bright = preprocess_image(on_paper(digit, scale=4, offset=(60, 20), canvas=(w, h)))
            photo = (235 - strength * r2) * (1 - 0.9 * ink) + rng.normal(0, 3, ink.shape)
            x = preprocess_image(Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)))
            corr.append(np.corrcoef(x.ravel(), bright.ravel())[0, 1])
        assert np.median(corr) > 0.9, (strength, np.round(corr, 2))


@needs_data
def test_a_speck_or_a_dot_apart_from_the_digit_is_not_part_of_it(digits):
    """One dark pixel anywhere on the page set the crop (the digit shrank to a corner of the box),
    and a black pen dot beside a pencil digit set the ink's scale (the digit fell under the noise
    floor, and the dot alone was read)."""
    for digit in digits[0][:10]:
        page = np.asarray(on_paper(digit, scale=8, offset=(60, 60), canvas=(400, 400)), np.float64)
        clean = preprocess_image(Image.fromarray(page.astype(np.uint8)))
        specked = page.copy()
        specked[10, 10] = 60
        np.testing.assert_allclose(preprocess_image(Image.fromarray(specked.astype(np.uint8))), clean, atol=1e-6)
        pencil = 240 - 40 * (1 - page / 255)  # grey 200 on paper 240
        dotted = pencil.copy()
        dotted[370:376, 370:376] = 20
        x, reference = (preprocess_image(Image.fromarray(np.round(a).astype(np.uint8))) for a in (dotted, pencil))
        np.testing.assert_allclose(x, reference, atol=1e-6)


@needs_data
def test_light_ink_on_light_grey_or_coloured_card_is_read(digits):
    """A border lighter than mid-grey was taken for paper under dark ink, whatever the picture
    held: a white digit on grey 140 card was "no ink found"."""
    for digit in digits[0][:5]:
        ink = np.asarray(on_paper(digit, scale=8, offset=(60, 60), canvas=(400, 400), invert=False), np.float64) / 255
        reference = preprocess_image(on_paper(digit, scale=8, offset=(60, 60), canvas=(400, 400)))
        for card in ((140, 140, 140), (165, 165, 165), (240, 150, 40), (120, 200, 120)):
            photo = np.array(card, np.float64) * (1 - ink[..., None]) + 250 * ink[..., None]
            x = preprocess_image(Image.fromarray(np.round(photo).astype(np.uint8)))
            assert np.corrcoef(x.ravel(), reference.ravel())[0, 1] > 0.95, card


@needs_data
def test_an_evenly_lit_image_and_its_negative_and_a_tight_crop_agree(digits):
    """On evenly lit paper the paper is the border's one level exactly, so an image and its
    negative give the same ink to the last bit; a digit cropped so tightly that it touches the
    edges is read as it is with a margin (ink on the border does not tilt the paper)."""
    tight = []
    for digit in digits[0][:50]:
        rows, cols = np.nonzero(digit)
        crop = np.kron(255 - digit[rows.min():rows.max() + 1, cols.min():cols.max() + 1], np.ones((3, 3), np.uint8))
        padded = np.pad(crop, 30, constant_values=255)
        x = preprocess_image(Image.fromarray(padded))
        np.testing.assert_array_equal(x, preprocess_image(Image.fromarray(255 - padded)))
        tight.append(np.corrcoef(preprocess_image(Image.fromarray(crop)).ravel(), x.ravel())[0, 1])
    assert np.mean(tight) > 0.97 and np.median(tight) > 0.99, sorted(tight)[:5]


@needs_data
def test_preprocessing_reproduces_mnist_closely(digits):
    """An MNIST digit, redrawn x3 larger, off-centre, dark on light, in colour, comes back close to itself.

    Pixel correlation punishes a half-pixel shift of a thin stroke hard, so single digits may sit
    well below the average; the average shows the pipeline matches how MNIST was made.
    """
    corrs = []
    for digit in digits[0]:
        page = on_paper(digit, scale=3, offset=(17, 5), canvas=(160, 120)).convert("RGB")
        x = preprocess_image(page)
        check_mnist_like(x)
        original = digit.astype(np.float32) / 255
        corrs.append(np.corrcoef(x.ravel(), original.ravel())[0, 1])
    assert min(corrs) > 0.5 and np.mean(corrs) > 0.85, corrs


def test_objects_are_prepared_as_fashion_mnist_was_made(fashion_dir):
    """A Fashion-MNIST item redrawn x3 larger, off-centre, dark on white, in colour comes back close
    to itself as an "object": fitted to 28 pixels on its longer side and centred, with its grey
    levels kept. Prepared as a digit instead (20x20 box, centre of mass) it does not."""
    from chainrule.data.idx import load_image_set

    items = load_image_set("fashion", "test").images[:40]
    as_object, as_digit = [], []
    for item in items:
        page = on_paper(item, scale=3, offset=(17, 5), canvas=(160, 120)).convert("RGB")
        x = preprocess_image(page, "object")
        assert x.shape == (28, 28) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
        rows, cols = np.nonzero(x)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert max(h, w) >= 27  # the longer side fills the field
        assert abs((rows.min() + rows.max()) / 2 - 13.5) <= 1 and abs((cols.min() + cols.max()) / 2 - 13.5) <= 1
        original = item.astype(np.float32).ravel() / 255
        as_object.append(np.corrcoef(x.ravel(), original)[0, 1])
        as_digit.append(np.corrcoef(preprocess_image(page, "digit").ravel(), original)[0, 1])
    assert min(as_object) > 0.6 and np.mean(as_object) > 0.88, as_object
    assert np.mean(as_digit) < np.mean(as_object) - 0.2, (np.mean(as_digit), np.mean(as_object))
    # a light object on a dark background reads the same as a dark one on a light background
    item = items[0]
    np.testing.assert_allclose(preprocess_image(png(on_paper(item, invert=False, offset=(5, 7))), "object"),
                               preprocess_image(png(on_paper(item, invert=True, offset=(40, 30))), "object"),
                               atol=1e-6)


def test_an_object_comes_back_where_fashion_mnist_put_it(fashion_dir):
    """Fashion-MNIST centres an item with an odd pixel left over above it or to its left; a photo of
    an item, prepared, must line up with the training images the same way. The odd pixel went
    below and to the right: half the items came back a row or a column off. (Items whose faint
    edge the trim takes off may move by one.)"""
    from chainrule.data.idx import load_image_set

    def box(a):
        rows, cols = np.flatnonzero(a.any(axis=1)), np.flatnonzero(a.any(axis=0))
        return rows[0], rows[-1], cols[0], cols[-1]

    items = [(item, box(item)) for item in load_image_set("fashion", "test").images[:200]]
    full = [(item, b) for item, b in items if 27 in (b[1] - b[0], b[3] - b[2])]  # 28 pixels tall or wide: not resized
    same = sum(box(preprocess_image(on_paper(item, scale=1, offset=(9, 4), canvas=(60, 50)), "object")) == b
               for item, b in full)
    assert len(full) > 150 and same >= 0.9 * len(full), (same, len(full))


def test_object_on_a_grey_background_and_a_blank_photo():
    page = Image.new("L", (120, 90), 200)  # a grey table top
    page.paste(Image.new("L", (30, 60), 40), (50, 10))  # a dark, tall thing on it
    x = preprocess_image(png(page), "object")
    rows, cols = np.nonzero(x)
    assert (rows.min(), rows.max()) == (0, 27) and x[0, 0] == 0 and x[14, 14] == pytest.approx(0.8, abs=0.01)
    assert 12 <= cols.max() - cols.min() + 1 <= 16  # 30 x 60 keeps its aspect ratio: 14 x 28
    with pytest.raises(ImageError, match="nothing found"):
        preprocess_image(png(Image.new("L", (50, 50), 200)), "object")
    # on a table darker than mid-grey (a dim photo) a darker thing is still measured down from it
    dim = Image.new("L", (120, 90), 115)
    dim.paste(Image.new("L", (30, 60), 40), (50, 10))
    x = preprocess_image(png(dim), "object")
    assert x[0, 0] == 0 and x[14, 14] == pytest.approx((115 - 40) / 115, abs=0.01)
    with pytest.raises(ValueError, match="picture must be one of"):
        preprocess_image(png(page), "photo")


def test_transparent_canvas_drawing_and_coloured_ink():
    # black strokes on a fully transparent background, as a browser canvas exports them
    rgba = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    ink = Image.new("RGBA", (20, 120), (0, 0, 0, 255))
    rgba.paste(ink, (90, 40))
    x = preprocess_image(png(rgba))
    check_mnist_like(x)
    # a vertical bar: 20 tall, narrower than wide-open
    rows, cols = np.nonzero(x > 0.5)
    assert rows.max() - rows.min() + 1 == 20 and cols.max() - cols.min() + 1 < 8
    # white ink on transparent works too, and so does blue ink on yellow paper
    white = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    white.paste(Image.new("RGBA", (20, 120), (255, 255, 255, 255)), (90, 40))
    np.testing.assert_allclose(preprocess_image(png(white)), x, atol=1e-6)
    paper = Image.new("RGB", (200, 200), (250, 240, 160))
    paper.paste(Image.new("RGB", (20, 120), (20, 30, 150)), (90, 40))
    np.testing.assert_allclose(preprocess_image(paper), x, atol=1e-6)


@needs_data
@pytest.mark.parametrize("strongest", [16, 24])
def test_a_faint_drawing_in_the_alpha_channel_reads_as_it_shows_on_white(digits, strongest):
    """Black ink drawn with a brush of 10% opacity or less (alpha up to 24 of 255): flattened onto
    white it is a digit 24 grey levels deep, more than a blank page's noise; the transparent file
    itself was "no ink found", read on black (where black ink shows nothing) for want of 25
    levels of contrast on white."""
    alpha = np.round(np.asarray(on_paper(digits[0][0], scale=3, invert=False, canvas=(100, 100))) / 255 * strongest)
    drawing = Image.fromarray(np.dstack([np.zeros((100, 100))] * 3 + [alpha]).astype(np.uint8), "RGBA")
    on_white = Image.alpha_composite(Image.new("RGBA", drawing.size, "white"), drawing).convert("L")
    x = preprocess_image(png(drawing))
    check_mnist_like(x)
    np.testing.assert_array_equal(x, preprocess_image(png(on_white)))


def test_sixteen_bit_grey_and_jpeg(tmp_path):
    a = np.zeros((60, 60), np.uint16)
    a[10:50, 25:35] = 60000
    x16 = preprocess_image(Image.fromarray(a))
    check_mnist_like(x16)
    jpeg = tmp_path / "bar.jpg"
    Image.fromarray((255 - (a > 0) * 255).astype(np.uint8)).save(jpeg, quality=90)
    xj = preprocess_image(jpeg)
    check_mnist_like(xj)
    assert np.abs(xj - x16).mean() < 0.05


@needs_data
def test_sixteen_bit_and_float_levels_are_read_on_their_formats_scale(digits):
    """A 16-bit scan's levels are out of 65535 and a float image's out of 1, as an 8-bit image's are
    out of 255: not stretched between the image's own darkest and lightest pixels, which made a
    blank page's sensor noise a digit and let one saturated pixel decide the contrast."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 2, (200, 200))
    with pytest.raises(ImageError, match="no ink found"):
        preprocess_image(Image.fromarray(np.clip(200 + noise, 0, 255).astype(np.uint8)))
    with pytest.raises(ImageError, match="no ink found"):
        preprocess_image(Image.fromarray(np.clip(257 * (200 + noise), 0, 65535).astype(np.uint16)))
    with pytest.raises(ImageError, match="no ink found"):
        preprocess_image(Image.fromarray(np.clip((200 + noise) / 255, 0, 1).astype(np.float32)))
    with pytest.raises(ImageError, match="no ink found"):  # a black 16-bit page whose noise stays under 256
        preprocess_image(Image.fromarray(np.clip(100 + 50 * noise, 0, 200).astype(np.uint16)))
    for digit in digits[0][:5]:  # grey ink on grey paper, one saturated pixel in a corner
        page = 78 + 78 * np.asarray(on_paper(digit, scale=3, canvas=(120, 100)), np.float64) / 255
        page[2, 2] = 255
        eight = preprocess_image(Image.fromarray(page.astype(np.uint8)))
        check_mnist_like(eight)
        sixteen = preprocess_image(Image.fromarray(page.astype(np.uint8).astype(np.uint16) * 257))
        floats = preprocess_image(Image.fromarray((page.astype(np.uint8) / 255).astype(np.float32)))
        np.testing.assert_allclose(sixteen, eight, atol=1e-5)
        np.testing.assert_allclose(floats, eight, atol=1e-5)


def test_large_photo_is_reduced_not_refused(tmp_path):
    big = Image.new("L", (4000, 3000), 230)
    big.paste(Image.new("L", (200, 1500), 20), (1900, 700))
    x = preprocess_image(big)
    check_mnist_like(x)


def fake_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge canvas: a few dozen bytes that would decode to gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 28 28
newpath 4 4 moveto 24 24 lineto stroke
showpage
"""


def test_a_postscript_file_is_refused_without_running_ghostscript(tmp_path, monkeypatch):
    """Pillow reads EPS by running Ghostscript on the file: an interpreter, run on what a web visitor
    uploads (and its failure was an internal error: HTTP 500). A `gs` on the PATH that records
    being called is never called."""
    called = tmp_path / "called"
    gs = tmp_path / "bin" / "gs"
    gs.parent.mkdir()
    gs.write_text(f"#!/bin/sh\necho \"$@\" >> {called}\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{gs.parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ImageError, match="not an image in a format read here"):
        preprocess_image(EPS)
    assert not called.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file"),
        (b"hello, this is not a picture\n", "not an image"),
        (fake_png_header(100_000, 100_000), "too large"),
        (fake_png_header(9000, 9000), "too large"),
        (None, "corrupt or truncated"),  # a real PNG cut in half
        (png(Image.new("L", (50, 50), 255)), "no ink"),
        (png(Image.new("RGB", (50, 50), (10, 200, 10))), "no ink"),
    ],
)
def test_bad_images_get_one_line_errors(tmp_path, content, expected, monkeypatch):
    if content is None:
        noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8))
        content = png(noisy)[:3000]
    path = tmp_path / "input.png"
    path.write_bytes(content)
    unclosed = []  # the file is closed however it failed (a file left open warns when collected)
    monkeypatch.setattr(sys, "unraisablehook", unclosed.append)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with pytest.raises(ImageError) as exc_info:
            preprocess_image(path)
        gc.collect()
    assert not unclosed, unclosed[0].exc_value
    msg = str(exc_info.value)
    assert expected in msg and str(path) in msg and "\n" not in msg
    if content:
        with pytest.raises(ImageError, match=expected):
            preprocess_image(content)


def _progressive_jpeg(img: Image.Image, extra_scans: int = 0) -> bytes:
    """`img` as a progressive JPEG, its last scan (an AC refinement of a few dozen bytes) repeated
    `extra_scans` more times: still a valid file, each copy one more pass over every pixel."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    last = data[data.rindex(b"\xff\xda") : -2]  # (the last scan runs up to the end-of-image marker)
    return data[:-2] + last * extra_scans + data[-2:]


def test_a_jpeg_of_a_thousand_scans_is_refused_before_it_is_decoded():
    """A progressive JPEG is decoded scan by scan, each a pass over the whole image: a white
    7000x7000 one with its last 75-byte scan repeated 1,000 times (363 KB) took 30 s to decode, and
    the 5 MB a web upload may be holds 65,000. The scans are counted first; the usual 6 (grey), 10
    (colour) or 18 (CMYK) are read."""
    bar = Image.new("L", (64, 64), 255)
    bar.paste(0, (28, 10, 36, 54))
    for mode in ("L", "RGB", "CMYK"):
        check_mnist_like(preprocess_image(_progressive_jpeg(bar.convert(mode))))
    check_mnist_like(preprocess_image(_progressive_jpeg(bar, extra_scans=80)))
    with pytest.raises(ImageError, match=r"^1,006 scans is too many for a JPEG \(limit 100"):
        preprocess_image(_progressive_jpeg(bar, extra_scans=1000))


def test_a_jpeg_with_data_after_its_end_is_read_whatever_that_data_holds():
    """A phone's motion photo appends its video after the JPEG's end-of-image marker: counting every
    0xFFDA pair in the file (8 MB of video held 120) refused it as "120 scans". Only the scans the
    decoder meets count, and bytes inside metadata do not."""
    bar = Image.new("L", (64, 64), 255)
    bar.paste(0, (28, 10, 36, 54))
    buf = io.BytesIO()
    bar.save(buf, "JPEG", progressive=True, quality=90, comment=b"\xff\xda" * 200)  # (a comment holds the pair)
    video = b"\x00\x00\x00\x18ftypmp42" + b"\xff\xda\x00\x0c" * 500
    check_mnist_like(preprocess_image(buf.getvalue() + video))


def _tiled_tiff(size: int, tile: int, pixels: bytes) -> bytes:
    """A grey TIFF of `size`x`size` pixels in one deflated tile of `tile`x`tile` (`pixels`, row by
    row, as much of the tile as is given)."""
    data = zlib.compress(pixels)
    tags = [(256, 4, size), (257, 4, size), (258, 3, 8), (259, 3, 8), (262, 3, 1), (277, 3, 1),
            (322, 4, tile), (323, 4, tile), (324, 4, 8 + 2 + 12 * 10 + 4), (325, 4, len(data))]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHIHH", tag, kind, 1, value, 0) if kind == 3 else struct.pack("<HHII", tag, kind, 1, value)
        for tag, kind, value in tags)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data


def test_a_tiff_tile_beyond_the_pixel_limit_is_refused_before_it_is_decoded():
    """Pillow's TIFF decoder makes room for a whole tile at once: a 2 MB TIFF of 100x100 pixels in
    one tile of 46336x46336 took 2.1 GB. Tiles of more pixels than an image may have are refused;
    a tile larger than a small image, as TIFF writers make them (256x256), is read."""
    page = np.full((256, 256), 255, np.uint8)
    page[10:90, 40:50] = 0
    check_mnist_like(preprocess_image(_tiled_tiff(100, 256, page.tobytes())))
    bomb = _tiled_tiff(100, 7072, bytes(7072))  # (7072² = 50,013,184 pixels; one row of them given)
    with pytest.raises(ImageError, match=r"^TIFF tiles of 7072x7072 pixels are too large \(limit 50,000,000"):
        preprocess_image(bomb)


def test_an_icon_holding_a_picture_beyond_the_pixel_limit_is_refused_before_it_is_decoded():
    """Pillow decodes an ICO's largest picture as it opens the file, before its size can be
    looked at (its directory says 256 of any larger): an icon holding a 9000x9000 PNG took 410 MB
    to be refused. The picture's own header is read first; an ordinary icon is read."""
    bar = Image.new("L", (64, 64), 255)
    bar.paste(0, (28, 10, 36, 54))
    buf = io.BytesIO()
    bar.save(buf, "ICO", sizes=[(64, 64), (32, 32)])
    check_mnist_like(preprocess_image(buf.getvalue()))
    inside = fake_png_header(9000, 9000)
    icon = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(inside), 22) + inside
    with pytest.raises(ImageError, match=r"^9000x9000 pixels is too large"):
        preprocess_image(icon)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        preprocess_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a directory"):
        preprocess_image(tmp_path)
    # a link to nothing, and links that lead round to themselves (which were "no such file")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nope.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(ImageError, match="dangling.png: a broken symbolic link$"):
        preprocess_image(tmp_path / "dangling.png")
    for looped in (tmp_path / "loop.png", tmp_path / "loop.png" / "x.png"):
        with pytest.raises(ImageError, match="loop.png(/x.png)?: a loop of symbolic links$"):
            preprocess_image(looped)


@needs_data
def test_a_pipe_named_as_a_file_is_read_as_the_file_is(digits, tmp_path):
    """`predict MODEL <(curl ...)` names a pipe: it was "no such file" (it is not a regular file)."""
    (tmp_path / "digit.png").write_bytes(png(on_paper(digits[0][0], scale=3)))
    os.mkfifo(tmp_path / "pipe")
    writer = threading.Thread(target=lambda: (tmp_path / "pipe").write_bytes((tmp_path / "digit.png").read_bytes()))
    writer.start()
    from_pipe = preprocess_image(tmp_path / "pipe")
    writer.join()
    np.testing.assert_array_equal(from_pipe, preprocess_image(tmp_path / "digit.png"))
    with pytest.raises(ImageError, match="/dev/null: empty file"):
        preprocess_image("/dev/null")


def _in_mode(grey: Image.Image, mode: str) -> Image.Image:
    """`grey` (mode L) converted to `mode`, including the modes Pillow cannot convert L into."""
    if mode == "LAB":
        return Image.merge("LAB", [grey, Image.new("L", grey.size, 128), Image.new("L", grey.size, 128)])
    if mode == "I;16":  # a 16-bit scan: the full 0..65535 range
        return Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    return grey.convert(mode)


@needs_data
def test_damaged_exif_data_is_read_past_without_warnings(digits):
    """A photo whose EXIF orientation has two values: Pillow warns (on stderr, in a command's
    output) and reads what it can; the picture is what counts."""
    ifd = struct.pack(">HHHIHHI", 1, 274, 3, 2, 1, 1, 0)  # one entry: orientation, 2 SHORTs (1 expected)
    exif = b"Exif\x00\x00MM\x00*" + struct.pack(">I", 8) + ifd
    buf = io.BytesIO()
    on_paper(digits[0][0], scale=3).convert("RGB").save(buf, "JPEG", exif=exif)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = preprocess_image(buf.getvalue())
    assert np.abs(out - preprocess_image(on_paper(digits[0][0], scale=3))).mean() < 0.05


@needs_data
def test_a_tiff_tag_past_the_end_of_the_file_is_read_past_without_warnings(digits):
    """A TIFF whose description says it runs on past the end of the file: Pillow warns "Tag data
    larger than file" as it opens the file, silenced, and again as it decodes the pixels (where it
    reads the tags once more), which reached stderr."""
    photo = on_paper(digits[0][0], scale=3)
    buf = io.BytesIO()
    photo.save(buf, "TIFF", tiffinfo={270: "a digit, drawn for a test"})
    data = bytearray(buf.getvalue())
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", data[4:8])[0]
    for k in range(struct.unpack(order + "H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack(order + "H", data[entry:entry + 2])[0] == 270:  # (ImageDescription: its length)
            data[entry + 4:entry + 8] = struct.pack(order + "I", 1_000_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = preprocess_image(bytes(data))
    np.testing.assert_array_equal(out, preprocess_image(photo))


@needs_data
@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_photo_stored_turned_reads_upright_by_its_exif_orientation(digits, orientation):
    """Phones store a photo as the sensor saw it and say in EXIF how to turn it upright."""
    photo = on_paper(digits[0][0], scale=3, offset=(8, 10)).convert("RGB")
    # stored = the upright photo turned the other way (orientations 5 and 7 are their own inverse)
    undo = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_90",
            7: "TRANSVERSE", 8: "ROTATE_270"}.get(orientation)
    stored = photo.transpose(getattr(Image.Transpose, undo)) if undo else photo
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", exif=exif, quality=95)
    assert np.abs(preprocess_image(buf.getvalue()) - preprocess_image(photo)).mean() < 0.03


def test_odd_sources_are_one_line_image_errors(tmp_path):
    """A file name too long for the file system stopped `predict` for every image (OSError); an
    empty PIL image raised IndexError from deep inside; one opened lazily on a file since closed
    raised ValueError; and a PIL image skipped the size limit a file has."""
    with pytest.raises(ImageError, match=r"/a{300}\.png: File name too long$"):
        preprocess_image(tmp_path / ("a" * 300 + ".png"))
    for size in ((0, 0), (0, 10)):
        with pytest.raises(ImageError, match=rf"^an empty image \({size[0]}x{size[1]} pixels\)$"):
            preprocess_image(Image.new("L", size))
    Image.new("L", (40, 40), 255).save(tmp_path / "blank.png")
    with open(tmp_path / "blank.png", "rb") as f:
        lazy = Image.open(f)
    with pytest.raises(ImageError, match="^corrupt or truncated image"):
        preprocess_image(lazy)
    huge = Image.new("1", (8000, 8000))  # (1-bit: 8 MB) over MAX_PIXELS, as a file of it is
    with pytest.raises(ImageError, match="^8000x8000 pixels is too large"):
        preprocess_image(huge)


def _renumbered_exif_tag(photo: Image.Image, fmt: str) -> bytes:
    """`photo` saved as `fmt` with EXIF orientation 6 and a Make tag (ASCII) renumbered 0x0106, a
    SHORT tag, as a broken camera or editor might write it."""
    exif = Image.Exif()
    exif[274], exif[0x010F] = 6, "Cam"
    buf = io.BytesIO()
    photo.save(buf, fmt, exif=exif)
    data = buf.getvalue()
    start = data.find(b"Exif\x00\x00") + 6 if fmt == "JPEG" else data.find(b"EXIF") + 8
    old, new = (b"\x0f\x01", b"\x06\x01") if data[start:start + 2] == b"II" else (b"\x01\x0f", b"\x01\x06")
    at = data.find(old, start)
    return data[:at] + new + data[at + 2:]


def _strip_offsets_as_text(photo: Image.Image) -> bytes:
    """`photo` as a TIFF whose StripOffsets tag (273) says its type is ASCII, not LONG."""
    buf = io.BytesIO()
    photo.save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", data[4:8])[0]
    for k in range(struct.unpack(order + "H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack(order + "H", data[entry:entry + 2])[0] == 273:
            data[entry + 2:entry + 4] = struct.pack(order + "H", 2)
    return bytes(data)


@needs_data
def test_damaged_image_metadata_is_a_one_line_problem_or_read_past(digits):
    """EXIF tags of the wrong type (JPEG, WebP) and a TIFF whose strip offsets are text raised
    TypeError and struct.error out of Pillow: `predict` stopped at an "internal error" and gave no
    result for the other images. The orientation, readable beside the damaged tag, still turns the
    photo upright; a TIFF whose pixels cannot be found is a corrupt image."""
    photo = on_paper(digits[0][0], scale=3).convert("RGB")
    upright = preprocess_image(photo.transpose(Image.Transpose.ROTATE_270))  # (what orientation 6 asks for)
    for fmt in ("JPEG", "WEBP"):
        out = preprocess_image(_renumbered_exif_tag(photo, fmt))
        assert np.abs(out - upright).mean() < 0.05, fmt
    with pytest.raises(ImageError, match=r"^corrupt or truncated image \("):
        preprocess_image(_strip_offsets_as_text(photo))


@needs_data
@pytest.mark.skipif(not features.check("avif"), reason="this Pillow reads no AVIF")
def test_a_damaged_avif_is_a_corrupt_image(digits):
    """Pillow's AVIF decoder says a file is damaged with RuntimeError, at open (an image item that
    is empty) or as it decodes the pixels: `predict` stopped at an "internal error" with no result
    for the other images, and the web answered 500."""
    buf = io.BytesIO()
    on_paper(digits[0][0], scale=3).convert("RGB").save(buf, "AVIF")
    good = buf.getvalue()
    check_mnist_like(preprocess_image(good))
    # the item location box: version and flags, sizes, item count, item id, data reference,
    # extent count, extent offset, then the extent's length: 0 bytes
    length = good.find(b"iloc") + 4 + 4 + 2 + 2 + 2 + 2 + 2 + 4
    empty_item = good[:length] + bytes(4) + good[length + 4:]
    with pytest.raises(ImageError, match=r"^corrupt or truncated image \(.*empty image item"):
        preprocess_image(empty_item)
    with pytest.raises(ImageError, match=r"^corrupt or truncated image \(.*color planes"):
        preprocess_image(good[:-64] + bytes(64))  # the coded pixels' end zeroed


@needs_data
@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I", "I;16", "F"])
@pytest.mark.parametrize("long_side", [90, 5000])
def test_every_image_mode_at_every_size_reads_as_the_same_digit(digits, mode, long_side):
    """Scanner and editor output in any mode Pillow opens (16-bit grey, LAB, CMYK, float TIFF, ...),
    small or larger than the working size, reads as the digit; a 16-bit scan 5,000 pixels long
    used to fail inside Pillow's shrinking with "image has wrong mode"."""
    page = on_paper(digits[0][0], scale=3, offset=(8, 10))  # test image 0 is a 7
    page = page.resize((long_side, long_side * page.size[1] // page.size[0]), Image.Resampling.BICUBIC)
    img = _in_mode(page, mode)
    buf = io.BytesIO()
    img.save(buf, "PNG" if mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16") else "TIFF")
    out = preprocess_image(buf.getvalue())
    reference = preprocess_image(page)
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert np.abs(out - reference).mean() < 0.08, (mode, np.abs(out - reference).mean())


def _jpeg(img: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **options)
    return buf.getvalue()


def test_a_jpeg_with_a_gigabyte_after_its_end_is_read_in_the_memory_its_image_needs(tmp_path):
    """A phone's motion photo appends its video after the JPEG's end-of-image marker: the whole file
    was read to count the scans, a 4 KB image with 1 GB after it took 2.2 GB. (The file here is
    sparse: its gigabyte of zeros takes no room on the disk.)"""
    bar = Image.new("L", (64, 64), 255)
    bar.paste(0, (28, 10, 36, 54))
    path = tmp_path / "motion.jpg"
    with open(path, "wb") as f:
        f.write(_jpeg(bar, progressive=True, quality=90))
        f.truncate(1 << 30)
    tracemalloc.start()
    try:
        check_mnist_like(preprocess_image(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def _filled(jpeg: bytes, before: bytes, fill: int) -> bytes:
    """`jpeg` with `fill` 0xFF fill bytes before its first `before` marker: still a valid file."""
    at = jpeg.index(before)
    return jpeg[:at] + b"\xff" * fill + jpeg[at:]


def test_a_jpeg_of_megabytes_of_fill_bytes_is_refused_before_it_is_opened(tmp_path):
    """0xFF fill bytes may come before any marker: Pillow reads those in the header one at a time
    (0.36 s a MB), the decoder those between scans ever slower (10.8 s for 40 MB). A JPEG of more
    coded bytes and fill than its pixels could need is refused; a few fill bytes, and photo-like
    noise at quality 100 (the most coded data a picture needs), are read."""
    bar = Image.new("L", (64, 64), 255)
    bar.paste(0, (28, 10, 36, 54))
    plain = _jpeg(bar, quality=90)
    check_mnist_like(preprocess_image(_filled(plain, b"\xff\xda", 100)))
    check_mnist_like(preprocess_image(_filled(plain, b"\xff\xd9", 100)))
    limit = r"bytes of coded data and fill is too much for a JPEG of 64x64 pixels \(limit 98,304 bytes\)$"
    for marker in (b"\xff\xc4", b"\xff\xda", b"\xff\xd9"):  # (in the header, before the scan, after it)
        with pytest.raises(ImageError, match=r"^[\d,]+ " + limit):
            preprocess_image(_filled(plain, marker, 2 << 20))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8))
    # (Pillow cannot write a progressive colour one without chroma subsampling, nor a CMYK one to memory)
    for mode, progressive, subsampling in [("L", False, 0), ("L", True, 0), ("RGB", False, 0), ("RGB", True, 2),
                                           ("CMYK", False, 0), ("CMYK", True, 0)]:
        photo = tmp_path / "noise.jpg"
        noise.convert(mode).save(photo, quality=100, subsampling=subsampling, progressive=progressive)
        assert preprocess_image(photo, picture="object").shape == (28, 28)


@pytest.mark.parametrize("side", [9000, 10_000, 100_000])
def test_an_image_over_the_pixel_limit_is_refused_in_the_same_words_whatever_its_size(side):
    """Pillow's own guard (89,478,485 pixels) fired inside Image.open, before the size was looked at:
    a 10000x10000 PNG was "image too large (decompression bomb guard: Image size (100000000
    pixels) exceeds limit of 89478485 pixels, ...)", a 9000x9000 one named chainrule's limit."""
    with pytest.raises(ImageError, match=rf"^{side}x{side} pixels is too large \(limit 50,000,000 pixels\)$"):
        preprocess_image(fake_png_header(side, side))
