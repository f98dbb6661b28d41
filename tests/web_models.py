"""Real models for the web tests, trained once per test session on slices of the real data.

Both web test files use them; the first to ask trains them (a few seconds), later ones reuse them.
The digits model must read strokes drawn in a real browser, so it is the `mlp` preset trained for
a few epochs on 15,000 MNIST images rather than a toy; the clothes model is Fashion-MNIST's `mlp`
for one epoch on 3,000 images (the page only has to show its classes and an answer); the spam
filter learns the SMS Spam Collection.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import require_fashion

DATA = os.environ.get("CHAINRULE_DATA")
_cache: dict[str, Path] = {}


def trained_models(tmp_path_factory) -> dict[str, Path]:
    """{"digits": model dir, "fashion": model dir, "spam": model dir}, trained on first use."""
    if not DATA:
        pytest.skip("CHAINRULE_DATA is not set")
    require_fashion()
    if not _cache:
        from chainrule.apps import images, spam

        root = tmp_path_factory.mktemp("web-models")
        images.train("mlp", out=root / "digits", epochs=3, train_size=15000, data=DATA, verbose=False,
                     figures=False)
        images.train("mlp", out=root / "fashion", epochs=1, train_size=3000, data="fashion", verbose=False,
                     figures=False)
        # the spam filter as `chainrule spam train --sms SMSSpamCollection` builds it, fewer epochs
        from chainrule.data.text import HashingConfig

        items, _, labels = spam.collect([], sms=[str(Path(DATA) / "sms-spam" / "SMSSpamCollection")])
        config = HashingConfig()
        x, _ = spam.featurize(items, config)
        result = spam.train_filter(x, labels, config, epochs=4, seed=0, inputs=("sms",))
        spam.save_model(result.bundle, root / "spam")
        _cache.update(digits=root / "digits", fashion=root / "fashion", spam=root / "spam")
    return dict(_cache)


def mnist_test(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` MNIST test images (uint8, ink high) and labels."""
    from chainrule.data.mnist import load_mnist

    images, labels = load_mnist("test", DATA)
    return images[:n], labels[:n]


def fashion_test(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` Fashion-MNIST test images (uint8, the garment high on 0) and labels."""
    from chainrule.data.idx import load_image_set

    s = load_image_set("fashion", "test")
    return s.images[:n], s.labels[:n]


def as_upload(digit: np.ndarray, fmt: str = "PNG", size: int = 112) -> bytes:
    """An MNIST digit (or a Fashion-MNIST item) as a user would upload it: dark on white, enlarged,
    PNG or JPEG."""
    img = Image.fromarray(255 - digit).resize((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def sms_messages() -> list[tuple[str, str]]:
    """(label, text) for every message of the SMS Spam Collection."""
    path = Path(DATA) / "sms-spam" / "SMSSpamCollection"
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        label, _, text = line.partition("\t")
        rows.append((label, text))
    return rows


@contextlib.contextmanager
def running_server(models: dict[str, Path], *args: str, preexec_fn=None, log: list[str] | None = None):
    """The real `chainrule serve` (uvicorn in its own process) on a free port of 127.0.0.1 (`args` may
    name another), with the models given (`--digits`, `--images` for the clothes, `--spam`); yields
    (its base URL, its process id). Its log lines (standard error) go into `log`, where one is given."""
    options = {"digits": "--digits", "fashion": "--images", "spam": "--spam"}
    given = [arg for name, option in options.items() if name in models for arg in (option, str(models[name]))]
    cmd = [sys.executable, "-m", "chainrule.cli", "serve", *given, "--port", "0", *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    lines = [] if log is None else log
    url = None
    for line in proc.stderr:
        lines.append(line)
        m = re.search(r"open (http://127\.0\.0\.1:\d+)/", line)
        if m:
            url = m.group(1)
            break
    if url is None:
        proc.wait(timeout=10)
        pytest.fail("chainrule serve did not start:\n" + "".join(lines))
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()  # keep the pipe drained
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)
