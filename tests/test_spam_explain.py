"""Explaining and classifying one message (chainrule.apps.spam.explain): never raises on any
bytes, and an SMS pasted without headers reaches the features an SMS was trained on."""

import re
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainrule.apps.spam import SpamModel, build_network, classify_message, explain_row, looks_like_email
from chainrule.data.corpora import SPAM
from chainrule.data.mime import header_block_lines, parse_message
from chainrule.data.text import HashingConfig, message_tokens, sms_tokens

_TINY = SpamModel(build_network(1 << 10, (4,), seed=0), {"task": "spam"}, HashingConfig(n_features=1 << 10),
                  spam_cutoff=0.9, ham_cutoff=0.1)


@st.composite
def _mime(draw):
    boundary = draw(st.sampled_from(["a", "", "x y"]))
    parts = draw(st.lists(st.tuples(st.sampled_from(["text/plain", "text/html", "image/png", "multipart/mixed"]),
                                    st.sampled_from(["base64", "quoted-printable", "8bit", "nonsense"]),
                                    st.sampled_from(["utf-8", "latin-1", "x-bogus", "utf-7"]),
                                    st.binary(max_size=200)), max_size=4))
    body = b"".join(f"--{boundary}\nContent-Type: {c}; charset={cs}\nContent-Transfer-Encoding: {e}\n\n".encode()
                    + payload + b"\n" for c, e, cs, payload in parts)
    return f'Subject: x\nContent-Type: multipart/mixed; boundary="{boundary}"\n\n'.encode() + body


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=3000), _mime()))
def test_property_classifier_never_raises(raw):
    r = classify_message(_TINY, raw)
    assert r["label"] in ("spam", "ham", "unsure") and 0.0 <= r["probability"] <= 1.0


def test_classify_message_tokenises_an_sms_as_training_saw_it():
    """Pasted text with no email headers is an SMS: it must reach the same hashed features as the
    SMS lines the model was trained on, not the features of a header-less email."""
    sms = "URGENT: You have won a £900 prize! Call 09061701461 or visit www.win.example now"
    assert not looks_like_email(sms.encode())
    for text in ("From now on you are a WINNER! Claim your FREE 1000 cash prize, call 09061701461 now",
                 "From tomorrow onwards eve 6 to 3 work.", "from www.Applausestore.com MonthlySubscription"):
        assert not looks_like_email(text.encode()), text  # (they were read as mbox "From " lines)
    assert sms_tokens(sms, _TINY.config) != message_tokens(parse_message(sms.encode()), _TINY.config)
    assert classify_message(_TINY, sms.encode())["probability"] == pytest.approx(
        explain_row(_TINY, sms_tokens(sms, _TINY.config))[0], abs=1e-7)
    # saved as Windows-1252 ("£" is byte 0xA3): read as `train --sms` reads such a line, not as U+FFFD
    assert classify_message(_TINY, sms.encode("cp1252"))["probability"] == pytest.approx(
        explain_row(_TINY, sms_tokens(sms, _TINY.config))[0], abs=1e-7)

    # a text that starts like a header field is an email only with a blank line or another field
    # after it: these were read as one-line emails (to an SMS model: unsure, where --sms said spam)
    for text in ("Subject: free prize call now 0800 123 456", "To: all - free prize call now 0800 123 456\n",
                 "From: mum\nsee you at 6", "Date: tomorrow?\r\nok"):
        assert not looks_like_email(text.encode()), text
    email = b"Received: from mx.example\nFrom: a@example.com\nSubject: URGENT: call now\n\nhello"
    folded = b"Received: from a\n" + b"\tby b with c\n" * 200 + b"Subject: x\n\nbody"  # (past the first KB)
    for raw in (email, b"From a@example.com Mon Jan  1 00:00:00 2024\n" + email, b"X-Spam: no\n\nhi",
                b"Subject: hi\r\n\r\nthere", folded,
                b"\xef\xbb\xbf" + email):  # (the last saved by a Windows program, with a byte order mark)
        assert looks_like_email(raw), raw
        assert classify_message(_TINY, raw)["probability"] == pytest.approx(
            explain_row(_TINY, message_tokens(parse_message(raw), _TINY.config))[0], abs=1e-7)


# Fields that mail software writes above all others (a signature, the receiving server's checks) or
# that a client may write first: none was on the list of names an email was known to start with.
FIRST_FIELDS = (b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel;\n\th=from:to:subject; bh=abc=; b=xyz\n",
                b"ARC-Seal: i=1; a=rsa-sha256; t=1700000000; cv=none; d=example.com; s=arc;\n\tb=abc\n",
                b"Authentication-Results: mx.example.com; spf=pass smtp.mailfrom=example.com\n",
                b"Received-SPF: pass (mx.example.com: domain of example.com designates 192.0.2.1)\n",
                b"In-Reply-To: <1@example.com>\n", b"References: <1@example.com>\n", b"Bcc: you@example.com\n")


def _without_envelope(raw: bytes) -> bytes:
    """A corpus message without its mbox "From " line: the mail as a mail program saves it."""
    return re.sub(rb"\AFrom [^\n]*\n", b"", raw)


def _mail_probability(raw: bytes) -> float:
    return explain_row(_TINY, message_tokens(parse_message(raw), _TINY.config))[0]


def test_an_email_is_read_as_one_whatever_field_it_starts_with(spamassassin_messages, data_root):
    """A mail whose first field was none of a fixed list of names (DKIM-Signature, ARC-Seal,
    Authentication-Results, ...) was read as an SMS: as each of these the 3,250 corpus messages were
    0 emails of 3,250. Any field name starts an email where the lines after it go on as a header
    block; one field and a blank line after it is an email only with a name mail software writes
    first, as "URGENT: call now" is an SMS, and every SMS of the collection is still one."""
    corpus = [_without_envelope(m.data) for m in spamassassin_messages]
    assert len(corpus) == 3250 and all(looks_like_email(m.data) for m in spamassassin_messages)
    assert all(looks_like_email(raw) for raw in corpus)
    for field in FIRST_FIELDS:
        assert all(looks_like_email(field + raw) for raw in corpus), field
    spam = next(raw for m, raw in zip(spamassassin_messages, corpus, strict=True) if m.label == SPAM)
    for field in FIRST_FIELDS:
        result = classify_message(_TINY, field + spam)
        assert result["read_as"] == "mail" and result["header_lines"] == header_block_lines(field + spam)
        assert result["probability"] == pytest.approx(_mail_probability(field + spam), abs=1e-7)

    lines = (data_root / "sms-spam" / "SMSSpamCollection").read_bytes().splitlines()
    assert len(lines) == 5574 and not [line for line in lines if looks_like_email(line.partition(b"\t")[2])]
    for text in (b"Note: call 09061701461 now\n\nto claim your prize", b"URGENT:\n\ncall now",
                 b"Sorry: I'll call later\nbye", b"Hi: there\n  how are you\nok"):
        assert not looks_like_email(text), text
    for raw in (b"Comments: a\nKeywords: b\n\nbody", b"Comments: a\n\tb\n\nbody"):  # (a header block)
        assert looks_like_email(raw), raw


def test_an_email_pasted_below_blank_lines_is_parsed_from_its_first_field(spamassassin_messages):
    """A mail pasted with a blank line above it was said to be read as mail, and parsed from that
    line: an empty header block, every header read as body text (header_lines 1, no header
    tokens). It is parsed from its first field, and the lines above it count in header_lines, which
    a page counts from the top of the text it sent."""
    spam = next(_without_envelope(m.data) for m in spamassassin_messages if m.label == SPAM)
    alone = classify_message(_TINY, spam)
    assert alone["header_lines"] == header_block_lines(spam) > 10
    for blank, lines in ((b"\n", 1), (b"\r\n\r\n", 2), (b" \n\t\n  ", 2), (b"\xef\xbb\xbf\n", 1)):
        pasted = classify_message(_TINY, blank + spam)
        assert pasted["read_as"] == "mail"
        assert pasted["probability"] == pytest.approx(alone["probability"], abs=1e-7), blank
        assert pasted["top_tokens"] == alone["top_tokens"]
        assert pasted["header_lines"] == alone["header_lines"] + lines, blank
    # declared an email (sent as message/rfc822), a text is parsed as one whatever it starts with
    one_field = b"\nComments: win a prize\n\ncall now"
    assert not looks_like_email(one_field)
    declared = classify_message(_TINY, one_field, mail=True)
    assert (declared["read_as"], declared["header_lines"]) == ("mail", 3)
    assert declared["probability"] == pytest.approx(_mail_probability(one_field[1:]), abs=1e-7)


def test_two_words_in_one_bucket_with_opposite_signs_push_opposite_ways():
    """A hash collision: the bucket's share was split evenly, so a word that pushes towards ham on
    its own was listed towards spam beside its partner, with the same share. Each word's share is
    its own signed term's, and the shares still add up to the bucket's."""
    hasher = _TINY.hasher
    # words of several lengths: CRC-32 is linear, and words of one length and shape that share a
    # bucket share their sign too
    words = ["x" * (i % 7) + str(i * i) for i in range(400)]
    by_bucket = {}
    for word in words:
        bucket, sign = hasher.token_features([word])[word]
        by_bucket.setdefault(bucket, {})[sign] = word
    plus, minus = next((pair[1], pair[-1]) for pair in by_bucket.values() if len(pair) == 2)
    for message in ([plus, plus, minus], [plus, minus, minus, minus]):
        _, spam, ham = explain_row(_TINY, message, top=5)
        shares = dict(spam + ham)
        alone = {word: explain_row(_TINY, [word], top=5) for word in (plus, minus)}
        sides = {word: "spam" if alone[word][1] else "ham" for word in (plus, minus)}
        assert sides[plus] != sides[minus]  # (opposite signs in one bucket: opposite directions alone)
        for word in (plus, minus):
            assert (shares[word] > 0) == (sides[word] == "spam"), (message, shares, sides)


def test_explanations_stay_right_while_other_threads_score_on_the_same_network():
    """The daemon checks messages on several threads while REPORT explains one on another: the
    explanation's backward pass read the layers' caches that a check in between had replaced
    (2,752 of 3,000 explanations wrong when the check held no lock and the explanation a lock of its own)."""
    model = SpamModel(build_network(1 << 10, (16,), seed=0), {"task": "spam"}, HashingConfig(n_features=1 << 10),
                      spam_cutoff=0.9, ham_cutoff=0.1)
    explained = message_tokens(parse_message(b"Subject: cheap meds\n\nbuy cheap meds now, limited offer\n"),
                               model.config)
    expected = explain_row(model, explained, top=5)
    others = [("sms", f"message number {i} about lunch at noon") for i in range(50)]
    stop, wrong = threading.Event(), []

    def check():
        while not stop.is_set():
            for item in others:
                model.score([item])

    def explain():
        for _ in range(300):
            if explain_row(model, explained, top=5) != expected:
                wrong.append(1)

    checkers = [threading.Thread(target=check) for _ in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # (threads take turns often, as a busy daemon's do)
    try:
        for t in checkers:
            t.start()
        explain()
    finally:
        stop.set()
        for t in checkers:
            t.join()
        sys.setswitchinterval(interval)
    assert not wrong
