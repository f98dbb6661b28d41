"""Stamping a verdict into a message (chainrule.apps.spam.annotate): the body stays byte for byte."""

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chainrule.apps.spam import annotate
from chainrule.apps.spam.annotate import annotation_lines, header_end, stamped_verdict

# A message's lines end as it was written: LF (Unix), CRLF (the wire, Windows) or a bare CR (classic Mac OS)
LINE_ENDS = pytest.mark.parametrize("nl", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])


@pytest.mark.parametrize("nl", [b"\n", b"\r\n"])
def test_annotate_keeps_body_bytes(nl):
    body = nl.join([b"", b"line one", b"", b"From me", b"\x00\xff binary-ish", b""])
    raw = b"Subject: hi" + nl + b"From: a@b.c" + nl + body
    out = annotate(raw, True, 0.987654)
    head, _, rest = out.partition(nl + nl)
    assert rest == body[len(nl):]
    assert b"X-Chainrule-Spam: yes" + nl in out and b"X-Chainrule-Spam-Probability: 0.987654" in head
    assert out.startswith(b"Subject: hi" + nl + b"From: a@b.c" + nl)


@LINE_ENDS
def test_annotate_replaces_the_headers_a_message_came_with(nl):
    """A forged "X-Chainrule-Spam: no" must not ride above the real verdict, and a message
    annotated twice carries one verdict. With bare CR line ends, the whole message was one field,
    named by the forged one on its first line, and went with it: only our fields came back."""
    raw = b"X-Chainrule-Spam: no\nSubject: hi\nX-Chainrule-Spam-Verdict: ham\n  folded\nFrom: a@b.c\n\nbody\n"
    once = annotate(raw.replace(b"\n", nl), True, 0.9, "spam")
    assert once == (b"Subject: hi\nFrom: a@b.c\nX-Chainrule-Spam: yes\nX-Chainrule-Spam-Probability: 0.900000\n"
                    b"X-Chainrule-Spam-Verdict: spam\n\nbody\n").replace(b"\n", nl)
    assert annotate(once, True, 0.9, "spam") == once and stamped_verdict(once) == "spam"


@pytest.fixture(scope="module")
def real_mail(spamassassin_messages) -> list[bytes]:
    """The SpamAssassin messages, whose lines all end in LF (none has a CR): each can be written
    with any line end and still be the same message."""
    mail = [m.data for m in spamassassin_messages]
    assert not any(b"\r" in raw for raw in mail)
    return mail


@LINE_ENDS
def test_every_byte_of_a_real_message_stays_whatever_its_line_ends(real_mail, nl):
    """A message with classic Mac OS line ends (a bare CR, no LF) was one long header field: the
    fields went after its body, with LF line ends. Now a message comes back with our fields, ending
    as its own lines end, after its last header field, and every byte of it as it was."""
    added = b"".join(line.encode() + nl for line in annotation_lines(True, 0.9, "spam"))
    for raw in real_mail:
        message = raw.replace(b"\n", nl)
        out = annotate(message, True, 0.9, "spam")
        at = out.index(added)
        assert out[:at] + out[at + len(added):] == message
        assert at <= message.index(nl + nl) + len(nl)  # (in the header block)
        assert out == annotate(raw, True, 0.9, "spam").replace(b"\n", nl)
        assert stamped_verdict(out) == "spam"


@LINE_ENDS
def test_forged_fields_are_all_that_goes_whatever_the_line_ends(real_mail, nl):
    """A forged field, folded or not, between a real message's fields is removed, and nothing else."""
    for raw in real_mail[::10]:
        head, blank, body = raw.partition(b"\n\n")
        lines = head.split(b"\n")
        fields = [i for i, line in enumerate(lines) if not line.startswith((b" ", b"\t"))]  # (not continuations)
        second, middle = fields[1], fields[len(fields) // 2]
        forged = b"\n".join([*lines[:second], b"X-Chainrule-Spam-Verdict: ham", *lines[second:middle],
                             b"X-Chainrule-Spam-Probability: 0.01", b"\t(folded)", *lines[middle:]]) + blank + body
        assert stamped_verdict(forged.replace(b"\n", nl)) == "ham"
        assert (annotate(forged.replace(b"\n", nl), True, 0.9, "spam")
                == annotate(raw.replace(b"\n", nl), True, 0.9, "spam"))


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
