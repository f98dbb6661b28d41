"""The web page in a real browser: Debian's chromium, driven by Playwright, against `chainrule serve`.

The server is the real command (`python -m chainrule.cli serve --port 0`) in its own process, with
models trained on real data (web_models.py). The test draws digits with mouse strokes on the
canvas, as a user would, and checks the prediction the page shows; picks the clothes model and
uploads a photo, drops one on the pad, sends a phone's photo over the size limit; pastes messages and
checks the verdicts; and checks the page works from the keyboard, at phone width and in forced
colours. Screenshots are saved in the test's temporary directory.

Skipped only when chromium or Playwright is missing and $CI is not set; in CI (`.ci/run` installs
both) a missing browser is a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from chainrule.apps import images, spam
from chainrule.data import text as text_module
from chainrule.data.images import preprocess_image
from chainrule.data.text import HashingConfig, word_tokens
from web_models import as_upload, fashion_test, mnist_test, running_server, trained_models

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _browser_available() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return Path(CHROMIUM).exists()


pytestmark = pytest.mark.skipif(
    not _browser_available() and not os.environ.get("CI"),
    reason=f"needs {CHROMIUM} (apt-get install chromium) and Playwright (pip install playwright)",
)

# Strokes in the drawing pad's own pixels (it is 280x280): lists of points joined by straight moves.
ONE = [[(142, 40), (138, 240)]]
SEVEN = [[(70, 52), (212, 52), (122, 242)]]

# Messages written for this test (not in any training set), one obviously each way.
SPAM_SMS = ("Congratulations! You have been selected to receive a FREE £1000 cash prize. Call 09061743386 now "
            "to claim your reward. T&Cs apply, txt STOP to opt out")
HAM_SMS = "Hi mum, I'll be home a bit late tonight, can you save me some dinner? See you around 8"


FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return trained_models(tmp_path_factory)


@pytest.fixture(scope="module")
def server(models):
    """`chainrule serve` on a free port of 127.0.0.1; yields its base URL."""
    with running_server(models) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    pg.goto(server + "/")
    pg.wait_for_function("document.getElementById('image-model').options.length > 0")
    yield pg
    context.close()
    assert errors == [], f"the page logged errors: {errors}"


def draw(page, strokes) -> None:
    """Draw with the mouse (`stroke`), then wait for the answer to the last request."""
    stroke(page, strokes)
    # the last request was sent at mouse-up; wait for its answer
    page.wait_for_selector("#answer[aria-busy='false']")


def stroke(page, strokes) -> None:
    """Draw with the mouse: press, move in small steps along each stroke (points on the 280x280
    pad), release; with no wait for the answers."""
    page.locator("#pad").scroll_into_view_if_needed()
    box = page.locator("#pad").bounding_box()  # in viewport coordinates, as the mouse moves
    sx, sy = box["width"] / 280, box["height"] / 280
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * sx, box["y"] + y * sy)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * sx, box["y"] + y * sy, steps=15)
        page.mouse.up()


def upload(page, picture: Path) -> None:
    """Upload a picture, as a user picks a file, and wait for its answer."""
    page.set_input_files("#upload", str(picture))
    page.wait_for_function("document.getElementById('label').textContent !== '–'")
    page.wait_for_selector("#answer[aria-busy='false']")


def seen(page) -> np.ndarray:
    """The 28x28 picture the network saw, as the page shows it: grey levels 0-255, ink high."""
    return np.array(page.evaluate("""() => Array.from(document.getElementById('seen').getContext('2d')
        .getImageData(0, 0, 28, 28).data.filter((_, k) => k % 4 === 0))""")).reshape(28, 28)


def check_message(page, text: str) -> None:
    """Paste a message, press Check, and wait for the verdict."""
    page.fill("#message", text)
    page.click("#check")
    page.wait_for_selector("#spam[aria-busy='false'] #spam-result:not([hidden])")


def clothes_photo(tmp_path) -> Path:
    """A photo of Fashion-MNIST's first test item, as a file to upload."""
    photo = tmp_path / "item.png"
    photo.write_bytes(as_upload(fashion_test(1)[0][0]))
    return photo


@contextlib.contextmanager
def page_at(browser, url: str, allowed=()):
    """The page of the server at `url`, in a browser context of its own; it must log no error but
    those with one of the `allowed` texts in them."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('image-model').options.length > 0")
        yield page
    finally:
        context.close()
    errors = [e for e in errors if not any(text in e for text in allowed)]
    assert errors == [], f"the page logged errors: {errors}"


def served_copies(models, tmp_path) -> dict[str, Path]:
    """Copies of the models for a server whose model files the test changes."""
    served = {name: tmp_path / name for name in ("digits", "fashion", "spam")}
    for name, folder in served.items():
        shutil.copytree(models[name], folder)
    return served


def copy_over(model: Path, folder: Path) -> None:
    """Copy a model over the one in `folder`, model.json last, as a careful copy does."""
    for f in folder.iterdir():
        f.unlink()
    for f in sorted(model.iterdir(), key=lambda f: f.name == "model.json"):
        shutil.copy(f, folder)


def saved_again(model: Path) -> None:
    """Touch a model's model.json as saving it again would: a new model_version, the same model."""
    stat = (model / "model.json").stat()
    os.utime(model / "model.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_drawn_digits_are_recognised(page, tmp_path):
    for name, strokes in (("1", ONE), ("7", SEVEN)):
        page.click("#clear")
        assert page.inner_text("#label") == "–"
        draw(page, strokes)
        page.screenshot(path=tmp_path / f"digit-{name}.png", full_page=True)
        assert page.inner_text("#label") == name, f"drew a {name}, the page says {page.inner_text('#label')}"
        assert page.locator("#prob-" + name).get_attribute("class") == "top"
        # the winner's bar is filled as far as its probability says (it was an empty track once)
        fill = page.locator(f"#prob-{name} .fill").bounding_box()["width"]
        track = page.locator(f"#prob-{name} .track").bounding_box()["width"]
        p = float(page.inner_text(f"#prob-{name} .value").rstrip("%")) / 100
        assert track > 50 and abs(fill / track - p) < 0.05
        # the 28x28 image the network saw is drawn, with ink in it
        ink = page.evaluate("""() => {
            const d = document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data;
            let lit = 0; for (let k = 0; k < d.length; k += 4) if (d[k] > 128) lit++; return lit; }""")
        assert 20 < ink < 28 * 28 / 2
        # inside the network: one figure per shown layer, eight first-layer weight images
        assert page.locator("#layers figure").count() == 5  # Linear ReLU Linear ReLU Linear (no Dropout)
        assert page.locator("#units canvas").count() == 8
    page.click("#clear")
    assert page.inner_text("#label") == "–"
    assert page.locator("#layers figure").count() == 0


def test_the_pad_has_a_pixel_per_screen_pixel(browser, server, tmp_path):
    """The pad's 280x280 pixels were stretched to 560 or 840 screen pixels on phones and high-density
    screens, and strokes looked blurred. Its backing store follows devicePixelRatio, and the network
    sees the same digit at every density."""
    inputs = {}
    for scale in (1, 2, 3):
        context = browser.new_context(viewport={"width": 1200, "height": 900}, device_scale_factor=scale)
        page = context.new_page()
        try:
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('image-model').options.length > 0")
            assert page.eval_on_selector("#pad", "c => [c.width, c.height]") == [280 * scale, 280 * scale]
            draw(page, SEVEN)
            page.locator("#pad").screenshot(path=tmp_path / f"pad-x{scale}.png")
            assert page.inner_text("#label") == "7"
            inputs[scale] = seen(page)
        finally:
            context.close()
    for scale in (2, 3):
        # (grey levels 0-255: the same strokes, antialiased over more pixels, differ at their edges)
        differ = np.abs(inputs[1] - inputs[scale]).mean()
        assert differ < 3, f"at devicePixelRatio {scale} the network saw another picture ({differ:.1f} per pixel)"


SLOW_FETCH = """
const fetchNow = window.fetch;
window.fetch = (...args) => new Promise((done) => setTimeout(done, 600)).then(() => fetchNow(...args));
"""


def test_an_answer_about_a_picture_no_longer_on_the_pad_is_dropped(page, tmp_path):
    """With slow answers: Clear while a drawing's answer is on its way, or an upload, or a message
    edited and sent again with Ctrl+Enter: only what the page shows now gets an answer, and the page
    says when nothing is on its way any more. (The edited message was dropped without a word, and the
    first one's verdict shown under it.)"""
    page.add_init_script(SLOW_FETCH)
    page.reload()
    page.wait_for_function("document.getElementById('image-model').options.length > 0")
    stroke(page, [[(140, 40), (140, 240)]])
    page.click("#clear")
    page.wait_for_selector("#answer[aria-busy='false']")
    page.wait_for_timeout(700)
    assert page.inner_text("#label") == "–"
    # a single tap leaves a dot, which is something to classify (not "no ink")
    box = page.locator("#pad").bounding_box()
    page.mouse.click(box["x"] + 140, box["y"] + 140)
    page.wait_for_selector("#answer[aria-busy='false']")
    assert page.locator("#images-error").is_hidden() and page.inner_text("#label") != "–"
    # a message checked, then edited and submitted while its answer is on its way: the edited one is
    # checked when that answer comes, and only its verdict is shown
    page.fill("#message", SPAM_SMS)
    page.click("#check")
    page.fill("#message", HAM_SMS)
    page.press("#message", "Control+Enter")
    page.wait_for_selector("#spam[aria-busy='false'] #spam-result:not([hidden])")
    assert page.evaluate("document.getElementById('verdict').textContent") == "ham"
    assert page.evaluate("document.getElementById('highlighted').textContent") == HAM_SMS
    # an error hides the verdict of the message before
    page.fill("#message", "   ")
    page.click("#check")
    assert page.locator("#spam-result").is_hidden() and page.inner_text("#spam-error") == "Paste a message first."


def test_a_picture_the_browser_will_not_read_back_does_not_stop_the_pad(browser, server, tmp_path):
    """An SVG holding a <foreignObject> (draw.io exports do) drawn on the pad left it unreadable to
    the page ("Tainted canvases may not be exported"): from then on, Clear or not, a drawing never got
    an answer, the answer stayed aria-busy and no error was shown, until the page was reloaded. The
    pad shows only what the browser decodes as a picture (the server, too, reads no SVG), and a pad
    the page cannot read says so and is ready for the next stroke."""
    diagram = tmp_path / "diagram.svg"
    diagram.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="280" height="280"><foreignObject width="280" '
                       'height="280"><div xmlns="http://www.w3.org/1999/xhtml" style="font-size:200px">7</div>'
                       "</foreignObject></svg>")
    with page_at(browser, server, allowed=("422 (Unprocessable Entity)",)) as page:  # (the server reads no SVG)
        page.set_input_files("#upload", str(diagram))
        page.wait_for_selector("#images-error:not([hidden])")
        assert page.inner_text("#images-error").startswith("not an image in a format read here")
        draw(page, SEVEN)
        assert page.inner_text("#label") == "7" and page.locator("#images-error").is_hidden()
        page.click("#clear")
        draw(page, ONE)
        assert page.inner_text("#label") == "1"
        # a pad the browser refuses to read, whatever the reason: the error is shown, nothing waits for ever
        page.evaluate("""() => { document.getElementById('pad').toBlob = () => {
            throw new DOMException('Tainted canvases may not be exported.', 'SecurityError'); }; }""")
        page.click("#clear")
        draw(page, SEVEN)
        assert page.inner_text("#images-error") == "Tainted canvases may not be exported."
        assert page.inner_text("#label") == "–"
        page.evaluate("() => { delete document.getElementById('pad').toBlob; }")
        page.click("#clear")
        draw(page, SEVEN)
        assert page.inner_text("#label") == "7" and page.locator("#images-error").is_hidden()


def test_picking_a_model_shows_its_class_names(page, models, tmp_path):
    """The picker switches the section to the clothes model: its ten class names label the bars,
    the pad takes an upload instead of strokes, and a photo gets the answer the model gives for
    that file; back on the digits model, the bars read 0-9 again."""
    assert page.eval_on_selector_all("#image-model option", "os => os.map(o => o.value)") == ["mnist", "fashion"]
    page.select_option("#image-model", "fashion")
    assert page.eval_on_selector_all("#probs .label", "ls => ls.map(l => l.textContent)") == FASHION
    assert "Fashion-MNIST" in page.inner_text("#images-title")
    assert "Ankle boot" in page.inner_text("#image-classes")
    draw(page, ONE)
    assert page.inner_text("#label") == "–", "the clothes model's pad should take uploads, not strokes"
    photo = tmp_path / "item.png"
    photo.write_bytes(as_upload(fashion_test(1)[0][0]))
    upload(page, photo)
    page.screenshot(path=tmp_path / "fashion.png", full_page=True)
    model, metadata = images.load_image_model(models["fashion"])
    expected = images.predict_images(model, metadata, [photo])[0]["label"]
    assert page.inner_text("#label") == expected
    assert page.locator("#probs li.top .label").inner_text() == expected
    page.select_option("#image-model", "mnist")
    assert page.eval_on_selector_all("#probs .label", "ls => ls.map(l => l.textContent)") == [str(k) for k in range(10)]
    assert page.inner_text("#label") == "–" and page.inner_text("#images-title") == "Draw a digit"
    draw(page, SEVEN)
    assert page.inner_text("#label") == "7"


def phone_photo(digit: np.ndarray, path: Path, fmt: str, sideways: bool = False) -> Path:
    """A phone's photo of an MNIST digit on paper: 2,400 pixels a side, with the sensor's noise; a PNG
    of 11 MB or a JPEG of 2 MB. `sideways`: stored a quarter turn round, with the EXIF orientation (6,
    "turn clockwise") that shows it upright, as phones store photos taken holding them upright."""
    paper = np.asarray(Image.fromarray(255 - digit).resize((2400, 2400), Image.Resampling.BILINEAR), dtype=np.int16)
    noise = np.random.default_rng(0).integers(-12, 13, (2400, 2400, 3))
    photo = Image.fromarray(np.clip(paper[..., None] + noise, 0, 255).astype(np.uint8))
    if sideways:
        exif = Image.Exif()
        exif[0x0112] = 6
        photo.rotate(90, expand=True).save(path, fmt, quality=95, exif=exif)
    else:
        photo.save(path, fmt, compress_level=1)
    return path


def test_a_photo_over_the_upload_limit_is_made_smaller_before_it_is_sent(page, models, tmp_path):
    """An 11 MB phone photo was refused, "request body is larger than the limit of 5,242,880 bytes"
    (serve's default limit), though the network reads 28x28 pixels of it. The page sends a photo of
    more than a megabyte re-encoded from the picture it shows, at most 2,000 pixels a side, upright as
    the photo's EXIF orientation says; the server reads in it the picture it reads in the photo."""
    model, metadata = images.load_image_model(models["digits"])
    page.evaluate("""() => { const fetchNow = window.fetch;
        window.fetch = (url, init) => { window.sent = init.body; return fetchNow(url, init); }; }""")
    for name, fmt, sideways in (("photo.png", "PNG", False), ("sideways.jpg", "JPEG", True)):
        photo = phone_photo(mnist_test(1)[0][0], tmp_path / name, fmt, sideways)  # (a 7)
        upload(page, photo)
        page.screenshot(path=tmp_path / f"{name}.png")
        assert page.locator("#images-error").is_hidden(), page.inner_text("#images-error")
        assert page.inner_text("#label") == images.predict_images(model, metadata, [photo])[0]["label"]
        differ = np.abs(seen(page) - 255 * preprocess_image(photo, "digit")).mean()
        assert differ < 4, f"the network saw another picture than in the photo ({differ:.1f} per pixel)"
        size, width, height = page.evaluate("createImageBitmap(sent).then((b) => [sent.size, b.width, b.height])")
        assert size < photo.stat().st_size and max(width, height) <= 2000


def test_a_picture_over_the_servers_limit_says_how_to_raise_it(browser, models, tmp_path):
    """A picture the page sends as it is (a small file, or one the browser cannot show) over the limit
    of `serve --max-body-mb` got only "request body is larger than the limit of 1,048 bytes": not how
    large the picture was, nor what sets the limit."""
    photo = tmp_path / "digit.png"
    photo.write_bytes(as_upload(mnist_test(1)[0][0]))
    with running_server(models, "--max-body-mb", "0.001") as (url, _), page_at(browser, url, allowed=("413",)) as page:
        page.set_input_files("#upload", str(photo))
        page.wait_for_selector("#images-error:not([hidden])")
        assert page.inner_text("#images-error") == (
            f"request body is larger than the limit of 1,048 bytes; this picture is {photo.stat().st_size:,} bytes "
            "(chainrule serve --max-body-mb sets the limit)")
        assert page.get_attribute("#answer", "aria-busy") == "false"
        # a message over the limit says so too (it got the server's words alone)
        message = " ".join([SPAM_SMS] * 8)
        page.fill("#message", message)
        page.click("#check")
        page.wait_for_selector("#spam[aria-busy='false'] #spam-error:not([hidden])")
        assert page.inner_text("#spam-error") == (
            f"request body is larger than the limit of 1,048 bytes; this message is {len(message.encode()):,} bytes "
            "(chainrule serve --max-body-mb sets the limit)")


def test_a_picture_of_more_pixels_than_the_server_reads_is_made_smaller(page, models, tmp_path):
    """A 1200-dpi scan of 8000x8000 pixels in a PNG of 40 kB was shown on the pad, sent as it was (only
    files over a megabyte were made smaller) and refused: "8000x8000 pixels is too large (limit
    50,000,000 pixels)". A picture over 2,000 pixels a side is sent re-encoded at most that, whatever
    its file's size."""
    scan = tmp_path / "scan.png"
    drawing = Image.new("1", (8000, 8000), 1)
    ImageDraw.Draw(drawing).line([(2000, 1800), (6000, 1800), (3500, 6500)], fill=0, width=500)  # (a 7)
    drawing.save(scan, optimize=True)
    assert scan.stat().st_size < 100_000
    page.evaluate("""() => { const fetchNow = window.fetch;
        window.fetch = (url, init) => { window.sent = init.body; return fetchNow(url, init); }; }""")
    page.set_input_files("#upload", str(scan))
    page.wait_for_function("""document.getElementById('label').textContent !== '–'
        || !document.getElementById('images-error').hidden""", timeout=60_000)
    page.wait_for_selector("#answer[aria-busy='false']")
    assert page.locator("#images-error").is_hidden(), page.inner_text("#images-error")
    assert page.inner_text("#label") == "7"
    width, height = page.evaluate("createImageBitmap(sent).then((b) => [b.width, b.height])")
    assert max(width, height) <= 2000


DROP = """([selector, type, data]) => !document.querySelector(selector).dispatchEvent(
    new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }))"""


def test_a_picture_dropped_on_the_pad_is_taken_as_an_upload(page, models, tmp_path):
    """A picture dragged from the desktop onto the pad was not taken (the page had no drop target),
    and dropped anywhere on the page Chromium opened it in the tab in place of the page, a message
    typed in lost. The pad takes it as the upload button does; elsewhere the page keeps the browser
    from opening it."""
    photo = tmp_path / "digit.png"
    photo.write_bytes(as_upload(mnist_test(1)[0][0]))
    data = page.evaluate_handle("""(bytes) => { const data = new DataTransfer();
        data.items.add(new File([new Uint8Array(bytes)], "digit.png", { type: "image/png" })); return data; }""",
        list(photo.read_bytes()))
    page.fill("#message", HAM_SMS)
    for kind in ("dragenter", "dragover", "drop"):
        assert page.evaluate(DROP, ["#message", kind, data]), f"{kind} on the message box: the browser opens the file"
    assert page.inner_text("#label") == "–"
    for kind in ("dragenter", "dragover", "drop"):
        assert page.evaluate(DROP, ["#pad", kind, data]), f"{kind} on the pad: not taken"
    page.wait_for_function("document.getElementById('label').textContent !== '–'")
    page.wait_for_selector("#answer[aria-busy='false']")
    model, metadata = images.load_image_model(models["digits"])
    assert page.inner_text("#label") == images.predict_images(model, metadata, [photo])[0]["label"]
    assert page.input_value("#message") == HAM_SMS


def test_a_folder_dropped_on_the_pad_is_said_to_be_no_picture(page, tmp_path):
    """A folder dragged from the desktop onto the pad (like a file the browser cannot read: one moved
    or removed since it was picked) was sent on as it was, fetch failed, and the page said "cannot reach
    the server (is chainrule serve still running?)" with the server running. It says what was dropped
    cannot be read, and asks the server nothing. (The drag is the browser's own, of a real folder.)"""
    folder = tmp_path / "photos"
    folder.mkdir()
    asked = []
    page.on("request", lambda request: asked.append(request.url) if "/predict" in request.url else None)
    cdp = page.context.new_cdp_session(page)
    box = page.locator("#pad").bounding_box()
    data = {"items": [], "files": [str(folder)], "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver", "drop"):
        cdp.send("Input.dispatchDragEvent", {"type": kind, "x": box["x"] + 100, "y": box["y"] + 100, "data": data})
    page.wait_for_selector("#images-error:not([hidden])")
    assert page.inner_text("#images-error") == \
        '"photos" cannot be read as a picture (a folder, or a file moved or removed since)'
    assert page.get_attribute("#answer", "aria-busy") == "false" and asked == []


def test_answers_of_a_model_reloaded_since_the_page_opened_carry_its_classes(browser, models, tmp_path):
    """The page read /api/models once: after `serve --reload-interval` loaded a digits model copied over
    the clothes one, an upload read as a "1" was shown with the clothes' bars (the top one "Trouser"),
    and the picker and the header kept the old model; new cut-offs of the spam filter left the meter's
    colours as they were. An answer names the model that gave it, and the page, seeing one it has not
    described, asks for the models again and shows the answer with the new one's classes."""
    served = served_copies(models, tmp_path)
    with running_server(served, "--reload-interval", "0.1") as (url, _), page_at(browser, url) as page:
        page.select_option("#image-model", "fashion")
        upload(page, clothes_photo(tmp_path))
        assert page.inner_text("#label") in FASHION
        copy_over(models["digits"], served["fashion"])
        # and the spam filter saved with other cut-offs
        bundle = spam.load_spam_model(served["spam"])
        bundle.metadata["cutoffs"] = {"spam": 0.9, "ham": 0.2}
        spam.save_model(bundle, served["spam"])
        time.sleep(0.2)  # (past the interval: the next request looks)
        digit = tmp_path / "digit.png"
        digit.write_bytes(as_upload(mnist_test(3)[0][2]))  # (MNIST's third test image: a 1)
        upload(page, digit)
        page.screenshot(path=tmp_path / "reloaded.png", full_page=True)
        model, metadata = images.load_image_model(served["fashion"])
        expected = images.predict_images(model, metadata, [digit])[0]["label"]
        assert page.inner_text("#label") == expected
        assert page.eval_on_selector_all("#probs .label", "ls => ls.map(l => l.textContent)") == \
            [str(k) for k in range(10)]
        assert page.locator("#probs li.top .label").inner_text() == expected
        assert page.eval_on_selector("#image-model", "s => s.selectedOptions[0].textContent").startswith("MNIST")
        assert page.inner_text("#images-title") == "Draw a digit"
        page.fill("#message", SPAM_SMS)
        page.click("#check")
        page.wait_for_selector("#spam[aria-busy='false'] #spam-result:not([hidden])")
        meter = page.evaluate("(({low, high}) => ({low, high}))(document.getElementById('spam-meter'))")
        assert meter == {"low": pytest.approx(0.2), "high": pytest.approx(0.9)}


def test_models_asked_for_again_show_the_picked_one_as_now_served(browser, models, tmp_path):
    """A spam answer from a spam model saved again makes the page ask for the models again: with a
    digits model copied over the clothes one meanwhile, the picker said MNIST, but the image section
    kept the clothes' classes and title and took uploads only, until an image's answer came. It shows
    the picked model as the server now serves it: the digits' bars, the pad to draw on."""
    served = served_copies(models, tmp_path)
    with running_server(served, "--reload-interval", "0.1") as (url, _), page_at(browser, url) as page:
        page.select_option("#image-model", "fashion")
        upload(page, clothes_photo(tmp_path))
        copy_over(models["digits"], served["fashion"])
        saved_again(served["spam"])
        time.sleep(0.2)  # (past the interval: the next request looks)
        check_message(page, HAM_SMS)
        assert page.eval_on_selector("#image-model", "s => s.selectedOptions[0].textContent").startswith("MNIST")
        assert page.eval_on_selector_all("#probs .label", "ls => ls.map(l => l.textContent)") == \
            [str(k) for k in range(10)]
        assert page.inner_text("#images-title") == "Draw a digit"
        assert page.inner_text("#label") == "–", "the answer shown came from the clothes model"
        page.click("#clear")  # (the photo stays on the pad)
        draw(page, SEVEN)
        assert page.inner_text("#label") == "7"


@pytest.mark.parametrize("learnt_by", ["upload", "spam check"])
def test_a_model_no_longer_served_gives_way_to_one_that_is(browser, models, tmp_path, learnt_by):
    """`chainrule serve` started again (on the same port) without the clothes model the page had
    picked: an upload got 404 ("no image model named fashion") again and again, the page never
    asking which models are served; asked by a spam answer, the picker showed nothing picked and
    the section the clothes model. The page switches to a model served, and says so."""
    served = served_copies(models, tmp_path)
    with contextlib.ExitStack() as open_page:
        with running_server(served) as (url, _):
            page = open_page.enter_context(page_at(browser, url, allowed=("404 (Not Found)",)))
            page.select_option("#image-model", "fashion")
            upload(page, clothes_photo(tmp_path))
        port = url.rsplit(":", 1)[1]
        saved_again(served["spam"])  # (a new model_version: the spam answer says the page's is old)
        with running_server({"digits": served["digits"], "spam": served["spam"]}, "--port", port):
            if learnt_by == "upload":
                page.set_input_files("#upload", str(clothes_photo(tmp_path)))
            else:
                check_message(page, HAM_SMS)
            page.wait_for_function("document.getElementById('image-model').value === 'mnist'")
            assert page.inner_text("#images-error") == \
                'The server no longer serves the image model "fashion"; this is "mnist".'
            assert page.eval_on_selector_all("#image-model option", "os => os.map(o => o.value)") == ["mnist"]
            assert page.inner_text("#images-title") == "Draw a digit"
            draw(page, SEVEN)
            assert page.inner_text("#label") == "7" and page.locator("#images-error").is_hidden()


def test_a_server_started_again_without_image_models_leaves_nothing_waiting(browser, models, tmp_path):
    """`chainrule serve` started again with the spam model only, while a stroke was being drawn: the
    answer kept aria-busy="true" for ever (the strokes drawn meanwhile had no model to go to, and
    nothing said the wait was over); the emptied model picker still showed (style.css's display won
    over [hidden]), and the disabled upload still looked like a live button."""
    with contextlib.ExitStack() as open_page:
        with running_server({"digits": models["digits"], "spam": models["spam"]}) as (url, _):
            page = open_page.enter_context(page_at(browser, url, allowed=("404 (Not Found)",)))
        port = url.rsplit(":", 1)[1]
        with running_server({"spam": models["spam"]}, "--port", port, "--runs", str(tmp_path / "none")):
            page.evaluate(f"() => {{ {SLOW_FETCH} }}")  # (strokes are drawn while the first answer is out)
            stroke(page, [[(140, 40), (140, 240)]])
            page.wait_for_selector("#images-missing:not([hidden])")
            page.wait_for_selector("#answer[aria-busy='false']", timeout=5000)
            page.screenshot(path=tmp_path / "no-image-model.png", full_page=True)
            assert page.locator("#picker").is_hidden()
            assert page.is_disabled("#upload")
            label = page.evaluate("""(() => { const s = getComputedStyle(document.getElementById('upload-label'));
                return [s.cursor, Number(s.opacity)]; })()""")
            assert label[0] == "not-allowed" and label[1] < 1, f"the disabled upload looks live: {label}"


def test_a_server_started_again_without_a_spam_model_is_shown_so(browser, models, tmp_path):
    """`chainrule serve` started again without the spam model: a check got "no spam model is loaded"
    (503), while the header still listed the spam model. The page asks for the models again, as a 404
    of an image model makes it do."""
    with contextlib.ExitStack() as open_page:
        with running_server({"digits": models["digits"], "spam": models["spam"]}) as (url, _):
            page = open_page.enter_context(page_at(browser, url, allowed=("503 (Service Unavailable)",)))
            assert "spam:" in page.inner_text("#models")
        port = url.rsplit(":", 1)[1]
        with running_server({"digits": models["digits"]}, "--port", port, "--runs", str(tmp_path / "none")):
            page.fill("#message", HAM_SMS)
            page.click("#check")
            page.wait_for_selector("#spam[aria-busy='false'] #spam-error:not([hidden])")
            assert page.inner_text("#spam-error").startswith("no spam model is loaded")
            page.wait_for_function("!document.getElementById('models').textContent.includes('spam:')", timeout=5000)
            assert page.inner_text("#models").startswith("mnist:")


def test_messages_get_verdicts(page, tmp_path):
    for text, expected in ((SPAM_SMS, "spam"), (HAM_SMS, "ham")):
        page.fill("#message", text)
        page.click("#check")
        page.wait_for_selector("#spam[aria-busy='false'] #spam-result:not([hidden])")
        page.wait_for_function(f"document.getElementById('verdict').textContent === '{expected}'", timeout=5000)
        page.screenshot(path=tmp_path / f"message-{expected}.png", full_page=True)
        prob = float(page.inner_text("#spam-probability").split()[-1].rstrip("%")) / 100
        assert (prob > 0.5) == (expected == "spam")
        marks = page.locator(f"#highlighted mark.{expected}").count()
        assert marks > 0, f"no token of the {expected} message is highlighted"
    # the meter's colours follow the model's own cut-offs (it had mid-grey 0.5 for both)
    cutoffs = page.evaluate("fetch('/api/models').then((r) => r.json()).then((m) => m.spam.cutoffs)")
    meter = page.evaluate("(({low, high}) => ({low, high}))(document.getElementById('spam-meter'))")
    assert meter == {"low": pytest.approx(cutoffs["ham"]), "high": pytest.approx(cutoffs["spam"])}
    # Ctrl+Enter submits from the text box too
    page.fill("#message", SPAM_SMS)
    page.press("#message", "Control+Enter")
    page.wait_for_function("document.getElementById('verdict').textContent === 'spam'", timeout=5000)


def test_a_header_token_is_highlighted_in_its_header_only(page):
    """A token read from a header (subject:get, to:list) was highlighted wherever its word stood, the
    body included, with the header token's weight; has:html marked the word "html". Each token is
    marked where it was read: a header's in that header's lines, a body word in the body."""
    verdict = {"label": "spam", "probability": 0.99, "problem": None, "read_as": "mail", "header_lines": 4,
               "top_tokens": [{"token": "subject:get", "weight": 2.0}, {"token": "to:list", "weight": -1.5},
        {"token": "subject:upper:cash", "weight": 1.0}, {"token": "has:html", "weight": 0.5},
        {"token": "cash", "weight": 0.75}]}
    model_version = page.evaluate("fetch('/api/models').then((r) => r.json()).then((m) => m.spam.model_version)")
    page.route("**/api/spam/classify", lambda route: route.fulfill(json={**verdict, "model_version": model_version}))
    page.fill("#message", "To: list@example.com\nSubject: get CASH\n  get it\n\nget the list of html cash\n")
    page.click("#check")
    page.wait_for_selector("#spam[aria-busy='false'] #spam-result:not([hidden])")
    marks = page.eval_on_selector_all("#highlighted mark", "ms => ms.map((m) => [m.textContent, m.title])")
    assert marks == [["list", "-1.500 towards ham"], ["get", "+2.000 towards spam"], ["CASH", "+1.000 towards spam"],
                     ["get", "+2.000 towards spam"], ["cash", "+0.750 towards spam"]]


def test_the_header_block_is_where_the_server_read_it(page):
    """The page guessed where an email's headers end: an SMS whose first line starts like "URGENT:" was
    taken for a header and left unmarked, and a folded line of blanks ended the headers where the server
    read on; a token with two spaces ("content-type:text/html  x") was marked "0.000 towards ham". The
    page marks tokens in the header block the answer's header_lines gives, with their own weights."""
    check = lambda text: (page.fill("#message", text), page.click("#check"),  # noqa: E731
                          page.wait_for_selector("#spam[aria-busy='false'] #spam-result:not([hidden])"))
    check("URGENT: you have won a FREE cash prize! Call 09061743386 now to claim, txt STOP to opt out")
    assert page.locator("#highlighted mark").count() > 0, "the SMS's words are not highlighted"
    verdict = {"label": "spam", "probability": 0.99, "problem": None, "read_as": "mail", "header_lines": 5,
               "top_tokens": [{"token": "content-type:text/html  x", "weight": 1.5},
                              {"token": "subject:free", "weight": 2.0}]}
    model_version = page.evaluate("fetch('/api/models').then((r) => r.json()).then((m) => m.spam.model_version)")
    page.route("**/api/spam/classify", lambda route: route.fulfill(json={**verdict, "model_version": model_version}))
    check("Content-Type: text/html  x\nSubject: hi\n \t\n free\n\nfree body")
    marks = page.eval_on_selector_all("#highlighted mark", "ms => ms.map((m) => [m.textContent, m.title])")
    assert marks == [["text/html  x", "+1.500 towards spam"], ["free", "+2.000 towards spam"]]


def test_a_mail_pasted_below_blank_lines_is_marked_where_the_server_read_it(page):
    """A mail pasted with blank lines above it was parsed from the first of them (every header read
    as body text); the server now parses it from its first field and counts the blank lines in
    header_lines, from the top of the text, as the page counts: a header's token is marked in that
    header's line, a body word below it. (The server's own answer, with a header token put first.)"""
    def answer(route):
        real = route.fetch().json()
        assert (real["read_as"], real["header_lines"]) == ("mail", 5)  # (2 blank lines, 2 fields, the blank one)
        tokens = [{"token": "subject:cash", "weight": 2.0}, {"token": "prize", "weight": 1.0}]
        route.fulfill(json={**real, "top_tokens": tokens})

    page.route("**/api/spam/classify", answer)
    check_message(page, "\n\nFrom: a@example.com\nSubject: CASH prize\n\nclaim your cash prize\n")
    marks = page.eval_on_selector_all("#highlighted mark", "ms => ms.map((m) => [m.textContent, m.title])")
    assert marks == [["CASH", "+2.000 towards spam"], ["prize", "+1.000 towards spam"]]


def test_a_word_across_the_highlighting_cut_is_not_marked(page):
    """A word running on past the 100,000th character was marked as a shorter token ("freedom" as
    "free"), and with no token before the cut the note saying the rest is not highlighted was hidden.
    The note shows whenever the message is longer, and screen readers hear it with the message."""
    verdict = {"label": "spam", "probability": 0.99, "problem": None, "read_as": "sms", "header_lines": 0,
               "top_tokens": [{"token": "free", "weight": 1.0}]}
    model_version = page.evaluate("fetch('/api/models').then((r) => r.json()).then((m) => m.spam.model_version)")
    page.route("**/api/spam/classify", lambda route: route.fulfill(json={**verdict, "model_version": model_version}))
    page.evaluate("t => { document.getElementById('message').value = t; }", "z" * 99995 + " freedom free")
    page.click("#check")
    page.wait_for_selector("#spam[aria-busy='false'] #spam-result:not([hidden])")
    assert page.locator("#highlighted mark").count() == 0
    assert page.locator("#highlighted-note").is_visible()
    assert page.get_attribute("#highlighted", "aria-describedby") == "highlighted-note"


def _js_escapes(written: str) -> str:
    """A JavaScript string's or class's text with its \\uXXXX and \\u{X...} escapes read."""
    return re.sub(r"\\u\{([0-9a-f]+)\}|\\u([0-9a-f]{4})", lambda m: chr(int(m[1] or m[2], 16)), written)


def test_the_page_reads_text_with_the_servers_characters():
    """app.js copies text.py's characters that show nothing (_UNSEEN_RE) and its Chinese and Japanese
    blocks (_CJK): the two must change together, or the page marks tokens the server does not read."""
    page = (Path(text_module.__file__).parents[1] / "web" / "static" / "app.js").read_text(encoding="utf-8")
    unseen = re.search(r"const UNSEEN = /\[(.*?)\]/g;", page)[1]
    cjk = "".join(re.findall(r'"([^"]*)"', re.search(r"const CJK = (.*?);", page, re.DOTALL)[1]))
    assert "[" + _js_escapes(unseen) + "]" == text_module._UNSEEN_RE.pattern
    assert _js_escapes(cjk) == text_module._CJK


def test_a_word_written_otherwise_than_its_token_is_highlighted(page):
    """The server reads text in NFKC, without zero-width characters, case-folded: "ＦＲＥＥ" gives the
    token "free", "C\u200ball" "call". The page looked for the token as written and marked neither: every
    word among the real filter's top tokens is now marked where the text shows it."""
    text = ("ＦＲＥＥ entry to win a £1000 cash ＰＲＩＺＥ! C\u200ball 09061743386 now to c\u00adlaim your reward, "
            "txt STOP")
    check_message(page, text)
    tokens = page.evaluate("""() => [...document.querySelectorAll('#tokens-spam bdi, #tokens-ham bdi')]
        .map((b) => b.textContent)""")
    words = {t for t in tokens if ":" not in t and len(t) > 1}
    assert {"free", "call"} <= words, tokens  # (what the filter trained on SMS weighs most here)
    marks = page.eval_on_selector_all("#highlighted mark", "ms => ms.map((m) => m.textContent)")
    assert {"ＦＲＥＥ", "C\u200ball"} <= set(marks)
    assert {t for m in marks for t in word_tokens(m)} >= words


def test_chinese_pairs_and_emoji_are_highlighted_where_they_stand(page):
    """The server reads Chinese and Japanese as overlapping pairs of characters ("发票代开": "发票", "票代",
    "代开"), which the page looked for as words of their own and never marked inside a run; nor "vip" right
    after one, nor "Straße" ("strasse"), NFD "résumé", "İSTANBUL" or a one-character emoji (⚡); "👍" was
    marked without its skin tone. The pairs of a run that push the same way are one mark naming each, a
    character shared with a stronger pair pushing the other way goes to it, and a mark holds whole graphemes."""
    text = ("Subject: 发票代开\n\n发票代开，限时优惠 ＦＲＥＥ Straße Re\u0301sume\u0301 İSTANBUL V\u200biagra 领取vip "
            "👍🏽 ⚡\n")
    weights = {"subject:发票": 2.0, "发票": 1.0, "票代": 0.5, "代开": 0.8, "限时": -0.3, "时优": 0.6, "upper:free": 0.7,
               "strasse": 0.4, "résumé": -0.9, "istanbul": 0.3, "viagra": 1.5, "vip": 0.2, "👍": -0.25, "⚡": 0.35}
    read, _ = spam.item_tokens("mail", text.encode(), HashingConfig())
    assert set(weights) <= set(read)  # (the tokens the server reads in this message)
    verdict = {"label": "spam", "probability": 0.99, "problem": None, "read_as": "mail", "header_lines": 2,
               "top_tokens": [{"token": t, "weight": w} for t, w in weights.items()]}
    model_version = page.evaluate("fetch('/api/models').then((r) => r.json()).then((m) => m.spam.model_version)")
    page.route("**/api/spam/classify", lambda route: route.fulfill(json={**verdict, "model_version": model_version}))
    check_message(page, text)
    marks = page.eval_on_selector_all("#highlighted mark", "ms => ms.map((m) => [m.textContent, m.title])")
    assert marks == [["发票", "+2.000 towards spam"],
                     ["发票代开", "发票 +1.000, 票代 +0.500, 代开 +0.800 towards spam"],
                     ["限", "限时 -0.300 towards ham"], ["时优", "+0.600 towards spam"],
                     ["ＦＲＥＥ", "+0.700 towards spam"], ["Straße", "+0.400 towards spam"],
                     ["Re\u0301sume\u0301", "-0.900 towards ham"], ["İSTANBUL", "+0.300 towards spam"],
                     ["V\u200biagra", "+1.500 towards spam"], ["vip", "+0.200 towards spam"],
                     ["👍🏽", "-0.250 towards ham"], ["⚡", "+0.350 towards spam"]]


def test_a_message_of_many_header_lines_gets_its_verdict(page):
    """130,000 "name: value" lines said "Maximum call stack size exceeded": every header line went to
    Math.max as an argument."""
    text = "Subject: offer\n" + "".join(f"x-line-{k}: free money\n" for k in range(130_000)) + "\nclick here"
    page.evaluate("t => { document.getElementById('message').value = t; }", text)
    page.click("#check")
    page.wait_for_selector("#spam[aria-busy='false']", timeout=60_000)
    assert page.locator("#spam-error").is_hidden(), page.inner_text("#spam-error")
    assert page.locator("#spam-result").is_visible()


def test_a_long_message_gets_its_verdict(page, tmp_path):
    """A message of 400 kB got "Maximum call stack size exceeded" in place of its verdict: every one of
    its ~80,000 highlighted words went to replaceChildren as an argument. The verdict and the tokens
    are shown, and the message whole, highlighted as far as the page says."""
    text = "Subject: offer\n\n" + "free money click here now " * 16000
    page.fill("#message", text)
    page.click("#check")
    page.wait_for_selector("#spam[aria-busy='false']")
    page.screenshot(path=tmp_path / "long-message.png", full_page=True)
    assert page.locator("#spam-error").is_hidden(), page.inner_text("#spam-error")
    assert page.evaluate("document.getElementById('verdict').textContent") == "spam"
    assert page.locator("#tokens-spam li").count() > 0
    shown = page.evaluate("document.getElementById('highlighted').textContent")
    assert shown == text
    assert "highlighted in the first 100,000 characters only" in page.inner_text("#highlighted-note")
    last_mark = page.evaluate("""() => { const pre = document.getElementById('highlighted');
        const marks = pre.querySelectorAll('mark'); const range = document.createRange();
        range.setStart(pre, 0); range.setEndBefore(marks[marks.length - 1]); return range.toString().length; }""")
    assert 99_000 < last_mark < 100_000  # (where the last highlighted token begins)
    # a short message is highlighted whole, with no such note
    page.fill("#message", SPAM_SMS)
    page.click("#check")
    page.wait_for_selector("#spam[aria-busy='false']")
    assert page.locator("#highlighted-note").is_hidden()


def test_a_server_that_cannot_be_reached_is_said_so(browser, server, tmp_path):
    """With `chainrule serve` stopped (here: its connections refused), a drawing and a message got
    only the browser's own words, "Failed to fetch" (Chromium's; Firefox and Safari have theirs)."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    try:
        page.goto(server + "/")
        page.wait_for_function("document.getElementById('image-model').options.length > 0")
        context.route("**/api/**", lambda route: route.abort("connectionrefused"))
        draw(page, SEVEN)
        page.screenshot(path=tmp_path / "no-server.png", full_page=True)
        said = "cannot reach the server (is chainrule serve still running?)"
        assert page.inner_text("#images-error") == said and page.inner_text("#label") == "–"
        page.fill("#message", HAM_SMS)
        page.click("#check")
        page.wait_for_selector("#spam[aria-busy='false']")
        assert page.inner_text("#spam-error") == said and page.locator("#spam-result").is_hidden()
    finally:
        context.close()


def test_keyboard_and_phone_width(page, tmp_path):
    page.set_viewport_size({"width": 375, "height": 740})
    page.wait_for_timeout(100)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375, "the page scrolls sideways on a phone"
    focused = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    for control in ("image-model", "clear", "upload", "message", "check"):
        assert control in focused, f"{control} is not reachable with Tab: {focused}"
    # a keyboard user can check a message without the mouse
    page.focus("#message")
    page.keyboard.insert_text(HAM_SMS)
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('verdict').textContent === 'ham'", timeout=5000)
    draw(page, SEVEN)
    page.screenshot(path=tmp_path / "phone.png", full_page=True)
    assert page.inner_text("#label") == "7"
    # the answer is beside the pad, in view while drawing
    pad, label = page.locator("#pad").bounding_box(), page.locator("#label").bounding_box()
    assert label["x"] >= pad["x"] + pad["width"] and label["y"] < pad["y"] + pad["height"]


def test_long_names_fit_a_phone(page, tmp_path):
    """A model saved under a long path of underscores, of a data set in a folder with a long name
    (its title in the picker and under the 28x28 image), made the page scroll sideways at 320 px."""
    def long_names(route):
        described = route.fetch().json()
        for info in described["images"]:
            info["path"] = "/home/me/experiments/my_digit_experiments/mnist_mlp_2epochs_8000images_seed0_lr0.01"
            info["dataset_title"] = "handwritten_digits_from_my_classroom_survey_2026"
        route.fulfill(json=described)

    page.route("**/api/models", long_names)
    for width in (320, 390):
        page.set_viewport_size({"width": width, "height": 800})
        page.reload()
        page.wait_for_function("document.getElementById('image-model').options.length > 0")
        draw(page, SEVEN)
        page.screenshot(path=tmp_path / f"long-names-{width}.png", full_page=True)
        assert "handwritten_digits_from_my_classroom" in page.inner_text("#seen-caption")
        wide = page.evaluate("document.documentElement.scrollWidth")
        assert wide <= width, f"the page is {wide} px wide at {width} px: it scrolls sideways"


def test_bars_and_highlights_show_in_forced_colours(page, tmp_path):
    """In forced colours (Windows' high contrast themes) the probability bars vanished (their fill and
    track one colour), the top class lost its accent, and the words pushing towards spam and towards
    ham were marked alike. Each keeps a look of its own, not told by colour alone."""
    page.emulate_media(forced_colors="active")
    draw(page, SEVEN)
    look = """(selector) => { const s = getComputedStyle(document.querySelector(selector));
        return [s.backgroundColor, s.color, s.borderTopStyle, s.textDecorationLine, s.fontWeight]; }"""
    fill, track = page.evaluate(look, "#probs li.top .fill"), page.evaluate(look, "#probs li.top .track")
    assert fill[0] != track[0], "the winner's bar is the colour of its track"
    assert page.evaluate(look, "#probs li.top .label")[2:] != page.evaluate(look, "#probs li:not(.top) .label")[2:]
    verdict = {"label": "spam", "probability": 0.9, "problem": None, "read_as": "sms", "header_lines": 0,
               "top_tokens": [{"token": "prize", "weight": 2.0}, {"token": "mum", "weight": -1.5}]}
    model_version = page.evaluate("fetch('/api/models').then((r) => r.json()).then((m) => m.spam.model_version)")
    page.route("**/api/spam/classify", lambda route: route.fulfill(json={**verdict, "model_version": model_version}))
    check_message(page, "a prize for mum")
    page.locator("#spam").screenshot(path=tmp_path / "forced-colours.png")
    assert page.evaluate(look, "mark.spam")[2:4] != page.evaluate(look, "mark.ham")[2:4]


def test_the_first_verdict_is_announced(page):
    """The verdict's live region sat in the result box, hidden until the first verdict: screen readers
    track only live regions already in the accessibility tree, so the first verdict could go unsaid.
    The region is in the tree from the start, empty, the verdict written into it and emptied by an error."""
    cdp = page.context.new_cdp_session(page)
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    region = cdp.send("DOM.querySelector", {"nodeId": root, "selector": "[aria-live]:has(#verdict)"})["nodeId"]
    assert region, "no live region holds the verdict"
    node = cdp.send("Accessibility.getPartialAXTree", {"nodeId": region, "fetchRelatives": False})["nodes"][0]
    assert not node.get("ignored"), f"not in the accessibility tree: {node.get('ignoredReasons')}"
    check_message(page, SPAM_SMS)
    assert page.text_content("#verdict") == "spam"
    page.fill("#message", " ")
    page.click("#check")
    assert page.text_content("[aria-live]:has(#verdict)").strip() == "", "an error leaves the last verdict"


def test_a_second_finger_on_the_pad_is_not_part_of_the_stroke(browser, server, tmp_path):
    """On a phone, one finger draws a 1 while another rests on the pad's corner: every pointer's
    moves went into one stroke, drawn from one finger to the other, and the 1 read as a 7."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = context.new_page()
    try:
        page.goto(server + "/")
        page.wait_for_function("document.getElementById('image-model').options.length > 0")
        page.locator("#pad").scroll_into_view_if_needed()
        box = page.locator("#pad").bounding_box()
        cdp = context.new_cdp_session(page)

        def finger(n, x, y):  # (x, y) in the pad's own 280x280 pixels
            return {"x": box["x"] + x * box["width"] / 280, "y": box["y"] + y * box["height"] / 280, "id": n}

        (x0, y0), (x1, y1) = ONE[0]
        resting = finger(1, 28, 28)
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [finger(0, x0, y0)]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [finger(0, x0, y0), resting]})
        for k in range(1, 21):
            point = finger(0, x0 + (x1 - x0) * k / 20, y0 + (y1 - y0) * k / 20)
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point, resting]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        page.wait_for_selector("#answer[aria-busy='false']")
        page.screenshot(path=tmp_path / "two-fingers.png", full_page=True)
        assert page.inner_text("#label") == "1"
    finally:
        context.close()


def test_the_api_docs_render_without_internet(browser, server, tmp_path):
    """/docs shows every route in Swagger UI with every request to another host refused, as on a
    machine without internet."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    outside, errors = [], []

    def this_server_only(route):
        if route.request.url.startswith(server + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", this_server_only)
    pg = context.new_page()
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(server + "/docs")
    pg.wait_for_selector(".opblock-summary-path", timeout=30_000)
    shown = pg.locator(".opblock-summary-path").all_inner_texts()
    pg.screenshot(path=str(tmp_path / "docs.png"))
    context.close()
    assert {"/api/digits/predict", "/api/spam/classify", "/api/models"} <= {s.strip() for s in shown}, shown
    assert outside == [] and errors == []
