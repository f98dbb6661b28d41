"""The API's routes: each reads the request, hands the work to a service, and answers.

The services live on the app (`request.app.state.digits`, `.spam`; None when that kind of model
is not loaded, and then its routes answer 503). Model work runs in the thread pool, so one slow
request never stalls the event loop.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from chainrule.web.http import (
    ApiError,
    check_text,
    json_body,
    media_type,
    pixels_from_json,
    upload_or_body,
)
from chainrule.web.schemas import (
    DIGITS_BODY,
    ERROR_RESPONSES,
    SPAM_BODY,
    DigitPrediction,
    Health,
    ModelsResponse,
    SpamVerdict,
)
from chainrule.web.services import TRAIN_HINTS, DigitsService, SpamService

STATIC_DIR = Path(__file__).resolve().parent / "static"  # the page: HTML, CSS, JavaScript

router = APIRouter()


def _service(request: Request, kind: str) -> DigitsService | SpamService:
    service = getattr(request.app.state, kind)
    if service is None:
        raise ApiError(503, f"no {kind} model is loaded; {TRAIN_HINTS[kind]}")
    return service


@router.get("/", include_in_schema=False)
async def index():
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/healthz", response_model=Health, summary="Liveness check")
async def healthz(request: Request) -> Health:
    state = request.app.state
    return Health(status="ok", digits=state.digits is not None, spam=state.spam is not None)


@router.get("/api/models", response_model=ModelsResponse, summary="The loaded models")
async def models(request: Request) -> ModelsResponse:
    digits, spam = request.app.state.digits, request.app.state.spam
    hints = {kind: TRAIN_HINTS[kind] for kind, s in (("digits", digits), ("spam", spam)) if s is None}
    return ModelsResponse(digits=digits.info if digits else None, spam=spam.info if spam else None, hints=hints)


@router.post(
    "/api/digits/predict",
    response_model=DigitPrediction,
    response_model_exclude_none=True,
    summary="Recognise a handwritten digit",
    openapi_extra={"requestBody": DIGITS_BODY},
    responses=ERROR_RESPONSES,
)
async def digits_predict(
    request: Request,
    explain: bool = Query(False, description="also return every layer's activations and top first-layer units"),
) -> DigitPrediction:
    service = _service(request, "digits")
    data = await upload_or_body(request)
    if not data:
        raise ApiError(422, "empty body: send a PNG/JPEG image or a JSON 28x28 array")
    if media_type(request) == "application/json":
        image = pixels_from_json(json_body(data))
    else:
        image = await service.decode(data)
    return await run_in_threadpool(service.predict, image, explain)


@router.post(
    "/api/spam/classify",
    response_model=SpamVerdict,
    summary="Spam or ham?",
    openapi_extra={"requestBody": SPAM_BODY},
    responses=ERROR_RESPONSES,
)
async def spam_classify(request: Request) -> SpamVerdict:
    service = _service(request, "spam")
    media = media_type(request)
    if media.startswith(("image/", "audio/", "video/")):
        raise ApiError(422, f"not text: the body is {media}")
    data = await upload_or_body(request)
    if media == "application/json":
        doc = json_body(data)
        if not isinstance(doc, dict) or not isinstance(doc.get("message"), str):
            raise ApiError(422, 'JSON body must be {"message": "<the raw message>"}')
        # a lone surrogate ("\ud800") is valid JSON but not encodable text: it becomes "?"
        data = doc["message"].encode("utf-8", errors="replace")
    return await run_in_threadpool(service.classify, check_text(data))
