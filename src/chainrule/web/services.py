"""The models behind the web app: loaded at start, shared by every request, reloaded when their
folders change.

A service wraps one loaded model with what serving it needs (the model's own lock keeps two
requests from running one network at once), the description `/api/models` shows, and the work of a
request (decode an image and predict; classify a message). Services know nothing of HTTP: bad
input raises `ImageError` or another `UserError`, which the app answers with 422. A `Served`
holds the service now in use for one model, and puts a new one in its place when the model's files
change on disk (`spam learn`, a retrain into the same folder).

Any number of image models may be served (MNIST's digits, Fashion-MNIST's clothes, ...), each
under a name (`ImageService.name`, in the route `/api/images/{name}/predict`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from starlette.concurrency import run_in_threadpool

import chainrule
from chainrule.apps.image_presets import model_inputs
from chainrule.apps.images import IMAGE_TASKS, best_class, class_distribution, load_image_model
from chainrule.apps.spam import SpamModel, classify_message, load_spam_model
from chainrule.checks import is_real
from chainrule.data import idx
from chainrule.data.images import preprocess_image
from chainrule.errors import ModelFileError, UserError, one_line, printable, without_surrogates
from chainrule.layers import LeakyReLU, ReLU, Sigmoid, Tanh
from chainrule.model_file import model_directory, model_stamp, saved_metadata
from chainrule.network import check_model_files
from chainrule.web.schemas import (
    ImagePrediction,
    LayerActivation,
    ModelInfo,
    SpamVerdict,
    TokenWeight,
    UnitWeights,
)

log = logging.getLogger(__name__)

# Image decodes running at once; each may hold up to ~400 MB (`data.images.MAX_PIXELS` pixels,
# checked from the header before decoding, as on the command line: a 7000x7000 RGBA PNG raised the
# peak memory by 408 MiB), so two at once stay under a gigabyte.
MAX_PARALLEL_DECODES = 2
_decoder: ThreadPoolExecutor | None = None  # their threads, shared by every image model served


def _shared_decoder() -> ThreadPoolExecutor:
    """The process's decode threads (a forked child makes its own: the parent's threads are not in it)."""
    global _decoder
    if _decoder is None:
        _decoder = ThreadPoolExecutor(MAX_PARALLEL_DECODES, thread_name_prefix="decode")
    return _decoder


def _forget_decoder() -> None:
    global _decoder
    _decoder = None


os.register_at_fork(after_in_child=_forget_decoder)
MAX_FEATURE_MAPS = 16  # per convolutional layer, in the "inside the network" view
TOP_UNITS = 8  # hidden units whose first-layer weights the page shows
TOP_TOKENS = 10  # tokens behind a spam verdict, both directions together
TRAIN_HINTS = {
    "digits": "train one with `chainrule digits train`, or pass --digits MODEL_DIR",
    "images": "train one with `chainrule images train --data fashion` or `chainrule digits train`, "
    "or pass --images MODEL_DIR",
    "spam": "train one with `chainrule spam train CORPUS... --sms FILE --out runs/spam`, or pass --spam MODEL_DIR",
}
# What loading a model raises where it cannot be served: a damaged or unreadable model, or one too
# large for this machine (an image model's check runs its network on a blank image, and a model
# file may ask for more memory than is here).
CANNOT_LOAD = (UserError, OSError, MemoryError)
METRIC_WORDS = ("accuracy", "precision", "recall", "f1", "auc", "mcc", "loss", "error", "caught", "blocked")


def model_version(stamp: tuple) -> str:
    """A short name for the model files a `model_stamp` describes: the same files, the same name;
    the files of a model saved or copied over them, another."""
    return hashlib.sha256(repr(stamp).encode()).hexdigest()[:12]


def model_info(path: Path, model, metadata: dict, stamp: tuple, name: str | None = None,
               cutoffs: dict[str, float] | None = None) -> ModelInfo:
    try:
        version = json.loads((path / "model.json").read_text()).get("format_version")
    except (OSError, ValueError):
        version = None
    scalars = {k: without_surrogates(v) if isinstance(v, str) else v for k, v in metadata.items()
               if isinstance(v, (str, int, float, bool)) and k != "task"}
    # Apps record their headline figures as top-level numbers (digits: "test_accuracy") or in an
    # object named for the data they were measured on (spam: "validation"); all are listed.
    metrics = {k: v for k, v in scalars.items() if is_real(v) and any(w in k for w in METRIC_WORDS)}
    for group in ("metrics", "test", "validation"):
        if isinstance(metadata.get(group), dict):
            prefix = "" if group == "metrics" else f"{group}_"
            metrics.update({prefix + k: v for k, v in metadata[group].items()
                            if is_real(v) and (group == "metrics" or any(w in k for w in METRIC_WORDS))})
    image = metadata.get("task") in IMAGE_TASKS
    dataset = metadata.get("dataset") if image else None
    return ModelInfo(
        path=without_surrogates(str(path)),
        name=name if name is None else without_surrogates(name),
        task=str(metadata.get("task", "")),
        dataset=dataset,
        dataset_title=idx.title(dataset) if dataset else None,
        classes=metadata.get("classes") if image else None,  # (names checked at load: `idx.control_character`)
        picture=metadata.get("preprocessing", {}).get("picture") if image else None,
        format_version=version if isinstance(version, int) else None,
        model_version=model_version(stamp),
        num_parameters=model.num_parameters(),
        layers=[type(layer).__name__ for layer in model.layers],
        metrics=metrics,
        metadata=scalars,
        cutoffs=cutoffs,
    )


def _round(a: np.ndarray, digits: int = 4) -> list:
    """A JSON-friendly copy of `a`, rounded: the page draws colours, not 7-digit numbers."""
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


@dataclass
class ImageService:
    """A loaded image model (digits, clothes, ...) and what serving it needs.

    Layers cache their inputs during `forward`, so one network must not run two passes at once:
    the model's `lock` serialises them (the matrix products inside still use every core). Decoding an upload
    needs memory in proportion to its pixels (a 4096x4096 PNG: ~100 MB while it is shrunk), so
    decodes run on `decoder`, `MAX_PARALLEL_DECODES` threads shared by every model served, whatever
    the number of requests or models (one pool per model let 3 models decode 6 at once: 2.5 GB).
    (A semaphore in the shared request threads would not do: the C allocator keeps a pool of
    memory per thread, so every thread that ever decoded would keep a decode's worth.)
    """

    name: str
    path: Path
    model: chainrule.Sequential
    metadata: dict
    info: ModelInfo
    decoder: ThreadPoolExecutor = field(default_factory=_shared_decoder)
    stamp: tuple = ()  # `model_stamp` of its files, taken before they were read

    @classmethod
    def load(cls, path, name: str | None = None) -> ImageService:
        """Load the image model in `path` (its folder, or its model.json), served as `name`
        (default: `default_name`)."""
        path = model_directory(path)
        stamp = model_stamp(path)  # (before loading: a change during the load shows at the next look)
        model, metadata = load_image_model(path)
        name = name or default_name(metadata)
        return cls(name, path, model, metadata, model_info(path, model, metadata, stamp, name), stamp=stamp)

    def reload(self) -> ImageService:
        """The model now in this one's folder, served under this one's name."""
        return ImageService.load(self.path, self.name)

    @property
    def classes(self) -> list[str]:
        return self.metadata["classes"]

    async def decode(self, data: bytes) -> np.ndarray:
        """`image_from_bytes` on one of the decoder's threads."""
        return await asyncio.get_running_loop().run_in_executor(self.decoder, self.image_from_bytes, data)

    def image_from_bytes(self, data: bytes) -> np.ndarray:
        """Decode an uploaded image and preprocess it exactly as `chainrule images predict` does
        for this model (as a digit, or as an object), with the same limits and errors (ImageError:
        unreadable, too many pixels, blank)."""
        return preprocess_image(data, self.metadata["preprocessing"]["picture"])

    def predict(self, image: np.ndarray, explain: bool) -> ImagePrediction:
        """Classify one preprocessed 28x28 image; with `explain`, also return what every layer did."""
        x = model_inputs(image[None], self.metadata)
        with self.model.lock:  # one forward pass gives the answer and, with `explain`, every layer's output
            # (outputs that overflowed are a ModelFileError: `Sequential.checked_outputs`)
            outputs = self.model.layer_outputs(x) if explain else [self.model.checked_outputs(self.model.forward(x))]
            proba = class_distribution(self.model, self.model.probabilities(outputs[-1]))[0]
            outputs = [out[0].copy() for out in outputs] if explain else None
        result = ImagePrediction(**best_class(proba, self.classes), probabilities=_round(proba, 6),
                                 input=_round(image, 3), model_version=self.info.model_version)
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
    """A loaded spam classifier (its network's `lock` serialises its passes, as an image model's)."""

    path: Path
    bundle: SpamModel
    info: ModelInfo
    stamp: tuple = ()  # `model_stamp` of its files, taken before they were read

    @classmethod
    def load(cls, path) -> SpamService:
        path = model_directory(path)  # (its folder, or its model.json)
        stamp = model_stamp(path)
        bundle = load_spam_model(path)
        cutoffs = {"spam": bundle.spam_cutoff, "ham": bundle.ham_cutoff}  # (what its verdicts use)
        return cls(path, bundle, model_info(path, bundle.model, bundle.metadata, stamp, cutoffs=cutoffs), stamp)

    def reload(self) -> SpamService:
        """The model now in this one's folder."""
        return SpamService.load(self.path)

    def classify(self, raw: bytes, mail: bool = False) -> SpamVerdict:
        """The verdict on `raw`: an email where `mail` says so (sent as message/rfc822), else an
        email or an SMS by its shape (`classify_message`)."""
        result = classify_message(self.bundle, raw, top=TOP_TOKENS, mail=mail)
        tokens = [TokenWeight(token=str(t["token"]), weight=float(t["weight"])) for t in result["top_tokens"]]
        return SpamVerdict(label=result["label"], probability=float(result["probability"]), top_tokens=tokens,
                           problem=result["problem"], read_as=result["read_as"],
                           header_lines=result["header_lines"], model_version=self.info.model_version)


class Served:
    """One model the app serves, kept as its folder has it, as the spam daemon keeps its model.

    `service` is the loaded model (an `ImageService` or a `SpamService`). `current()` gives the one
    to answer a request with, having first looked at the model's files (`model_stamp`: a few `stat`
    calls) if `interval` seconds have passed since the last look, and loaded it again with
    `reload(service)` if they changed: after `spam learn`, or a retrain into the same folder. A
    request keeps the service it was given: a reload builds a new one and puts it in place with one
    assignment, never changing the old one, so a request in progress ends with the model it began
    with. One reload runs at a time; requests meanwhile get the service loaded before.

    A model that fails to load (its folder deleted or unreadable, a model of another kind saved
    there, one too large for this machine) is reported once in the log, and the one loaded before
    stays in service. It is tried again at each look, not only once its stamped files change again:
    a model copied in file by file may have its model.json before the weights it names. `interval`
    0 never looks.
    """

    def __init__(self, service: ImageService | SpamService, interval: float,
                 reload: Callable[[ImageService | SpamService], ImageService | SpamService] | None = None):
        self.service = service
        self.interval = interval
        self._reload = reload or type(service).reload
        self._stamp = service.stamp
        self._failed = False  # (whether the files as `_stamp` has them failed to load)
        self._next_look = time.monotonic() + interval
        self._reloading = False

    async def current(self) -> ImageService | SpamService:
        now = time.monotonic()
        if self.interval <= 0 or self._reloading or now < self._next_look:
            return self.service
        self._next_look = now + self.interval
        old = self.service
        stamp = model_stamp(old.path)
        if stamp == self._stamp and not self._failed:
            return old
        what = f"image model {old.name}" if isinstance(old, ImageService) else "spam model"
        self._reloading = True
        try:
            new = await run_in_threadpool(self._reload, old)
        except CANNOT_LOAD as exc:
            if stamp != self._stamp or not self._failed:  # (once for each change)
                log.warning("chainrule serve: warning: %s %s changed on disk and cannot be loaded (%s); still "
                            "serving the model loaded before", what, old.path, one_line(exc))
            self._stamp, self._failed = stamp, True
            return old
        finally:
            self._reloading = False
        self.service, self._stamp, self._failed = new, new.stamp, False
        log.info("chainrule serve: %s %s changed on disk: reloaded", what, new.path)
        return new


def default_name(metadata: dict) -> str:
    """An image model's name in the web app's routes: its data set's (`mnist`, `fashion`, or the
    folder's name), made safe for a URL."""
    name = re.sub(r"[^a-z0-9._-]+", "-", Path(str(metadata.get("dataset", "mnist"))).name.lower()).strip("-.")
    return name or "images"


def saved_models(runs="runs") -> list[tuple[Path, dict, float]]:
    """(model directory, its metadata, when it was written) for every saved model under `runs`; one
    that cannot be read (a newer chainrule's, say), or a folder that cannot be, is passed over with a
    warning. `find_latest_model` and `find_latest_image_models` choose from this list, so one scan
    serves both."""
    root = Path(runs)
    if not root.is_dir():
        return []
    found = []
    # (os.walk, not Path.rglob: rglob passes over a folder it cannot read without a word, and
    # `serve` said "no models to serve: none under runs/" of a folder of models it may not read)
    for folder, _, files in os.walk(root, onerror=_unreadable_folder):
        meta = Path(folder) / "model.json"
        if "model.json" in files and _readable_weights(meta.parent):
            metadata = saved_metadata(meta.parent)
            if metadata:
                found.append((meta.parent, metadata, meta.stat().st_mtime))
    return found


def _unreadable_folder(exc: OSError) -> None:
    log.warning("chainrule serve: passed over %s: a folder that cannot be read (%s)",
                printable(str(exc.filename)), exc.strerror or exc)


def find_latest_model(task: str, saved: list[tuple[Path, dict, float]], load=model_directory):
    """The most recently written model of the `saved_models` whose metadata says `task`, as `load`
    gives it (by default its directory), or None.

    The scan reads only model.json and the weights' headers; `load` may read the whole model (a
    service's `load`), and a model it refuses (damaged arrays: a bad CRC, NaN weights) is passed
    over, with a warning, for the next newest: each candidate is loaded once, the one served.
    """
    return _first_loaded([directory for directory, _ in _newest_first(saved, (task,))], load)


def find_latest_image_models(saved: list[tuple[Path, dict, float]], load=model_directory, leave_out=()) -> dict:
    """The most recently written image model of each data set among the `saved_models` but those
    in `leave_out`, as `load` gives it (as `find_latest_model`): {data set: model}. Models from
    chainrule 0.1's `digits train` count as MNIST's."""
    by_dataset: dict[str, list[Path]] = {}
    for directory, metadata in _newest_first(saved, IMAGE_TASKS):
        by_dataset.setdefault(str(metadata.get("dataset", "mnist")), []).append(directory)
    latest = {dataset: _first_loaded(directories, load) for dataset, directories in by_dataset.items()
              if dataset not in leave_out}
    return {dataset: model for dataset, model in latest.items() if model is not None}


def _newest_first(saved, tasks) -> list[tuple[Path, dict]]:
    """(directory, metadata) of the `saved_models` whose metadata says one of `tasks`, the most
    recently written first (of two written at once, the first found)."""
    newest_first = sorted(saved, key=lambda found: found[2], reverse=True)
    return [(directory, metadata) for directory, metadata, _ in newest_first if metadata.get("task") in tasks]


def _first_loaded(directories, load):
    """What `load` gives for the first of `directories` it loads; None where it loads none."""
    for directory in directories:
        try:
            return load(directory)
        except CANNOT_LOAD as exc:
            log.warning("chainrule serve: passed over %s: %s", directory, one_line(exc))
    return None


def _readable_weights(directory: Path) -> bool:
    """Whether the model's weights are there and what its model.json says they are (their headers,
    not the arrays): a model that is not is passed over, with a warning, as the scan finds it."""
    try:
        check_model_files(directory)
        return True
    except (ModelFileError, OSError) as exc:
        log.warning("chainrule serve: passed over %s: %s", directory, one_line(exc))
        return False
