"""The API's routes: each reads the request, hands the work to a service, and answers.

The models live on the app: `request.app.state.images` (the image models by name),
`.digits` (the image model `/api/digits/predict` uses) and `.spam`, each a `Served` whose
`current()` is the service to use (reloaded first if its files changed); a route whose model is not
loaded answers 503 (404 for an image model name that is not served). Model work runs in the
thread pool, so one slow request never stalls the event loop.
"""

from __future__ import annotations

import pathlib

import numpy as np
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from chainrule.web.http import (
    FORM,
    MAIL,
    ApiError,
    check_text,
    declared_text,
    json_body,
    media_of,
    media_type,
    message_from_form,
    message_from_json,
    pixels_from_json,
    untyped_json,
    upload_or_body,
)
from chainrule.web.schemas import (
    ERROR_RESPONSES,
    IMAGE_BODY,
    IMAGE_ERROR_RESPONSES,
    SPAM_BODY,
    Health,
    ImagePrediction,
    ModelsResponse,
    SpamVerdict,
)
from chainrule.web.services import TRAIN_HINTS, ImageService, SpamService

STATIC_DIR = pathlib.Path(__file__).resolve().parent / "static"  # the page: HTML, CSS, JavaScript
EXPLAIN = Query(False, description="also return every layer's activations and top first-layer units")

router = APIRouter()


async def _service(request: Request, kind: str) -> ImageService | SpamService:
    served = getattr(request.app.state, kind)
    if served is None:
        raise ApiError(503, f"no {kind} model is loaded; {TRAIN_HINTS[kind]}")
    return await served.current()


@router.get("/", include_in_schema=False)
async def index():
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/healthz", response_model=Health, summary="Liveness check")
async def healthz(request: Request) -> Health:
    state = request.app.state
    return Health(status="ok", digits=state.digits is not None, spam=state.spam is not None, images=list(state.images))


# HEAD as well as GET for the page and the liveness check: what uptime checkers send (the answer
# without its body). Left out of the API schema, where each would repeat its GET.
router.add_api_route("/", index, methods=["HEAD"], include_in_schema=False)
router.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)


@router.get("/api/models", response_model=ModelsResponse, summary="The loaded models")
async def models(request: Request) -> ModelsResponse:
    state = request.app.state
    images = [await served.current() for served in state.images.values()]
    digits = await state.digits.current() if state.digits else None
    spam = await state.spam.current() if state.spam else None
    hints = {kind: TRAIN_HINTS[kind] for kind, s in (("digits", digits), ("images", images), ("spam", spam)) if not s}
    return ModelsResponse(digits=digits.info if digits else None, images=[s.info for s in images],
                          spam=spam.info if spam else None, hints=hints)


@router.post(
    "/api/images/{name}/predict",
    response_model=ImagePrediction,
    response_model_exclude_none=True,
    summary="Classify an image with the image model of that name",
    openapi_extra={"requestBody": IMAGE_BODY},
    responses=IMAGE_ERROR_RESPONSES,
)
async def images_predict(
    request: Request,
    name: str = Path(description="the model's name, as /api/models lists it (e.g. mnist, fashion)"),
    explain: bool = EXPLAIN,
) -> ImagePrediction:
    served = request.app.state.images.get(name)
    if served is None:
        loaded = ", ".join(request.app.state.images) or f"none; {TRAIN_HINTS['images']}"
        raise ApiError(404, f"no image model named {name!r}; loaded: {loaded}")
    return await _predict(request, await served.current(), explain)


@router.post(
    "/api/digits/predict",
    response_model=ImagePrediction,
    response_model_exclude_none=True,
    summary="Recognise a handwritten digit (the MNIST model, or the one `serve --digits` names)",
    openapi_extra={"requestBody": IMAGE_BODY},
    responses=ERROR_RESPONSES,
)
async def digits_predict(request: Request, explain: bool = EXPLAIN) -> ImagePrediction:
    return await _predict(request, await _service(request, "digits"), explain)


async def _predict(request: Request, service: ImageService, explain: bool) -> ImagePrediction:
    data, _ = await upload_or_body(request)
    if not data:
        raise ApiError(422, "empty body: send a PNG/JPEG image or a JSON 28x28 array")
    # (5 MB of JSON take 0.1 s to read: not in the event loop)
    pixels = await run_in_threadpool(_pixels, media_type(request), data)
    image = await service.decode(data) if pixels is None else pixels
    return await run_in_threadpool(service.predict, image, explain)


def _pixels(media: str, data: bytes) -> np.ndarray | None:
    """The pixels of a body sent as JSON, by its type or, sent with one that says nothing of it, by
    its shape (as the spam route tells JSON from a message); None for any other body: an image."""
    if media == "application/json":
        return pixels_from_json(json_body(data))
    doc = untyped_json(media, data)
    return None if doc is None else pixels_from_json(doc)


@router.post(
    "/api/spam/classify",
    response_model=SpamVerdict,
    summary="Spam or ham?",
    openapi_extra={"requestBody": SPAM_BODY},
    responses=ERROR_RESPONSES,
)
async def spam_classify(request: Request) -> SpamVerdict:
    service = await _service(request, "spam")
    media = media_type(request)
    if media.startswith(("image/", "audio/", "video/")):
        raise ApiError(422, f"not text: the body is {media}")
    data, content_type = await upload_or_body(request)
    mail = media_of(content_type) == MAIL  # (the body's type, or its part's: an email whatever it starts with)
    # (the message read out of its body in the thread that classifies it: a 5 MB form took 0.9 s,
    # in which the event loop answered nothing else)
    return await run_in_threadpool(lambda: service.classify(check_text(_message(media, content_type, data)), mail))


def _message(media: str, content_type: str, data: bytes) -> bytes:
    """The message a body of type `media` holds: a JSON object's field, a form's, or the body itself."""
    if media == "application/json":
        return message_from_json(json_body(data))
    if isinstance(doc := untyped_json(media, data), dict):  # (an array sent so is a message: "[URGENT] ...")
        return message_from_json(doc)
    if media == FORM and (message := message_from_form(data)) is not None:
        return declared_text(content_type, message)
    return declared_text(content_type, data)  # (the body itself, or a form's uploaded file)
