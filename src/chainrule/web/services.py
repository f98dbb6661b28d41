"""The models behind the web app: loaded once, shared by every request.

A service wraps one loaded model with what serving it needs: the lock that keeps two requests
from running one network at once, the description `/api/models` shows, and the work of a
request (decode an image and predict; classify a message). Services know nothing of HTTP: bad
input raises `ImageError` or another `UserError`, which the app answers with 422.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

import chainrule
from chainrule.apps.digits import load_digits_model, model_inputs
from chainrule.apps.spam import SpamModel, classify_message, load_spam_model
from chainrule.data.images import ImageError, preprocess_image
from chainrule.errors import ModelFileError
from chainrule.layers import LeakyReLU, ReLU, Sigmoid, Tanh
from chainrule.network import model_files
from chainrule.web.schemas import (
    DigitPrediction,
    LayerActivation,
    ModelInfo,
    SpamVerdict,
    TokenWeight,
    UnitWeights,
)

# An upload's pixel count is checked before decoding: a 5 MB PNG of one colour can decode to
# gigabytes, and the 28x28 result needs nothing near this.
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_PARALLEL_DECODES = 2  # image decodes running at once (each may hold ~100 MB)
MAX_FEATURE_MAPS = 16  # per convolutional layer, in the "inside the network" view
TOP_UNITS = 8  # hidden units whose first-layer weights the page shows
TOP_TOKENS = 10  # tokens behind a spam verdict, both directions together
TRAIN_HINTS = {
    "digits": "train one with `chainrule digits train`, or pass --digits MODEL_DIR",
    "spam": "train one with `chainrule spam train CORPUS... --sms FILE --out runs/spam`, or pass --spam MODEL_DIR",
}
METRIC_WORDS = ("accuracy", "precision", "recall", "f1", "auc", "mcc", "loss", "error", "caught", "blocked")


def model_info(path: Path, model, metadata: dict) -> ModelInfo:
    try:
        version = json.loads((path / "model.json").read_text()).get("format_version")
    except (OSError, ValueError):
        version = None
    scalars = {k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool)) and k != "task"}
    # Apps record their headline figures as top-level numbers (digits: "test_accuracy") or in an
    # object named for the data they were measured on (spam: "validation"); all are listed.
    metrics = {k: v for k, v in scalars.items() if _is_number(v) and any(w in k for w in METRIC_WORDS)}
    for group in ("metrics", "test", "validation"):
        if isinstance(metadata.get(group), dict):
            prefix = "" if group == "metrics" else f"{group}_"
            metrics.update({prefix + k: v for k, v in metadata[group].items()
                            if _is_number(v) and (group == "metrics" or any(w in k for w in METRIC_WORDS))})
    return ModelInfo(
        path=str(path),
        task=str(metadata.get("task", "")),
        format_version=version if isinstance(version, int) else None,
        num_parameters=model.num_parameters(),
        layers=[type(layer).__name__ for layer in model.layers],
        metrics=metrics,
        metadata=scalars,
    )


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _round(a: np.ndarray, digits: int = 4) -> list:
    """A JSON-friendly copy of `a`, rounded: the page draws colours, not 7-digit numbers."""
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


@dataclass
class DigitsService:
    """A loaded digits model and what serving it needs.

    Layers cache their inputs during `forward`, so one network must not run two passes at once;
    `lock` serialises them (the matrix products inside still use every core). Decoding an upload
    needs memory in proportion to its pixels (a 4096x4096 PNG: ~100 MB while it is shrunk), so
    decodes run on `decoder`, `MAX_PARALLEL_DECODES` threads of their own, whatever the number of
    requests. (A semaphore in the shared request threads would not do: the C allocator keeps a
    pool of memory per thread, so every thread that ever decoded would keep a decode's worth.)
    """

    path: Path
    model: chainrule.Sequential
    metadata: dict
    info: ModelInfo
    lock: threading.Lock = field(default_factory=threading.Lock)
    decoder: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(MAX_PARALLEL_DECODES, thread_name_prefix="decode"))

    @classmethod
    def load(cls, path) -> DigitsService:
        path = Path(path)
        model, metadata = load_digits_model(path)
        return cls(path, model, metadata, model_info(path, model, metadata))

    async def decode(self, data: bytes) -> np.ndarray:
        """`image_from_bytes` on one of the decoder's threads."""
        return await asyncio.get_running_loop().run_in_executor(self.decoder, self.image_from_bytes, data)

    def image_from_bytes(self, data: bytes) -> np.ndarray:
        """Decode an uploaded image and preprocess it exactly as `chainrule digits predict` does."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as img:  # reads the header only
                    width, height = img.size
        except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise ImageError("not an image Pillow can read (send a PNG or JPEG)") from exc
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageError(f"corrupt or truncated image ({exc})") from exc
        if width * height > MAX_IMAGE_PIXELS:
            raise ImageError(f"image is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS:,} are accepted")
        return preprocess_image(data)  # (an ImageError if unreadable after all, or blank)

    def predict(self, image: np.ndarray, explain: bool) -> DigitPrediction:
        """Classify one preprocessed 28x28 image; with `explain`, also return what every layer did."""
        x = model_inputs(image[None], self.metadata)
        with self.lock:  # one forward pass gives the answer and, with `explain`, every layer's output
            outputs = self.model.layer_outputs(x) if explain else [self.model.forward(x)]
            proba = self.model.probabilities(outputs[-1])[0]
            outputs = [out[0].copy() for out in outputs] if explain else None
        result = DigitPrediction(
            digit=int(np.argmax(proba)), probabilities=_round(proba, 6), input=_round(image, 3)
        )
        if outputs is not None:
            result.layers = self._layer_activations(outputs)
            result.top_units = self._top_units(outputs)
        return result

    def _layer_activations(self, outputs: list[np.ndarray]) -> list[LayerActivation]:
        shown = []
        for i, (layer, out) in enumerate(zip(self.model.layers, outputs, strict=True)):
            # Dropout is the identity at inference and Flatten only reshapes: nothing new to see.
            if isinstance(layer, (chainrule.Dropout, chainrule.Flatten)):
                continue
            n = out.shape[0] if out.ndim == 3 else out.size
            if out.ndim == 3:  # (channels, height, width): feature maps
                n = min(n, MAX_FEATURE_MAPS)
                out = out[:n]
            shown.append(LayerActivation(
                index=i, type=type(layer).__name__, shape=list(outputs[i].shape), shown=n, values=_round(out.ravel())
            ))
        return shown

    def _top_units(self, outputs: list[np.ndarray]) -> list[UnitWeights]:
        """The first weighted layer's most active units and their incoming weights, as images.

        A unit's activity is read after the layer's nonlinearity (where a ReLU has zeroed the units
        that did not respond); for a convolution it is the mean over its feature map, and its
        weights are its kernel (averaged over input channels, of which digits have one).
        """
        layers = self.model.layers
        first = next((i for i, layer in enumerate(layers) if _weight_matrix(layer) is not None), None)
        if first is None:
            return []
        w = _weight_matrix(layers[first])
        act_at = first
        for j in range(first + 1, len(layers)):
            if _weight_matrix(layers[j]) is not None:
                break
            if isinstance(layers[j], (ReLU, LeakyReLU, Sigmoid, Tanh)):
                act_at = j
                break
        act = outputs[act_at]
        if w.ndim == 4 and act.ndim == 3:  # conv: (out_channels, in_channels, kh, kw)
            activity = act.reshape(act.shape[0], -1).mean(axis=1)
            images = w.mean(axis=1)
        elif w.ndim == 2 and act.ndim == 1:  # Linear: (in_features, out_features)
            side = math.isqrt(w.shape[0])
            if side * side != w.shape[0]:
                return []
            activity = act
            images = w.T.reshape(-1, side, side)
        else:
            return []
        order = np.argsort(-activity, kind="stable")[:TOP_UNITS]
        return [
            UnitWeights(unit=int(u), activation=round(float(activity[u]), 4), weights=_round(images[u]))
            for u in order
        ]


def _weight_matrix(layer) -> np.ndarray | None:
    """A layer's weight matrix or conv kernel bank, if it has one (not a per-channel scale)."""
    p = layer.params.get("weight")
    if p is None or p.data.ndim not in (2, 4):
        return None
    return p.data


@dataclass
class SpamService:
    """A loaded spam classifier; `lock` serialises its passes for the same reason as digits'."""

    path: Path
    bundle: SpamModel
    info: ModelInfo
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, path) -> SpamService:
        path = Path(path)
        bundle = load_spam_model(path)
        return cls(path, bundle, model_info(path, bundle.model, bundle.metadata))

    def classify(self, raw: bytes) -> SpamVerdict:
        # the lock covers the network's passes only: parsing a large message must not hold up others
        result = classify_message(self.bundle, raw, top=TOP_TOKENS, lock=self.lock)
        tokens = [TokenWeight(token=str(t["token"]), weight=float(t["weight"])) for t in result["top_tokens"]]
        return SpamVerdict(label=result["label"], probability=float(result["probability"]), top_tokens=tokens,
                           problem=result.get("problem"))


def find_latest_model(task: str, runs="runs") -> Path | None:
    """The most recently written model directory under `runs` whose metadata says `task`."""
    best, best_time = None, -math.inf
    root = Path(runs)
    if not root.is_dir():
        return None
    for meta in root.rglob("model.json"):
        try:
            doc = json.loads(meta.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        metadata = doc.get("metadata") if isinstance(doc, dict) else None
        if not isinstance(metadata, dict) or metadata.get("task") != task:
            continue
        mtime = meta.stat().st_mtime
        if mtime > best_time and _has_weights(meta.parent):
            best, best_time = meta.parent, mtime
    return best


def _has_weights(directory: Path) -> bool:
    try:
        return model_files(directory)["model"].is_file()
    except (ModelFileError, KeyError, OSError):
        return False
