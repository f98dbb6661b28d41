"""Any picture -> a 28x28 image prepared the way the training set's images were made.

A network has only ever seen images prepared one way, so a photo or a drawing must go through the
same steps before it can be recognised. Two ways are known here (`PICTURES`):

"digit", as MNIST (LeCun et al.): digits were size-normalised "to fit in a 20x20 pixel box while
preserving their aspect ratio", anti-aliased (hence grey levels), then "centered in a 28x28 image by
computing the center of mass of the pixels, and translating the image so as to position this point
at the center of the 28x28 field". So:

1. grey levels, with the ink as high values (whatever the paper and ink colours were), stretched so
   the strongest ink is 1 (a pen line is ink, however faint the photo);
2. crop to the bounding box of the ink;
3. scale to fit 20x20, keeping the aspect ratio (area averaging when shrinking = anti-aliasing);
4. paste into 28x28 with the centre of mass at the centre.

"object", as Fashion-MNIST (Xiao et al. 2017): product photos on a white background were trimmed
to the product, their longest edge resized to 28, the shorter edge extended to 28 with the product
in the centre, and the grey levels negated. So:

1. grey levels negated, measured from the background (the image's border): the background is 0 and
   a black garment 1; no stretching, since how light the garment is tells a shirt from a coat;
2. crop to the object (pixels within 5% of the background are background, as the paper's trim);
3. scale the longer side to 28, keeping the aspect ratio;
4. centre the box in 28x28.

(The paper also sharpens the resized image; that step is left out.) Photograph a garment laid on
a plain background that reaches the edges of the picture.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import BmpImagePlugin, IcoImagePlugin, Image, PngImagePlugin, TiffImagePlugin, UnidentifiedImageError

from chainrule.data.idx import IMAGE_SIZE
from chainrule.errors import WARNING_FILTERS, DataError
from chainrule.files import link_problem

# Refuse images larger than this many pixels before decoding them: a small compressed file can
# claim an enormous canvas (a "decompression bomb") and exhaust memory when decoded. 50 megapixels
# is above any phone camera in common use.
MAX_PIXELS = 50_000_000
# A progressive JPEG is decoded scan by scan, each a pass over the whole image (~30 ms at 7000x7000),
# and a scan of a few dozen bytes may be repeated: 1,000 of them took 30 s. Encoders write 6 (grey),
# 10 (colour) or 18 (CMYK) with libjpeg's script, Photoshop 3 to 5; at this limit the largest image
# decodes in ~3 s, where a 7000x7000 PNG takes 1 s.
MAX_JPEG_SCANS = 100
# A JPEG's coded bytes (its scans' entropy-coded data, and the 0xFF fill bytes an encoder may put
# before a marker) are refused beyond this many per pixel, plus `JPEG_CODED_ALLOWANCE` (a small
# image's headers of scans and blocks padded to whole MCUs): fill bytes cost far more than their
# size, read one at a time (Pillow's header parser, 0.36 s a MB) or re-read as the decoder waits for
# more data (10.8 s for 40 MB), and a 64x64 image needs no megabytes of either. Photo-like noise
# saved by Pillow at quality 100 without chroma subsampling, more than a real photo needs, takes 4.1
# bytes a pixel (CMYK 4.75, grey 1.4; progressive less), MNIST's digits at quality 100 1.05.
JPEG_CODED_BYTES_PER_PIXEL = 8
JPEG_CODED_ALLOWANCE = 64 << 10
# JPEG files are walked (`_jpeg_parts`) this many bytes at a time, whatever their size.
JPEG_READ_CHUNK = 1 << 20
# An image read from a stream (standard input, a pipe named as a file: `<(curl ...)`) is refused
# beyond this size before it is decoded (the decoder's pixel limit then guards what a small file
# can claim); a file's size is known before it is opened.
MAX_STREAM_BYTES = 64 << 20
# The picture formats read (Pillow's names): photographs, scans, drawings and icons, decoded in this
# process. Not EPS, which Pillow hands to Ghostscript, an interpreter of the uploaded program (a web
# server must not run one on what a visitor sends), nor scientific and game formats.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "AVIF", "ICO", "CUR", "PPM", "PCX", "TGA",
           "JPEG2000", "SGI", "PSD", "QOI", "XBM", "XPM")
# Work at no more than this many pixels on the longer side: far more detail than a 20x20 box needs,
# and it bounds the memory and time of everything that follows.
WORKING_SIZE = 1024
# Ink fainter than this fraction of the strongest ink is paper texture, shadow or JPEG noise.
NOISE_FLOOR = 0.2
# Grey levels of contrast a picture's strongest ink must exceed (5%): less is a blank page's noise.
BLANK_CONTRAST = 12
# Grey levels (10%) a transparent drawing must span, flattened onto white (then black), to be read
# on that background: less shows little of it there (white ink on white; on black, a faint brush's
# black ink), so the other is tried too (`_grey`).
FLAT_CONTRAST = 25
# The parts of a picture (the digit's strokes, a speck, a dot) are told apart down to this fraction
# of its strongest ink (`_strokes`).
PART_LEVEL = 0.05
# Grey levels by which a border pixel may be darker than the fitted paper (for dark ink; lighter,
# for light ink) and still count as paper; and the most fits `_paper` makes before it settles.
PAPER_TOLERANCE = 24.0
PAPER_FITS = 6

# MNIST's digits were fitted to a box of this side, then centred in the 28x28 image (`to_mnist`).
DIGIT_BOX = 20
# An object's pixels closer than this to the background's level are background (Fashion-MNIST's trim).
OBJECT_TRIM = 0.05
PICTURES = ("digit", "object")


class ImageError(DataError):
    """The input is not a usable image (empty, unreadable, too large, blank)."""


@contextlib.contextmanager
def _pillow_warnings():
    """Pillow's notes on damaged metadata (EXIF: "Corrupt EXIF data", "tag 274 had too many
    entries") silenced, and its decompression bomb warning raised as an error; threads take turns."""
    with WARNING_FILTERS, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _read_stream(f, name: str) -> bytes:
    """All of a stream that is read once (a pipe, a device, standard input), up to MAX_STREAM_BYTES."""
    data = f.read(MAX_STREAM_BYTES + 1)
    if len(data) > MAX_STREAM_BYTES:
        raise ImageError(f"{name}: larger than {MAX_STREAM_BYTES >> 20} MB")
    if not data:
        raise ImageError(f"{name}: empty file")
    return data


def _open(source) -> tuple[Image.Image, str]:
    """Open `source` (path, bytes, a binary stream such as standard input's, named "-", or a PIL
    image) as a decoded PIL image; returns (image, name for errors)."""
    if isinstance(source, Image.Image):  # (decoded here if it was opened lazily, with its size checked first)
        w, h = source.size
        _check_pixels(w, h, "")
        if w * h == 0:
            raise ImageError(f"an empty image ({w}x{h} pixels)")
        with _decoding(""):
            source.load()
        return source, "image"
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, data = "image", bytes(source)
        if not data:
            raise ImageError("empty file")
        fp = io.BytesIO(data)
    elif hasattr(source, "read"):
        name = "-"
        fp = io.BytesIO(_read_stream(source, name))
    else:
        path = Path(source)
        name = str(path)
        try:
            if path.is_dir():
                raise ImageError(f"{name}: is a directory, not an image")
            if not path.exists():
                raise ImageError(f"{name}: {link_problem(path) or 'no such file'}")
            if path.is_file():
                if path.stat().st_size == 0:
                    raise ImageError(f"{name}: empty file")
                fp = path
            else:  # a pipe or a device: read once, as a stream
                with open(path, "rb") as f:
                    fp = io.BytesIO(_read_stream(f, name))
        except OSError as exc:  # (a name too long for the file system, a folder that may not be read)
            raise ImageError(f"{name}: {exc.strerror or exc}") from exc
    prefix = "" if name == "image" else f"{name}: "
    # A file is open only while the image is decoded (the decoded first frame is all we use):
    # left to Pillow, one refused for its size, or a frame of an animation, stays open.
    with open(fp, "rb") if isinstance(fp, Path) else contextlib.nullcontext(fp) as f, _decoding(prefix):
        if (icon := _icon_size(f)) is not None:  # (Pillow decodes an icon's picture as it opens it)
            _check_pixels(*icon, prefix)
        if _is_jpeg(f):  # (Pillow reads a JPEG's header, fill bytes and all, as it opens it)
            _check_jpeg(f, prefix)
        img = _open_sized(f, prefix)
        _check_decoding_cost(img, prefix)
        # JPEG can decode straight to a reduced size, cheaper than decoding then shrinking.
        img.draft("L", (WORKING_SIZE, WORKING_SIZE))
        img.load()
    return img, name


def _check_pixels(w: int, h: int, prefix: str) -> None:
    if w * h > MAX_PIXELS:
        raise ImageError(f"{prefix}{w}x{h} pixels is too large (limit {MAX_PIXELS:,} pixels)")


def _open_sized(f, prefix: str) -> Image.Image:
    """`f` opened by Pillow (not yet decoded), refused if it has more than `MAX_PIXELS` pixels.
    Pillow's own guard, at 89,478,485 pixels, fires inside Image.open, before the size can be
    looked at: the size its header claims is then read without it, so that every image over the
    limit is refused in the same words."""
    try:
        img = Image.open(f, formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        if (claimed := _claimed_size(f)) is not None:
            _check_pixels(*claimed, prefix)
        raise
    _check_pixels(*img.size, prefix)
    return img


def _claimed_size(f) -> tuple[int, int] | None:
    """The size the header of `f` claims, read by the first of `FORMATS` whose reader accepts it,
    as Image.open reads it but without Pillow's pixel limit; None where that reader checks it
    itself. Nothing is decoded."""
    f.seek(0)
    head = f.read(16)
    for fmt in FORMATS:
        if fmt not in Image.OPEN:
            continue
        factory, accept = Image.OPEN[fmt]
        accepted = accept is None or accept(head)
        if not accepted or isinstance(accepted, str):
            continue
        f.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return factory(f, "").size
        except Image.DecompressionBombError:
            return None
        except _DECODE_ERRORS:  # (as Image.open, the next format is tried)
            continue
    return None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # (how a PNG begins, in an icon as anywhere)


def _icon_size(f) -> tuple[int, int] | None:
    """The size of the picture Pillow decodes from an ICO file `f` as it opens it (the largest),
    read from that picture's own header, a PNG's or a bitmap's (the icon's directory says 256 of
    any larger); None where `f` is no icon Pillow reads as one. Nothing is decoded."""
    f.seek(0)
    try:
        largest = IcoImagePlugin.IcoFile(f).entry[0]
        f.seek(largest.offset)
        if f.read(8) == PNG_SIGNATURE:
            f.seek(largest.offset)
            return PngImagePlugin.PngImageFile(f).size
        f.seek(largest.offset)
        w, h = BmpImagePlugin.DibImageFile(f).size
        return w, h // 2  # (as Pillow reads it: a bitmap's height counts its transparency mask too)
    except _DECODE_ERRORS:  # (no icon, a damaged one: Image.open says what it is)
        return None


def _check_decoding_cost(img: Image.Image, prefix: str) -> None:
    """Refuse a TIFF whose tiles are larger than `MAX_PIXELS`: its decoding would cost far more
    than its pixels do (Pillow's decoder makes room for a whole tile: a 100x100 TIFF in one
    46336x46336 tile took 2.1 GB). (A JPEG's cost is checked before it is opened, `_check_jpeg`.)"""
    if img.format == "TIFF":
        tile = img.tag_v2.get(TiffImagePlugin.TILEWIDTH), img.tag_v2.get(TiffImagePlugin.TILELENGTH)
        if all(isinstance(side, int) for side in tile) and tile[0] * tile[1] > MAX_PIXELS:
            raise ImageError(f"{prefix}TIFF tiles of {tile[0]}x{tile[1]} pixels are too large "
                             f"(limit {MAX_PIXELS:,} pixels)")


JPEG_SIGNATURE = b"\xff\xd8\xff"  # (how Pillow tells a JPEG, or an MPO, its multi-picture kind)


def _is_jpeg(f) -> bool:
    f.seek(0)
    return f.read(len(JPEG_SIGNATURE)) == JPEG_SIGNATURE


def _check_jpeg(f, prefix: str) -> None:
    """Refuse a JPEG whose decoding would cost far more than its pixels do: one of more than
    `MAX_JPEG_SCANS` scans, or of more coded bytes (entropy-coded data and fill bytes) than
    `JPEG_CODED_BYTES_PER_PIXEL` for each of its pixels could need."""
    scans, coded, size = 0, 0, None
    for part, value in _jpeg_parts(f):
        if part == "frame":
            size = size or value
        else:
            scans += part == "scan"
            coded += value
    if scans > MAX_JPEG_SCANS:
        raise ImageError(f"{prefix}{scans:,} scans is too many for a JPEG (limit {MAX_JPEG_SCANS}; each is a "
                         "pass over the whole image)")
    if size is not None and coded > (limit := JPEG_CODED_BYTES_PER_PIXEL * size[0] * size[1] + JPEG_CODED_ALLOWANCE):
        raise ImageError(f"{prefix}{coded:,} bytes of coded data and fill is too much for a JPEG of "
                         f"{size[0]}x{size[1]} pixels (limit {limit:,} bytes)")


# JPEG markers of a frame header (start of frame: baseline, progressive, lossless, arithmetic-coded),
# which gives the image's size; not 0xC4, 0xC8, 0xCC (Huffman tables, reserved, arithmetic conditioning).
_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_parts(f):
    """What the decoder meets in the JPEG file `f`, walked from the start to the end-of-image marker:
    ("fill", how many 0xFF fill bytes before a marker), ("frame", (width, height)) and ("scan",
    how many bytes of entropy-coded data follow its header). What follows that marker is not the
    image's and is not read (a phone's motion photo appends its video there: 8 MB of it held 120
    0xFFDA pairs), nor is a pair inside metadata or a scan's own data. The file is read a segment
    or a chunk at a time, and runs of fill bytes and a scan's data are skipped by searching."""
    i = 2  # (after the start-of-image marker)
    while True:
        f.seek(i)
        head = f.read(9)
        if len(head) < 4 or head[0] != 0xFF:
            return
        marker = head[1]
        if marker == 0xFF:  # fill bytes before a marker
            marker_at = _find(f, i + 1, _NOT_FILL) - 1  # (the last 0xFF of the run begins the marker)
            yield "fill", marker_at - i
            i = marker_at
        elif marker == 0xD9:  # end of image
            return
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers with no length
            i += 2
        else:
            i += 2 + int.from_bytes(head[2:4], "big")
            if marker in _FRAME_MARKERS and len(head) == 9:
                yield "frame", (int.from_bytes(head[7:9], "big"), int.from_bytes(head[5:7], "big"))
            elif marker == 0xDA:
                scan_end = _find(f, i, _SCAN_END)
                yield "scan", scan_end - i
                i = scan_end


# Where a scan's entropy-coded data ends: at the first marker that is neither a 0xFF byte of the data
# (written 0xFF00) nor a restart marker (0xFFD0-0xFFD7); and where a run of fill bytes ends.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_NOT_FILL = re.compile(rb"[^\xff]")


def _find(f, i: int, pattern: re.Pattern) -> int:
    """Where `pattern` (of one or two bytes) first matches in the file `f` at `i` or after; the
    file's end where it does not. Read `JPEG_READ_CHUNK` bytes at a time."""
    while True:
        f.seek(i)
        chunk = f.read(JPEG_READ_CHUNK)
        if (found := pattern.search(chunk)) is not None:
            return i + found.start()
        if len(chunk) < JPEG_READ_CHUNK:
            return i + len(chunk)
        i += len(chunk) - 1  # (a pair may straddle two chunks)


# What Pillow's decoders and its EXIF reader raise for a damaged file, a TIFF whose tags have the
# wrong types, say (TypeError), or an EXIF block whose header or entries are cut (struct.error).
# (The code they guard only calls Pillow: none of them can come from a bug of ours.)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, KeyError, struct.error)


@contextlib.contextmanager
def _decoding(prefix: str):
    """Pillow opening and decoding an image: what it raises for a file it cannot read becomes an
    ImageError, its reason after `prefix` (the file's name), and its warnings are `_pillow_warnings`'.
    The decoding too, not the header alone: a TIFF's tags are read again as its pixels are (damaged,
    they warned on stderr), and a decompression bomb warning may come from either."""
    try:
        with _pillow_warnings():
            yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # (Pillow's guard, at 89,478,485 pixels, on a part of the image: a frame of an animation)
        raise ImageError(f"{prefix}image too large (limit {MAX_PIXELS:,} pixels)") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{prefix}not an image in a format read here ({', '.join(FORMATS)})") from exc
    except RecursionError:  # (a RuntimeError, but a bug's, not the file's)
        raise
    # (RuntimeError: how the AVIF decoder says a file is damaged, "Missing or empty image item",
    # "Decoding of color planes failed"; only here, where Pillow opens and decodes)
    except (*_DECODE_ERRORS, RuntimeError) as exc:
        raise ImageError(f"{prefix}corrupt or truncated image ({exc or type(exc).__name__})") from exc


# EXIF orientation -> the turn that shows the picture upright (the table of Pillow's exif_transpose)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _upright(img: Image.Image) -> Image.Image:
    """`img` turned as its EXIF orientation says (phone photos are often stored sideways), as
    stored where there is none or it cannot be read. The orientation tag alone is read, not the
    whole EXIF block that `ImageOps.exif_transpose` also rewrites for the turned copy: a damaged
    tag elsewhere in it made that fail, and the photo was read sideways."""
    with _pillow_warnings():  # (EXIF data Pillow can read in part: it warns and reads what it can)
        try:
            turn = _UPRIGHT.get(img.getexif().get(0x0112))
        except _DECODE_ERRORS:
            return img
    return img if turn is None else img.transpose(turn)


def _plain_mode(img: Image.Image) -> Image.Image:
    """`img` in one of the modes every step here handles: L, LA, RGB, RGBA, I (integer grey) or F
    (float grey; a 16-bit scan becomes one, its levels out of 65535).

    Pillow opens many more (CMYK, LAB, YCbCr, 16-bit "I;16", palettes, 1-bit), and some of its
    operations refuse some of them: shrinking a large 16-bit scan fails with "image has wrong
    mode", and LAB has no conversion to RGB at all. Colour spaces with a lightness channel give
    that channel, which is all a digit needs.
    """
    mode = img.mode
    if mode in ("L", "LA", "RGB", "RGBA", "I", "F"):
        return img
    if mode.startswith("I;16"):  # (as floats out of 65535: "I" would lose the depth its levels are out of)
        return Image.fromarray(np.asarray(img, np.float32) / np.float32(65535))
    lightness = {"LAB": "L", "YCbCr": "Y", "HSV": "V"}.get(mode)
    if lightness is not None:
        return img.getchannel(lightness)
    if mode == "1":
        return img.convert("L")
    transparent = "A" in img.getbands() or "a" in img.getbands() or "transparency" in img.info
    return img.convert("RGBA" if transparent else "RGB")  # palettes, CMYK, premultiplied alpha, ...


def _grey(img: Image.Image) -> np.ndarray:
    """Grey levels 0..255 as float64 (255 = white) of an image in a `_plain_mode`. Transparent
    pixels take whichever background gives contrast.

    8-bit levels stay whole numbers, so the ink computed from an image and from its negative is
    exactly the same (the arithmetic in `_ink` is then exact).
    """
    if img.mode in ("I", "F"):  # 16-bit or float grey: scaled from its format's full range
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())  # (NaN if any pixel is, ±inf if any is)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ImageError("a float image with NaN or infinite pixels")
        return _full_range(a, lo, hi, img.mode)
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        # A drawing exported from a canvas is often ink on a transparent background: composite it
        # onto white, and if that leaves nothing to see (white ink), onto black instead; where
        # neither shows much, the one that shows more (a faint brush's black ink is faint on white,
        # and nothing at all on black).
        flats = []
        for background in ((255, 255, 255, 255), (0, 0, 0, 255)):
            flat = Image.alpha_composite(Image.new("RGBA", rgba.size, background), rgba).convert("L")
            a = np.asarray(flat, dtype=np.float64)
            if np.ptp(a) > FLAT_CONTRAST:
                return a
            flats.append(a)
        return max(flats, key=np.ptp)  # (white where the two show as much)
    return np.asarray(img.convert("L"), dtype=np.float64)


def _full_range(a: np.ndarray, lo: float, hi: float, mode: str) -> np.ndarray:
    """Integer (I) or float (F) grey levels as 0..255, scaled from the range their format has: for
    integers 0..255 (8-bit levels kept in a wider type) or else 0..65535 (a 16-bit scan), for floats
    0..1 or else 0..255. Not from the image's own darkest and lightest pixels: stretched so, a blank
    page's sensor noise, or one saturated pixel, would set the contrast (the noise read as ink, a
    light grey as black). Levels outside every such range are stretched, as nothing else can be
    done with them."""
    if lo >= 0:
        for top in ((255.0, 65535.0) if mode == "I" else (1.0, 255.0)):
            if hi <= top:
                return a * (255.0 / top)
    return 255 * (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _border(grey: np.ndarray) -> np.ndarray:
    """The picture's outermost pixels: its top and bottom rows, then its left and right columns."""
    return np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])


def _border_level(grey: np.ndarray) -> float:
    """The background's grey level: the median of the border's (what fills it is background)."""
    return float(np.median(_border(grey)))


def _paper(grey: np.ndarray, level: float, dark_ink: bool) -> np.ndarray:
    """The paper's grey level at every pixel: the border's median level `level` plus a plane
    b + c·x + d·y fitted to the border (a digit rarely touches all four edges), so that light
    falling across a photographed page, brighter on one side, is not read as ink on the darker side.

    Least squares, repeated until it settles, each time on the border pixels that are not ink by
    its last fit: ink lies on one side of the paper (darker than it by more than
    `PAPER_TOLERANCE`, for dark ink), so ink reaching the edge never pulls the fit towards it. A
    border of one grey level gives exactly that level everywhere (the fit is then 0), so an evenly
    lit image and its negative give exactly the same ink.
    """
    h, w = grey.shape
    rows, cols = np.indices(grey.shape)
    ys, xs, levels = _border(rows), _border(cols), _border(grey)  # each border pixel's place and level
    sign = 1.0 if dark_ink else -1.0  # dark ink lies below the paper, light ink above it
    design = np.column_stack([np.ones_like(xs), xs / max(w - 1, 1) - 0.5, ys / max(h - 1, 1) - 0.5])
    keep = np.ones(len(levels), bool)
    for _ in range(PAPER_FITS):
        coef = np.linalg.lstsq(design[keep], levels[keep] - level, rcond=None)[0]
        paper_here = sign * (levels - level - design @ coef) >= -PAPER_TOLERANCE
        if (paper_here == keep).all():
            break
        keep = paper_here
    x = np.arange(w) / max(w - 1, 1) - 0.5
    y = np.arange(h) / max(h - 1, 1) - 0.5
    return level + coef[0] + coef[1] * x[None, :] + coef[2] * y[:, None]


def _darker_than_its_border(grey: np.ndarray, level: float) -> bool:
    """Whether the picture is darker than its background (what fills the border), not lighter.

    The strongest strays from the border's median level `level` tell: the 99.5th percentile of
    those below it against that of those above it (the ink's pixels, not the area of a lighter
    patch). A dark border is a dark ground with light ink, or white paper photographed in dim light
    (level 120, say) with black ink. A border lighter than mid-grey is paper with dark ink on it,
    unless what is lighter than it is twice as strong, and more than a blank page's noise: a page
    brighter in its middle than at its edges is not light ink, a white digit on grey or coloured
    card is.
    """
    below = float(np.percentile(level - grey, 99.5))
    above = float(np.percentile(grey - level, 99.5))
    if level <= 127.5:
        return below > above
    # (dark ink measured where a digit too small for the 99.5th percentile still shows: a pen digit
    # 150 pixels tall in a phone photo, beside a lighter card, a brighter middle, a glare)
    below = float(np.percentile(level - grey, 99.95))
    return not (above > 2 * below and above > BLANK_CONTRAST)


def _ink(grey: np.ndarray) -> np.ndarray:
    """Ink strength in [0, 1] with the paper at 0, for dark-on-light and light-on-dark alike.

    The paper's level at each pixel is `_paper`'s; where the picture is darker than its border
    (`_darker_than_its_border`), the ink is dark and the image is inverted. Dark ink on unevenly
    lit paper is measured relative to the paper around it, 1 - grey/paper: a page seen in light is
    light × reflectance, so the same ink is as strong on the dimmer side of the page as on the
    brighter one (on evenly lit paper that is the same as grey levels below the paper's, once
    scaled by the strongest ink).
    """
    level = _border_level(grey)
    dark_ink = _darker_than_its_border(grey, level)
    paper = _paper(grey, level, dark_ink)
    ink = (paper - grey) if dark_ink else (grey - paper)
    if float(ink.max()) <= BLANK_CONTRAST:  # a blank page
        return np.zeros_like(grey)
    if dark_ink and np.ptp(paper) > 0:
        ink /= np.maximum(paper, 1.0)
    ink = _strokes(np.clip(ink, 0.0, None))
    ink = np.clip(ink / float(ink.max()), 0.0, 1.0)
    ink[ink < NOISE_FLOOR] = 0.0
    return ink


def _strokes(ink: np.ndarray) -> np.ndarray:
    """`ink` without the marks that lie apart from the digit: a speck of dust, a pen dot, paper
    texture. Each set the crop (the digit shrank to a corner of the box), and one darker than a
    pencil digit the ink's scale (the digit fell under `NOISE_FLOOR`).

    The parts of the ink, connected 8-ways, are found down to `PART_LEVEL` of the strongest (below
    the floor: a pencil digit beside a black dot is found too) and weighed by their ink squared
    (a wide faint shadow weighs less than a pen's strokes, a pencil digit more than a pen dot);
    the heaviest is the digit's. A part counts with it
    within a fifth of the digit's size of it (the bar of a 5 drawn in a second stroke does; a dot
    beside the digit or in a corner of the page does not), and a part of a tenth of its weight or
    more within a fifth of the size of all it has gathered (the segments of a meter's 8, the dashes
    of a broken pencil line; a speck of paper texture does not chain so).
    """
    # scipy.ndimage is imported here, on first use, rather than with this module: it costs ~0.15 s,
    # which commands that read no photo (`spam classify`, run once per delivered message) must not pay.
    from scipy import ndimage

    top = float(ink.max())
    found = ink >= PART_LEVEL * top
    parts, n = ndimage.label(found, structure=np.ones((3, 3)))
    if n <= 1:
        return ink
    weight = ndimage.sum_labels(ink * ink, parts, index=np.arange(1, n + 1))
    main = int(np.argmax(weight))
    boxes = ndimage.find_objects(parts)

    def near(k: int, box: tuple[slice, slice]) -> bool:
        (rows, cols), (r, c) = box, boxes[k]
        reach = 0.2 * max(rows.stop - rows.start, cols.stop - cols.start)
        return (r.start < rows.stop + reach and r.stop > rows.start - reach
                and c.start < cols.stop + reach and c.stop > cols.start - reach)

    kept = {k for k in range(n) if near(k, boxes[main])}
    while True:
        rows = slice(min(boxes[k][0].start for k in kept), max(boxes[k][0].stop for k in kept))
        cols = slice(min(boxes[k][1].start for k in kept), max(boxes[k][1].stop for k in kept))
        more = {k for k in range(n) if k not in kept and weight[k] >= 0.1 * weight[main] and near(k, (rows, cols))}
        if not more:
            break
        kept |= more
    kept_pixels = np.isin(parts, [k + 1 for k in kept])
    # (the faint rim around each mark left out goes too; the digit's own pixels stay as they were)
    rims = ndimage.binary_dilation(found & ~kept_pixels, iterations=2) & ~kept_pixels
    return np.where(rims, 0.0, ink)


def _crop_and_fit(values: np.ndarray, box: int, blank: str) -> np.ndarray:
    """`values` cropped to its non-zero pixels and resized so that its longer side is `box`,
    keeping the aspect ratio; ImageError(`blank`) if every pixel is zero."""
    rows, cols = np.nonzero(values)
    if rows.size == 0:
        raise ImageError(blank)
    crop = values[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = crop.shape
    scale = box / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    # BOX (area averaging) when shrinking is the anti-aliasing MNIST describes; bilinear when growing.
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize((nw, nh), resample))


def to_mnist(ink: np.ndarray) -> np.ndarray:
    """Crop, fit to 20x20 keeping the aspect ratio, centre by centre of mass in 28x28.

    Args:
        ink: (h, w) array in [0, 1], ink high. Returns float32 (28, 28) in [0, 1].
    """
    small = np.clip(_crop_and_fit(ink, DIGIT_BOX, "no ink found (a blank image)"), 0.0, None)
    nh, nw = small.shape
    peak = float(small.max())
    if peak <= 0:
        raise ImageError("no ink found (a blank image)")
    small = small / peak  # a thin pen line shrunk from a big photo is faint; MNIST strokes reach 1
    # centre of mass: (Σ y·m, Σ x·m) / Σ m, in the small image's coordinates
    mass = small.sum()
    cy = float((small.sum(axis=1) * np.arange(nh)).sum() / mass)
    cx = float((small.sum(axis=0) * np.arange(nw)).sum() / mass)
    # put that point at pixel (14, 14) of the 28x28 field, where MNIST's digits have theirs (their
    # mean centre of mass is 14.0 in both axes), keeping the whole digit inside the field
    top = min(max(round(IMAGE_SIZE / 2 - cy), 0), IMAGE_SIZE - nh)
    left = min(max(round(IMAGE_SIZE / 2 - cx), 0), IMAGE_SIZE - nw)
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    out[top : top + nh, left : left + nw] = small
    return out


def _object_levels(grey: np.ndarray) -> np.ndarray:
    """Negated grey levels in [0, 1], measured from the background: 0 where the picture is the
    background's colour, 1 for black on white (or white on black).

    The background is whatever fills the image's border. Fashion-MNIST negates grey levels of
    photos on pure white, `1 - grey/255`; measuring from the border's own level instead makes a
    grey table top count as that white, and a thing darker than its background
    (`_darker_than_its_border`) is measured down from it, a lighter one up.
    """
    paper = _border_level(grey)
    levels = (paper - grey) / paper if _darker_than_its_border(grey, paper) else (grey - paper) / (255 - paper)
    return np.clip(levels, 0.0, 1.0)


def fit_object(levels: np.ndarray) -> np.ndarray:
    """Crop to the object, fit its longer side to 28 keeping the aspect ratio, centre it in 28x28.

    Args:
        levels: (h, w) array in [0, 1], object high, background 0. Returns float32 (28, 28) in [0, 1].
    """
    small = _crop_and_fit(np.where(levels > OBJECT_TRIM, levels, 0.0), IMAGE_SIZE, "nothing found (a blank image)")
    nh, nw = small.shape
    # centred, an odd pixel left over going above and to the left, as in Fashion-MNIST's own images
    top, left = (IMAGE_SIZE - nh + 1) // 2, (IMAGE_SIZE - nw + 1) // 2
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    out[top : top + nh, left : left + nw] = np.clip(small, 0.0, 1.0)
    return out


def preprocess_image(source, picture: str = "digit") -> np.ndarray:
    """Any image (path, bytes, binary stream or PIL image) -> (28, 28) float32 in [0, 1], prepared as
    `picture` says: "digit" as MNIST's digits were, "object" as Fashion-MNIST's products were.

    Works for any size, colour or grey, dark on light or the reverse, with or without
    transparency. Raises `ImageError` with a one-line reason for empty, unreadable, oversized or
    blank input.
    """
    if picture not in PICTURES:
        raise ValueError(f"preprocess_image: picture must be one of {PICTURES}, got {picture!r}")
    img, name = _open(source)
    img = _plain_mode(_upright(img))
    if max(img.size) > WORKING_SIZE:
        img = img.copy()
        img.thumbnail((WORKING_SIZE, WORKING_SIZE), Image.Resampling.BOX)
    try:
        grey = _grey(img)
        return to_mnist(_ink(grey)) if picture == "digit" else fit_object(_object_levels(grey))
    except ImageError as exc:
        raise ImageError(f"{name}: {exc}" if name != "image" else str(exc)) from None
