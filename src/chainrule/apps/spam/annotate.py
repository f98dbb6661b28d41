"""Stamping a verdict into a message for mail software: `X-Chainrule-Spam` headers (`annotate`)."""

from __future__ import annotations


def annotate(raw: bytes, is_spam: bool, probability: float, verdict: str | None = None) -> bytes:
    """`raw` with X-Chainrule-Spam headers added at the end of its header block; the body (every
    byte after the blank line) is left exactly as it was. Line endings follow the message's own."""
    crlf = b"\r\n" in raw[:4096]
    nl = b"\r\n" if crlf else b"\n"
    added = b"X-Chainrule-Spam: " + (b"yes" if is_spam else b"no") + nl
    added += b"X-Chainrule-Spam-Probability: " + f"{probability:.6f}".encode() + nl
    if verdict is not None:
        added += b"X-Chainrule-Spam-Verdict: " + verdict.encode() + nl
    end, blank = header_end(raw)
    if blank:
        return raw[:end] + added + raw[end:]  # our lines go just before the blank line
    if raw and not raw.endswith(b"\n"):
        return raw + nl + added  # headers only, no final newline
    return raw + added


def header_end(raw: bytes) -> tuple[int, bytes]:
    """(offset where the blank line that ends the header block starts, that line's bytes), or
    (len(raw), b"") for a message without a body. The first empty line ends the headers, whether
    it ends in LF or CRLF and whatever the lines before it end in (mail that crossed systems mixes them)."""
    start = 0
    while (newline := raw.find(b"\n", start)) >= 0:
        line = raw[start:newline + 1]
        if line in (b"\n", b"\r\n"):
            return start, line
        start = newline + 1
    return len(raw), b""
