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
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = raw.find(sep)
        if i >= 0:
            # end of the header block: keep its last line ending, then our lines, then the blank line
            cut = i + len(sep) // 2
            return raw[:cut] + added + raw[cut:]
    if raw and not raw.endswith((b"\n",)):
        return raw + nl + added  # headers only, no final newline
    return raw + added
