"""The spamc/spamd protocol without a daemon: the score mapping, the markup, reading requests.

The daemon and Debian's real spamc meet in tests/test_spam_daemon.py; here the protocol's pieces
are checked on their own, where every odd input can be tried in microseconds.
"""

import asyncio
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainrule.apps.spam.protocol import (
    CHUNK,
    EX_PROTOCOL,
    PONG,
    THRESHOLD,
    ProtocolError,
    Request,
    Verdict,
    answer,
    format_score,
    length_and_spam,
    mark_up,
    read_request,
    spamd_score,
    spooled_answer_head,
    tell_answer,
)


def test_score_is_monotone_and_crosses_the_threshold_exactly_at_the_spam_cutoff():
    spam_cut, ham_cut = 0.7, 0.2
    p = np.concatenate([np.linspace(0, 1, 2001), [spam_cut, np.nextafter(spam_cut, 0), ham_cut,
                                                  np.nextafter(ham_cut, 0), 1e-30, 1 - 1e-17]])
    p.sort()
    scores = [spamd_score(q, spam_cut, ham_cut) for q in p]
    assert all(a <= b for a, b in zip(scores, scores[1:], strict=False))
    for q, s in zip(p, scores, strict=True):
        assert (s >= THRESHOLD) == (q >= spam_cut)
        if ham_cut <= q < spam_cut:
            assert 2.5 <= s < THRESHOLD  # unsure keeps a band of its own
        if q < ham_cut:
            assert s <= 2.5  # (equal only where p rounds to the log-odds of the cut-off)
    v = Verdict(np.nextafter(spam_cut, 0), spam_cut, ham_cut)
    assert v.label == "unsure" and format_score(v.score, v.label) == "4.9"  # never rounded up to 5.0
    assert format_score(spamd_score(spam_cut, spam_cut, ham_cut), "spam") == "5.0"
    v = Verdict(np.nextafter(ham_cut, 0), spam_cut, ham_cut)
    assert v.label == "ham" and format_score(v.score, v.label) == "2.4"  # never rounded up to unsure's 2.5


def test_cutoffs_at_zero_and_one_still_give_consistent_scores():
    for spam_cut, ham_cut in ((1.0, 0.0), (0.5, 0.5), (1e-20, 0.0), (1.0, 1.0)):
        for q in (0.0, 1e-20, 0.3, 0.5, 1 - 1e-12, 1.0):
            v = Verdict(q, spam_cut, ham_cut)
            assert (v.score >= THRESHOLD) == v.is_spam
            assert (float(format_score(v.score, v.label)) >= THRESHOLD) == v.is_spam
            assert (float(format_score(v.score, v.label)) >= 2.5) == (v.label != "ham")


_LINE = st.binary(min_size=1, max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b)
# a header field's line: a name (printable, no colon), a colon, any value
_FIELD = st.builds(lambda name, value: name.encode() + b":" + value,
                   st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), min_size=1,
                           max_size=20), _LINE)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(_FIELD, min_size=1, max_size=8), body=st.binary(max_size=300),
       nl=st.sampled_from([b"\n", b"\r\n", b"\r"]), p=st.floats(0, 1))
def test_markup_never_changes_the_body(lines, body, nl, p):
    raw = nl.join(lines) + nl + nl + body
    v = Verdict(p, 0.6, 0.3)
    out = mark_up(raw, v)
    assert out.endswith(b"X-Chainrule-Spam-Verdict: " + v.label.encode() + nl + nl + body)
    kept = [line for line in lines if not line.lower().startswith((b"x-spam-", b"x-chainrule-spam"))]
    assert out.startswith(nl.join(kept[:1]))  # the message's own first header line still leads


def test_markup_replaces_forged_headers_and_keeps_line_endings():
    raw = (b"Subject: hi\r\nX-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=99\r\n\tfolded=1\r\n"
           b"To: a@b\r\n\r\nbody\r\n\r\nmore\r\n")
    out = mark_up(raw, Verdict(0.01, 0.6, 0.3))
    head, body = out.split(b"\r\n\r\n", 1)
    assert body == b"body\r\n\r\nmore\r\n"
    assert b"X-Spam-Flag" not in head and b"folded=1" not in head
    assert head.startswith(b"Subject: hi\r\nTo: a@b\r\n")
    assert b"X-Spam-Status: No, score=" in head and b"X-Chainrule-Spam-Verdict: ham" in head
    assert b"\n" not in head.replace(b"\r\n", b"")  # every added line ends with CRLF, like the message
    headers_only = mark_up(b"Subject: x", Verdict(0.99, 0.6, 0.3))
    assert headers_only.startswith(b"Subject: x\nX-Spam-Flag: YES\n") and b"\n\n" not in headers_only


@pytest.mark.parametrize("head,body", [
    (b"Subject: lunch\nFrom: bob@example.com\n", b"Hi Alice, noon?\nX-Spam-Flag: YES is what mine adds\nBob\n"),
    (b"", b"hello world, buy now\nX-Spam-Status: a line of the body\n"),  # no headers at all
    # as procmail hands mail on: an mbox "From " line first
    (b"From bob@example.com Mon Jan  1 10:00:00 2002\nSubject : x\n", b"the body, with no blank line above\n"),
])
def test_a_body_with_no_blank_line_before_it_keeps_every_byte_and_the_markup_goes_above_it(head, body):
    """The first line that is neither a header field nor a continuation starts the body, as SpamAssassin
    and the email package read it. The whole message was taken for headers: a body line that looked
    like a markup field was deleted, and the markup came after the body."""
    out = mark_up(head + body, Verdict(0.99, 0.6, 0.3))
    marked_head, rest = out.split(b"\n\n", 1)
    assert rest == body and marked_head.startswith(head) and b"X-Spam-Flag: YES" in marked_head




# --- reading a request ----------------------------------------------------------------------------

def _read(data: bytes, limit: int = 1000):
    """read_request over `data` as a client sends it, then half-closes."""
    async def go():
        reader = asyncio.StreamReader()  # (the server's readers have this default 64 KiB line limit)
        reader.feed_data(data)
        reader.feed_eof()
        return await read_request(reader, limit)
    return asyncio.run(go())


def _request(command: str, body: bytes, *headers: str, length: bool = True) -> bytes:
    lines = [f"{command} SPAMC/1.5", *headers] + ([f"Content-length: {len(body)}"] if length else [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


MESSAGE = b"Subject: hello\r\nFrom: a@example.org\r\n\r\nSee you at noon.\r\n"


def test_a_request_is_read_whole():
    req = _read(_request("CHECK", MESSAGE, "User: alice"))
    assert (req.command, req.version, req.user, req.body, req.size, req.too_big) == \
        ("CHECK", 1.5, "alice", MESSAGE, len(MESSAGE), False)
    tell = _read(_request("TELL", MESSAGE, "Message-class: spam", "Set: local"))
    assert (tell.message_class, tell.set_local, tell.remove_local) == ("spam", True, False)
    assert _read(b"PING SPAMC/1.5\r\n\r\n").command == "PING"
    assert _read(b"PING SPAMC/1.2\r\n").command == "PING"  # (before 1.5, PING had no header block)


@pytest.mark.parametrize("databases,local", [("local", True), ("local, remote", True), ("remote,local", True),
                                             ("remote", False), ("nonlocal", False), ("localhost", False)])
def test_set_and_remove_name_a_list_of_databases(databases, local):
    """"local" was looked for anywhere in the value, so "Set: nonlocal" taught the model; spamd reads
    a comma-separated list of database names."""
    tell = _read(_request("TELL", MESSAGE, "Message-class: ham", f"Set: {databases}"))
    forget = _read(_request("TELL", MESSAGE, f"Remove: {databases}"))
    assert (tell.set_local, forget.remove_local) == (local, local)


def test_a_compressed_request_is_inflated_and_a_large_one_cut_at_the_limit():
    packed = zlib.compress(MESSAGE)
    req = _read(_request("CHECK", packed, "Compress: zlib"))
    assert req.body == MESSAGE and req.size == len(MESSAGE)
    big = MESSAGE + b"x" * 5000
    for request in (_request("CHECK", big), _request("CHECK", zlib.compress(big), "Compress: zlib"),
                    _request("CHECK", big, length=False)):
        req = _read(request, limit=1000)
        assert req.too_big and req.size == len(big) and req.body == big[:1000]
    kept = _read(_request("PROCESS", big), limit=1000)  # PROCESS hands a too-big message back whole
    assert kept.too_big and kept.spool.read() == big
    kept.spool.close()


@pytest.mark.parametrize(("data", "said"), [
    (b"", "closed before headers"),
    (b"CHECK SPAMC/1.5", "request line not terminated"),
    (b"HELLO SPAMC/1.5\r\n\r\n", "unknown request line"),
    (b"CHECK SPAMC/1.1\r\n\r\n", "1.2 or later"),
    (b"CHECK SPAMC/1.5\r\nContent-length: 12x\r\n\r\n", "non-numeric"),
    (b"CHECK SPAMC/1.5\r\nContent-length: \xb2\r\n\r\n", "non-numeric"),  # ("²" in latin-1: a digit to isdigit)
    (b"CHECK SPAMC/1.5\r\nUser: a\x01b\r\n\r\n", "control chars"),
    (b"CHECK SPAMC/1.5\r\nno colon\r\n\r\n", "'Name: value'"),
    (b"CHECK SPAMC/1.5\r\nContent-length: 99\r\n\r\nshort", "Expected 99 bytes, got 5"),
    (b"CHECK SPAMC/1.5\r\nCompress: zlib\r\nContent-length: 4\r\n\r\nnope", "zlib"),
    (b"CHECK SPAMC/1.5\r\nCompress: gzip\r\n\r\n", "not supported"),
    (b"TELL SPAMC/1.5\r\nSet: local\r\nContent-length: 1\r\n\r\nx", "needs Message-class"),
    (b"TELL SPAMC/1.5\r\nMessage-class: spam\r\nSet: local\r\nRemove: local\r\nContent-length: 1\r\n\r\nx",
     "Unable to set local and remove local"),
    (b"CHECK SPAMC/1.5\r\n" + b"X: y\r\n" * 300 + b"\r\n", "too many headers"),
    (b"CHECK SPAMC/1.5\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", "header line too long"),
])
def test_malformed_requests_are_protocol_errors_that_say_why(data, said):
    with pytest.raises(ProtocolError) as caught:
        _read(data)
    assert said in caught.value.text
    assert caught.value.status_line().startswith(b"SPAMD/1.0 ") and caught.value.status_line().endswith(b"\r\n")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([_request("CHECK", MESSAGE, "User: bob"), _request("PROCESS", zlib.compress(MESSAGE),
                                                                           "Compress: zlib"),
                        _request("TELL", MESSAGE, "Message-class: ham", "Set: local"), b"PING SPAMC/1.5\r\n\r\n"]),
       st.data())
def test_any_damage_to_a_request_is_read_or_refused_never_an_internal_error(request, data):
    cut = data.draw(st.integers(0, len(request)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(request) - 1), st.integers(0, 255)), max_size=3))
    damaged = bytearray(request[:cut] + data.draw(st.binary(max_size=40)) + request[cut:])
    for where, byte in flips:
        damaged[where % len(damaged)] = byte
    try:
        req = _read(bytes(damaged), limit=30)
    except ProtocolError as exc:
        assert exc.code == EX_PROTOCOL or exc.text.startswith("Service Unavailable")
    else:
        assert req.size <= len(damaged) or req.compress  # (a compressed body may inflate)
        if req.spool is not None:
            req.spool.close()


def test_ping_tell_and_an_unchecked_process_are_answered_as_spamd_answers_them():
    """The answers the daemon wrote out itself before they were the protocol's: spamc reads
    DidSet/DidRemove as "successfully un/learned", and an answer with neither as "already"."""
    assert PONG == b"SPAMD/1.5 0 PONG\r\n"
    learn = _read(_request("TELL", MESSAGE, "Message-class: spam", "Set: local"))
    forget = _read(_request("TELL", MESSAGE, "Remove: local"))
    assert tell_answer(learn, True) == b"SPAMD/1.1 0 EX_OK\r\nDidSet: local\r\n\r\n"
    assert tell_answer(forget, True) == b"SPAMD/1.1 0 EX_OK\r\nDidRemove: local\r\n\r\n"
    assert tell_answer(learn, False) == tell_answer(forget, False) == b"SPAMD/1.1 0 EX_OK\r\n\r\n"
    big = _read(_request("PROCESS", MESSAGE * 100))
    assert big.too_big and big.spool is not None
    big.spool.close()
    assert spooled_answer_head(big) == b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: False ; 0.0 / 5.0\r\n\r\n" \
        % len(MESSAGE * 100)

def test_an_answer_s_header_block_is_the_one_its_protocol_version_reads():
    """Protocol 1.2 has one header: Content-length for PROCESS and HEADERS, the Spam line for the
    rest (Exim's REPORT); 1.3 and later both."""
    spam = f"Spam: True ; {format_score(Verdict(0.999, 0.9, 0.2).score, 'spam')} / 5.0\r\n".encode()
    assert length_and_spam(Request("PROCESS", 1.2), 42, Verdict(0.999, 0.9, 0.2)) == b"Content-length: 42\r\n\r\n"
    assert length_and_spam(Request("REPORT", 1.2), 42, Verdict(0.999, 0.9, 0.2)) == spam + b"\r\n"
    for command in ("PROCESS", "REPORT"):
        assert length_and_spam(Request(command, 1.5), 42, Verdict(0.999, 0.9, 0.2)) == \
            b"Content-length: 42\r\n" + spam + b"\r\n"

def test_a_check_is_answered_as_spamc_parses_it():
    v = Verdict(0.999, 0.9, 0.2)
    req = _read(_request("CHECK", MESSAGE))
    assert answer(req, v) == f"SPAMD/1.1 0 EX_OK\r\nSpam: True ; {format_score(v.score, 'spam')} / 5.0\r\n\r\n".encode()
    headers = answer(_read(_request("HEADERS", MESSAGE)), Verdict(0.01, 0.9, 0.2))
    status, rest = headers.split(b"\r\n\r\n", 1)
    assert status.startswith(b"SPAMD/1.1 0 EX_OK\r\nContent-length: ") and b"Spam: False ; " in status
    assert rest.startswith(b"Subject: hello\r\n") and rest.endswith(b"X-Chainrule-Spam-Verdict: ham\r\n\r\n")
    assert int(status.split(b"Content-length: ")[1].split(b"\r\n")[0]) == len(rest)  # HEADERS: no body


_FIELDS = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 60) for i in range(40))  # 2,960 bytes


@pytest.mark.parametrize(("message", "head"), [
    (MESSAGE + b"." * 2000, b"Subject: hello\r\nFrom: a@example.org\r\n\r\n"),
    # a header block over the limit (1000 bytes): it was refused, and `spamc --headers -x` failed
    (_FIELDS + b"\r\nbody\r\n", _FIELDS + b"\r\n"),
    (b"Subject: " + b"x" * 3000, b"Subject: " + b"x" * 3000),  # no blank line: spamc appends nothing
    # a body line right after the fields, a blank line beyond the limit: spamc appends what follows
    # it, and everything before it was lost (the fields up to the body line were handed back)
    (b"Subject: hello\r\nHi Alice, see you at noon.\r\n" + _FIELDS + b"\r\nlater\r\n",
     b"Subject: hello\r\nHi Alice, see you at noon.\r\n" + _FIELDS + b"\r\n"),
    # the blank line across two of the daemon's reads (CHUNK bytes each)
    (b"X: " + b"a" * (CHUNK - 5) + b"\r\n\r\nbody", b"X: " + b"a" * (CHUNK - 5) + b"\r\n\r\n"),
    (b"X: " + b"a" * (CHUNK - 4) + b"\n\nbody", b"X: " + b"a" * (CHUNK - 4) + b"\n\n"),
], ids=["short header block", "header block over the limit", "no blank line", "a body line first",
        "CRLF CRLF across reads", "LF LF across reads"])
def test_headers_of_a_message_over_the_limit_hands_back_its_header_block_however_long(message, head):
    """spamc --headers writes the answer, then the message from its first blank line on
    (`spamc_body_start`): of a message over the limit, the answer is the message's own header block,
    unchanged, up to there, however far beyond the limit that is, and no more is kept."""
    for request in (_request("HEADERS", message), _request("HEADERS", message, length=False),
                    _request("HEADERS", zlib.compress(message), "Compress: zlib")):
        req = _read(request, limit=1000)
        assert req.too_big and req.spool.read() == head and req.spooled == len(head)
        req.spool.close()
        assert spooled_answer_head(req) == \
            b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: False ; 0.0 / 5.0\r\n\r\n" % len(head)
