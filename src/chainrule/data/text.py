"""Tokens and hashed features for the spam filter.

A message becomes a bag of tokens — body words, header words prefixed with their header
(`subject:free`), URL domains (`url:example.com`), money and number *shapes* (`money:$dd`,
`num:d11`), runs of capitals (`upper:free`), attachment types — and the tokens become a sparse
vector by **signed feature hashing** (Weinberger et al. 2009):

    x[h(t) mod n_features] += s(t) · (1 + log count(t))        s(t) = ±1 from another bit of the hash

and, with `idf`, each bucket is weighted by its inverse document frequency in the training mail,
ln((1 + n) / (1 + df)) + 1, so that a word in every message ("the", a mailing list's footer) counts
for little and a rare one for more (tf·idf, as in information retrieval). Then the row is scaled
to unit length (with `split_norm`, a mail's header tokens and its body
tokens are each scaled to length 1/√2, so a long header block or a long mailing-list footer does
not drown the other half). Hashing needs no vocabulary, so a model can learn from new
mail (`spam learn`) without refitting anything, and the sign makes colliding tokens cancel on
average instead of adding up. The hash is CRC-32 (zlib, stable across processes and Python runs —
Python's own `hash` of a str is salted per process). `token_features` maps tokens back to their
bucket and sign, which is how `spam explain` turns weights on buckets back into words.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from bisect import bisect_left
from collections import Counter
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from itertools import chain

import numpy as np
import regex
import scipy.sparse as sp

from chainrule.data.mime import ParsedMessage
from chainrule.data.urls import url_domain


@dataclass(frozen=True)
class HashingConfig:
    """How text becomes features; stored in a model's metadata so classification matches training.

    Args:
        n_features: number of hash buckets (a power of two; 2^16 was as accurate as 2^18 out of
            fold on SpamAssassin and SMS, at a quarter of the weights).
        bigrams: also hash adjacent body-word pairs ("click here"). Off: out of fold they lowered
            the MCC on mail and the ROC AUC on SMS, and on mail they double the hashing time.
        char_ngrams: also hash character 3..n-grams of each word (0: off). Off: out of fold they
            lowered the ROC AUC on SMS, where misspelt words made them look promising.
        split_norm: scale the header tokens (`HEADER_PREFIXES`: headers, URLs, attachments, MIME
            structure) and the body's words to unit length separately, then each to 1/√2. With
            one norm over both, the many header and footer tokens of a mail relayed by a mailing
            list outweigh the few words of its body. On for mail (`spam train` sets it when it
            is given mail): out of fold on the SpamAssassin training part it raised the ROC AUC
            from 0.998 to 0.9995; off for SMS, which has no headers.
        idf: weight each bucket by its inverse document frequency in the training messages
            (`inverse_document_frequency`; the vector is saved with the model). On for mail
            (`spam train` sets it when it is given mail): a mailing list's footer and the words
            of every message count for less, and by nested cross-validation of the SpamAssassin
            training part the errors fell from 224 to 198 of 20,800. Off for SMS, where it did
            not help.
        min_df: with `idf`, a bucket found in fewer than this many training messages weighs 0
            (`inverse_document_frequency`), like a vocabulary's minimum document frequency. A word
            in only one or two training messages lets the network learn those messages by heart
            rather than what makes them spam, and it rarely recurs in next season's mail. Trained
            on the older part of the SpamAssassin tarballs by date and tested on the newer, 3 cut
            the errors by about 28%; leaving rare buckets out of the norm alone
            did not help. 0: every bucket counts (models saved without the field).
        delivery: read how the mail was delivered: the hosts of the newest Received lines and the
            To header. On by default (and in models saved without the field). Off where the
            training mail's spam and ham came in by different routes (spam from a trap address
            or a public corpus, ham from the user's own inbox): then those tokens tell the
            routes apart, not spam from ham, and mail that arrives by the other route is misread.
            The SpamAssassin tarballs are such a corpus (its spam went to trap addresses, through
            other hosts): trained on their older half by date, the default filter missed 1 newer
            spam and blocked 5 newer ham, but 9 and 84 once each newer spam carried the Received
            lines and To header of a newer ham and each ham those of a spam. Without these
            headers the swap changes nothing, and the newer half as it is gives 15 errors
            instead of 6: within that corpus the route does tell spam from ham.
    """

    n_features: int = 1 << 16
    bigrams: bool = False
    char_ngrams: int = 0
    split_norm: bool = False
    idf: bool = False
    min_df: int = 0
    delivery: bool = True

    @property
    def version(self) -> int:
        """The token format a saved config asks for: 1, which every chainrule reads, or 2 with
        `delivery` off, so that a chainrule from before `delivery` (which would read the headers
        anyway) refuses the model instead of misreading every message."""
        return 1 if self.delivery else 2

    def to_dict(self) -> dict:
        return {**asdict(self), "version": self.version}

    @classmethod
    def from_dict(cls, d: dict) -> HashingConfig:
        """The config saved in a model's metadata, every field checked for its type (JSON from a
        model file may hold anything); raises ValueError naming the first bad one."""
        if not isinstance(d, dict):
            raise ValueError(f"hashing: expected an object, got {type(d).__name__}")
        cfg = cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
        n = cfg.n_features
        if type(n) is not int or n < 2 or n & (n - 1):
            raise ValueError(f"hashing: n_features must be a power of two, got {n!r}")
        for name in (f.name for f in fields(cls) if isinstance(f.default, bool)):
            if not isinstance(getattr(cfg, name), bool):
                raise ValueError(f"hashing: {name} must be true or false, got {getattr(cfg, name)!r}")
        if type(cfg.char_ngrams) is not int or cfg.char_ngrams < 0:
            raise ValueError(f"hashing: char_ngrams must be an integer >= 0, got {cfg.char_ngrams!r}")
        if type(cfg.min_df) is not int or cfg.min_df < 0:
            raise ValueError(f"hashing: min_df must be an integer >= 0, got {cfg.min_df!r}")
        if cfg.min_df and not cfg.idf:
            raise ValueError("hashing: min_df needs idf (the weights that leave rare buckets out)")
        version = d.get("version", 1)
        if type(version) is not int or version not in (1, 2):
            raise ValueError(f"hashing: version {version!r} is not understood (expected 1 or 2)")
        if version != cfg.version:
            raise ValueError(f"hashing: version {version} does not go with delivery {str(cfg.delivery).lower()} "
                             f"(version {cfg.version} does)")
        return cfg


# Words start with a letter and may hold digits, apostrophes, hyphens ("don't", "e-mail", "mp3"), and
# the combining marks that many scripts write vowels, tones and points with (Hindi, Thai, Arabic,
# Hebrew, Vietnamese in windows-1258): `regex`'s \w holds them, `re`'s does not ('नमस्ते' read 'नमस', 'त').
_WORD_RE = regex.compile(r"\p{L}[\w'’&-]*")
# The same for ASCII text (most mail), where \w and \d are ASCII classes: a class made only of ASCII
# characters is a bitmap test for `re`, twice as fast as Unicode categories.
_WORD_ASCII_RE = re.compile(r"[a-z][a-z0-9_'&-]*")  # (applied to lower-cased text)
# Han, Hiragana and Katakana (Chinese and Japanese) are written without spaces between words: a run of
# them is a word of its own, cut into pairs of characters (`_cjk_bigrams`), and Latin letters or digits
# next to it are words apart ("点击领取http"). Korean is written with spaces, Thai needs a dictionary
# to cut: both stay words as they are written. `_CJK` by blocks: kana and ideographs (々〆〇, ー and the
# extensions included), not the kana punctuation ・ and ゠.
_CJK = ("\u3005-\u3007\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\u3400-\u4dbf"
        "\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff")
_CJK_RE = re.compile(f"[{_CJK}]")
_CJK_WORD_RE = regex.compile(r"(?V1)[CJK]+|[\p{L}--[CJK]][[\w'’&-]--[CJK]]*".replace("CJK", _CJK))  # (2x slower)
# Capital letters outside ASCII (Cyrillic, Greek, accented Latin, ...), as a class `re` can test
# quickly (`regex`'s \p{Lu} made the scan below twice as slow). Those of the Basic Multilingual
# Plane (5 ms at import): beyond it lie the mathematical letters, which NFKC folds to ASCII, and a
# few alphabets little used in mail (Deseret, Osage, Adlam).
_CAPITALS = "".join(c for c in map(chr, range(0x80, 0x10000)) if c.isupper())
# Numbers with an optional currency sign, whole words of 3+ capitals, and runs of ! and ?, in one
# scan: the three kinds share no character, so one scan finds exactly what three would, and a
# match's first character says its kind. The pattern starts with a single character class because
# only then does `re` skip quickly to a possible first character; the lookarounds pick the branch
# and keep each kind's matches exactly those of `[$£€]?\d[\d.,:/-]*`, `\b[A-Z]{3,}\b` and `[!?]+`
# (3x faster than those three plain scans). `_MARKS_UNICODE_RE`: the same with every capital.
_MARKS = (r"[$£€\dA-Z!?](?:(?<=[$£€])(?=\d)[\d.,:/-]*|(?<=\d)[\d.,:/-]*"
          r"|(?<=[A-Z])(?<!\w[A-Z])[A-Z]{2,}(?!\w)|(?<=[!?])[!?]*)")
_MARKS_RE = re.compile(_MARKS)
_MARKS_UNICODE_RE = re.compile(_MARKS.replace("A-Z", "A-Z" + re.escape(_CAPITALS)))
# Emoji, each a token: spam is fond of them (💰🔥). A pictograph shown as an emoji, by default or by
# the emoji variation selector after it (❤️); not ©, ® or ★ as text has long had them. (Written to
# start with one class: an alternation of the two was 4x slower.)
_EMOJI_RE = regex.compile(r"\p{Extended_Pictographic}(?:(?<=\p{Emoji_Presentation})|(?=\ufe0f))")
# Characters that show nothing (zero-width space, joiners, word joiner, BOM, soft hyphen), which a
# spammer puts inside a word ("V\u200biagra") to hide it: taken out. And ™ and ℠, which NFKC would
# spell as letters run into the word they mark ("Dell™": 'delltm').
_UNSEEN_RE = re.compile("[\u200b-\u200d\u2060\ufeff\u00ad\u2120\u2122]")
_EMAIL_RE = re.compile(r"[\w.+-]+@([\w-]+\.[\w.-]+)")
_HOST_RE = re.compile(r"\b(?:[a-z0-9-]+\.)+[a-z]{2,}\b")
_IP_RE = re.compile(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b")
_DIGITS = str.maketrans("0123456789", "dddddddddd")
_DIGIT_RE = re.compile(r"\d")  # the digits of every script (Arabic-Indic ٥, Devanagari ५, ...)
# How much of each source a message's tokens take. These caps are part of the token format (a model
# is trained on the tokens they allow), and each keeps one long header, list or text from outweighing
# the rest of the message.
_MAX_WORD = 30  # a longer "word" (base64, a hash, words run together) is `long:N`, N its length in tens
_MAX_ADDRESS_WORDS = 20  # words of an address header (From, To, Reply-To) beside its addresses
_MAX_TO_TOKENS = 20  # of the To header: mail to a long list of recipients adds no more
_MAX_HEADER_WORDS = 8  # words of another header (X-Mailer, Organization, List-Id, ...)
_RECEIVED_LINES = 3  # the newest (the recipient's relays wrote them; a sender can forge older ones)
_HOSTS_PER_RECEIVED = 6  # host names per Received line
_MAX_URLS = 100  # links per message
_MAX_SAME_ATTACHMENTS = 3  # `attach:` tokens per type: one, two, three or more attachments of it
_MAX_PARTS = 10  # `parts:N` counts MIME parts up to 10 (ten or more)
_MAX_CHARS = 30_000  # per text; a long message says all it will say in its first pages
# A text beyond ASCII is cut at `_MAX_CHARS` once it is read (`_normal_form`), so that its NFC and NFD
# forms give the same tokens: NFD writes a letter in up to 3 characters (Vietnamese ệ, a Korean syllable
# in its jamo). Before it is read, it is cut at this many, which bounds the time reading takes.
_MAX_UNREAD_CHARS = 4 * _MAX_CHARS
# Per address header (From, To, Reply-To) and per Received line: RFC 5322's limit for a line (998
# characters). Their patterns take time growing with the square of a run of characters that never
# completes a match, so a sender must not choose the length.
# Cut there, no SpamAssassin corpus message gives other tokens (its longest To header, 1,779 characters,
# yields more than the `_MAX_TO_TOKENS` that `message_tokens` keeps of it before the cut).
_MAX_HEADER_CHARS = 1_000
# Unicode's Stream-Safe Text Format (UAX #15, section 13): a run of characters that NFKC writes with a
# combining mark first (the marks themselves, Tibetan ཱི and half-width katakana ﾞ too) is cut to its
# first 30. NFKC sorts a run's marks by their classes in time growing with the square of its length,
# and no reader needs more than 30. Those of the Basic and Supplementary Multilingual Planes (10 ms at
# import): the planes beyond hold none.
_NON_STARTERS = "".join(
    c for c in map(chr, range(0x300, 0x20000))
    if unicodedata.combining(c) or (unicodedata.decomposition(c)
                                    and unicodedata.combining(unicodedata.normalize("NFKD", c)[0])))
_LONG_MARK_RUN_RE = re.compile(f"([{re.escape(_NON_STARTERS)}]{{30}})[{re.escape(_NON_STARTERS)}]+")
# Where `_LONG_MARK_RUN_RE` is looked for: in a run of more than 30 characters that are marks of the
# Basic Multilingual Plane or lie beyond it. This class is a table and one range; `re` tests a class
# with characters beyond that plane one range after another (66 for the marks there) for every
# character, and that pattern over all text nearly doubled the time the SpamAssassin messages' tokens take.
_BMP_NON_STARTERS = "".join(c for c in _NON_STARTERS if c <= "\uffff")
_LONG_RUN_RE = re.compile(f"[{re.escape(_BMP_NON_STARTERS)}\\U00010000-\\U0010ffff]{{31,}}")


def _shape(token: str) -> str:
    """Digits -> 'd', and a plain run of more than 4 digits -> 'd' + its length: '£1,500' -> '£d,ddd',
    '07781482378' -> 'd11' (the length of a phone number is a feature; its digits are not). The
    digits of any script: '٥٠٠' -> 'ddd', as '500'."""
    if len(token) > 4 and token.isdigit():
        return f"d{len(token)}"
    return token.translate(_DIGITS) if token.isascii() else _DIGIT_RE.sub("d", token)


def _normal_form(text: str) -> str:
    """`text` as a reader sees it, so that what looks the same gives the same tokens.

    NFKC: a letter written with its accent apart (NFD: 'e' + U+0301) is the accented letter, and
    the look-alikes spam writes to pass a filter are the plain letters and digits they show: full
    width ('ＦＲＥＥ', '＄１００'), ligatures, mathematical letters ('𝐅𝐑𝐄𝐄'), circled ones. Characters
    that show nothing go (`_UNSEEN_RE`), and a run of more than 30 combining marks is cut to its
    first 30 (`_LONG_MARK_RUN_RE`). The capital İ (Turkish) becomes I, since Unicode lower-cases
    it as i and a combining dot: 'İSTANBUL' would not read 'istanbul'.
    """
    if _UNSEEN_RE.search(text):
        text = _UNSEEN_RE.sub("", text)
    if _LONG_RUN_RE.search(text):
        text = _LONG_RUN_RE.sub(lambda run: _LONG_MARK_RUN_RE.sub(r"\1", run.group()), text)
    # (no-break spaces first: they are most mail's only characters that NFKC changes, and a text
    # that it leaves as it is costs it a quick check instead of a pass that rebuilds the string)
    return unicodedata.normalize("NFKC", text.replace("\u00a0", " ")).replace("İ", "I")


def _cjk_bigrams(words: list[str]) -> list[str]:
    """Each run of Han, Hiragana or Katakana in `words` as its overlapping pairs of characters (a
    lone character as itself): '发票代开' -> '发票', '票代', '代开'. Without a dictionary, which
    pairs make words is unknown; the pairs that do recur and carry the meaning, as in Lucene's
    CJK analyser and Xapian's."""
    out = []
    for w in words:
        if len(w) > 1 and _CJK_RE.match(w):
            out.extend([w[i:i + 2] for i in range(len(w) - 1)])
        else:
            out.append(w)
    return out


def word_tokens(text: str, prefix: str = "", bigrams: bool = False, char_ngrams: int = 0) -> list[str]:
    """Tokens of free text: lower-cased words, number and money shapes, words in capitals, !/? runs,
    emoji.

    Text beyond ASCII is read in its normal form (`_normal_form`: what looks the same gives the same
    tokens) and case-folded, and Chinese and Japanese as pairs of characters (`_cjk_bigrams`). With a
    `prefix` ("subject:") every token is prefixed, so the same word in a subject and in a body are
    different features. Written as a few whole-string regex passes rather than a loop over words,
    since this runs for every message the filter sees.
    """
    if len(text) > _MAX_CHARS and "\r" in text:
        # CRLF line ends as LF: counted as two characters each, they moved the cut, and the same mail
        # sent by spamc (CRLF) lost words at the end of its text that its copy in a Maildir (LF) kept
        text = text.replace("\r\n", "\n")
    if text.isascii():  # (O(1): CPython records it in the string)
        text = text[:_MAX_CHARS]
    else:  # (cut once read: `_MAX_UNREAD_CHARS`)
        text = _normal_form(text[:_MAX_UNREAD_CHARS])[:_MAX_CHARS]
    if text.isascii():  # (most mail; full-width letters too, once folded)
        fold = str.lower
        words = _WORD_ASCII_RE.findall(text.lower())
        marks, emoji = _MARKS_RE.findall(text), []
    else:
        fold = str.casefold  # the caseless form: 'STRASSE' and 'straße' alike, 'ΣΑΣ' and 'σας'
        folded = text.casefold()
        if _CJK_RE.search(folded):
            words = _cjk_bigrams(_CJK_WORD_RE.findall(folded))
        else:
            words = _WORD_RE.findall(folded)
        marks, emoji = _MARKS_UNICODE_RE.findall(text), _EMOJI_RE.findall(text)
    if len(text) > _MAX_WORD and words and max(map(len, words)) > _MAX_WORD:
        words = [w if len(w) <= _MAX_WORD else f"long:{len(w) // 10}" for w in words]
    numbers, caps, punct = [], [], []
    for m in marks:
        c = m[0]
        if c == "!" or c == "?":
            punct.append(f"punct:{m[:3]}")
        elif c.isupper():
            caps.append(f"upper:{fold(m)}")
        else:  # (a shape drops the trailing punctuation the pattern picks up at a sentence's end)
            n = m.rstrip(".,:/-")
            numbers.append(f"money:{_shape(n)}" if c in "$£€" else f"num:{_shape(n)}")
    out = words + numbers
    if caps:
        out += caps
        out.append(f"caps:{min(len(caps), 20) // 4}")  # how much of the text shouts, coarsely
    out += punct
    out += emoji
    if bigrams and len(words) > 1:
        out.extend([f"{a} {b}" for a, b in zip(words, words[1:], strict=False)])
    if char_ngrams:
        for w in words:
            padded = f"<{w}>"
            for n in range(3, min(char_ngrams, len(padded)) + 1):  # (longer n-grams than the word: none)
                out.extend([f"c:{padded[i:i + n]}" for i in range(len(padded) - n + 1)])
    if prefix:
        out = [prefix + t for t in out]
    return out


# Address, header and URL tokens are cached by their text: mailing lists, mailers and link
# domains repeat from message to message, and these short strings cost a few regex calls each.
_CACHE = 1 << 14


@lru_cache(maxsize=_CACHE)
def _address_tokens(name: str, value: str) -> tuple[str, ...]:
    value = value[:_MAX_HEADER_CHARS]
    out = []
    for m in _EMAIL_RE.finditer(value.lower()):
        out.append(f"{name}:@{m.group(1)}")
        out.append(f"{name}:{m.group()}")
    out.extend(f"{name}:{w}" for w in word_tokens(re.sub(r"<[^>]*>|\S+@\S+", " ", value))[:_MAX_ADDRESS_WORDS])
    return tuple(out)


@lru_cache(maxsize=_CACHE)
def _header_tokens(name: str, value: str) -> tuple[str, ...]:
    if name == "message-id":
        return tuple(f"message-id:@{m}" for m in re.findall(r"@([\w.-]+)", value.lower())[:1])
    if name == "content-type":
        return (f"content-type:{value.split(';', 1)[0].strip().lower()}",
                *(f"charset:{c.lower()}" for c in re.findall(r'charset="?([\w-]+)', value, re.I)[:1]))
    return tuple(f"{name}:{w}" for w in word_tokens(value)[:_MAX_HEADER_WORDS])


@lru_cache(maxsize=_CACHE)
def _url_tokens(url: str) -> tuple[str, ...]:
    return tuple(_domain_tokens("url:", url_domain(url)))


def _domain_tokens(prefix: str, domain: str) -> list[str]:
    """The domain and its parent domains: 'a.b.example.com' -> itself, 'example.com', '.com'."""
    if not domain:
        return []
    labels = domain.split(".")
    out = [f"{prefix}{domain}"]
    if len(labels) > 2:
        out.append(f"{prefix}{'.'.join(labels[-2:])}")
    out.append(f"{prefix}.{labels[-1]}")
    if _IP_RE.fullmatch(domain):
        out.append(f"{prefix}ip-address")
    return out


# The prefixes of the tokens `message_tokens` takes from headers and MIME structure rather than from
# the text a person reads: the header block of `HashingConfig.split_norm`. (Body tokens carry no
# prefix or one of num:, money:, upper:, caps:, punct:, long:, c:.)
HEADER_PREFIXES = ("subject:", "from:", "to:", "reply-to:", "received:", "received0:", "received1:",
                   "received2:", "content-type:", "charset:", "x-mailer:", "user-agent:", "message-id:",
                   "return-path:", "organization:", "x-priority:", "precedence:", "list-id:", "mime-version:",
                   "url:", "has:", "attach:", "parts:", "problem:")


# 1 + log(count) of the counts up to 4095, computed by np.log as `Hasher.matrix` computes them.
_ONE_PLUS_LOG = np.concatenate([[np.nan], 1.0 + np.log(np.arange(1, 1 << 12, dtype=np.float64))])


def _one_plus_log(counts: np.ndarray) -> np.ndarray:
    """1 + log(count) of every count (a positive integer), as `1.0 + np.log(counts)`."""
    if counts.max(initial=1) < len(_ONE_PLUS_LOG):
        return _ONE_PLUS_LOG[counts]
    return 1.0 + np.log(counts.astype(np.float64))


def _sum_by_key(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct keys in ascending order, the sum of each key's values, added in their order).

    Equivalent to `np.unique(keys, return_inverse=True)`, then `np.bincount(inverse, weights=values)`
    (bit for bit: a key's values are added to 0.0 in the order given); one stable sort where there
    is no duplicate key, the usual case for one message's buckets, at a third of the cost.
    """
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    if len(keys) > 1 and not np.all(keys[1:] != keys[:-1]):
        keys, inverse = np.unique(keys, return_inverse=True)
        return keys, np.bincount(inverse, weights=values[order])
    return keys, 0.0 + values[order]


def _is_body(token: str) -> bool:
    return not token.startswith(HEADER_PREFIXES)


def message_tokens(msg: ParsedMessage, config: HashingConfig = HashingConfig()) -> list[str]:
    """Every token of a parsed email: headers (prefixed), URLs, attachments, then body words.

    The header tokens (`HEADER_PREFIXES`) come first, so that `Hasher.matrix` can find where the
    body starts by bisection instead of testing every token.
    """
    toks = word_tokens(msg.subject, "subject:", bigrams=config.bigrams)
    toks += _address_tokens("from", msg.from_)
    if config.delivery:
        toks += _address_tokens("to", msg.to)[:_MAX_TO_TOKENS]
    if msg.reply_to:
        toks += _address_tokens("reply-to", msg.reply_to)
    for i, line in enumerate(msg.received[:_RECEIVED_LINES] if config.delivery else ()):
        low = line[:_MAX_HEADER_CHARS].lower()
        toks += [f"received:{h}" for h in _HOST_RE.findall(low)[:_HOSTS_PER_RECEIVED]]
        if _IP_RE.search(low):
            toks.append(f"received{i}:ip")
    for name, value in msg.headers.items():
        toks += _header_tokens(name, value)
    if msg.html_text:
        toks.append("has:html")
        if not msg.text.strip():
            toks.append("has:html-only")
    for url in msg.urls[:_MAX_URLS]:
        toks += _url_tokens(url)
    toks += [f"attach:{t}" for t, n in msg.attachments.items() for _ in range(min(n, _MAX_SAME_ATTACHMENTS))]
    toks.append(f"parts:{min(msg.parts, _MAX_PARTS)}")
    if msg.problem:
        toks.append("problem:unparsed")
    if msg.defects:
        toks.append("problem:defects")
    toks += word_tokens(msg.text, bigrams=config.bigrams, char_ngrams=config.char_ngrams)
    if msg.html_text:
        toks += word_tokens(msg.html_text, bigrams=config.bigrams, char_ngrams=config.char_ngrams)
    return toks


# A link in an SMS: not right after an ASCII letter or digit (a word's "www.", as in "Awww.."). Not `\b`,
# which wants no letter of any script there: Chinese puts no space before a link ("点击领取http://...").
_SMS_URL_RE = re.compile(r"(?i)(?<![a-z0-9])(?:https?://|www\.)\S+")


def sms_tokens(text: str, config: HashingConfig = HashingConfig()) -> list[str]:
    """Tokens of one SMS: the domains of any URLs (first, as in `message_tokens`), then its words,
    shapes and capitals."""
    toks = []
    for url in _SMS_URL_RE.findall(text)[:20]:
        toks += _domain_tokens("url:", url_domain(url))
    toks += word_tokens(text, bigrams=config.bigrams, char_ngrams=config.char_ngrams)
    toks.append(f"length:{min(len(text) // 20, 10)}")
    return toks


def inverse_document_frequency(x: sp.csr_matrix, min_df: int = 0) -> np.ndarray:
    """Each bucket's idf from the hashed rows `x` of the training messages: ln((1 + n) / (1 + df))
    + 1, df = the rows in which it is non-zero. Smoothed as if one more message held every bucket,
    so a bucket no message has gets a finite weight and one that every message has still counts 1.
    A bucket with df < `min_df` gets 0 (`HashingConfig.min_df`)."""
    x = x.tocsr()
    df = np.bincount(x.indices[x.data != 0], minlength=x.shape[1])
    idf = np.log((1.0 + x.shape[0]) / (1.0 + df)) + 1.0
    return np.where(df >= min_df, idf, 0.0).astype(np.float32)


def _crc32(token: str) -> int:
    """The CRC-32 of a token's UTF-8; a lone surrogate (text decoded with surrogateescape), which
    strict UTF-8 refuses, written as "surrogatepass" writes it."""
    return zlib.crc32(token.encode("utf-8", "surrogatepass"))


def _crc32s(tokens: Collection[str]) -> np.ndarray:
    """The CRC-32 of every token (`_crc32`), int64."""
    try:  # map() over C functions: no bytecode per token, faster than a dict cache of hashes
        return np.fromiter(map(zlib.crc32, map(str.encode, tokens)), np.int64, len(tokens))
    except UnicodeEncodeError:  # a lone surrogate
        return np.fromiter(map(_crc32, tokens), np.int64, len(tokens))


class Hasher:
    """Tokens -> signed hashed feature rows: CRC-32 of the token's UTF-8, low bits for the bucket,
    the top bit for the sign (independent bits of one hash). `idf`: one weight per bucket, given
    exactly when the config has `idf` on (so that no caller hashes without the model's weights)."""

    def __init__(self, config: HashingConfig = HashingConfig(), idf: np.ndarray | None = None):
        if config.idf != (idf is not None):
            raise ValueError(f"hashing with idf {'on' if config.idf else 'off'} needs "
                             f"{'the idf weights' if config.idf else 'no idf weights'}")
        if idf is not None and np.shape(idf) != (config.n_features,):
            raise ValueError(f"idf has shape {np.shape(idf)}, expected ({config.n_features},)")
        self.config = config
        self.idf = idf
        self._mask = config.n_features - 1

    def signed_index(self, token: str) -> int:
        """bucket + 1, negated when the token's sign is -1 (so 0 never occurs)."""
        h = _crc32(token)
        v = (h & self._mask) + 1
        return -v if h >> 31 else v

    def matrix(self, token_lists: list[list[str]]) -> sp.csr_matrix:
        """The feature rows of many messages as one float32 CSR matrix of shape (n, n_features).

        Each row: every distinct token t adds s(t) · (1 + log count(t)) to its bucket (tokens that
        share a bucket add up, with their signs: that is what makes collisions cancel), each
        bucket is multiplied by its idf if there is one, then the row is divided by its L2 norm.
        With `split_norm` the header and body tokens are two blocks, each divided by its own
        norm and by √2 when the row has both, then added; a list must hold its header tokens
        first (`message_tokens` and `sms_tokens` do), so that a few `startswith` calls per row
        find the block boundary rather than one per token. The NumPy work runs once for all
        rows, on keys (row · 2 + block) · n_features + bucket, because per message its fixed
        cost exceeded the hashing itself.
        """
        n = len(token_lists)
        counts = [Counter(t) for t in token_lists]
        lengths = np.fromiter(map(len, counts), np.int64, n)
        tokens = list(chain.from_iterable(counts))
        if not tokens:
            return sp.csr_matrix((n, self.config.n_features), dtype=np.float32)
        crc = _crc32s(tokens)
        weight = 1.0 + np.log(np.fromiter(chain.from_iterable(c.values() for c in counts), np.float64,
                                          len(tokens)))
        weight[crc >> 31 == 1] *= -1
        bits = self.config.n_features.bit_length() - 1
        block = np.repeat(np.arange(n, dtype=np.int64), lengths) << 1  # row · 2 + (1 for a header token)
        if self.config.split_norm:  # a row's header tokens come first: bisect for where its body starts
            n_head = np.fromiter((bisect_left(list(c), True, key=_is_body) for c in counts), np.int64, n)
            starts = np.cumsum(lengths) - lengths
            block += np.arange(len(tokens)) - np.repeat(starts, lengths) < np.repeat(n_head, lengths)
        keys = (block << bits) | (crc & self._mask)
        keys, inverse = np.unique(keys, return_inverse=True)  # sorted: by row, block, then bucket
        val = np.bincount(inverse, weights=weight)
        if self.idf is not None:
            val *= self.idf[keys & self._mask]
        block = keys >> bits
        norm = np.sqrt(np.bincount(block, weights=val * val, minlength=2 * n)).reshape(n, 2)
        scale = 1.0 / np.where(norm > 0, norm, 1.0)
        scale[(norm > 0).all(axis=1)] /= np.sqrt(2.0)  # both blocks: each 1/√2, the row ~unit length
        val *= scale.reshape(-1)[block]
        row, buckets = block >> 1, keys & self._mask
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(row, minlength=n), out=indptr[1:])
        x = sp.csr_matrix((val, buckets.astype(np.int32), indptr), shape=(n, self.config.n_features))
        if self.config.split_norm:  # a row's two blocks into one: a bucket in both adds up (SciPy
            x.sum_duplicates()      # sorts each row's few hundred entries, cheaper than one big sort)
        return x.astype(np.float32)

    def row(self, tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(bucket indices, values) of one message's feature row: int32 indices in ascending order
        and float32 values.

        Equivalent to the one row of `matrix([tokens])`, bit for bit (the same operations in the
        same order), at less than half its cost: no CSR matrix, no row bookkeeping, and a table for
        1 + log(count). A mail server's filter hashes one message at a time.
        """
        counts = Counter(tokens)
        n = len(counts)
        if not n:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        crc = _crc32s(counts)
        weight = _one_plus_log(np.fromiter(counts.values(), np.int64, n))
        weight[crc >> 31 == 1] *= -1
        bits = self.config.n_features.bit_length() - 1
        keys = crc & self._mask  # block · n_features + bucket, the header block being block 1
        if self.config.split_norm:
            keys[:bisect_left(list(counts), True, key=_is_body)] |= 1 << bits
        keys, val = _sum_by_key(keys, weight)
        buckets = keys & self._mask
        if self.idf is not None:
            val *= self.idf[buckets]
        block = keys >> bits
        norm = np.sqrt(np.bincount(block, weights=val * val, minlength=2))
        scale = 1.0 / np.where(norm > 0, norm, 1.0)
        if norm[0] > 0 and norm[1] > 0:
            scale /= np.sqrt(2.0)
        val *= scale[block]
        if self.config.split_norm:  # the two blocks into one: a bucket in both adds up
            buckets, val = _sum_by_key(buckets, val)
        return buckets.astype(np.int32), val.astype(np.float32)

    def token_features(self, tokens: list[str]) -> dict[str, tuple[int, int]]:
        """token -> (bucket, sign) for every distinct token: hashed features back to words."""
        out = {}
        for tok in dict.fromkeys(tokens):
            v = self.signed_index(tok)
            out[tok] = (abs(v) - 1, 1 if v > 0 else -1)
        return out
