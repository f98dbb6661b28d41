"""The web server behind `chainrule serve`: one page and a JSON API on FastAPI + uvicorn.

Routes (`routes.py`; the OpenAPI schema at /openapi.json, browsable at /docs, documents each):

* ``GET /`` — the page (static/index.html, with static/app.js and static/style.css);
* ``POST /api/images/{name}/predict`` — a PNG/JPEG (raw body or multipart field ``file``) or a
  JSON 28x28 array -> the class (its name and number) and the probability of each class, from the
  image model of that name; ``?explain=true`` adds every layer's activations and the first-layer
  weights of the most active hidden units ("inside the network");
* ``POST /api/digits/predict`` — the same, from the MNIST model (kept from the first version);
* ``POST /api/spam/classify`` — a raw message (email with headers, or an SMS) as the body, JSON
  ``{"message": ...}`` or a urlencoded form's field ``message`` -> label, probability of spam, the
  tokens that pushed the decision;
* ``GET /api/models`` — which models are loaded (image models with their class names), their
  metrics and file format version;
* ``GET /healthz``.

A model whose files change on disk (`spam learn`, a retrain into the same folder) is loaded again at
the first request after `reload_interval` seconds that uses it (`services.Served`).

Bad input never becomes a 500: a body over the size limit gets 413, something that is not an image
(or not text) gets 422, and every error is JSON ``{"error": "one line"}``. A 500 is the model's
fault (weights so large that its outputs overflow), logged as well. Pictures go through
`chainrule.data.images.preprocess_image`, the very function `chainrule images predict` uses, so the
page shows exactly the 28x28 image the network sees.

The server binds to 127.0.0.1 unless told otherwise: a model server has no authentication. Bound
to a loopback address, it answers only requests for this machine's names (`Host`; others get 400,
in Starlette's plain text), so that a web page elsewhere that points its own name at 127.0.0.1 (DNS
rebinding) cannot read the API from the browser of the person running it; listening on the network,
it answers any.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import re
import socket
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from uvicorn.protocols.http.h11_impl import H11Protocol

import chainrule
from chainrule.apps.images import DIGITS
from chainrule.errors import ModelFileError, UserError, one_line
from chainrule.listeners import tcp_listeners
from chainrule.model_file import model_directory
from chainrule.open_files import AcceptFailures, shortfall
from chainrule.web.http import ApiError, BodyLimitMiddleware
from chainrule.web.routes import STATIC_DIR, router
from chainrule.web.schemas import PIXELS_SCHEMA
from chainrule.web.services import (
    TRAIN_HINTS,
    ImageService,
    Served,
    SpamService,
    find_latest_image_models,
    find_latest_model,
    saved_models,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_BODY_MB = 1024  # the largest --max-body-mb: a body is held in memory whole, so a gigabyte at most
# How long a client may take over a request's headers, and over each part of its body. Without a
# limit a client that trickles bytes (a "slowloris") holds a connection for ever; nginx allows 60 s.
DEFAULT_READ_TIMEOUT = 30.0
# Open connections at most; uvicorn answers requests beyond that with 503 at once. (Each holds a
# file descriptor as long as it is open, answered or not: `serve` checks the open-file limit for them.)
MAX_CONNECTIONS = 128
# How often a served model's files are looked at for a change (as `spam daemon --reload-interval`)
DEFAULT_RELOAD_INTERVAL = 5.0
# The names of this machine that a request to a server bound to a loopback address may give (`Host`)
LOCAL_NAMES = ("localhost", "127.0.0.1", "[::1]")


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


class _Server(uvicorn.Server):
    """uvicorn's server, on asyncio's own event loop (`loop="asyncio"`, where uvicorn would take
    uvloop's), saying in one line a minute that it cannot accept for want of file descriptors.

    Out of descriptors, libuv's server accepts and closes the waiting clients without a word (a
    browser sees a reset); asyncio's leaves them waiting in the kernel's listen queue and tries again
    a second later, and says so through the loop's exception handler: `AcceptFailures` in place of a
    traceback for every try.
    """

    async def serve(self, sockets=None):
        asyncio.get_running_loop().set_exception_handler(AcceptFailures(log, "chainrule serve: "))
        await super().serve(sockets=sockets)


def _image_services(digits, images) -> tuple[dict[str, ImageService], ImageService | None]:
    """The image models by name, and the one `/api/digits/predict` uses: `digits`, else the first
    MNIST model. Each entry is a model directory, (name, directory), or a loaded `ImageService`
    (named as its directory would be). A data set's name already taken by another model, or given
    to one (`--images NAME=DIR`, which wins whatever the order), gets the model's preset appended,
    then a number."""
    services: dict[str, ImageService] = {}
    by_path: dict[Path, ImageService] = {}
    given = {entry[0] for entry in images if isinstance(entry, tuple)}

    def add(entry) -> ImageService:
        name, model = entry if isinstance(entry, tuple) else (None, entry)
        loaded = isinstance(model, ImageService)  # (as the newest of its data set under --runs is)
        known = by_path.get((model.path if loaded else model_directory(model)).resolve())
        if known is not None and name is None:
            return known  # the same model twice (--digits and the newest)
        service = model if loaded else ImageService.load(model, name)
        if name is not None and name in services:
            raise UserError(f"two image models are named {name!r}")
        preset = str(service.metadata.get("preset", "model"))
        candidates = [service.name, f"{service.name}-{preset}"] + [f"{service.name}-{k}" for k in range(2, 100)]
        taken = set(services) | (given if name is None else set())
        service.name = service.info.name = next(n for n in candidates if n not in taken)
        services[service.name] = by_path[service.path.resolve()] = service
        return service

    chosen = add(digits) if digits is not None else None
    if chosen is not None and chosen.metadata["classes"] != DIGITS:
        raise UserError(f"--digits {chosen.path}: a model of {chosen.info.dataset_title}, not of digits; serve it "
                        "with --images (the digits route answers with a digit)")
    for entry in images:
        add(entry)
    if chosen is None:
        chosen = next((s for s in services.values() if s.metadata["dataset"] == "mnist"), None)
    return services, chosen


def _digits_again(service: ImageService) -> ImageService:
    """The digits route's model reloaded, if its folder still holds a model of digits."""
    new = service.reload()
    if new.metadata["classes"] != DIGITS:
        raise UserError(f"now a model of {new.info.dataset_title}, not of digits (the digits route answers with a "
                        "digit)")
    return new


def create_app(
    digits: ImageService | str | Path | None = None,
    spam: SpamService | str | Path | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    images=(),
    reload_interval: float = DEFAULT_RELOAD_INTERVAL,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """Build the app around already chosen models (any may be missing: its routes then answer 503).

    Args:
        digits: the image model `/api/digits/predict` uses (a directory or a loaded `ImageService`);
            it is listed among the image models too. Without it, the first MNIST model of `images`.
        spam: a spam model directory, or a loaded `SpamService`.
        max_body_bytes: larger request bodies are refused with 413.
        read_timeout: a body of which no part arrives for this many seconds is refused with 408.
        images: more image models, each a directory, a (name, directory) pair or an `ImageService`,
            served at `/api/images/{name}/predict` (the name defaults to the model's data set's).
        reload_interval: a model's files are looked at, at the first request that uses it once this
            many seconds have passed since the last look, and it is reloaded if they changed (0: never).
        allowed_hosts: the names a request's Host header may give (others get 400); None: any.

    The models are on `app.state`: `images` ({name: `Served`}), `digits` (the `Served` of those
    that the digits route uses) and `spam` (a `Served`), each None or empty where there is none.
    """
    services, digits = _image_services(digits, images)
    if spam is not None and not isinstance(spam, SpamService):
        spam = SpamService.load(spam)
    served = {name: Served(service, reload_interval, _digits_again if service is digits else None)
              for name, service in services.items()}

    app = FastAPIOffline(  # FastAPI whose /docs page serves Swagger UI's files itself: no CDN needed
        redoc_url=None,  # (ReDoc's script fetches its logo from cdn.redoc.ly: one docs page, /docs, is enough)
        title="chainrule",
        version=chainrule.__version__,
        description="Draw a digit, classify a picture, check a message, watch the network think. Models trained by "
        "backpropagation in NumPy. Errors are JSON `{\"error\": \"...\"}`.",
    )
    app.state.images = served
    app.state.digits = served[digits.name] if digits is not None else None
    app.state.spam = Served(spam, reload_interval) if spam is not None else None
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(max_body_bytes), read_timeout=read_timeout)
    if allowed_hosts is not None:  # (added last, so checked first: before a body is read)
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts, www_redirect=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(router)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(UserError)  # bad input a service refused: an unreadable image, say
    async def _user_error(request: Request, exc: UserError):
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(ModelFileError)  # the served model cannot answer (its outputs overflowed): not the request
    async def _model_error(request: Request, exc: ModelFileError):
        log.error("chainrule serve: %s: %s", request.url.path, one_line(exc))
        return JSONResponse({"error": str(exc)}, status_code=500)

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
        # The JSON pixel array is referenced by the image request body, which FastAPI does not
        # see as a model; add its schema to the components once.
        if app.openapi_schema is None:
            schema = base_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {})["Pixels"] = PIXELS_SCHEMA
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound before uvicorn starts, so a taken port or bad address is a one-line user error: on
    `host`'s first address, as uvicorn binds its --host."""
    # (uvicorn listens on it again, with its own backlog)
    sock = tcp_listeners(host, port, socket.SOMAXCONN, every_address=False)[0]
    sock.set_inheritable(True)
    return sock


def _allowed_hosts(host: str) -> list[str] | None:
    """The Host headers a server bound to `host` answers: where that is a loopback address, only
    this machine's names (`LOCAL_NAMES`, and `host` as a URL gives it); else any (None)."""
    try:  # (the address `_listening_socket` binds)
        address = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
    except OSError:
        return None  # (the bind fails, and says why)
    if not ipaddress.ip_address(address.split("%")[0]).is_loopback:
        return None
    return [*LOCAL_NAMES, f"[{host}]" if ":" in host else host]


def _named(entry: str) -> tuple[str | None, str]:
    """`--images NAME=DIR` -> (NAME, DIR); a plain DIR (even one with "=" in it) -> (None, DIR)."""
    name, sep, path = entry.partition("=")
    if sep and re.fullmatch(r"[A-Za-z0-9._-]+", name) and not Path(entry).exists():
        if not path:  # (as a path, the current folder)
            raise UserError(f"--images {entry}: no model folder after '=' (an unset shell variable?)")
        if name in (".", ".."):  # (in a URL's path these are steps, not names)
            raise UserError(f"--images {entry}: a model cannot be named {name!r} (browsers read "
                            f"/api/images/{name}/predict as another address)")
        return name, path
    return None, entry


def serve(digits=None, spam=None, host: str = "127.0.0.1", port: int = 8000, runs="runs",
          max_body_mb: float = 5.0, read_timeout: float = DEFAULT_READ_TIMEOUT, images=(),
          reload_interval: float = DEFAULT_RELOAD_INTERVAL) -> int:
    """Load the models (given, or the newest of each kind under `runs`), then serve until interrupted.

    `images` are image model directories, or `NAME=DIR` to choose the name in the routes; without
    them, the newest image model of each data set under `runs` is served (`digits` in place of
    MNIST's). A model's folder is watched (`reload_interval`), not `runs`: a newer model saved
    elsewhere is served after a restart.
    """
    # (a limit under one byte refused every request; 1e308 MB is no number of bytes at all)
    if not (math.isfinite(max_body_mb) and max_body_mb * 1024 * 1024 >= 1 and max_body_mb <= MAX_BODY_MB):
        raise UserError(f"--max-body-mb must be a number of megabytes from {1 / 1024**2:.2g} (one byte) to "
                        f"{MAX_BODY_MB}, got {max_body_mb:g}")
    if not (math.isfinite(read_timeout) and read_timeout > 0):
        raise UserError(f"--timeout must be a positive number of seconds, got {read_timeout}")
    if not (math.isfinite(reload_interval) and reload_interval >= 0):
        raise UserError(f"--reload-interval must be a number of seconds >= 0, got {reload_interval}")
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {port}")
    if (short := shortfall(MAX_CONNECTIONS)) is not None:
        log.warning("chainrule serve: warning: this process may open %d files (`ulimit -Hn`; systemd's LimitNOFILE=), "
                    "fewer than %d connections at once may need (%d): clients beyond what it can hold wait to be "
                    "accepted", short[0], MAX_CONNECTIONS, short[1])
    log_level = os.environ.get("CHAINRULE_LOG_LEVEL", "warning")
    if log_level.lower() not in uvicorn.config.LOG_LEVELS:
        raise UserError(f"CHAINRULE_LOG_LEVEL={log_level!r}: expected one of {', '.join(uvicorn.config.LOG_LEVELS)}")
    # The models found are loaded as they are found, so that one whose arrays are damaged is passed
    # over for an older one; a model named on the command line is loaded by create_app, and must load.
    saved = saved_models(runs)  # (one scan: a model passed over is said once)
    if spam is None:
        spam = find_latest_model("spam", saved, SpamService.load)
    chosen_images = [_named(entry) for entry in images]
    if not chosen_images:  # (--digits takes the place of the newest MNIST model)
        chosen_images = list(find_latest_image_models(saved, ImageService.load,
                                                      leave_out=("mnist",) if digits is not None else ()).values())
    if digits is None and not chosen_images and spam is None:
        raise UserError(
            f"no models to serve: none under {runs}/ and no --digits/--images/--spam given. Train them first: "
            "`chainrule digits train`, `chainrule images train --data fashion` and "
            "`chainrule spam train CORPUS... --sms FILE --out runs/spam`"
        )
    app = create_app(digits, spam, max_body_bytes=int(max_body_mb * 1024 * 1024), read_timeout=read_timeout,
                     images=chosen_images, reload_interval=reload_interval, allowed_hosts=_allowed_hosts(host))
    state = app.state
    for name, served in state.images.items():
        log.info("chainrule serve: image model %s (%s): %s", name, served.service.info.dataset_title,
                 served.service.path)
    if state.digits is not None:
        log.info("chainrule serve: /api/digits/predict uses %s", state.digits.service.path)
    for kind, served in (("images", state.images), ("spam", state.spam)):
        if not served:
            log.info("chainrule serve: no %s model under %s/ (that part of the page is off); %s",
                     kind, runs, TRAIN_HINTS[kind])
    if state.spam is not None:
        log.info("chainrule serve: spam model %s", state.spam.service.path)
    sock = _listening_socket(host, port)
    bound = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    log.info("chainrule serve: open http://%s:%d/ (API docs at /docs; Ctrl+C stops)", shown_host, bound)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("chainrule serve: warning: reachable from other machines, and there is no authentication")
    protocol = type("HeaderDeadline", (_HeaderDeadline,), {"timeout_read": read_timeout})
    config = uvicorn.Config(app, log_level=log_level.lower(), http=protocol,
                            loop="asyncio", access_log=False, timeout_graceful_shutdown=2,
                            limit_concurrency=MAX_CONNECTIONS,
                            headers=[("X-Content-Type-Options", "nosniff")])  # (on every answer: never sniffed)
    _Server(config).run(sockets=[sock])
    return 0
