"""HTTP plumbing of the web app: refused requests, the body-size limit, and reading bodies.

Every refusal is `ApiError(status, one line)`, answered as JSON `{"error": "..."}`. Bodies are
capped before the app buffers them (`BodyLimitMiddleware`), and the readers below turn whatever
a client sent (raw bytes, a multipart form, JSON) into what a service takes, or a 4xx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from fastapi import Request
from starlette.formparsers import MultiPartParser

from chainrule.apps.spam import looks_like_email
from chainrule.data.corpora import marked_encoding
from chainrule.data.idx import IMAGE_SIZE
from chainrule.data.mime import charset_of, text_codec
from chainrule.errors import one_line


class ApiError(Exception):
    """A request we refuse, with its HTTP status and a one-line reason for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, before the app buffers them, and bodies
    that stall for `read_timeout` seconds with 408 (ApiErrors raised where the app reads the body,
    which its ApiError handler answers).

    A declared Content-Length is checked up front; a chunked body is counted as it arrives and cut
    off at the limit, so neither way can a client make the server hold more than `max_bytes`. A
    client that stops sending half way (or trickles a byte at a time, slower than the timeout)
    would otherwise hold its connection and a worker for ever.
    """

    def __init__(self, app, max_bytes: int, read_timeout: float):
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await send_json(send, 400, {"error": "Content-Length is not a number"})
                return
            if size > self.max_bytes:
                await send_json(send, 413, {"error": self._message()})
                return
        received = 0
        started = False
        body_complete = False

        async def limited_receive():
            nonlocal received, body_complete
            # Once the body is complete, or the response has begun, the app reads only to hear of a
            # disconnect (a file response listens while it streams) and holds nothing it reads: no
            # deadline or limit applies, and a refusal could not be sent any more.
            if body_complete or started:
                return await receive()
            # (raised inside the app, whose ApiError handler answers them)
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except asyncio.TimeoutError:
                raise ApiError(408, f"no part of the body arrived for {self.read_timeout:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise ApiError(413, self._message())
                body_complete = not message.get("more_body", False)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)

    def _message(self) -> str:
        return f"request body is larger than the limit of {self.max_bytes:,} bytes"


async def send_json(send, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


def media_of(content_type: str) -> str:
    """The media type a Content-Type names, lower case, without its parameters."""
    return content_type.split(";")[0].strip().lower()


def media_type(request: Request) -> str:
    return media_of(request.headers.get("content-type", ""))


# python-multipart logs each malformed form it meets as a warning of its own, a line that any client
# could write into the server's log; the client is told in the answer (422) instead.
logging.getLogger("python_multipart").setLevel(logging.ERROR)


class _MultipartForm(MultiPartParser):
    """Starlette's parser of a multipart form (what `request.form()` uses), which also tells whether
    the form ended: a body cut off part-way through a part loses that part without an error."""

    ended = False

    def on_end(self) -> None:  # (python-multipart calls it at the closing boundary)
        self.ended = True


async def upload_or_body(request: Request) -> tuple[bytes, str]:
    """The request's payload and its Content-Type: the multipart field `file` and the type its
    part declares if the body is a form, else the body and the request's."""
    if media_type(request) != "multipart/form-data":
        return await request.body(), request.headers.get("content-type", "")
    parser = _MultipartForm(request.headers, request.stream())
    try:
        form = await parser.parse()
    except ApiError:  # (the body over the limit or stalled)
        raise
    except Exception as exc:  # python-multipart's parse errors have no common base class
        # (Starlette's error says "Invalid multipart data."; python-multipart's, which it raises from, says where)
        raise ApiError(422, f"cannot parse the multipart form: {one_line(exc.__cause__ or exc)}") from exc
    try:
        if not parser.ended:
            raise ApiError(422, "the multipart form is cut off: its closing boundary never came (a body sent in "
                           "part, or malformed)")
        uploads = form.getlist("file")
        if len(uploads) > 1:  # (one answer for each would need another API; one for the last misleads)
            raise ApiError(422, f"one file per request: the form has {len(uploads)} fields named 'file'")
        if uploads and isinstance(uploads[0], str):
            raise ApiError(422, "the multipart form's field 'file' is text, not an uploaded file (curl: "
                           "-F file=@PATH, not file=<PATH)")
        if not uploads:
            raise ApiError(422, "the multipart form needs a file field named 'file'")
        return await uploads[0].read(), uploads[0].content_type or ""
    finally:
        await form.close()  # (deletes its spooled files)


def json_body(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(422, f"the body is not valid JSON: {exc}") from exc
    except ValueError as exc:  # an integer of more digits than Python converts (4,300)
        raise ApiError(422, f"the body holds a number too long to read: {str(exc)[:80]}") from exc
    except RecursionError as exc:  # [[[[...]]]] nested deeper than the parser's recursion allows
        raise ApiError(422, "the body is JSON nested too deeply") from exc


FORM = "application/x-www-form-urlencoded"
# What curl -d and --data-binary say of any body they are not told the type of (-H), and no type at
# all: a type that says nothing of the body, whose own shape tells a form or JSON from a raw message.
UNTYPED = (FORM, "")
# How a urlencoded form begins: a field's name, then "=" (a header's name is followed by a colon; a
# text may begin so too, and is a form only where it has a field `message`: `message_from_form`).
_FORM_START = re.compile(rb"[\w.~%+-]+=")
MAIL = "message/rfc822"  # an email, headers and all, whatever its first lines look like


def message_from_json(doc: Any) -> bytes:
    """The `message` of a JSON body {"message": "..."}, as UTF-8."""
    if not isinstance(doc, dict) or not isinstance(doc.get("message"), str):
        raise ApiError(422, 'JSON body must be {"message": "<the raw message>"}')
    # a lone surrogate ("\ud800") is valid JSON but not encodable text: it becomes "?"
    return doc["message"].encode("utf-8", errors="replace")


def untyped_json(media: str, data: bytes) -> Any:
    """`data` read as JSON where its type `media` says nothing of it (`UNTYPED`: curl -d
    '{"message": ...}' or -d '[[0, 0.5, ...]]') and it is a JSON object or array; else None: how
    such a body sent as JSON is told from a raw message or an image (a text may begin with a brace
    or a bracket, and is then not JSON; an image never does)."""
    if media not in UNTYPED or not data.lstrip().startswith((b"{", b"[")):
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # (not JSON: a text that begins with a brace)
        return None


def message_from_form(data: bytes) -> bytes | None:
    """The field `message` of a urlencoded form (what curl -d and --data-urlencode, and an HTML
    form, send), decoded to its bytes; None where `data` is no form with such a field: a raw
    message sent with the form's type, as curl --data-binary sends any body it is not told the
    type of ("2+2=4? Claim your prize" begins as a form does, and is a text)."""
    if not _FORM_START.match(data):
        return None
    # read as Latin-1, each byte one character, both ways: a field's bytes come back as they were
    # sent, in whatever charset (parse_qsl reads bytes as ASCII, and curl -d sends raw UTF-8 as it is)
    fields = parse_qsl(data.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    messages = [value.encode("latin-1") for name, value in fields if name == "message"]
    if len(messages) > 1:
        raise ApiError(422, f"the form has {len(messages)} fields named 'message': send one message at a time")
    return messages[0] if messages else None


def pixels_from_json(doc: Any) -> np.ndarray:
    """A 28x28 array of numbers in [0, 1], as a bare array or as {"pixels": array}."""
    if isinstance(doc, dict):
        if "pixels" not in doc:
            raise ApiError(422, 'JSON body must be a 28x28 array of numbers or {"pixels": <28x28 array>}')
        doc = doc["pixels"]
    # JSON numbers only: NumPy would also take "0.5" and true as pixels
    if not (isinstance(doc, list) and all(isinstance(row, list) for row in doc)
            and all(type(v) in (int, float) for row in doc for v in row)):
        raise ApiError(422, "pixels must be a 28x28 array of numbers")
    try:
        arr = np.asarray(doc, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:  # (OverflowError: an integer like 10**400; ragged rows)
        raise ApiError(422, "pixels must be a 28x28 array of numbers") from exc
    if arr.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ApiError(422, f"pixels must be a 28x28 array of numbers, got shape {list(arr.shape)}")
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ApiError(422, "pixels must be numbers in [0, 1] (0 = background, 1 = ink)")
    arr = arr.astype(np.float32)  # (first: a value like 1e-300 is ink in float64 and nothing in float32)
    if not arr.any():
        raise ApiError(422, "no ink found (a blank image)")  # as for an uploaded picture
    return arr


def declared_text(content_type: str, data: bytes) -> bytes:
    """A text in UTF-8 where its `content_type` declares another charset, or where none is declared
    its byte order mark says UTF-16 or UTF-32 (as `spam classify --sms` reads a file): UTF-16 has a
    NUL byte in every ASCII character, and an SMS in KOI8-R would be read as Windows-1252. An email
    keeps its bytes (its own headers say the charset of each part), and so does a text its charset
    does not read: as with no charset declared, the spam filter's own fallbacks read it. A body
    declared message/rfc822 is an email: a charset in its Content-Type is none of its own (RFC
    2046 gives the type no charset), and only a byte order mark says that it is stored in another."""
    mail = media_of(content_type) == MAIL
    # (None for a malformed one too: as if none were declared)
    charset = (None if mail else charset_of(content_type)) or marked_encoding(data)
    if not charset or looks_like_email(data):
        return data
    # (read as mail programs read the label; a Python codec that is no text encoding, or one no mail
    # program knows, is unknown: punycode reads in time growing with the square of the length, and
    # a 2 MB body held the server for minutes)
    codec = text_codec(charset)
    if codec is None:
        raise ApiError(422, f"unknown charset in the Content-Type: {charset[:60]!r}")
    if not codec.startswith("utf-") and not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:  # 8-bit text that is valid UTF-8 is UTF-8 whatever its label, as `mime.decode_text` reads
            return data  # it: GB18030 (read for a gb2312 label) turns UTF-8 into garbage without an error
    try:
        text = data.decode(codec)
    except UnicodeError:
        return data
    return text.encode("utf-8", errors="replace")  # (UTF-7 decodes to lone surrogates, which UTF-8 cannot hold)


def check_text(data: bytes) -> bytes:
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
