"""Reading and parsing mail (chainrule.data.mail): real SpamAssassin messages, every reader, bad input."""

import base64
import email
import email.parser
import email.policy
import io
import mailbox
import os
import re
import tarfile
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainrule.data.mail import (
    HAM,
    MAX_BYTES,
    SPAM,
    _content_charset,
    annotate,
    base64_then_text,
    decode_text,
    html_to_text,
    label_from_path,
    parse_message,
    read_messages,
    read_sms,
    url_domain,
)
from chainrule.data.text import Hasher, HashingConfig, message_tokens

DATA = os.environ.get("CHAINRULE_DATA")


@pytest.fixture(scope="module")
def corpus():
    if not DATA:
        pytest.skip("CHAINRULE_DATA is not set")
    tarballs = sorted((Path(DATA) / "spamassassin").glob("*.tar*"))
    return [m for m in read_messages(tarballs) if not m.error]


def _first(corpus, predicate):
    for m in corpus:
        msg = email.message_from_bytes(m.data)
        if predicate(msg, m.data):
            return m, msg
    pytest.fail("no such message in the corpus")


def test_tarball_layout_labels(corpus):
    assert len(corpus) == 3250
    assert sum(m.label == SPAM for m in corpus) == 500
    assert all(m.label in (SPAM, HAM) for m in corpus)
    assert not any(m.source.endswith("/cmds") for m in corpus)


def test_real_multipart_message(corpus):
    m, msg = _first(corpus, lambda msg, raw: msg.get_content_type() == "multipart/alternative")
    p = parse_message(m.data)
    assert p.parts >= 3 and (p.text.strip() or p.html_text.strip())
    assert p.subject == str(email.header.make_header(email.header.decode_header(msg["Subject"] or "")))


def test_real_html_only_message(corpus):
    m, msg = _first(corpus, lambda msg, raw: msg.get_content_type() == "text/html")
    p = parse_message(m.data)
    assert p.html_text.strip() and not p.text.strip()
    assert "<" not in p.html_text or ">" not in p.html_text.split("<", 1)[1][:40]  # markup is gone
    assert "has:html-only" in message_tokens(p)


def test_real_base64_and_quoted_printable_text(corpus):
    m, msg = _first(corpus, lambda msg, raw: not msg.is_multipart() and msg.get_content_maintype() == "text"
                    and str(msg.get("Content-Transfer-Encoding", "")).lower().strip() == "base64")
    p = parse_message(m.data)
    text = p.text + p.html_text
    assert len(text.split()) > 5 and base64.b64encode(text[:30].encode()).decode()[:20] not in m.data.decode("latin-1")
    m, msg = _first(corpus, lambda msg, raw: not msg.is_multipart() and msg.get_content_type() == "text/plain"
                    and str(msg.get("Content-Transfer-Encoding", "")).lower().strip() == "quoted-printable"
                    and b"=3D" in raw)
    p = parse_message(m.data)
    assert "=3D" not in p.text and "=\n" not in p.text


def _b64_then_footer(msg, raw):
    if msg.is_multipart() or str(msg.get("Content-Transfer-Encoding", "")).lower().strip() != "base64":
        return False
    msg.get_payload(decode=True)
    return bool(msg.defects)


def test_real_base64_body_with_list_footer_is_decoded(corpus):
    # A mailing list appended its plain-text footer to a base64 body: the email package alone
    # returns the raw base64; the message's own text must be read, and the footer kept.
    m, msg = _first(corpus, _b64_then_footer)
    p = parse_message(m.data)
    text = p.text + p.html_text
    body = msg.get_payload()
    encoded = body.strip().split("\n\n")[0]  # the base64 run, up to the footer
    assert encoded.splitlines()[0] not in text  # no base64 left
    decoded = re.sub(r"<[^>]*>", " ", base64.b64decode(encoded).decode("latin-1"))
    words = [w for w in decoded.split() if w.isalpha() and len(w) > 3]
    assert len(words) > 10 and all(w in text for w in words)
    footer = [ln for ln in body.strip().splitlines() if ln.strip()][-1].strip()
    assert footer in text or any(footer in u for u in p.urls)


def test_base64_then_text():
    body = base64.encodebytes(b"the message itself, long enough for two lines of base64 " * 2)
    raw = (b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n" + body
           + b"\n--\nlist footer: http://lists.example.org/listinfo\n")
    p = parse_message(raw)
    assert p.text.count("the message itself") == 2 and "list footer:" in p.text
    assert "lists.example.org" in [url_domain(u) for u in p.urls]
    assert base64_then_text(b"\n" + body) == b"the message itself, long enough for two lines of base64 " * 2 + b"\n"
    assert base64_then_text(b"not base64 at all!\n") == b"\nnot base64 at all!\n"


def test_real_non_utf8_message(corpus):
    m, msg = _first(corpus, lambda msg, raw: not msg.is_multipart()
                    and (msg.get_content_charset() or "") in ("iso-8859-1", "windows-1252", "gb2312", "big5",
                                                              "ks_c_5601-1987", "euc-kr", "koi8-r")
                    and any(b > 127 for b in msg.get_payload(decode=True) or b""))
    p = parse_message(m.data)
    payload = msg.get_payload(decode=True)
    text = p.text + p.html_text
    assert "\ufffd" not in text
    assert text.strip() and (payload.decode(msg.get_content_charset()).strip()[:20] in text
                             or msg.get_content_type() == "text/html")


def test_remembered_charset_is_the_email_packages(corpus):
    # _content_charset caches get_content_charset() by the Content-Type value; on every text part
    # of the corpus (charsets declared quoted, unquoted, in any case, or not at all) it must agree
    seen = set()
    for m in corpus:
        for part in email.message_from_bytes(m.data, policy=email.policy.compat32).walk():
            try:
                expected = part.get_content_charset()
            except Exception:
                expected = None
            assert _content_charset(part) == expected
            seen.add(expected)
    assert len(seen) > 10  # (many charsets were compared)


def test_strict_policy_matches_on_clean_message(corpus):
    m = corpus[0]
    assert parse_message(m.data, strict=True).subject == parse_message(m.data).subject


# --- readers ------------------------------------------------------------------------------------

def _msg(subject: str, body: str = "hello there\n") -> bytes:
    return f"From: a@example.com\nTo: b@example.org\nSubject: {subject}\n\n{body}".encode()


def test_directory_recursive_and_labels(tmp_path):
    (tmp_path / "spam" / "deep").mkdir(parents=True)
    (tmp_path / "easy_ham").mkdir()
    (tmp_path / "spam" / "deep" / "1").write_bytes(_msg("one"))
    (tmp_path / "easy_ham" / "2").write_bytes(_msg("two"))
    (tmp_path / "easy_ham" / ".hidden").write_bytes(_msg("hidden"))
    got = {parse_message(m.data).subject: m.label for m in read_messages([tmp_path])}
    assert got == {"one": SPAM, "two": HAM}
    assert label_from_path("x/spam-archive/ham/1") == HAM and label_from_path("inbox/1") is None


def test_mbox_reader_unquotes_from_lines(tmp_path):
    box = mailbox.mbox(tmp_path / "spam.mbox")
    for i in range(3):
        box.add(_msg(f"m{i}", "line\nFrom the start of a line\n"))
    box.flush()
    box.close()
    msgs = list(read_messages([tmp_path / "spam.mbox"]))
    assert [parse_message(m.data).subject for m in msgs] == ["m0", "m1", "m2"]
    assert all(m.label == SPAM for m in msgs)
    assert b"\nFrom the start" in msgs[0].data


def test_maildir_reader(tmp_path):
    md = mailbox.Maildir(tmp_path / "ham-box", create=True)
    md.add(_msg("a"))
    md.add(_msg("b"))
    msgs = list(read_messages([tmp_path / "ham-box"]))
    assert sorted(parse_message(m.data).subject for m in msgs) == ["a", "b"]
    assert all(m.label == HAM for m in msgs)


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz"), ("w:bz2", ".tar.bz2")])
def test_tar_reader(tmp_path, mode, suffix):
    path = tmp_path / f"corpus{suffix}"
    with tarfile.open(path, mode) as tar:
        for name, data in (("spam/1", _msg("s")), ("hard_ham/2", _msg("h")), ("cmds", b"mv a b\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    got = {parse_message(m.data).subject: m.label for m in read_messages([path])}
    assert got == {"s": SPAM, "h": HAM}


def test_stdin_reader(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(_msg("piped"))))
    (m,) = list(read_messages(["-"]))
    assert m.source == "-" and parse_message(m.data).subject == "piped"


def test_sms_reader(tmp_path):
    f = tmp_path / "sms.txt"
    f.write_bytes(b"ham\tOk lar...\nspam\tFree entry \xa3100\n\n")
    texts, labels = read_sms(f)
    assert labels == [HAM, SPAM] and texts[0] == "Ok lar..." and "100" in texts[1]
    f.write_bytes(b"ham\tfine\nnot a label line\n")
    with pytest.raises(ValueError, match=":2:"):
        read_sms(f)


# --- bad input ----------------------------------------------------------------------------------

BAD = {
    "malformed_mime": b"Content-Type: multipart/mixed; boundary=\"b\"\nSubject: x\n\n"
                      b"--b\nContent-Type: text/plain\n\nhi\n"
                      b"--b\nContent-Type: multipart/alternative\n\nno boundary at all\n",
    "broken_base64": b"Subject: b64\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n"
                     b"SGVsbG8gd29ybGQ!!!*&^%\n===\nQQ\n",
    "invalid_charset": b"Subject: =?x-no-such-charset?q?hi?=\nContent-Type: text/plain; charset=x-no-such-charset\n\n"
                       b"caf\xe9 cr\xe8me\n",
    "binary_junk": bytes(range(256)) * 40,
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_never_crashes(name):
    p = parse_message(BAD[name])
    toks = message_tokens(p)
    Hasher(HashingConfig(n_features=256)).row(toks)
    if name == "empty":
        assert p.problem == "empty message"
    if name == "invalid_charset":
        assert "café" in p.text or "caf" in p.text


def test_huge_message_is_capped(tmp_path):
    big = tmp_path / "big.eml"
    with open(big, "wb") as f:
        f.write(b"Subject: big\nContent-Type: text/plain\n\n")
        line = b"x" * 99 + b"\n"
        for _ in range(25 * 1024 * 1024 // 100):
            f.write(line)
    (m,) = list(read_messages([big]))
    assert m.truncated and len(m.data) == MAX_BYTES
    assert parse_message(m.data).subject == "big"


def test_unreadable_sources_are_reported_not_raised(tmp_path):
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tarball")
    msgs = list(read_messages([tmp_path / "missing", tmp_path / "broken.tar.gz"]))
    assert len(msgs) == 2 and all(m.error and "\n" not in m.error for m in msgs)


def test_charset_fallbacks():
    assert decode_text("naïve".encode("cp1252"), "utf-8") == "naïve"
    assert decode_text(b"\x81\x8d\x8f", "no-such") == "\x81\x8d\x8f"  # latin-1 takes anything
    assert decode_text("日本".encode(), "bogus") == "日本"


def test_html_to_text_and_domains():
    text, links = html_to_text("<html><style>p{}</style><script>var x</script><p>Buy <b>now</b>"
                               "<a href='http://Shop.Example.COM:80/x?y'>here</a></p></html>")
    assert "Buy" in text and "now" in text and "var x" not in text and "p{}" not in text
    assert url_domain(links[0]) == "shop.example.com"
    assert html_to_text("")[0].strip() == ""


@pytest.mark.parametrize("nl", [b"\n", b"\r\n"])
def test_annotate_keeps_body_bytes(nl):
    body = nl.join([b"", b"line one", b"", b"From me", b"\x00\xff binary-ish", b""])
    raw = b"Subject: hi" + nl + b"From: a@b.c" + nl + body
    out = annotate(raw, True, 0.987654)
    head, _, rest = out.partition(nl + nl)
    assert rest == body[len(nl):]
    assert b"X-Chainrule-Spam: yes" + nl in out and b"X-Chainrule-Spam-Probability: 0.987654" in head
    assert out.startswith(b"Subject: hi" + nl + b"From: a@b.c" + nl)


# --- property tests -----------------------------------------------------------------------------

_CTYPES = ["text/plain", "text/html", "image/gif", "application/octet-stream", "multipart/mixed", "text/x-weird",
           "message/rfc822", "multipart/alternative", "bogus"]
_CTES = ["7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "garbage"]
_CHARSETS = ["utf-8", "iso-8859-1", "gb2312", "x-nonexistent", "", "utf-16"]


@st.composite
def mime_trees(draw, depth=0):
    ctype = draw(st.sampled_from(_CTYPES if depth < 3 else _CTYPES[:4]))
    headers = [f"Content-Type: {ctype}"]
    cs = draw(st.sampled_from(_CHARSETS))
    if cs:
        headers[0] += f"; charset={cs}"
    if draw(st.booleans()):
        headers.append(f"Content-Transfer-Encoding: {draw(st.sampled_from(_CTES))}")
    if draw(st.booleans()):
        headers.append("Content-Disposition: attachment; filename=x")
    if ctype.startswith("multipart"):
        boundary = draw(st.sampled_from(["b1", "b2", "", "=="]))
        headers[0] += f'; boundary="{boundary}"'
        kids = draw(st.lists(mime_trees(depth + 1), max_size=3))
        body = b"".join(b"--" + boundary.encode() + b"\n" + k + b"\n" for k in kids)
        if draw(st.booleans()):
            body += b"--" + boundary.encode() + b"--\n"
    else:
        body = draw(st.binary(max_size=300))
    subject = draw(st.text(max_size=30)).encode("utf-8", "surrogatepass")
    return b"\n".join(h.encode() for h in headers) + b"\nSubject: " + subject + b"\n\n" + body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=2000), mime_trees()))
def test_property_reader_and_tokeniser_never_raise(data):
    p = parse_message(data)
    p2 = parse_message(data, strict=True)
    for parsed in (p, p2):
        Hasher(HashingConfig(n_features=1024, char_ngrams=4)).row(message_tokens(parsed))
    assert annotate(data, False, 0.5).endswith(data.partition(b"\n\n")[2]) or b"\n\n" not in data


def test_roundtrip_email_message_object():
    m = EmailMessage()
    m["Subject"] = "Grüße"
    m["From"] = "Jörg <j@example.de>"
    m.set_content("Hallo Welt – schöne Grüße")
    m.add_alternative("<p>Hallo <b>Welt</b></p>", subtype="html")
    p = parse_message(m.as_bytes())
    assert p.subject == "Grüße" and "Jörg" in p.from_ and "schöne" in p.text and "Welt" in p.html_text


# --- the header-block fast path -----------------------------------------------------------------

_SPLIT_CASES = {
    "lf": b"Subject: a\nX-A: b\n\tfolded\n\nbody\n\nmore\n",
    "crlf": b"Subject: a\r\nX-A: b\r\n\r\nbody\r\n\r\nmore\r\n",
    "unixfrom": b"From a@b Mon Jan  1 00:00:00 2001\nSubject: a\n\nbody\n",
    "no_blank_line": b"Subject: a\nX-A: b\n",
    "body_line_before_blank": b"Subject: a\nnot a header\nstill body\n\nrest\n",
    "lone_cr_blank": b"Subject: a\r\rbody\n\nrest\n",
    "mixed_endings": b"Subject: a\n\r\nbody\r\n",
    "empty_headers": b"\nbody only\n",
    "eight_bit_body": b"Subject: a\nContent-Transfer-Encoding: 8bit\n\ncaf\xe9 \xff\xfe\n",
    "base64_body": b"Subject: a\nContent-Transfer-Encoding: base64\n\n" + base64.encodebytes(b"hello world" * 20),
}


@pytest.mark.parametrize("name", sorted(_SPLIT_CASES))
def test_header_block_fast_path_matches_full_headers_only_parse(name):
    from chainrule.data.mail import _compat32_headers

    raw = _SPLIT_CASES[name]
    full = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw, headersonly=True)
    fast = _compat32_headers(raw)
    assert fast.items() == full.items() and fast.get_unixfrom() == full.get_unixfrom()
    assert fast.get_payload() == full.get_payload()
    assert fast.get_payload(decode=True) == full.get_payload(decode=True)
    assert [type(d) for d in fast.defects] == [type(d) for d in full.defects]


def test_header_block_fast_path_on_every_corpus_message(corpus):
    from chainrule.data.mail import _compat32_headers

    parser = email.parser.BytesParser(policy=email.policy.compat32)
    checked = 0
    for m in corpus:
        if not m.data.partition(b"\n\n")[0].isascii():
            continue  # 8-bit header blocks are decoded as text on purpose
        full, fast = parser.parsebytes(m.data, headersonly=True), _compat32_headers(m.data)
        assert fast.items() == full.items() and fast.get_unixfrom() == full.get_unixfrom(), m.source
        assert fast.get_payload() == full.get_payload(), m.source
        checked += 1
    assert checked > 3000


_HEADER_LINES = [b"Subject: x", b"X-H: y", b"\tcont", b" ", b"no colon", b"", b"From a", b":bad", b"From: b",
                 b"X:", b"body \xe9", b"\r", b"a\rb: c"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_HEADER_LINES), st.sampled_from([b"\n", b"\r\n", b"\r"])), max_size=12))
def test_property_header_block_fast_path_is_exact(lines):
    """Random header blocks (line endings mixed, defects of every kind): the same headers, envelope
    line, payload and defects as the feed parser's own headers-only parse."""
    from chainrule.data.mail import _compat32_headers

    raw = b"".join(line + nl for line, nl in lines) + b"\n"
    if not raw.partition(b"\n\n")[0].isascii():
        return  # 8-bit header blocks are decoded as text on purpose (next test)
    full = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw, headersonly=True)
    fast = _compat32_headers(raw)
    assert fast.items() == full.items() and fast.get_payload() == full.get_payload()
    assert fast.get_unixfrom() == full.get_unixfrom()
    assert [type(d) for d in fast.defects] == [type(d) for d in full.defects]


def test_eight_bit_headers_are_decoded_not_replaced():
    utf8 = "Subject: Grüße aus Köln\nFrom: Jörg <j@example.de>\n\nHallo\n".encode()
    p = parse_message(utf8)
    assert p.subject == "Grüße aus Köln" and p.from_ == "Jörg <j@example.de>" and "Hallo" in p.text
    latin1 = "Subject: Robbie signs \xa380m deal\nContent-Type: text/plain; charset=iso-8859-1\n\ncaf\xe9\n"
    p = parse_message(latin1.encode("latin-1"))
    assert p.subject == "Robbie signs £80m deal" and "café" in p.text
    assert "subject:money:£dd" in message_tokens(p)
    multipart = ("Subject: Grüße\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\n"
                 "hi\n--b--\n").encode()
    p = parse_message(multipart)
    assert p.subject == "Grüße" and "hi" in p.text and p.parts == 2
