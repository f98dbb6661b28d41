"""Parsing RFC 822 / MIME messages into the plain text a tokeniser needs: `parse_message`.

`parse_message` never raises: whatever the MIME structure, charset or base64 does, it returns a
`ParsedMessage` (with `problem` set when it had to fall back to treating the bytes as plain text),
so one odd message never stops a run.

Parsing uses Python's `email` package with its `compat32` policy (`COMPAT32`: a Content-Type's
parameters past its 63rd ";" left out), and decodes RFC 2047 headers, charsets and transfer
encodings itself: `policy.default`'s header objects made parsing 10x slower
(5.0 against 0.5 ms per SpamAssassin message), and classification speed matters (a filter sits in
the mail path). The one place where `policy.default` read headers better, raw 8-bit header bytes,
this module handles itself, and better (`_decode_header_block`). The feed parser sees only the
header block, and a well-formed block not even that (`_simple_header_block` makes the same
`Message` with one regex); a single-part body is decoded straight from its bytes, and only
multipart messages get the full MIME parse.
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
import re
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from itertools import chain

from selectolax.lexbor import LexborHTMLParser, SelectolaxError

from chainrule.data.urls import find_urls


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
# Decoding.

# Labels mailers write that Python's codecs do not know (most from the WHATWG Encoding Standard's
# table, which browsers and mail programs read labels by), by the codec that reads them. A label
# left out, or one for no text (x-unknown, unknown-8bit, default), is an unknown charset.
_LABELS = {label: codec for codec, labels in {
    "cp932": "windows-31j cswindows31j x-sjis",
    "gb18030": "csgb2312 gb_2312 gb_2312-80 x-gbk",
    "cp950": "cn-big5 x-x-big5",
    "cp949": "cseuckr csksc56011987 iso-ir-149 ks_c_5601-1989 ksc_5601 windows-949",
    "euc_jp": "cseucpkdfmtjapanese x-euc-jp",
    "iso8859_6": "csiso88596e csiso88596i iso-8859-6-e iso-8859-6-i",
    "iso8859_8": "csiso88598e csiso88598i iso-8859-8-e iso-8859-8-i logical visual",
    "cp874": "dos-874 windows-874",
    "mac_cyrillic": "x-mac-cyrillic x-mac-ukrainian",
    "mac_roman": "csmacintosh mac x-mac-roman",
    "koi8_r": "koi koi8",
    "koi8_u": "koi8-ru",
    "iso8859_7": "sun_eu_greek",
    "iso8859_15": "csisolatin9",
    "utf-8": "unicode-1-1-utf-8",
    "utf-7": "unicode-1-1-utf-7",
}.items() for label in labels.split()}
_LABELS.update({f"x-cp125{n}": f"cp125{n}" for n in range(9)})
_LABELS.update({f"iso8859{n}": f"iso8859_{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15)})
# What mailers write under a label (by the name Python's codec for it has): the Windows code page
# that extends the standard the label names. GBK text goes out as gb2312, Outlook's CP949 as
# euc-kr, CP932 as shift_jis (its NEC and IBM symbols, "①", included), CP950 as big5 ("€"),
# Windows-1252 as iso-8859-1 ("’", "€"), as the WHATWG standard reads those labels too.
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "euc_kr": "cp949", "shift_jis": "cp932", "big5": "cp950",
              "iso8859-1": "cp1252", "iso8859-9": "cp1254", "tis-620": "cp874", "iso8859-11": "cp874",
              "iso2022_jp": "iso2022_jp_ext"}  # (the last: half-width katakana, as Windows writes them)

# Python's codecs for its own purposes, which no mail program reads text by: under their names a
# plain body reads as other text, hiding the words that mail programs show, and punycode reads it in
# time growing with the square of its length.
_PYTHON_ONLY = {"punycode", "idna", "unicode-escape", "raw-unicode-escape", "charmap", "undefined"}


@functools.lru_cache(maxsize=1024)
def text_codec(charset: str) -> str | None:
    """The Python codec that reads text labelled `charset` as mail programs read it (`_LABELS`,
    `_SUPERSETS`), or None for an unknown charset. Python codecs that are no text encoding (zlib,
    base64, rot13) are unknown too: their decoders make bytes of bytes, or raise OSError; and so
    are those of `_PYTHON_ONLY`."""
    label = charset.strip().strip('"').lower()
    try:
        info = codecs.lookup(_LABELS.get(label, label))
    except (LookupError, ValueError):  # (ValueError: a NUL in the name)
        return None
    if not info._is_text_encoding or info.name in _PYTHON_ONLY:  # (`bytes.decode` refuses the former)
        return None
    return _SUPERSETS.get(info.name, info.name)


def decode_text(data: bytes, charset: str | None) -> str:
    """Bytes -> str in the declared charset (as `text_codec` reads its label) or UTF-8, falling back
    to Windows-1252, then Latin-1 (which maps every byte, so this never fails). Spam often
    declares a wrong charset.

    8-bit text that is valid UTF-8 (but for a cut last character) is read as UTF-8 whatever its
    label says: mailers send UTF-8 under a Latin-1 or a GB2312 label, text in another charset is
    almost never valid UTF-8, and GB18030 reads most UTF-8 without an error, as garbage. (7-bit
    text, such as ISO-2022-JP's, is ASCII and so valid UTF-8: it is left to its charset.) A few
    bytes that fit neither (an NEC symbol in ISO-2022-JP, a stray byte) are replaced, U+FFFD, where
    the rest fits the declared charset (`_mostly_read`): read as Windows-1252, the whole text
    would be lost.

    Text cut at a byte limit (a part past the text limit, a message past --max-bytes: 8-bit, or
    base64 cut anywhere) loses the character the cut split, in UTF-8 or a declared multi-byte
    charset (GB2312, UTF-16), not its encoding.
    """
    declared = text_codec(charset) if charset else None
    eight_bit = not data.isascii()
    if eight_bit and declared and not declared.startswith("utf-"):  # (UTF-16's text is no 8-bit text)
        try:  # (a UTF-8 text cut short too, but not Latin-1's "Skytt\xe4": ASCII and a cut character)
            text = codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
        except UnicodeDecodeError:
            pass
        else:
            if not text.isascii():
                return text
    # the declared charset, then UTF-8 (for text with no label, or cut short under another; not for
    # ASCII under a label: a 7-bit charset that fails on it, ISO-2022-JP, reads it better with U+FFFD)
    for codec in dict.fromkeys((declared, "utf-8" if eight_bit or not declared else None)):
        if codec:
            try:
                return data.decode(codec)
            except ValueError:  # (UnicodeDecodeError is a ValueError)
                pass
            try:  # the text but an incomplete last character, which an incremental decoder keeps back
                return codecs.getincrementaldecoder(codec)().decode(data, final=False)
            except ValueError:
                pass
    if declared:
        try:
            text = codecs.getincrementaldecoder(declared)("replace").decode(data, final=False)
        except ValueError:  # (a codec with no "replace", as idna)
            pass
        else:
            if _mostly_read(text):
                return text
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _mostly_read(text: str) -> bool:
    """Whether the characters that a decoding with errors="replace" replaced are at most a quarter of
    `text`'s non-ASCII ones: a few stray bytes, not text in another charset than the declared one
    (Windows-1252 text labelled UTF-8 has every accent replaced)."""
    replaced = text.count("\ufffd")
    return 4 * replaced <= len(text) - len(text.encode("ascii", "ignore"))


def without_cut_character(data: bytes) -> bytes:
    """`data`, cut at a byte limit, without the start of a UTF-8 character the cut left at its end:
    read with it, the whole text is not UTF-8. Text that is not UTF-8 comes back as it is."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(data, final=False)  # (keeps an incomplete last character back, unread)
    except UnicodeDecodeError:
        return data
    pending, _ = decoder.getstate()
    return data[:len(data) - len(pending)]


# Raw 8-bit text in a header (RFC 6532 UTF-8, or spam's raw Latin-1) with the blanks around it:
# never part of an encoded word, which is ASCII. Equivalent to `(\s*[^\x00-\x7f]+\s*)`, but a match
# starts only where its blanks start: that pattern, tried at each blank of a run, scanned the run to
# its end, in time growing with the square of the run's length.
_RAW_TEXT = re.compile(r"((?:(?<!\s)\s+)?[^\x00-\x7f]+\s*)")


# The email package's decoder of encoded words takes time growing with the square of a header's
# length: a header is decoded in its first 8 KB only, the rest left out. The SpamAssassin corpus's
# longest header (a To) has 1,779 characters, and the tokens read 1,000 characters of an address or
# a Received line.
_MAX_ENCODED_HEADER = 8192


def decode_header(value) -> str:
    """An RFC 2047 header (`=?utf-8?b?...?=`) as text, tolerating bad encodings and charsets; one
    with encoded words is cut at `_MAX_ENCODED_HEADER` characters first (an encoded word cut there
    stays as it is written)."""
    if value is None:
        return ""
    value = str(value)  # (or an `email.header.Header`: compat32 makes one of raw 8-bit header bytes)
    if "=?" not in value:
        return value
    value = value[:_MAX_ENCODED_HEADER]
    if not value.isascii():
        # `email.header.decode_header` hands raw text beside an encoded word back
        # raw-unicode-escaped ("С" as "\u0421"): it stays as it is, the ASCII around it is decoded
        pieces = _RAW_TEXT.split(value)  # (the raw runs are the odd pieces)
        return "".join(piece if i % 2 else decode_header(piece) for i, piece in enumerate(pieces))
    try:
        parts = email.header.decode_header(value)
    except (ValueError, LookupError, AssertionError, IndexError):
        return value
    out = []
    for chunk, cs in parts:
        out.append(decode_text(chunk, cs) if isinstance(chunk, bytes) else chunk)
    return "".join(out)


# Elements a browser lays out apart from the text around them (blocks, list items, table cells,
# line breaks): only they part words. Inline elements and comments do not, so "V<b>ia</b>gra" and
# "Opr<!--D-->ah", a spam trick, read "Viagra" and "Oprah", as on screen.
_BLOCK_TAGS = ("address", "article", "aside", "blockquote", "br", "caption", "center", "dd", "div", "dl", "dt",
               "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
               "hr", "li", "main", "nav", "ol", "option", "p", "pre", "section", "select", "table", "tbody", "td",
               "tfoot", "th", "thead", "title", "tr", "ul")
# Elements whose text is not shown: dropped (a title's text stays, as in lexbor's text). A list, which
# lexbor's `strip_tags` takes.
_HIDDEN_TAGS = ["script", "style"]
# The attributes that hold a link target: <a href>, <img src> and other embedded resources, <form action>
_LINK_ATTRIBUTES = ("href", "src", "action")


class _HTMLText(HTMLParser):
    """Visible text and link targets of an HTML part, via the standard library's HTML parser
    (which recovers from broken markup rather than raising)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.links: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in _HIDDEN_TAGS:
            self._hidden += 1
        for name, value in attrs:
            if value and name in _LINK_ATTRIBUTES:
                self.links.append(value)
        if tag in _BLOCK_TAGS:
            self.chunks.append("\n")

    def handle_endtag(self, tag):
        if tag in _HIDDEN_TAGS and self._hidden:
            self._hidden -= 1
        if tag in _BLOCK_TAGS:
            self.chunks.append("\n")

    def handle_data(self, data):
        if not self._hidden:
            self.chunks.append(data)


# lexbor builds the document's tree as a browser does, and walks the stack of open elements at many
# a start tag: its time grows with the square of the nesting, which a message can make as deep as it
# likes with unclosed tags: a denial of service for a mail filter. Browsers cap the depth (Chromium's
# tree at 512 levels); a part nested deeper than this is read by `_HTMLText`, which keeps no tree.
_MAX_DEPTH = 1000
_TAG = re.compile(r"<(/?)([A-Za-z][^\s/>]*)")
# Elements that never hold others open: void ones, and those the next of their kind closes
_NOT_NESTING = {"area", "base", "br", "col", "dd", "dt", "embed", "hr", "img", "input", "li", "link", "meta",
                "option", "p", "param", "source", "td", "th", "tr", "track", "wbr"}


def _nested_deeper_than(html: str, limit: int) -> bool:
    """Whether `html`'s start tags, less its end tags, ever go deeper than `limit` levels (elements
    that close themselves aside): the depth of its tree, or more, where end tags are left out."""
    if html.count("<") <= limit:  # (the common case, decided in C)
        return False
    depth = 0
    for tag in _TAG.finditer(html):
        if tag[2].lower() not in _NOT_NESTING:
            depth = depth - 1 if tag[1] else depth + 1
            if depth > limit:
                return True
            depth = max(depth, 0)
    return False


_LINK_NODES = ",".join(f"[{name}]" for name in _LINK_ATTRIBUTES)
_BLOCK_NODES = ",".join(_BLOCK_TAGS)


def html_to_text(html: str) -> tuple[str, list[str]]:
    """(visible text, link targets) of an HTML document.

    Parsed by lexbor (via selectolax), an HTML5 parser in C that recovers from broken markup as
    browsers do; it is 3x faster than libxml2 and ~30x faster than the standard library's parser,
    which matters on a mail server. `html.parser` stays as the fallback for a document lexbor
    refuses, and reads one nested deeper than `_MAX_DEPTH`. Scripts and styles are not visible
    text and are dropped; comments never are text. Words part where a browser parts them
    (`_BLOCK_TAGS`), not at every tag.
    """
    if not _nested_deeper_than(html, _MAX_DEPTH):
        try:
            doc = LexborHTMLParser(html)
            doc.strip_tags(_HIDDEN_TAGS)
            links = [v for node in doc.css(_LINK_NODES) for k, v in node.attributes.items()
                     if v and k in _LINK_ATTRIBUTES]
            for node in doc.css(_BLOCK_NODES):
                node.insert_before("\n")
                node.insert_after("\n")
            return doc.text(), links
        except (ValueError, TypeError, UnicodeError, SelectolaxError):
            pass
    parser = _HTMLText()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError, IndexError):  # very old CPythons raised on bad markup
        pass
    return "".join(parser.chunks), parser.links



# ---------------------------------------------------------------------------------------------
# Parsing.

_TEXT_LIMIT = 200_000  # characters of text kept per part: enough to classify, bounded cost


def _part_text(payload: bytes, charset: str | None) -> str:
    """A part's bytes as text, its first `_TEXT_LIMIT` characters; only the bytes that can hold them
    are decoded (4 per character: the most UTF-8 takes, and UTF-16 and GB18030 too)."""
    return decode_text(payload[: _TEXT_LIMIT * 4], charset)[:_TEXT_LIMIT]


# The email package's parameter parser (behind `get_param`, `get_boundary`, `get_content_charset`)
# takes time growing with a value's ";"s times its length. Its parameters past this many ";" are left
# out: a real one has a handful (a long file name's RFC 2231 pieces: a dozen or two).
_MAX_SEMICOLONS = 63


# The parameters that say how a part is read, kept from past the cut too: left out, a boundary put
# after 63 dummy parameters made a spam's parts one raw text, undecoded, where mail programs show it.
_KEY_PARAMETER = re.compile(r';\s*(boundary|charset)\s*=\s*("[^"]*"|[^;]*)', re.IGNORECASE)


def _kept(name: str, value: str) -> str:
    """A header's value as `COMPAT32` keeps it: a Content-Type's cut at its 64th ";" (the first
    `_MAX_SEMICOLONS` kept, and the first boundary and charset beyond them), any other's whole."""
    if value.count(";") > _MAX_SEMICOLONS and name.lower() == "content-type":
        *kept, rest = value.split(";", _MAX_SEMICOLONS + 1)
        key = {}
        for parameter in _KEY_PARAMETER.finditer(";" + rest):
            key.setdefault(parameter[1].lower(), parameter[0])
        return ";".join(kept) + "".join(key.values())
    return value


class _Compat32(email.policy.Compat32):
    """The email package's compat32 policy, but a Content-Type keeps its first parameters only
    (`_kept`): the policy's `header_source_parse` makes every header the feed parser reads."""

    def header_source_parse(self, sourcelines):
        name, value = super().header_source_parse(sourcelines)
        return name, _kept(name, value)


COMPAT32 = _Compat32()


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
    # (a run cut short, by --max-bytes or the short group dropped, may end inside a character)
    return without_cut_character(decoded) + b"\n" + b"".join(lines[end:])


def _content_charset(part) -> str | None:
    """`part.get_content_charset()`, or None where it raises; remembered per Content-Type value
    (`charset_of`), since the email package parses the header's parameters anew on every call."""
    value = part.get("content-type")
    if isinstance(value, str):
        return charset_of(value)
    try:
        return part.get_content_charset()
    except Exception:  # (a malformed RFC 2231 parameter, say)
        return None


@functools.lru_cache(maxsize=4096)
def charset_of(content_type: str) -> str | None:
    """The charset parameter of a Content-Type value, as the email package reads it, or None
    where it has none or a malformed one (an RFC 2231 parameter that does not parse, say)."""
    part = email.message.Message()
    part.set_raw("Content-Type", _kept("Content-Type", content_type))
    try:
        return part.get_content_charset()
    except Exception:  # noqa: BLE001 (the email package's errors here have no common base)
        return None


# A <meta charset="..."> or <meta http-equiv="Content-Type" content="text/html; charset=...">
_META_CHARSET = re.compile(rb"""<meta\s[^>]*?charset\s*=\s*["']?\s*([\w.:-]+)""", re.IGNORECASE)


def _meta_charset(html: bytes) -> str | None:
    """The charset an HTML document's <meta> declares in its first 1024 bytes, where browsers'
    prescan looks (WHATWG), or None. UTF-16 or UTF-32, which the ASCII that says so cannot be
    in, is read as UTF-8, as browsers read it: a spam's bytes read as UTF-16 would hide its text."""
    m = _META_CHARSET.search(html, 0, 1024)
    if m is None:
        return None
    label = m.group(1).decode("ascii")
    codec = text_codec(label)
    return "utf-8" if codec and codec.startswith(("utf-16", "utf-32")) else label


def _walk(msg, out: ParsedMessage) -> None:
    # (the parts' texts are joined once, at the end: `+=` on an attribute copies the text so far at
    # each part, time growing with the square of the parts)
    texts, html_texts = [], []
    for part in msg.walk():
        out.parts += 1
        out.defects += len(getattr(part, "defects", ()))
        if part.is_multipart():
            continue
        ctype = (part.get_content_type() or "text/plain").lower()
        if ctype.startswith("multipart/"):
            # a multipart body the email package could not split (no boundary, or one that no
            # line matches) is one string: mail clients show it as text, and so it is read here
            ctype = "text/plain"
        disposition = str(part.get("Content-Disposition", "")).lower()
        maintype = ctype.split("/", 1)[0]
        if maintype != "text" or "attachment" in disposition:
            # counted by type, never decoded: an attachment's bytes say nothing a filter can use cheaply
            out.attachments[ctype] += 1
            continue
        cte = part.get("Content-Transfer-Encoding")
        if isinstance(cte, str) and cte != cte.strip():
            # "base64 " is base64 to mail clients; the email package compares the value as it is
            part.replace_header("Content-Transfer-Encoding", cte.strip())
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
        if charset is None and ctype == "text/html":
            charset = _meta_charset(payload)
        text = _part_text(payload, charset)
        if ctype == "text/html":
            visible, links = html_to_text(text)
            html_texts.append(visible + "\n")
            out.urls.extend(links)
            out.urls.extend(find_urls(visible))
        else:
            texts.append(text + "\n")
            out.urls.extend(find_urls(text))
    out.text, out.html_text = "".join(texts), "".join(html_texts)


_EXTRA_HEADERS = ("content-type", "x-mailer", "user-agent", "message-id", "return-path", "organization",
                  "x-priority", "precedence", "list-id", "mime-version")


def _fill_headers(msg, out: ParsedMessage) -> None:
    # One pass over the headers into a dict: Message.get scans every header on each call. The
    # values are taken raw and go through the policy's `header_fetch_parse` (what `items()` and
    # `get()` apply to every header) only when used: a third of a message's headers, say.
    first: dict[str, tuple[str, object]] = {}
    received = []
    for name, value in msg.raw_items():
        key = name.lower()
        if key == "received":
            received.append((name, value))
        else:
            first.setdefault(key, (name, value))
    fetch = msg.policy.header_fetch_parse

    def header(key: str):
        field = first.get(key)
        return None if field is None else fetch(*field)

    out.subject = decode_header(header("subject"))
    out.from_ = decode_header(header("from"))
    out.to = decode_header(header("to"))
    out.reply_to = decode_header(header("reply-to"))
    out.received = [decode_header(fetch(name, value)) for name, value in received]
    for name in _EXTRA_HEADERS:
        if name in first:
            out.headers[name] = decode_header(header(name))


_HEADERS_ONLY = email.parser.BytesParser(policy=COMPAT32)
# The first blank line: a line ending ("\n", or the "\n" of "\r\n") followed by an empty line.
_BLANK_LINE = re.compile(rb"\n\r?\n")


def _compat32_headers(raw: bytes):
    """A compat32 `Message` whose headers are parsed and whose payload is the rest of `raw`, as
    `BytesParser(policy=COMPAT32).parsebytes(raw, headersonly=True)` would make it, faster.

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
    text = head.decode("ascii") if head.isascii() else _decode_header_block(head, raw)
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


# A header field's name: printable ASCII but ":" (RFC 5322, and the feed parser's `headerRE`). A str
# pattern; `HEADER_NAME.encode()` for bytes.
HEADER_NAME = "[!-9;-~]+"
# One header field: its name, its first line, and its continuation lines (starting with a space or a
# tab). It is looked for at the start of a line only: looked for anywhere, a line that is no field was
# scanned to its end from each of its characters in turn.
_HEADER_FIELD = re.compile(rf"^({HEADER_NAME}):([^\n]*\n)((?:[ \t][^\n]*\n)*)", re.MULTILINE)


def _simple_header_block(text: str):
    """The compat32 `Message` the feed parser makes of a header block `text` (ending with its blank
    line), or None if the block is not plain: a lone "\r" line ending, a line that is neither a
    field nor a continuation, a continuation first, a misplaced "From " line. Those cases (which
    add defects or end the headers early) are left to the feed parser itself.

    A field's value is what `COMPAT32.header_source_parse` makes of its lines: the first line
    after the colon with leading blanks removed, then the continuation lines as they are, with
    the final line ending removed (and a Content-Type's parameters past its 63rd ";", `_kept`).
    One regex pass replaces ~3 µs of feed-parser work per line.
    """
    if "\r" in text and text.count("\r") != text.count("\r\n"):
        return None
    msg = email.message.Message(policy=COMPAT32)
    pos = 0
    if text.startswith("From "):  # the mbox envelope line, as the feed parser keeps it
        pos = text.index("\n") + 1
        msg.set_unixfrom(text[:pos].rstrip("\r\n"))
    end = len(text) - (2 if text.endswith("\n\r\n") else 1)  # where the blank line starts
    fields = _HEADER_FIELD.findall(text, pos, end)
    # the matches do not overlap, so they cover the block without a gap iff their lengths (and a
    # colon each) add up
    if sum(map(len, chain.from_iterable(fields))) + len(fields) != end - pos:
        return None
    cut = text.count(";") > _MAX_SEMICOLONS  # (else no value is cut: `_kept` skipped, 5 µs a block)
    for name, first, rest in fields:
        value = (first.lstrip(" \t") + rest).rstrip("\r\n")
        msg.set_raw(name, _kept(name, value) if cut else value)  # (a parser's own API)
    return msg


_HEADERS_ONLY_TEXT = email.parser.Parser(policy=COMPAT32)
_CHARSET_PARAM = re.compile(rb"""charset\s*=\s*["']?([\w.:-]+)""", re.IGNORECASE)
# A part's Content-Type field that names a charset, its continuation lines included
_PART_CHARSET = re.compile(rb"""^content-type:(?:[^\n]|\n[ \t])*?charset\s*=\s*["']?([\w.:-]+)""",
                           re.IGNORECASE | re.MULTILINE)
_BOUNDARY_PARAM = re.compile(rb"""boundary\s*=\s*(?:"([^"\r\n]+)"|([^\s;]+))""", re.IGNORECASE)


def _parts_charset(head: bytes, raw: bytes) -> str:
    """The charset that the first part of the multipart message `raw` (header block `head`) names
    for raw header lines (`_header_charset`), or "": looked for from the first boundary line on,
    not in a preamble or the body of a single-part message, where a quoted "Content-Type: ...;
    charset=koi8-r" is no part's."""
    boundary = _BOUNDARY_PARAM.search(head)
    first = raw.find(b"--" + (boundary[1] or boundary[2]), len(head)) if boundary else -1
    m = _PART_CHARSET.search(raw, first) if first >= 0 else None
    return _header_charset(m.group(1)) if m else ""


def _header_charset(label: bytes) -> str:
    """A charset parameter's `label` as the charset to read raw header lines in, or "" (none) for
    one that does not read ASCII as ASCII (UTF-16, UTF-32, EBCDIC such as cp500): a line's ASCII,
    its name included, would read as other characters, and its raw text with them (a Latin-1
    Subject under a UTF-16 part read 'Re: r\ufffdunion \ufffd100 prize')."""
    codec = text_codec(label.decode("ascii"))
    try:
        return label.decode("ascii") if codec and b"Subject:".decode(codec) == "Subject:" else ""
    except UnicodeDecodeError:  # (UTF-32: 8 bytes are no 2 characters of it)
        return ""


def _decode_header_block(head: bytes, raw: bytes) -> str:
    """A header block `head` with raw 8-bit bytes (RFC 6532 UTF-8 headers, or spam's raw
    Latin-1/GB2312 subjects) as text, line by line: UTF-8 if the line is valid UTF-8, else the
    message's declared charset, else Windows-1252/Latin-1 (`decode_text`). compat32 alone would
    turn those bytes into U+FFFD, and `policy.default` decodes them as UTF-8 only, so "£80m" in
    Latin-1 loses its £ either way; here it stays a money token.

    The declared charset is the header block's, or where it names none (a multipart message's
    Content-Type has none) the one its first part names (`_parts_charset`): the one a single-part
    message would have in its header block; either only if it reads ASCII as ASCII
    (`_header_charset`).
    """
    m = _CHARSET_PARAM.search(head)
    declared = _header_charset(m.group(1)) if m else None
    lines = head.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.isascii():
            lines[i] = line.decode("ascii")
            continue
        try:
            lines[i] = line.decode("utf-8")
        except UnicodeDecodeError:
            if declared is None:  # (looked for once, and only here: most 8-bit headers are UTF-8)
                declared = _parts_charset(head, raw)  # ("": none, not looked for again)
            lines[i] = decode_text(line, declared)
    return "".join(lines)


# The feed parser matches each line of a multipart message against the boundary of every multipart
# part open around it, so its time grows with the lines times the nesting, both of which a message
# chooses. Where a message's lines times its multipart parts allow more matches than this (a few
# tenths of a second of them), it is read as plain text. Mail comes nowhere near: 7,350 at most in
# the SpamAssassin corpus (3 parts, 2,450 lines); a message of 1 MiB in 20,000 lines would need 100
# multipart parts.
_MAX_BOUNDARY_MATCHES = 1 << 21


def boundary_matches(raw: bytes) -> int:
    """At most how many times the feed parser matches a line of `raw` against a boundary: its lines
    (each ended by "\r\n", "\r" or "\n") times its multipart parts, whose types all say "multipart/"."""
    lines = raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n") + 1
    return lines * raw.lower().count(b"multipart/")


# The header block as the feed parser reads it: lines that are a field (`email.feedparser.headerRE`:
# any name of printable ASCII but ":", empty too), a continuation (a space or a tab first: a line of
# blanks goes on with the field above), or an mbox "From " line, each ended by "\r\n", "\r" or "\n"
# as the parser splits lines; then the blank line that ends the block, if that is what ends it.
_HEADER_BLOCK = re.compile(
    rf"(?:(?:From |(?:{HEADER_NAME})?:|[\t ])[^\r\n]*(?:\r\n|\r|\n|\Z))*(?:\r\n|\r|\n)?".encode())
LINE_END = re.compile(rb"\r\n|\r|\n")  # where a line ends, as `header_block_lines` counts lines


def header_block_lines(raw: bytes) -> int:
    """How many lines of `raw`, from its first, `parse_message` reads as its header block (the blank
    line after it included): where the body starts, for a page that shows the message."""
    block = _HEADER_BLOCK.match(_as_read(raw))[0]
    lines = len(LINE_END.findall(block))
    if block and not block.endswith((b"\n", b"\r")):  # (a last line with no line end)
        lines += 1
    return lines


def _parse(raw: bytes) -> ParsedMessage:
    # Fast path: parse the header block only; for a single-part message (most mail) the
    # remaining bytes are the body and `get_payload(decode=True)` decodes them the same way
    # a full parse would. Only a message with parts (multipart/*, or message/rfc822: a
    # forwarded message whose own headers and body are inside) pays for the full MIME parse.
    msg = top = _compat32_headers(raw)
    if msg.get_content_maintype() in ("multipart", "message"):
        if boundary_matches(raw) > _MAX_BOUNDARY_MATCHES:
            return _plain_fallback(raw, "MIME nesting too deep for its length")
        msg = email.message_from_bytes(raw, policy=COMPAT32)  # (headers: top's, 8-bit ones undecoded)
    out = ParsedMessage()
    _fill_headers(top, out)
    _walk(msg, out)
    return out


def _plain_fallback(raw: bytes, reason: str) -> ParsedMessage:
    text = _part_text(raw, None)
    return ParsedMessage(text=text, urls=find_urls(text), problem=reason)


def _as_read(raw: bytes) -> bytes:
    """`raw` as `parse_message` reads it."""
    raw = raw.removeprefix(codecs.BOM_UTF8)  # (Windows programs save a message with it: not a header)
    # Classic Mac OS ended lines with a bare CR: the email package splits header lines there, but a
    # body's quoted-printable soft breaks ("=\r") stayed in it (an HTML part lost its text and links)
    if b"\n" not in raw:
        raw = raw.replace(b"\r", b"\n")
    return raw


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse raw RFC 822 bytes (with the email package's lenient `compat32` policy); never raises.

    A message the email package cannot make sense of at all is read as plain text, with
    `problem` saying why.
    """
    raw = _as_read(raw)
    if not raw.strip():
        return ParsedMessage(problem="empty message")
    try:
        return _parse(raw)
    except RecursionError:
        return _plain_fallback(raw, "MIME nesting too deep")
    except Exception as exc:  # noqa: BLE001 (the promise is: never crash on a message)
        return _plain_fallback(raw, f"unparseable MIME ({type(exc).__name__})")
