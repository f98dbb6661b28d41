"""The SPAMC/SPAMD protocol (version 1.5) as spamc speaks it: reading a request, writing an answer.

The wire format of "SPAMC/SPAMD Protocol As Implemented by SpamAssassin" (spamc and spamd 4.0),
apart from any server: `read_request` turns a client's bytes into a `Request` (or a
`ProtocolError` carrying the status spamd would answer), `answer` turns a `Verdict` into the bytes
spamc parses, and `PONG`, `tell_answer` and `spooled_answer_head` are the other answers' bytes.
The server around it is `chainrule.apps.spam.daemon`.

A conversation, one per connection (the client half-closes after sending):

    spamc --> CHECK SPAMC/1.5\\r\\n            PROCESS, HEADERS, SYMBOLS, REPORT, REPORT_IFSPAM,
    spamc --> Content-length: 4312\\r\\n         TELL, PING, SKIP
    spamc --> User: alice\\r\\n                   (optional; Compress: zlib, Message-class, Set, Remove)
    spamc --> \\r\\n
    spamc --> <the message>
    spamd --> SPAMD/1.1 0 EX_OK\\r\\n
    spamd --> Spam: True ; 9.4 / 5.0\\r\\n
    spamd --> \\r\\n                              (then, for most commands, the body of the answer)

**Probability -> score.** spamc and the rules people write around it expect a SpamAssassin score
and a threshold ("required"), spam at score >= threshold, with 5.0 the customary threshold. The
network gives P(spam) and the model two calibrated cut-offs (`chainrule.apps.spam.calibrate`):
spam at p >= spam cut-off, ham below the ham cut-off, unsure between. `spamd_score` maps p to a
score, piecewise linear in the log-odds z = log(p / (1 - p)), with z_s and z_h the cut-offs' log-odds:

    spam    (z >= z_s):          score = 5.0 + 0.5 (z - z_s)         5.0 and up
    unsure  (z_h <= z < z_s):    score = 2.5 + 2.5 (z - z_h) / (z_s - z_h)    2.5 up to 5.0
    ham     (z < z_h):           score = 2.5 + 0.5 (z - z_h)         below 2.5, negative when sure

It is monotone in p, score >= 5.0 exactly when the verdict is spam, and an unsure message keeps a
visible place of its own, [2.5, 5.0), besides the `X-Chainrule-Spam-Verdict: unsure` header and the
CHAINRULE_UNSURE symbol. Half a point per unit of log-odds makes a confident verdict (p = 0.9999,
z = 9.2) about 4-5 points from the cut-off, the range SpamAssassin's own scores live in.
"""

from __future__ import annotations

import asyncio
import math
import re
import tempfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from chainrule import __version__
from chainrule.apps.spam.annotate import ANNOTATION_HEADERS, annotation_lines, replace_header_fields
from chainrule.apps.spam.model import verdict
from chainrule.data.corpora import MAX_BYTES

THRESHOLD = 5.0  # SpamAssassin's customary "required" score: spam at score >= 5.0
UNSURE_FLOOR = 2.5  # where the unsure band starts on the score scale
POINTS_PER_LOGIT = 0.5  # score points per unit of log-odds beyond either cut-off

# sysexits.h codes, as spamd answers them
EX_DATAERR, EX_UNAVAILABLE, EX_SOFTWARE, EX_IOERR, EX_PROTOCOL, EX_CONFIG, EX_TIMEOUT = 65, 69, 70, 74, 76, 78, 79

COMMANDS = ("CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "PROCESS", "HEADERS", "TELL", "PING", "SKIP")
MAX_HEADERS = 256  # spamd reads at most this many request header lines
HARD_LIMIT = 256 << 20  # spamc never sends more than 256 MB (SPAMC_MAX_MESSAGE_LEN); nor do we accept more
CHUNK = 1 << 16
# Headers that mark a message up, by the start of their names: old ones are removed before the new
# ones go in, so a message scanned twice, or one that arrives with forged markup, carries exactly one
# verdict. Every X-Spam-* field goes, as spamd removes them: a forged X-Spam-Score or X-Spam-Report
# (which other filters write) cannot ride along with ours either.
MARKUP_HEADERS = ("x-spam-", *ANNOTATION_HEADERS)


# ---------------------------------------------------------------------------------------------
# Verdicts and scores.


def _logit(p: float) -> float:
    p = min(max(p, 1e-15), 1 - 1e-15)  # (the network's float32 P(spam) can be exactly 0 or 1)
    return math.log(p / (1 - p))


def spamd_score(p: float, spam_cutoff: float, ham_cutoff: float) -> float:
    """The SpamAssassin-style score of P(spam) `p`: >= THRESHOLD exactly when `p` is spam (see the
    module docstring for the three pieces). The branch follows `verdict`, so score and label agree
    even where the cut-offs sit so close to 0 or 1 that their log-odds are rounded together."""
    label = verdict(p, spam_cutoff, ham_cutoff)
    z, zs, zh = _logit(p), _logit(spam_cutoff), _logit(ham_cutoff)
    if label == "spam":
        return THRESHOLD + POINTS_PER_LOGIT * max(z - zs, 0.0)
    if label == "unsure":
        share = (z - zh) / (zs - zh) if zs > zh else 0.0
        return UNSURE_FLOOR + (THRESHOLD - UNSURE_FLOOR) * min(max(share, 0.0), 1.0)
    return UNSURE_FLOOR + POINTS_PER_LOGIT * min(z - zh, 0.0)


def format_score(score: float, label: str) -> str:
    """`score` with one decimal, as spamc prints it, never rounded into the band of another verdict
    (`label`): 4.96 of an unsure message is "4.9", not "5.0"; 2.496 of a ham one "2.4", not "2.5"."""
    text = f"{score:.1f}"
    ceiling = {"ham": UNSURE_FLOOR, "unsure": THRESHOLD}.get(label)
    if ceiling is not None and float(text) >= ceiling:
        text = f"{ceiling - 0.1:.1f}"
    return "0.0" if text == "-0.0" else text


@dataclass(frozen=True)
class Verdict:
    """What a filter says about one message: P(spam), its cut-offs, and (when asked for) the
    tokens that pushed it either way. Label and score follow from these."""

    probability: float
    spam_cutoff: float
    ham_cutoff: float
    towards_spam: tuple[tuple[str, float], ...] = ()
    towards_ham: tuple[tuple[str, float], ...] = ()
    problem: str | None = None  # why the message was read as plain text, if it was

    @property
    def label(self) -> str:
        return verdict(self.probability, self.spam_cutoff, self.ham_cutoff)

    @property
    def is_spam(self) -> bool:
        return self.label == "spam"

    @property
    def score(self) -> float:
        return spamd_score(self.probability, self.spam_cutoff, self.ham_cutoff)

    @property
    def symbol(self) -> str:
        return "CHAINRULE_" + self.label.upper()

# ---------------------------------------------------------------------------------------------
# The message as spamd hands it back: markup headers, reports.


def markup_lines(v: Verdict) -> list[str]:
    """The header lines PROCESS and HEADERS add: SpamAssassin's, so that existing procmail and
    Sieve rules keep working, and chainrule's own, which tell unsure apart."""
    score = format_score(v.score, v.label)
    lines = []
    if v.is_spam:
        lines.append("X-Spam-Flag: YES")
    stars = int(max(v.score, 0.0))
    if stars:
        lines.append("X-Spam-Level: " + "*" * min(stars, 50))
    lines += [f"X-Spam-Status: {'Yes' if v.is_spam else 'No'}, score={score} required={THRESHOLD:.1f} "
              f"tests={v.symbol}",
              f"X-Spam-Checker-Version: chainrule {__version__}"]
    return lines + annotation_lines(v.is_spam, v.probability, v.label)


def mark_up(raw: bytes, v: Verdict) -> bytes:
    """`raw` with earlier markup headers removed and ours added after its last well-formed field
    (`replace_header_fields`). Every other header line and every byte of the body stay as they were."""
    return replace_header_fields(raw, MARKUP_HEADERS, markup_lines(v))


def report_text(v: Verdict) -> str:
    """The REPORT answer: SpamAssassin's layout (points, rule, description), then the tokens that
    decided, by gradient x input."""
    score = format_score(v.score, v.label)
    said = {"spam": "identified this message as spam",
            "ham": "found this message to be ham (not spam)",
            "unsure": "is unsure about this message: it lies between the ham and the spam cut-off"}[v.label]
    lines = [f"The chainrule spam filter {said}.", "",
             f"Content analysis details:   ({score} points, {THRESHOLD:.1f} required)", "",
             " pts rule name              description",
             "---- ---------------------- --------------------------------------------------",
             f"{score:>4} {v.symbol:<22} P(spam) {v.probability:.4f} (spam at >= {v.spam_cutoff:.4f},"
             f" ham below {v.ham_cutoff:.4f})"]
    if v.problem:
        lines.append(f"{'':>4} {'':<22} read as plain text: {v.problem}")
    for title, tokens in (("towards spam", v.towards_spam), ("towards ham", v.towards_ham)):
        if tokens:
            lines += ["", f"Tokens that pushed it {title} (gradient x input):"]
            lines += [f"  {w:+.4f}  {t}" for t, w in tokens]
    return "\n".join(lines) + "\n"


def skipped_report(req: Request) -> str:
    return (f"The chainrule spam filter did not check this message: it has {req.size_text} bytes, more than "
            f"the daemon's limit of {req.limit} (--max-size).\n")


# ---------------------------------------------------------------------------------------------
# Reading a request.


class ProtocolError(Exception):
    """A request the daemon cannot serve: answered with `code` and `text` on the status line."""

    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code = code
        self.text = text

    def status_line(self) -> bytes:
        return f"SPAMD/1.0 {self.code} {self.text}\r\n".encode("utf-8", "replace")


def _bad(text: str) -> ProtocolError:
    return ProtocolError(EX_PROTOCOL, f"Bad header line: ({text})")


@dataclass
class Request:
    command: str
    version: float
    content_length: int | None = None
    user: str | None = None
    compress: bool = False
    message_class: str | None = None  # "spam" | "ham"
    set_local: bool = False
    remove_local: bool = False
    body: bytes = b""  # the message; of a too-big one, its first `limit` bytes (not for PROCESS or HEADERS)
    size: int = 0  # the message's size (decompressed)
    limit: int = MAX_BYTES  # the size limit it was read with
    too_big: bool = False  # over the limit: passed back unchecked
    # What PROCESS or HEADERS of a too-big message hands back unchanged: the message, or its header
    # block up to where spamc appends the rest (`spamc_body_start`); `spooled` bytes.
    spool: BinaryIO | None = None
    spooled: int = 0
    # A compressed message over the limit is inflated no further than its reading had got to (all
    # of it would be up to 256 MB of work on the event loop): its `size` is then a lower bound.
    size_at_least: bool = False

    @property
    def size_text(self) -> str:
        """The message's size as a log line or an answer says it: "70000", "at least 70000"."""
        return f"at least {self.size}" if self.size_at_least else str(self.size)


_REQUEST_LINE = re.compile(rb"([A-Z_]+) SPAMC/(\d{1,3}(?:\.\d{1,3})?)\r?\n")
_USERNAME = re.compile(r"[^\x00-\x1f\x7f-\x9f]*")  # spamd's rule: no control characters (C0, DEL, C1)


async def read_request(reader: asyncio.StreamReader, limit: int) -> Request:
    """Read a whole request: its command line, its headers and its message (`limit` bytes at most
    are kept; beyond that the message is only counted, or spooled to disk for PROCESS and HEADERS,
    which must hand it, or its header block, back unchanged). Raises ProtocolError for anything
    malformed."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        raise _bad("closed before headers" if not exc.partial else "request line not terminated") from None
    except asyncio.LimitOverrunError:
        raise _bad("request line too long") from None
    m = _REQUEST_LINE.fullmatch(line)
    if m is None or m.group(1).decode() not in COMMANDS:
        raise _bad(f"unknown request line: {line[:80].decode('latin-1').rstrip()!r}")
    req = Request(m.group(1).decode(), float(m.group(2)), limit=limit)
    if req.command in ("PING", "SKIP"):
        if req.version >= 1.5:  # since 1.5 these end with an (empty) header block too
            await _read_headers(reader, req)
        return req
    if req.version < 1.2:
        raise _bad(f"protocol version {m.group(2).decode()} is not supported; 1.2 or later is")
    await _read_headers(reader, req)
    if req.command == "TELL":
        if req.set_local and req.remove_local:
            raise _bad("Unable to set local and remove local in the same operation.")
        if req.set_local and req.message_class is None:
            raise _bad("Set: local needs Message-class: spam or ham")
    if req.compress and req.content_length is None:
        raise ProtocolError(EX_UNAVAILABLE, "Service Unavailable: Compress requires Content-length header")
    await _read_body(reader, req)
    return req


def _utf8_where_valid(text: str) -> str:
    """A header value read as Latin-1, read again as UTF-8 where its bytes are that: spamc sends
    `-u`'s bytes as given, UTF-8 on any modern system ("jörg", not "jÃ¶rg"); other bytes (a
    Latin-1 system's) stay as they were read, one character a byte."""
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return text


async def _read_headers(reader: asyncio.StreamReader, req: Request) -> None:
    for _ in range(MAX_HEADERS):
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise _bad("EOF during headers") from None
        except asyncio.LimitOverrunError:
            raise _bad("header line too long") from None
        text = line.rstrip(b"\r\n").decode("latin-1")
        if not text:
            return
        name, sep, value = text.partition(":")
        if not sep:
            raise _bad("header not in 'Name: value' format")
        name, value = name.strip().lower(), value.strip()
        if name == "content-length":
            if not (value.isascii() and value.isdigit()) or len(value) > 12:  # (not "²": int() refuses it)
                raise _bad("Content-Length contains non-numeric bytes")
            req.content_length = int(value)
        elif name == "user":
            value = _utf8_where_valid(value)
            if not _USERNAME.fullmatch(value):
                raise _bad("User header contains control chars")
            req.user = value
        elif name == "compress":
            if value.lower() != "zlib":
                raise _bad(f"compression type not supported: {value}")
            req.compress = True
        elif name == "message-class":
            if value.lower() not in ("spam", "ham"):
                raise _bad("Message-class header contains invalid class")
            req.message_class = value.lower()
        elif name in ("set", "remove"):  # a list of databases, as spamd reads it: "local", "remote" or both
            local = "local" in (part.strip().lower() for part in value.split(","))
            if name == "set":
                req.set_local = local
            else:
                req.remove_local = local
        # other headers are ignored, as the protocol asks
    raise _bad("too many headers")


async def _read_body(reader: asyncio.StreamReader, req: Request) -> None:
    length, limit = req.content_length, req.limit
    if length is not None and length > HARD_LIMIT:
        raise _bad(f"Content-length {length} is over the {HARD_LIMIT} bytes spamc can send")
    if not req.compress and length is not None and length <= limit:  # the usual case
        try:
            req.body = await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise _incomplete(len(exc.partial), length) from None
        req.size = length
        return
    # A compressed message, one without a length, or one over the limit: read in chunks into a spool
    # (limit + 1 bytes in memory, the rest in a temporary file) that keeps its first `keep` bytes:
    # limit + 1, enough to tell a message over the limit, which is not checked; for PROCESS, which
    # hands such a message back unchanged, all of it; for HEADERS, which hands back its header block
    # (spamc appends the rest, from its first blank line: `spamc_body_start`), all of it until that
    # blank line is seen, however far beyond the limit. At most HARD_LIMIT bytes, as on the wire.
    spool = tempfile.SpooledTemporaryFile(max_size=limit + 1)
    keep = HARD_LIMIT if req.command in ("PROCESS", "HEADERS") else limit + 1
    head = None  # HEADERS: where spamc's body start is, once seen
    seen = b""  # (the last 3 bytes before the piece it is looked for in: its separator may span them)
    inflate = zlib.decompressobj() if req.compress else None
    received = size = 0
    try:
        while length is None or received < length:
            chunk = await reader.read(CHUNK if length is None else min(CHUNK, length - received))
            if not chunk:
                if length is None:
                    break
                raise _incomplete(received, length)
            received += len(chunk)
            if received > HARD_LIMIT:
                raise _bad(f"message over {HARD_LIMIT} bytes")
            if size >= keep:
                continue  # only the count matters now (of a compressed body, what was inflated so far)
            for piece in _inflated(inflate, chunk) if inflate else (chunk,):
                if req.command == "HEADERS" and head is None:
                    if (start := spamc_body_start(seen + piece)) is not None:
                        head = size - len(seen) + start
                        keep = max(head, limit + 1)
                    seen = (seen + piece)[-3:]
                spool.write(piece[:keep - size])
                size += len(piece)
                if size > HARD_LIMIT:
                    raise _bad(f"message over {HARD_LIMIT} bytes")
                if size >= keep:
                    break  # (inflating the rest of the chunk would be work on the event loop for nothing)
        if inflate is not None and not inflate.eof and size < keep:
            raise _bad("zlib: the compressed message is incomplete")
        req.size, req.too_big = (size if inflate else received), size > limit
        req.size_at_least = inflate is not None and not inflate.eof
        if req.too_big and req.command in ("PROCESS", "HEADERS"):
            req.spool, req.spooled = spool, size if head is None else head
            spool.truncate(req.spooled)
            spool.seek(0)
        else:
            spool.seek(0)
            req.body = spool.read(limit)
            spool.close()
    except BaseException:
        spool.close()
        raise


def _inflated(inflate, chunk: bytes):
    """The decompressed pieces of `chunk`, at most 1 MB each, so that a small bomb cannot expand
    into memory all at once."""
    try:
        piece = inflate.decompress(chunk, 1 << 20)
        while piece:
            yield piece
            piece = inflate.decompress(inflate.unconsumed_tail, 1 << 20) if inflate.unconsumed_tail else b""
    except zlib.error as exc:
        raise _bad(f"zlib: {exc}") from None


def _incomplete(got: int, expected: int) -> ProtocolError:
    return _bad(f"Content-Length mismatch: Expected {expected} bytes, got {got} bytes")


# ---------------------------------------------------------------------------------------------
# Answers.

OK = b"SPAMD/1.1 0 EX_OK\r\n"  # the status line of every answer but PING's and a refusal's
PONG = b"SPAMD/1.5 0 PONG\r\n"  # PING's whole answer


def spam_line(v: Verdict | None) -> bytes:
    """`Spam: True ; 9.4 / 5.0`: what spamc parses for -c, -E, -R and -r (a skipped message: not spam)."""
    if v is None:
        return f"Spam: False ; 0.0 / {THRESHOLD:.1f}\r\n".encode()
    return f"Spam: {v.is_spam} ; {format_score(v.score, v.label)} / {THRESHOLD:.1f}\r\n".encode()


def answer(req: Request, v: Verdict | None) -> bytes:
    """The response to a check (v is None: the message was over the size limit and not checked);
    PROCESS and HEADERS of a too-big message are `spooled_answer_head`, then its spool."""
    if req.command == "CHECK":
        return OK + spam_line(v) + b"\r\n"
    if req.command in ("PROCESS", "HEADERS"):
        out = mark_up(req.body, v)  # (which changes nothing after the header block)
        body = spamc_body_start(req.body) if req.command == "HEADERS" else None  # (spamc appends the rest)
        out = out[:len(out) - len(req.body) + body] if body is not None else out
        return OK + length_and_spam(req, len(out), v) + out
    if req.command == "SYMBOLS":
        text = v.symbol if v is not None else "CHAINRULE_SKIPPED_TOO_BIG"
        body = (text + ("\r\n" if req.version < 1.3 else "")).encode()
    elif req.command == "REPORT" or (req.command == "REPORT_IFSPAM" and v is not None and v.is_spam):
        body = (report_text(v) if v is not None else skipped_report(req)).encode()
    else:  # REPORT_IFSPAM of a message that is not spam: nothing
        body = b""
    return OK + length_and_spam(req, len(body), v) + body


def spooled_answer_head(req: Request) -> bytes:
    """The answer to PROCESS or HEADERS of a message over the size limit, up to its body: the
    message itself or its header block, `req.spooled` bytes, which the server copies from
    `req.spool` unchanged (spamc passes the message on unchecked)."""
    return OK + length_and_spam(req, req.spooled, None)


def tell_answer(req: Request, changed: bool) -> bytes:
    """The answer to TELL: DidSet (to Set: local) or DidRemove (to Remove: local) where the lesson
    `changed` the filter; without either, spamc says the message was "already un/learned"."""
    if not changed:
        return OK + b"\r\n"
    return OK + (b"DidSet: local\r\n" if req.set_local else b"DidRemove: local\r\n") + b"\r\n"


def spamc_body_start(raw: bytes) -> int | None:
    """Where the body that spamc appends to a HEADERS answer starts in `raw`: after its first
    "\\r\\n\\r\\n" or "\\n\\n", whichever comes first (libspamc's `_append_original_body`), or None
    where it has neither, and spamc appends nothing: the answer must then hold the whole message."""
    cuts = [(at, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (at := raw.find(sep)) >= 0]
    if not cuts:
        return None
    at, length = min(cuts)
    return at + length


def length_and_spam(req: Request, length: int, v: Verdict | None) -> bytes:
    """The answer's header block for a body of `length` bytes: Content-length and the Spam line;
    to protocol 1.2, one of them: Content-length for PROCESS and HEADERS, else the Spam line."""
    content_length = f"Content-length: {length}\r\n".encode()
    if req.version >= 1.3:
        return content_length + spam_line(v) + b"\r\n"
    if req.command in ("PROCESS", "HEADERS"):
        return content_length + b"\r\n"
    return spam_line(v) + b"\r\n"
