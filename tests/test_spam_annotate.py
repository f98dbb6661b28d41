"""Stamping a verdict into a message (chainrule.apps.spam.annotate): the body stays byte for byte."""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chainrule.apps.spam import annotate
from chainrule.apps.spam.annotate import header_end, stamped_verdict


@pytest.mark.parametrize("nl", [b"\n", b"\r\n"])
def test_annotate_keeps_body_bytes(nl):
    body = nl.join([b"", b"line one", b"", b"From me", b"\x00\xff binary-ish", b""])
    raw = b"Subject: hi" + nl + b"From: a@b.c" + nl + body
    out = annotate(raw, True, 0.987654)
    head, _, rest = out.partition(nl + nl)
    assert rest == body[len(nl):]
    assert b"X-Chainrule-Spam: yes" + nl in out and b"X-Chainrule-Spam-Probability: 0.987654" in head
    assert out.startswith(b"Subject: hi" + nl + b"From: a@b.c" + nl)


def test_annotate_replaces_the_headers_a_message_came_with():
    """A forged "X-Chainrule-Spam: no" must not ride above the real verdict, and a message
    annotated twice carries one verdict."""
    raw = b"X-Chainrule-Spam: no\nSubject: hi\nX-Chainrule-Spam-Verdict: ham\n  folded\nFrom: a@b.c\n\nbody\n"
    once = annotate(raw, True, 0.9, "spam")
    assert once == (b"Subject: hi\nFrom: a@b.c\nX-Chainrule-Spam: yes\nX-Chainrule-Spam-Probability: 0.900000\n"
                    b"X-Chainrule-Spam-Verdict: spam\n\nbody\n")
    assert annotate(once, True, 0.9, "spam") == once


@pytest.mark.parametrize("nl", [b"\n", b"\r\n"])
def test_a_byte_order_mark_stays_in_front_and_the_headers_stay_headers(nl):
    """A message saved by a Windows program starts with a UTF-8 byte order mark: its first line was
    no field, so the message was taken for body alone and its From, To and Subject went below our
    fields and a blank line, as body text."""
    raw = nl.join([b"From: alice@example.org", b"X-Chainrule-Spam: no", b"Subject: lunch", b"", b"Noon?", b""])
    bom = b"\xef\xbb\xbf"
    out = annotate(bom + raw, True, 0.9, "spam")
    assert out == bom + annotate(raw, True, 0.9, "spam")  # (and the forged field is gone in both)
    assert header_end(bom + raw) == (len(bom) + raw.index(nl + nl) + len(nl), nl)
    assert stamped_verdict(out) == "spam" and stamped_verdict(bom + raw) is None
    forged_first = bom + b"X-Chainrule-Spam-Verdict: spam" + nl + raw
    assert stamped_verdict(forged_first) == "spam"
    assert annotate(forged_first, False, 0.1, "ham") == bom + annotate(raw, False, 0.1, "ham")


_LINES = st.lists(st.sampled_from([b"Subject: x", b"X-A: b", b"\tfolded", b"", b"body \xff", b"From me", b"\r"]),
                  max_size=8)


@settings(max_examples=300, deadline=None)
@example(b"Subject: x\n\nSubject: x\n\r\n\r\nbody")  # an LF blank line before a CRLF one
@example(b"Subject: x\n\r\nbody\n\nmore")  # a CRLF blank line after an LF header line
@given(st.one_of(st.binary(max_size=2000), st.builds(lambda lines, nl: nl.join(lines), _LINES,
                                                      st.sampled_from([b"\n", b"\r\n"]))))
def test_property_annotate_never_touches_the_body(data):
    out = annotate(data, False, 0.5)
    assert out.endswith(data.partition(b"\n\n")[2]) or b"\n\n" not in data
    assert b"X-Chainrule-Spam: no" in out and len(out) > len(data)
