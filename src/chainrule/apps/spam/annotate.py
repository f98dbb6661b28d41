"""Stamping a verdict into a message for mail software: `X-Chainrule-Spam` headers (`annotate`)."""

from __future__ import annotations

import codecs
import re

from chainrule.data.mime import HEADER_NAME, LINE_END

# The fields `annotate` adds (lower case); a message's own X-Chainrule-Spam* fields are removed first,
# so that a forged "X-Chainrule-Spam: no" cannot ride above ours, and annotating twice adds none twice.
ANNOTATION_HEADERS = ("x-chainrule-spam", "x-chainrule-spam-probability", "x-chainrule-spam-verdict")


def annotate(raw: bytes, is_spam: bool, probability: float, verdict: str | None = None) -> bytes:
    """`raw` with X-Chainrule-Spam headers (in place of any it had) after its header fields; the
    body (every byte after the blank line) is left exactly as it was."""
    return replace_header_fields(raw, ANNOTATION_HEADERS, annotation_lines(is_spam, probability, verdict))


def annotation_lines(is_spam: bool, probability: float, verdict: str | None = None) -> list[str]:
    """The X-Chainrule-Spam header lines of a verdict (the three-way `verdict`, where there is one)."""
    lines = [f"X-Chainrule-Spam: {'yes' if is_spam else 'no'}", f"X-Chainrule-Spam-Probability: {probability:.6f}"]
    return lines + ([f"X-Chainrule-Spam-Verdict: {verdict}"] if verdict is not None else [])


def replace_header_fields(raw: bytes, prefixes: tuple[str, ...], lines: list[str]) -> bytes:
    """`raw` without its header fields whose names start with one of `prefixes` (lower case), with
    `lines` added after its last well-formed field. Every other header line and every byte of the
    body stay exactly as they were; the new lines end as the message's lines do (`_line_end`), and
    a body that followed the headers with no blank line (or a message of body alone) gets one
    before it. A byte order mark stays in front, where the message had it (`_without_mark`)."""
    mark, raw = _without_mark(raw)
    end, blank = _header_end(raw)
    fields = _fields_end(raw, end)  # (before a malformed line: a reader that stops there sees them)
    nl = _line_end(raw, fields)
    head = _without(raw[:fields], prefixes)
    if head and not head.endswith((b"\n", b"\r")):
        head += nl  # headers only, no final newline
    separator = nl if end < len(raw) and not blank else b""
    return (mark + head + b"".join(line.encode("ascii") + nl for line in lines)
            + _without(raw[fields:end], prefixes) + separator + raw[end:])


def stamped_verdict(raw: bytes) -> str | None:
    """The verdict `annotate` stamped into `raw` on its way to the mailbox ("spam", "ham" or
    "unsure"; "spam" for a bare `X-Chainrule-Spam: yes`), or None where it carries none."""
    _, raw = _without_mark(raw)
    end, _ = _header_end(raw)
    fields = dict.fromkeys(ANNOTATION_HEADERS)
    for field in _fields(raw[:end]):
        if (name := _name(field)) in fields:
            fields[name] = field.partition(b":")[2].strip().lower().decode("latin-1")
    verdict = fields["x-chainrule-spam-verdict"]
    if verdict in ("spam", "ham", "unsure"):
        return verdict
    return "spam" if fields["x-chainrule-spam"] == "yes" else None


# A header field's first line: a name of printable characters other than the colon, then the colon
# (RFC 5322; whitespace before the colon is its obsolete syntax, still met in old mail).
FIELD_START = re.compile(HEADER_NAME.encode() + rb"[ \t]*:")


# Lines end at CRLF, LF or a bare CR (`LINE_END`), as the email package splits them: classic Mac OS
# ended every line of a message with a bare CR, and such a message read at LF alone was one long
# line. A field starts a line that starts with neither a blank (a continuation) nor a line end.
_FIELD_BOUNDARY = re.compile(rb"(?<=[\r\n])(?=[^ \t\r\n])")  # (never inside a CRLF: a LF follows its CR)


def _fields(head: bytes) -> list[bytes]:
    """A header block's fields, each its line and its continuation lines, as written."""
    return _FIELD_BOUNDARY.split(head)


def _name(field: bytes) -> str:
    """A header field's name, lower case."""
    return field.split(b":", 1)[0].strip().lower().decode("latin-1")


def _without(head: bytes, prefixes: tuple[str, ...]) -> bytes:
    """Header lines `head` without the fields whose names start with one of `prefixes`."""
    return b"".join(f for f in _fields(head) if not _name(f).startswith(prefixes))


# The first empty line (group 1), whatever it and the lines before it end in (mail that crossed
# systems mixes them): at the top, or after a line end (a CR only where no LF follows it, which
# would make it a CRLF's)
_EMPTY_LINE = re.compile(rb"(?:\A|\n|\r(?!\n))(" + LINE_END.pattern + rb")")


def header_end(raw: bytes) -> tuple[int, bytes]:
    """(offset where the header block ends, the blank line that ends it there), or (that offset,
    b"") for a message with no blank line after its headers.

    The first empty line ends the headers, and every line before it belongs to them, malformed or
    not (an unindented continuation, a ">From " line): spamc, given a HEADERS answer, appends the
    body it kept from after that line, and SpamAssassin reads the fields below such a line as
    fields too. In a message with no empty line, the first line that is neither a field nor a
    field's continuation starts the body, as SpamAssassin and the email package read it, and so
    does a first line that is no field: markup goes before it, and a body line that looks like a
    markup field stays. A byte order mark in front is no part of the first field (`_without_mark`)."""
    mark, raw = _without_mark(raw)
    end, blank = _header_end(raw)
    return len(mark) + end, blank


def _without_mark(raw: bytes) -> tuple[bytes, bytes]:
    """(the UTF-8 byte order mark `raw` starts with, or b"", the message after it). Windows programs
    save a message with one (`mime.parse_message` reads it without): it is no part of the first header
    field, and a message passed on keeps it in front, every byte of it as it came."""
    message = raw.removeprefix(codecs.BOM_UTF8)
    return raw[:len(raw) - len(message)], message


def _header_end(raw: bytes) -> tuple[int, bytes]:
    """`header_end` of a message with no byte order mark in front."""
    empty = _EMPTY_LINE.search(raw)
    end = len(raw) if empty is None else empty.start(1)
    fields = _fields_end(raw, end)
    if empty is None or (fields == 0 and end > 0):  # (no field at all above it: a message of body alone)
        return fields, b""
    return end, empty[1]


def _fields_end(raw: bytes, end: int) -> int:
    """Where the header fields of `raw[:end]` end: at the first line that is neither a field nor a
    field's continuation, or at `end`."""
    start = 0
    while start < end:
        line_end = LINE_END.search(raw, start, end)
        stop = end if line_end is None else line_end.end()
        line = raw[start:stop]
        continued = start > 0 and line[:1] in (b" ", b"\t")
        envelope = start == 0 and line.startswith(b"From ")  # an mbox "From " line, as procmail hands mail on
        if not (continued or envelope or FIELD_START.match(line)):
            return start
        start = stop
    return end


def _line_end(raw: bytes, fields: int) -> bytes:
    """The line end of the lines added after the header fields `raw[:fields]`: that of the last
    field line above them, so that they end as the lines around them do (CRLF, LF, or a bare CR);
    in a message with no line end there, its first line's (a message of body alone: the body's)."""
    above = LINE_END.findall(raw, 0, fields)
    if above:
        return above[-1]
    first = LINE_END.search(raw)
    return b"\n" if first is None else first[0]
