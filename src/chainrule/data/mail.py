"""Reading email and SMS for the spam filter: RFC 822 / MIME messages from files, directories, mbox
files, Maildirs, tar archives and standard input, and `label<TAB>text` SMS collections.

Two promises shape this module:

* **A message never stops a run.** Each message read is a `RawMessage`; a file that cannot be read
  becomes a `RawMessage` with `error` set (a one-line reason), and `parse_message` never raises:
  whatever the MIME structure, charset or base64 does, it returns a `ParsedMessage` (with
  `problem` set when it had to fall back to treating the bytes as plain text).
* **Bytes are capped.** At most `max_bytes` of each message are read (default 1 MiB); a 25 MB
  message costs 1 MiB of memory and is marked `truncated`.

Parsing uses Python's `email` package. The default (fast) path parses with the `compat32` policy
and decodes RFC 2047 headers, charsets and transfer encodings itself: `policy.default`'s header
objects made parsing 10x slower (5.0 against 0.5 ms per SpamAssassin message), and classification
speed matters (a filter sits in the mail path). The one place where `policy.default` read headers
better, raw 8-bit header bytes, the fast path handles itself, and better (`_decode_header_block`).
On the fast path the feed parser sees only the header block, and a well-formed block not even that
(`_simple_header_block` makes the same `Message` with one regex); a single-part body is decoded
straight from its bytes, and only multipart messages get the full MIME parse.
`parse_message(raw, strict=True)` parses with `policy.default` first and falls back to `compat32`
if that raises or reports defects. The two differ in header formatting on ~8% of SpamAssassin
messages (`policy.default` unfolds lines and drops address comments such as "(Robert Harley)"),
so a model should be used with the parsing it was trained with: the default.
"""

from __future__ import annotations

import binascii
import codecs
import email
import email.errors
import email.header
import email.message
import email.parser
import email.policy
import functools
import os
import re
import sys
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from selectolax.lexbor import LexborHTMLParser, SelectolaxError

MAX_BYTES = 1 << 20
"""Default cap on the bytes read per message: enough for any text, not for a 25 MB attachment."""

SPAM, HAM = 1, 0


@dataclass
class RawMessage:
    """One message as read: where it came from, its (capped) bytes, and its label if known.

    `label` is 1 (spam), 0 (ham) or None; `error` is a one-line reason the message could not be
    read at all (then `data` is empty).
    """

    source: str
    data: bytes
    label: int | None = None
    truncated: bool = False
    error: str | None = None


@dataclass
class ParsedMessage:
    """What the tokeniser needs from a message, all as plain text."""

    subject: str = ""
    from_: str = ""
    to: str = ""
    reply_to: str = ""
    received: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # a few more, lower-cased names
    text: str = ""  # text/plain parts, decoded
    html_text: str = ""  # text/html parts reduced to their visible text
    urls: list[str] = field(default_factory=list)
    attachments: Counter = field(default_factory=Counter)  # content type -> count
    parts: int = 0
    defects: int = 0  # MIME defects the email package noticed (and worked around)
    problem: str | None = None  # set when the message had to be read as plain bytes


# ---------------------------------------------------------------------------------------------
# Labels from paths, and the readers.

_SKIP_NAMES = {"cmds"}  # the SpamAssassin tarballs' list of shell commands, not a message


def label_from_path(path: str) -> int | None:
    """1 if a folder or file name in `path` contains "spam", 0 if "ham", else None.

    The SpamAssassin corpus layout: `spam/`, `easy_ham/`, `hard_ham/`. The innermost name that
    says either wins, so `spam-archive/ham/1` is ham.
    """
    for part in reversed(re.split(r"[/\\]", path.lower())):
        if "spam" in part:
            return SPAM
        if "ham" in part:
            return HAM
    return None


def _read_capped(f, max_bytes: int) -> tuple[bytes, bool]:
    data = f.read(max_bytes + 1)
    return data[:max_bytes], len(data) > max_bytes


def _looks_like_mbox(head: bytes) -> bool:
    # An mbox starts with a "From " separator line; a single message starts with a header line.
    return head.startswith(b"From ") and b"\n" in head


def _is_archive(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz"))


def _is_maildir(path: Path) -> bool:
    return path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir()


def read_messages(sources: Iterable[str | os.PathLike], max_bytes: int = MAX_BYTES,
                  label: int | None = None) -> Iterator[RawMessage]:
    """Every message in `sources`, in order: files, directories (recursively, sorted), mbox files,
    Maildirs, tar archives (any compression tarfile knows), and "-" for standard input.

    Args:
        label: force this label on every message; by default it comes from the path
            (`label_from_path`), and for an archive from the member's path, then the archive's name.

    Problems (a missing file, an unreadable archive, an unreadable member) come back as
    `RawMessage`s with `error` set, so a caller can report them on one line and go on.
    """
    for src in sources:
        src = str(src)
        if src == "-":
            data, truncated = _read_capped(sys.stdin.buffer, max_bytes)
            yield RawMessage("-", data, label, truncated)
            continue
        path = Path(src)
        if not path.exists():
            yield RawMessage(src, b"", label, error="no such file or directory")
        elif _is_maildir(path):
            yield from _read_maildir(path, max_bytes, label)
        elif path.is_dir():
            yield from _read_directory(path, max_bytes, label)
        elif _is_archive(path):
            yield from _read_tar(path, max_bytes, label)
        else:
            yield from _read_file(path, max_bytes, label)


def _read_directory(root: Path, max_bytes: int, label: int | None) -> Iterator[RawMessage]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if _is_maildir(here) and here != root:
            dirnames[:] = []
            yield from _read_maildir(here, max_bytes, label)
            continue
        for name in sorted(filenames):
            if name.startswith(".") or name in _SKIP_NAMES:
                continue
            p = here / name
            if _is_archive(p):
                yield from _read_tar(p, max_bytes, label)
            else:
                yield from _read_file(p, max_bytes, label)


def _read_file(path: Path, max_bytes: int, label: int | None) -> Iterator[RawMessage]:
    lab = label if label is not None else label_from_path(str(path))
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            if _looks_like_mbox(head):
                f.close()
                yield from _read_mbox(path, max_bytes, lab)
                return
            rest, truncated = _read_capped(f, max(max_bytes - len(head), 0))
            data = (head + rest)[:max_bytes]
            truncated = truncated or len(head) + len(rest) > max_bytes
    except OSError as exc:
        yield RawMessage(str(path), b"", lab, error=exc.strerror or str(exc))
        return
    yield RawMessage(str(path), data, lab, truncated)


def _read_mbox(path: Path, max_bytes: int, label: int | None) -> Iterator[RawMessage]:
    """Messages of an mbox file, split at "From " lines that follow a blank line (or start the file).

    Read as a stream, so a huge mbox is never held in memory; each message is capped separately.
    Sources are "path:N" (from 1); a file holding a single message (such as each file of the
    SpamAssassin corpus, which starts with a "From " line) is just "path".
    """
    pending = None
    for index, item in enumerate(_mbox_messages(path, max_bytes, label), 1):
        if pending is not None:
            yield pending
        item.source = f"{path}:{index}"
        pending = item
    if pending is not None:
        if pending.source == f"{path}:1":
            pending.source = str(path)
        yield pending


def _mbox_messages(path: Path, max_bytes: int, label: int | None) -> Iterator[RawMessage]:
    buf: list[bytes] = []
    size, started, truncated, prev_blank = 0, False, False, True

    def flush():
        data = b"".join(buf)
        # mboxrd/mboxo quoting: ">From " at a line start was "From " in the message
        data = re.sub(rb"(?m)^>(>*From )", rb"\1", data)
        return RawMessage(str(path), data, label, truncated)

    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(b"From ") and prev_blank:
                    if started:
                        yield flush()
                    started = True
                    buf, size, truncated, prev_blank = [], 0, False, False
                    continue
                prev_blank = line in (b"\n", b"\r\n")
                if size + len(line) <= max_bytes:
                    buf.append(line)
                    size += len(line)
                else:
                    truncated = True
            if started:
                yield flush()
    except OSError as exc:
        yield RawMessage(str(path), b"", label, error=exc.strerror or str(exc))


def _read_maildir(path: Path, max_bytes: int, label: int | None) -> Iterator[RawMessage]:
    lab = label if label is not None else label_from_path(str(path))
    for sub in ("new", "cur"):
        try:
            names = sorted(n for n in os.listdir(path / sub) if not n.startswith("."))
        except OSError as exc:
            yield RawMessage(str(path / sub), b"", lab, error=exc.strerror or str(exc))
            continue
        for name in names:
            p = path / sub / name
            try:
                with open(p, "rb") as f:
                    data, truncated = _read_capped(f, max_bytes)
            except OSError as exc:
                yield RawMessage(str(p), b"", lab, error=exc.strerror or str(exc))
                continue
            yield RawMessage(str(p), data, lab, truncated)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _read_tar(path: Path, max_bytes: int, label: int | None) -> Iterator[RawMessage]:
    archive_label = label_from_path(path.name)
    try:
        tar = tarfile.open(path, "r:*")
    except (OSError, tarfile.TarError, EOFError) as exc:
        yield RawMessage(str(path), b"", label, error=f"not a readable tar archive ({_one_line(exc)})")
        return
    with tar:
        try:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                if name.startswith(".") or name in _SKIP_NAMES:
                    continue
                lab = label if label is not None else label_from_path(member.name)
                lab = archive_label if lab is None else lab
                source = f"{path}:{member.name}"
                try:
                    f = tar.extractfile(member)
                    data, truncated = _read_capped(f, max_bytes)
                except (OSError, tarfile.TarError, EOFError) as exc:
                    yield RawMessage(source, b"", lab, error=f"unreadable archive member ({_one_line(exc)})")
                    continue
                yield RawMessage(source, data, lab, truncated)
        except (OSError, tarfile.TarError, EOFError) as exc:
            yield RawMessage(str(path), b"", label, error=f"archive is damaged ({_one_line(exc)})")


def read_sms(path: str | os.PathLike) -> tuple[list[str], list[int]]:
    """A UCI SMS Spam Collection file: `ham<TAB>text` or `spam<TAB>text` per line.

    Returns (texts, labels). Raises ValueError naming the first bad line, since a collection with
    an unlabelled line is a broken training file, not one odd message.
    """
    texts, labels = [], []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            tag, sep, text = line.partition(b"\t")
            tag = tag.strip().lower()
            if not sep or tag not in (b"spam", b"ham"):
                raise ValueError(f"{path}:{lineno}: expected 'spam<TAB>text' or 'ham<TAB>text'")
            texts.append(decode_text(text, "utf-8"))
            labels.append(SPAM if tag == b"spam" else HAM)
    return texts, labels


# ---------------------------------------------------------------------------------------------
# Decoding.

_CHARSET_ALIASES = {"unknown-8bit": "latin-1", "x-unknown": "latin-1", "default": "latin-1",
                    "ks_c_5601-1987": "cp949", "x-user-defined": "latin-1"}


def decode_text(data: bytes, charset: str | None) -> str:
    """Bytes -> str with the declared charset, falling back to UTF-8, then Windows-1252, then
    Latin-1 (which maps every byte, so this never fails). Spam often declares a wrong charset."""
    for cs in (charset, "utf-8"):
        if not cs:
            continue
        cs = _CHARSET_ALIASES.get(cs.strip().strip('"').lower(), cs.strip().strip('"'))
        try:
            codecs.lookup(cs)
            return data.decode(cs)
        except (LookupError, UnicodeDecodeError, ValueError, TypeError):
            continue
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def decode_header(value) -> str:
    """An RFC 2047 header (`=?utf-8?b?...?=`) as text, tolerating bad encodings and charsets."""
    if value is None:
        return ""
    if isinstance(value, email.header.Header):
        value = str(value)
    value = str(value)
    if "=?" not in value:
        return value
    try:
        parts = email.header.decode_header(value)
    except (ValueError, LookupError, AssertionError, IndexError):
        return value
    out = []
    for chunk, cs in parts:
        out.append(decode_text(chunk, cs) if isinstance(chunk, bytes) else chunk)
    return "".join(out)


class _HTMLText(HTMLParser):
    """Visible text and link targets of an HTML part, via the standard library's HTML parser
    (which recovers from broken markup rather than raising)."""

    _HIDDEN = {"script", "style", "head", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.links: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._HIDDEN:
            self._hidden += 1
        for name, value in attrs:
            if value and name in ("href", "src", "action"):
                self.links.append(value)
        if tag in ("br", "p", "div", "tr", "li", "td"):
            self.chunks.append(" ")

    def handle_endtag(self, tag):
        if tag in self._HIDDEN and self._hidden:
            self._hidden -= 1

    def handle_data(self, data):
        if not self._hidden:
            self.chunks.append(data)


_HIDDEN_TAGS = ["script", "style"]
_LINK_NODES = "[href],[src],[action]"


def html_to_text(html: str) -> tuple[str, list[str]]:
    """(visible text, link targets) of an HTML document.

    Parsed by lexbor (via selectolax), an HTML5 parser in C that recovers from broken markup as
    browsers do; it is 3x faster than libxml2 and ~30x faster than the standard library's parser,
    which matters on a mail server. `html.parser` stays as the fallback for a document lexbor
    refuses. Scripts and styles are not visible text and are dropped; comments never are text.
    """
    try:
        doc = LexborHTMLParser(html)
        doc.strip_tags(_HIDDEN_TAGS)
        links = [v for node in doc.css(_LINK_NODES) for k, v in node.attributes.items()
                 if v and k in ("href", "src", "action")]
        return doc.text(separator=" "), links
    except (ValueError, TypeError, UnicodeError, SelectolaxError):
        pass
    parser = _HTMLText()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError, IndexError):  # very old CPythons raised on bad markup
        pass
    return " ".join(parser.chunks), parser.links


# "http://", "https://", "ftp://" or "www." in any case. Written to start with one character class
# (the lookbehinds then pick the branch) because `re` skips ahead to a possible first character
# only when a pattern starts with a single literal or class, not with an alternation: 3x faster
# on mail bodies than the plain `(?:http...|ftp...|www...)`, same matches.
URL_RE = re.compile(r"""[hHfFwW](?:(?<=[hH])[tT][tT][pP][sS]?://|(?<=[fF])[tT][pP]://|(?<=[wW])[wW][wW]\.)"""
                    r"""[^\s<>"'()\[\]{}]+""")


def find_urls(text: str) -> list[str]:
    return URL_RE.findall(text)


def url_domain(url: str) -> str:
    """The host of a URL, lower-cased, without user, port or a trailing dot: "www.ex.com"."""
    u = url.strip().lower()
    if "://" in u:
        u = u.split("://", 1)[1]
    host = re.split(r"[/?#\\]", u, maxsplit=1)[0]
    host = host.rsplit("@", 1)[-1].split(":", 1)[0]
    return host.strip(".")


# ---------------------------------------------------------------------------------------------
# Parsing.

_TEXT_LIMIT = 200_000  # characters of text kept per part: enough to classify, bounded cost
_BASE64_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
_BASE64_DEFECTS = (email.errors.InvalidBase64CharactersDefect, email.errors.InvalidBase64LengthDefect,
                   email.errors.InvalidBase64PaddingDefect)


def base64_then_text(body: bytes) -> bytes:
    """A base64 body with plain text after it, decoded: its leading run of base64 lines, then
    the rest as it is.

    A mailing list that appends its footer to a base64 part leaves a body the email package
    cannot decode: it strips the footer's letters into the base64, gets a broken length and
    returns the raw base64, so the message's own text is lost. Mail clients decode up to the
    first line that is not base64; this does the same and keeps the footer as text.
    """
    lines = body.splitlines(keepends=True)
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    end = start
    while end < len(lines) and _BASE64_LINE.fullmatch(lines[end].strip()):
        end += 1
    encoded = b"".join(line.strip() for line in lines[start:end])
    encoded = encoded[: len(encoded) - len(encoded) % 4]  # a short last group cannot be decoded
    try:
        decoded = binascii.a2b_base64(encoded)
    except binascii.Error:  # (padding in the middle of the run)
        return body
    return decoded + b"\n" + b"".join(lines[end:])


def _content_charset(part) -> str | None:
    """`part.get_content_charset()`, or None where it raises; remembered per Content-Type value,
    since the email package parses the header's parameters anew on every call."""
    value = part.get("content-type")
    try:
        return _charset_of(value) if isinstance(value, str) else part.get_content_charset()
    except Exception:  # (a malformed RFC 2231 parameter, say)
        return None


@functools.lru_cache(maxsize=4096)
def _charset_of(content_type: str) -> str | None:
    part = email.message.Message()
    part.set_raw("Content-Type", content_type)
    return part.get_content_charset()


def _walk(msg, out: ParsedMessage) -> None:
    for part in msg.walk():
        out.parts += 1
        out.defects += len(getattr(part, "defects", ()))
        if part.is_multipart():
            continue
        ctype = (part.get_content_type() or "text/plain").lower()
        disposition = str(part.get("Content-Disposition", "")).lower()
        maintype = ctype.split("/", 1)[0]
        if maintype != "text" or "attachment" in disposition:
            # counted by type, never decoded: an attachment's bytes say nothing a filter can use cheaply
            out.attachments[ctype] += 1
            continue
        n_defects = len(part.defects)
        try:
            payload = part.get_payload(decode=True)
        except Exception:  # broken base64/QP inside the email package: keep the raw text
            payload = None
        if any(isinstance(d, _BASE64_DEFECTS) for d in part.defects[n_defects:]):
            raw = part.get_payload()
            if isinstance(raw, str):
                payload = base64_then_text(raw.encode("latin-1", "replace"))
        if payload is None:
            raw = part.get_payload()
            payload = raw.encode("latin-1", "replace") if isinstance(raw, str) else b""
        charset = _content_charset(part)
        text = decode_text(payload[: _TEXT_LIMIT * 4], charset)[:_TEXT_LIMIT]
        if ctype == "text/html":
            visible, links = html_to_text(text)
            out.html_text += visible + "\n"
            out.urls.extend(links)
            out.urls.extend(find_urls(visible))
        else:
            out.text += text + "\n"
            out.urls.extend(find_urls(text))


_EXTRA_HEADERS = ("content-type", "x-mailer", "user-agent", "message-id", "return-path", "organization",
                  "x-priority", "precedence", "list-id", "mime-version")


def _fill_headers(msg, out: ParsedMessage) -> None:
    # One pass over the headers into a dict: Message.get scans every header on each call.
    first: dict[str, object] = {}
    received = []
    for name, value in msg.items():
        key = name.lower()
        if key == "received":
            received.append(value)
        else:
            first.setdefault(key, value)
    out.subject = decode_header(first.get("subject"))
    out.from_ = decode_header(first.get("from"))
    out.to = decode_header(first.get("to"))
    out.reply_to = decode_header(first.get("reply-to"))
    out.received = [decode_header(v) for v in received]
    for name in _EXTRA_HEADERS:
        v = first.get(name)
        if v is not None:
            out.headers[name] = decode_header(v)


_HEADERS_ONLY = email.parser.BytesParser(policy=email.policy.compat32)
# The first blank line: a line ending ("\n", or the "\n" of "\r\n") followed by an empty line.
_BLANK_LINE = re.compile(rb"\n\r?\n")


def _compat32_headers(raw: bytes):
    """A compat32 `Message` whose headers are parsed and whose payload is the rest of `raw`, as
    `BytesParser(policy=compat32).parsebytes(raw, headersonly=True)` would make it, faster.

    The feed parser splits everything it is given into lines, one `readline` at a time; here it
    sees at most the header block, and a well-formed block (`_simple_header_block`) not even that.
    Cutting right after the first blank line is exact: the cut falls just after a "\n", which ends
    a line however the parser splits lines ("\r\n", "\r" or "\n"), and the parser's header block
    ends at or before that blank line; whatever it already put in the payload (after a line that
    was not a header) comes first, and the bytes after the cut follow it unchanged.
    """
    m = _BLANK_LINE.search(raw)
    if m is None:
        return _HEADERS_ONLY.parsebytes(raw, headersonly=True)
    head = raw[:m.end()]
    text = head.decode("ascii") if head.isascii() else _decode_header_block(head)
    msg = _simple_header_block(text)
    if msg is None:
        msg = _HEADERS_ONLY_TEXT.parsestr(text, headersonly=True)
        if msg.get_payload() and not head.isascii():
            # a non-header line before the blank line: the payload must stay bytes-as-surrogates
            msg = _HEADERS_ONLY.parsebytes(head, headersonly=True)
    head_payload = msg.get_payload()
    body = raw[m.end():].decode("ascii", "surrogateescape")  # what BytesParser does to all of raw
    msg.set_payload(head_payload + body if head_payload else body)
    return msg


# One header field: a name of printable ASCII but ":" (the feed parser's `headerRE`), its first
# line, and its continuation lines (starting with a space or a tab).
_HEADER_FIELD = re.compile(r"([\041-\071\073-\176]+):([^\n]*\n)((?:[ \t][^\n]*\n)*)")


def _simple_header_block(text: str):
    """The compat32 `Message` the feed parser makes of a header block `text` (ending with its blank
    line), or None if the block is not plain: a lone "\r" line ending, a line that is neither a
    field nor a continuation, a continuation first, a misplaced "From " line. Those cases (which
    add defects or end the headers early) are left to the feed parser itself.

    A field's value is what `Compat32.header_source_parse` makes of its lines: the first line
    after the colon with leading blanks removed, then the continuation lines as they are, with
    the final line ending removed. One regex pass replaces ~3 µs of feed-parser work per line.
    """
    if "\r" in text and text.count("\r") != text.count("\r\n"):
        return None
    msg = email.message.Message(policy=email.policy.compat32)
    pos = 0
    if text.startswith("From "):  # the mbox envelope line, as the feed parser keeps it
        pos = text.index("\n") + 1
        msg.set_unixfrom(text[:pos].rstrip("\r\n"))
    end = len(text) - (2 if text.endswith("\n\r\n") else 1)  # where the blank line starts
    fields = _HEADER_FIELD.findall(text, pos, end)
    # the matches do not overlap, so they cover the block without a gap iff their lengths add up
    if sum(len(name) + len(first) + len(rest) + 1 for name, first, rest in fields) != end - pos:
        return None
    for name, first, rest in fields:
        msg.set_raw(name, (first.lstrip(" \t") + rest).rstrip("\r\n"))  # (a parser's own API)
    return msg


_HEADERS_ONLY_TEXT = email.parser.Parser(policy=email.policy.compat32)
_CHARSET_PARAM = re.compile(rb"""charset\s*=\s*["']?([\w.:-]+)""", re.IGNORECASE)


def _decode_header_block(head: bytes) -> str:
    """A header block with raw 8-bit bytes (RFC 6532 UTF-8 headers, or spam's raw Latin-1/GB2312
    subjects) as text, line by line: UTF-8 if the line is valid UTF-8, else the message's declared
    charset, else Windows-1252/Latin-1 (`decode_text`). compat32 alone would turn those bytes into
    U+FFFD, and `policy.default` decodes them as UTF-8 only, so "£80m" in Latin-1 loses its £ either
    way; here it stays a money token.
    """
    m = _CHARSET_PARAM.search(head)
    declared = m.group(1).decode("ascii") if m else None
    lines = head.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.isascii():
            lines[i] = line.decode("ascii")
            continue
        try:
            lines[i] = line.decode("utf-8")
        except UnicodeDecodeError:
            lines[i] = decode_text(line, declared)
    return "".join(lines)


def _parse_with(raw: bytes, policy) -> ParsedMessage:
    if policy is email.policy.compat32:
        # Fast path: parse the header block only; for a single-part message (most mail) the
        # remaining bytes are the body and `get_payload(decode=True)` decodes them the same way
        # a full parse would. Only a multipart message pays for the full MIME parse.
        msg = top = _compat32_headers(raw)
        if msg.get_content_maintype() == "multipart":
            msg = email.message_from_bytes(raw, policy=policy)  # (its headers are top's, but 8-bit ones undecoded)
    else:
        msg = top = email.message_from_bytes(raw, policy=policy)
    out = ParsedMessage()
    _fill_headers(top, out)
    _walk(msg, out)
    return out


def _plain_fallback(raw: bytes, reason: str) -> ParsedMessage:
    text = decode_text(raw[: _TEXT_LIMIT * 4], None)[:_TEXT_LIMIT]
    return ParsedMessage(text=text, urls=find_urls(text), problem=reason)


def parse_message(raw: bytes, strict: bool = False) -> ParsedMessage:
    """Parse raw RFC 822 bytes; never raises.

    Args:
        strict: parse with `email.policy.default` first (slower, stricter header parsing) and fall
            back to `compat32` when it raises or reports defects; by default use `compat32` only.

    A message the email package cannot make sense of at all is read as plain text, with
    `problem` saying why.
    """
    if not raw.strip():
        return ParsedMessage(problem="empty message")
    if strict:
        try:
            out = _parse_with(raw, email.policy.default)
            if not out.defects:
                return out
        except Exception:  # noqa: BLE001 (any failure here means: try the lenient policy)
            pass
    try:
        return _parse_with(raw, email.policy.compat32)
    except RecursionError:
        return _plain_fallback(raw, "MIME nesting too deep")
    except Exception as exc:  # noqa: BLE001 (the promise is: never crash on a message)
        return _plain_fallback(raw, f"unparseable MIME ({type(exc).__name__})")


def annotate(raw: bytes, is_spam: bool, probability: float, verdict: str | None = None) -> bytes:
    """`raw` with X-Chainrule-Spam headers added at the end of its header block; the body (every
    byte after the blank line) is left exactly as it was. Line endings follow the message's own."""
    crlf = b"\r\n" in raw[:4096]
    nl = b"\r\n" if crlf else b"\n"
    added = b"X-Chainrule-Spam: " + (b"yes" if is_spam else b"no") + nl
    added += b"X-Chainrule-Spam-Probability: " + f"{probability:.6f}".encode() + nl
    if verdict is not None:
        added += b"X-Chainrule-Spam-Verdict: " + verdict.encode() + nl
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = raw.find(sep)
        if i >= 0:
            # end of the header block: keep its last line ending, then our lines, then the blank line
            cut = i + len(sep) // 2
            return raw[:cut] + added + raw[cut:]
    if raw and not raw.endswith((b"\n",)):
        return raw + nl + added  # headers only, no final newline
    return raw + added


__all__ = [
    "HAM", "MAX_BYTES", "SPAM", "ParsedMessage", "RawMessage", "annotate", "decode_header", "decode_text",
    "find_urls", "html_to_text", "label_from_path", "parse_message", "read_messages", "read_sms", "url_domain",
]
