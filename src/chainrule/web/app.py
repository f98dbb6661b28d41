"""The web server behind `chainrule serve`: one page and a JSON API on FastAPI + uvicorn.

Routes (`routes.py`; the OpenAPI schema at /openapi.json, browsable at /docs, documents each):

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

import logging
import math
import os
import socket
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

import chainrule
from chainrule.errors import UserError
from chainrule.web.http import ApiError, BodyLimitMiddleware, BodyTimeout, BodyTooLarge
from chainrule.web.routes import STATIC_DIR, router
from chainrule.web.schemas import PIXELS_SCHEMA
from chainrule.web.services import TRAIN_HINTS, DigitsService, SpamService, find_latest_model

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
# How long a client may take over a request's headers, and over each part of its body. Without a
# limit a client that trickles bytes (a "slowloris") holds a connection for ever; nginx allows 60 s.
DEFAULT_READ_TIMEOUT = 30.0
# Open connections at most; uvicorn answers requests beyond that with 503 at once.
MAX_CONNECTIONS = 128


class _HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers.

    uvicorn closes a keep-alive connection that sits idle, but waits without end for a client that
    sends its request line and headers a byte at a time. Here the headers must be complete within
    `timeout_read` seconds of the connection opening (or of the previous response), as nginx's
    `client_header_timeout` has it; the body's own deadline is `BodyLimitMiddleware`'s.
    """

    timeout_read = DEFAULT_READ_TIMEOUT

    def connection_made(self, transport):
        super().connection_made(transport)
        self._start_deadline()

    def _start_deadline(self):
        self._waiting_since = self.cycle  # a new cycle object means a new request's headers are in
        self._deadline = self.loop.call_later(self.timeout_read, self._too_slow)

    def handle_events(self):
        super().handle_events()
        if self._deadline is not None and self.cycle is not self._waiting_since:
            self._deadline.cancel()
            self._deadline = None

    def on_response_complete(self):
        super().on_response_complete()
        if self._deadline is None and not self.transport.is_closing():
            self._start_deadline()

    def connection_lost(self, exc):
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _too_slow(self):
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def create_app(
    digits: DigitsService | str | Path | None = None,
    spam: SpamService | str | Path | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
) -> FastAPI:
    """Build the app around already chosen models (either may be None: its routes then answer 503).

    Args:
        digits: a digits model directory, or a loaded `DigitsService`.
        spam: a spam model directory, or a loaded `SpamService`.
        max_body_bytes: larger request bodies are refused with 413.
        read_timeout: a body of which no part arrives for this many seconds is refused with 408.
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
    app.state.digits, app.state.spam = digits, spam
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(max_body_bytes), read_timeout=read_timeout)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(router)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(UserError)  # bad input a service refused: an unreadable image, say
    async def _user_error(request: Request, exc: UserError):
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge):
        return JSONResponse({"error": f"request body is larger than the limit of {max_body_bytes:,} bytes"},
                            status_code=413)

    @app.exception_handler(BodyTimeout)
    async def _timeout(request: Request, exc: BodyTimeout):
        return JSONResponse({"error": f"no part of the body arrived for {read_timeout:g} s"}, status_code=408)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"invalid request: {where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    base_openapi = app.openapi

    def openapi():
        # The JSON pixel array is referenced by the digits request body, which FastAPI does not
        # see as a model; add its schema to the components once.
        if app.openapi_schema is None:
            schema = base_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {})["Pixels"] = PIXELS_SCHEMA
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


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
          max_body_mb: float = 5.0, read_timeout: float = DEFAULT_READ_TIMEOUT) -> int:
    """Load the models (given, or the newest under `runs`), then serve until interrupted."""
    if not (math.isfinite(max_body_mb) and max_body_mb > 0):
        raise UserError(f"--max-body-mb must be a positive number of megabytes, got {max_body_mb}")
    if not (math.isfinite(read_timeout) and read_timeout > 0):
        raise UserError(f"--timeout must be a positive number of seconds, got {read_timeout}")
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
    app = create_app(chosen["digits"], chosen["spam"], max_body_bytes=int(max_body_mb * 1024 * 1024),
                     read_timeout=read_timeout)
    for kind, path in chosen.items():
        if path is None:
            log.info("chainrule serve: no %s model under %s/ (that part of the page is off); %s",
                     kind, runs, TRAIN_HINTS[kind])
        else:
            log.info("chainrule serve: %s model %s", kind, path)
    sock = _listening_socket(host, port)
    bound = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    log.info("chainrule serve: open http://%s:%d/ (API docs at /docs; Ctrl+C stops)", shown_host, bound)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("chainrule serve: warning: reachable from other machines, and there is no authentication")
    protocol = type("HeaderDeadline", (_HeaderDeadline,), {"timeout_read": read_timeout})
    config = uvicorn.Config(app, log_level=os.environ.get("CHAINRULE_LOG_LEVEL", "warning"), http=protocol,
                            access_log=False, timeout_graceful_shutdown=2, limit_concurrency=MAX_CONNECTIONS)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
