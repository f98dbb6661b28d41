"""The web server behind `chainrule serve`: one page and a JSON API on FastAPI + uvicorn.

Routes (the app's OpenAPI schema at /openapi.json, browsable at /docs, documents each one):

* ``GET /`` — the page (static/index.html, with static/app.js and static/style.css);
* ``POST /api/digits/predict`` — a PNG/JPEG (raw body or multipart field ``file``) or a JSON 28x28
  array -> digit and ten probabilities; ``?explain=true`` adds every layer's activations and the
  first-layer weights of the most active hidden units ("inside the network");
* ``POST /api/spam/classify`` — a raw message (email with headers, or an SMS) as the body, or JSON
  ``{"message": ...}`` -> label, probability of spam, the tokens that pushed the decision;
* ``GET /api/models`` — which models are loaded, their metrics and file format version;
* ``GET /healthz``.

Bad input never becomes a 500: a body over the size limit gets 413, something that is not an image
(or not text) gets 422, and every error is JSON ``{"error": "one line"}``. Drawings go through
`chainrule.data.images.preprocess_image`, the very function `chainrule digits predict` uses, so the
page shows exactly the 28x28 image the network sees.

The server binds to 127.0.0.1 unless told otherwise: a model server has no authentication.
"""

from __future__ import annotations

import io
import json
import math
import os
import socket
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import chainrule
from chainrule.apps.digits import model_inputs
from chainrule.apps.spam import SpamModel, classify_message, load_spam_model
from chainrule.data.images import ImageError, preprocess_image
from chainrule.errors import UserError
from chainrule.layers import LeakyReLU, ReLU, Sigmoid, Tanh
from chainrule.network import ModelFileError

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
# An upload's pixel count is checked before decoding: a 5 MB PNG of one colour can decode to
# gigabytes, and the 28x28 result needs nothing near this.
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_FEATURE_MAPS = 16  # per convolutional layer, in the "inside the network" view
TOP_UNITS = 8  # hidden units whose first-layer weights the page shows
TOP_TOKENS = 10  # tokens behind a spam verdict, both directions together
TRAIN_HINTS = {
    "digits": "train one with `chainrule digits train`, or pass --digits MODEL_DIR",
    "spam": "train one with `chainrule spam train CORPUS... --sms FILE --out runs/spam`, or pass --spam MODEL_DIR",
}
METRIC_WORDS = ("accuracy", "precision", "recall", "f1", "auc", "mcc", "loss", "error", "caught", "blocked")


class ApiError(Exception):
    """A request we refuse, with its HTTP status and a one-line reason for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# -- response schemas (they become the OpenAPI documentation) ---------------------------------------


class ErrorResponse(BaseModel):
    error: str = Field(description="what was wrong, in one line")


class LayerActivation(BaseModel):
    index: int = Field(description="position of the layer in the network")
    type: str = Field(description="layer class, e.g. Linear, ReLU, Conv2D")
    shape: list[int] = Field(description="shape of one example's output: [units] or [channels, height, width]")
    shown: int = Field(description="units, or feature maps, included in `values` (the first ones)")
    values: list[float] = Field(description="the output, flattened in C order")


class UnitWeights(BaseModel):
    unit: int = Field(description="index of the hidden unit (neuron or feature map) in the first weighted layer")
    activation: float = Field(description="its activation for this input (mean over the map for a conv filter)")
    weights: list[list[float]] = Field(description="its incoming weights laid out as an image")


class DigitPrediction(BaseModel):
    digit: int = Field(description="the most probable class, 0-9")
    probabilities: list[float] = Field(description="probability of each digit 0-9")
    input: list[list[float]] = Field(description="the 28x28 image the network saw, 0 = background, 1 = ink")
    layers: list[LayerActivation] | None = Field(None, description="with ?explain=true: each layer's output")
    top_units: list[UnitWeights] | None = Field(
        None, description="with ?explain=true: first-layer weights of the most active hidden units"
    )


class TokenWeight(BaseModel):
    token: str
    weight: float = Field(description="contribution to the spam score: > 0 pushes towards spam, < 0 towards ham")


class SpamVerdict(BaseModel):
    label: str = Field(description="'spam', 'ham', or 'unsure' (between the model's two calibrated cut-offs)")
    probability: float = Field(description="probability that the message is spam")
    top_tokens: list[TokenWeight] = Field(description="the tokens that pushed the decision most, either way")
    problem: str | None = Field(None, description="how the message was read when it was not a well-formed email")


class ModelInfo(BaseModel):
    path: str
    task: str
    format_version: int | None = Field(description="version of the saved model's file format")
    num_parameters: int
    layers: list[str] = Field(description="layer types, input side first")
    metrics: dict[str, Any] = Field(description="metrics recorded when the model was trained")
    metadata: dict[str, Any] = Field(description="other scalar facts saved with the model (preset, data, ...)")


class ModelsResponse(BaseModel):
    digits: ModelInfo | None
    spam: ModelInfo | None
    hints: dict[str, str] = Field(description="for each model that is not loaded: how to get one")


class Health(BaseModel):
    status: str
    digits: bool
    spam: bool


# -- the models ---------------------------------------------------------------------------------------


def _model_info(path: Path, model, metadata: dict) -> ModelInfo:
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
    `lock` serialises them (the matrix products inside still use every core).
    """

    path: Path
    model: chainrule.Sequential
    metadata: dict
    info: ModelInfo
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, path) -> DigitsService:
        path = Path(path)
        model, metadata = chainrule.load_model(path)
        if metadata.get("task") != "digits":
            raise ModelFileError(f"{path}: a {metadata.get('task') or 'non-digits'} model, expected a digits model")
        return cls(path, model, metadata, _model_info(path, model, metadata))

    def image_from_bytes(self, data: bytes) -> np.ndarray:
        """Decode an uploaded image and preprocess it exactly as `chainrule digits predict` does."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as img:  # reads the header only
                    width, height = img.size
        except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise ApiError(422, "not an image Pillow can read (send a PNG or JPEG)") from exc
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ApiError(422, f"corrupt or truncated image ({exc})") from exc
        if width * height > MAX_IMAGE_PIXELS:
            raise ApiError(422, f"image is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS:,} are accepted")
        try:
            return preprocess_image(data)
        except ImageError as exc:  # unreadable after all, or blank
            raise ApiError(422, str(exc)) from exc

    def predict(self, image: np.ndarray, explain: bool) -> DigitPrediction:
        """Classify one preprocessed 28x28 image; with `explain`, also return what every layer did."""
        x = model_inputs(image[None], self.metadata)
        with self.lock:
            proba = self.model.predict_proba(x)[0]
            outputs = self._layer_outputs(x) if explain else None
        result = DigitPrediction(
            digit=int(np.argmax(proba)), probabilities=_round(proba, 6), input=_round(image, 3)
        )
        if outputs is not None:
            result.layers = self._layer_activations(outputs)
            result.top_units = self._top_units(outputs)
        return result

    def _layer_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        outputs = []
        x = np.asarray(x, dtype=self.model.dtype)
        for layer in self.model.layers:
            x = layer.forward(x, training=False)
            outputs.append(x[0].copy())
        return outputs

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
        return cls(path, bundle, _model_info(path, bundle.model, bundle.metadata))

    def classify(self, raw: bytes) -> SpamVerdict:
        with self.lock:
            result = classify_message(self.bundle, raw, top=TOP_TOKENS)
        tokens = [TokenWeight(token=str(t["token"]), weight=float(t["weight"])) for t in result["top_tokens"]]
        return SpamVerdict(label=result["label"], probability=float(result["probability"]), top_tokens=tokens,
                           problem=result.get("problem"))


# -- request bodies -----------------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, before the app buffers them.

    A declared Content-Length is checked up front; a chunked body is counted as it arrives and cut
    off at the limit, so neither way can a client make the server hold more than `max_bytes`.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_json(send, 400, {"error": "Content-Length is not a number"})
                return
            if size > self.max_bytes:
                await _send_json(send, 413, {"error": self._message()})
                return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, {"error": self._message()})

    def _message(self) -> str:
        return f"request body is larger than the limit of {self.max_bytes:,} bytes"


async def _send_json(send, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _upload_or_body(request: Request) -> bytes:
    """The request's payload: the multipart field `file` if the body is a form, else the body."""
    if _media_type(request) == "multipart/form-data":
        try:
            async with request.form() as form:  # closing the form deletes its spooled files
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ApiError(422, "the multipart form needs a file field named 'file'")
                return await upload.read()
        except (_BodyTooLarge, ApiError):
            raise
        except Exception as exc:  # python-multipart's parse errors have no common base class
            raise ApiError(422, f"cannot parse the multipart form: {exc}") from exc
    return await request.body()


def _json_body(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(422, f"the body is not valid JSON: {exc}") from exc


def _pixels_from_json(doc: Any) -> np.ndarray:
    """A 28x28 array of numbers in [0, 1], as a bare array or as {"pixels": array}."""
    if isinstance(doc, dict):
        if "pixels" not in doc:
            raise ApiError(422, 'JSON body must be a 28x28 array of numbers or {"pixels": <28x28 array>}')
        doc = doc["pixels"]
    try:
        arr = np.asarray(doc, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ApiError(422, "pixels must be a 28x28 array of numbers") from exc
    if arr.shape != (28, 28):
        raise ApiError(422, f"pixels must be a 28x28 array of numbers, got shape {list(arr.shape)}")
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ApiError(422, "pixels must be numbers in [0, 1] (0 = background, 1 = ink)")
    return arr.astype(np.float32)


def _check_text(data: bytes) -> bytes:
    """Refuse bodies that are not text: empty, or binary (NUL bytes, many control characters).

    Mail may be in any 8-bit charset, so bytes >= 0x80 are fine; what text never has is NUL, and
    control characters beyond tab, newlines, form feed, backspace and escape are rare in it.
    """
    if not data.strip():
        raise ApiError(422, "the message is empty")
    if b"\x00" in data:
        raise ApiError(422, "not text: the body contains NUL bytes (send the message as text)")
    controls = sum(data.count(bytes([c])) for c in range(32) if c not in (8, 9, 10, 12, 13, 27))
    if controls > 0.05 * len(data):
        raise ApiError(422, "not text: the body is mostly control characters (send the message as text)")
    return data


_DIGITS_BODY = {
    "description": "A PNG or JPEG image (raw body, or multipart field `file`), preprocessed like "
    "`chainrule digits predict`; or a 28x28 array of numbers in [0, 1] (0 = background, 1 = ink), "
    "used as is.",
    "required": True,
    "content": {
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                       "required": ["file"]}
        },
        "application/json": {
            "schema": {
                "oneOf": [
                    {"$ref": "#/components/schemas/Pixels"},
                    {"type": "object", "properties": {"pixels": {"$ref": "#/components/schemas/Pixels"}},
                     "required": ["pixels"]},
                ]
            }
        },
    },
}
_PIXELS_SCHEMA = {
    "type": "array", "minItems": 28, "maxItems": 28,
    "items": {"type": "array", "minItems": 28, "maxItems": 28, "items": {"type": "number", "minimum": 0, "maximum": 1}},
}
_SPAM_BODY = {
    "description": "The raw message: an email with its headers (RFC 822, any charset) or an SMS, as the body "
    "(text/plain, message/rfc822), as multipart field `file`, or as JSON {\"message\": \"...\"}.",
    "required": True,
    "content": {
        "text/plain": {"schema": {"type": "string"}},
        "message/rfc822": {"schema": {"type": "string"}},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                       "required": ["file"]}
        },
        "application/json": {
            "schema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}
        },
    },
}
_ERRORS = {
    413: {"model": ErrorResponse, "description": "request body over the size limit"},
    422: {"model": ErrorResponse, "description": "not an image / not text / malformed"},
    503: {"model": ErrorResponse, "description": "no model of this kind is loaded"},
}


# -- the app ------------------------------------------------------------------------------------------


def create_app(
    digits: DigitsService | str | Path | None = None,
    spam: SpamService | str | Path | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """Build the app around already chosen models (either may be None: its routes then answer 503).

    Args:
        digits: a digits model directory, or a loaded `DigitsService`.
        spam: a spam model directory, or a loaded `SpamService`.
        max_body_bytes: larger request bodies are refused with 413.
    """
    if digits is not None and not isinstance(digits, DigitsService):
        digits = DigitsService.load(digits)
    if spam is not None and not isinstance(spam, SpamService):
        spam = SpamService.load(spam)

    app = FastAPI(
        title="chainrule",
        version=chainrule.__version__,
        description="Draw a digit, check a message, watch the network think. Models trained by "
        "backpropagation in NumPy. Errors are JSON `{\"error\": \"...\"}`.",
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(max_body_bytes))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(_BodyTooLarge)
    async def _too_large(request: Request, exc: _BodyTooLarge):
        return JSONResponse({"error": f"request body is larger than the limit of {max_body_bytes:,} bytes"},
                            status_code=413)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"invalid request: {where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    def need(service, kind: str):
        if service is None:
            raise ApiError(503, f"no {kind} model is loaded; {TRAIN_HINTS[kind]}")
        return service

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/healthz", response_model=Health, summary="Liveness check")
    async def healthz() -> Health:
        return Health(status="ok", digits=digits is not None, spam=spam is not None)

    @app.get("/api/models", response_model=ModelsResponse, summary="The loaded models")
    async def models() -> ModelsResponse:
        hints = {kind: TRAIN_HINTS[kind] for kind, s in (("digits", digits), ("spam", spam)) if s is None}
        return ModelsResponse(
            digits=digits.info if digits else None, spam=spam.info if spam else None, hints=hints
        )

    @app.post(
        "/api/digits/predict",
        response_model=DigitPrediction,
        response_model_exclude_none=True,
        summary="Recognise a handwritten digit",
        openapi_extra={"requestBody": _DIGITS_BODY},
        responses=_ERRORS,
    )
    async def digits_predict(
        request: Request,
        explain: bool = Query(False, description="also return every layer's activations and top first-layer units"),
    ) -> DigitPrediction:
        service = need(digits, "digits")
        data = await _upload_or_body(request)
        if not data:
            raise ApiError(422, "empty body: send a PNG/JPEG image or a JSON 28x28 array")
        if _media_type(request) == "application/json":
            image = _pixels_from_json(_json_body(data))
        else:
            image = await run_in_threadpool(service.image_from_bytes, data)
        return await run_in_threadpool(service.predict, image, explain)

    @app.post(
        "/api/spam/classify",
        response_model=SpamVerdict,
        summary="Spam or ham?",
        openapi_extra={"requestBody": _SPAM_BODY},
        responses=_ERRORS,
    )
    async def spam_classify(request: Request) -> SpamVerdict:
        service = need(spam, "spam")
        media = _media_type(request)
        if media.startswith(("image/", "audio/", "video/")):
            raise ApiError(422, f"not text: the body is {media}")
        data = await _upload_or_body(request)
        if media == "application/json":
            doc = _json_body(data)
            if not isinstance(doc, dict) or not isinstance(doc.get("message"), str):
                raise ApiError(422, 'JSON body must be {"message": "<the raw message>"}')
            data = doc["message"].encode("utf-8")
        return await run_in_threadpool(service.classify, _check_text(data))

    base_openapi = app.openapi

    def openapi():
        # The JSON pixel array is referenced by the request body above, which FastAPI does not see
        # as a model; add its schema to the components once.
        if app.openapi_schema is None:
            schema = base_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {})["Pixels"] = _PIXELS_SCHEMA
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


# -- `chainrule serve` --------------------------------------------------------------------------------


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
        if mtime > best_time and (meta.parent / "model.npz").is_file():
            best, best_time = meta.parent, mtime
    return best


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn, so a taken port or bad address is a one-line user error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def serve(digits=None, spam=None, host: str = "127.0.0.1", port: int = 8000, runs="runs",
          max_body_mb: float = 5.0) -> int:
    """Load the models (given, or the newest under `runs`), then serve until interrupted."""
    import uvicorn

    if not (math.isfinite(max_body_mb) and max_body_mb > 0):
        raise UserError(f"--max-body-mb must be a positive number of megabytes, got {max_body_mb}")
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {port}")
    chosen = {"digits": digits, "spam": spam}
    for kind in chosen:
        if chosen[kind] is None:
            chosen[kind] = find_latest_model(kind, runs)
    if chosen["digits"] is None and chosen["spam"] is None:
        raise UserError(
            f"no models to serve: none under {runs}/ and no --digits/--spam given. Train them first: "
            "`chainrule digits train` and `chainrule spam train CORPUS... --sms FILE --out runs/spam`"
        )
    app = create_app(chosen["digits"], chosen["spam"], max_body_bytes=int(max_body_mb * 1024 * 1024))
    for kind, path in chosen.items():
        if path is None:
            print(f"chainrule serve: no {kind} model under {runs}/ (that part of the page is off); "
                  f"{TRAIN_HINTS[kind]}", file=sys.stderr)
        else:
            print(f"chainrule serve: {kind} model {path}", file=sys.stderr)
    sock = _listening_socket(host, port)
    bound = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    print(f"chainrule serve: open http://{shown_host}:{bound}/ (API docs at /docs; Ctrl+C stops)",
          file=sys.stderr, flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("chainrule serve: warning: reachable from other machines, and there is no authentication",
              file=sys.stderr)
    config = uvicorn.Config(app, log_level=os.environ.get("CHAINRULE_LOG_LEVEL", "warning"),
                            access_log=False, timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
