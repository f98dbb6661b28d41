"""Tokeniser and signed feature hashing (chainrule.data.text)."""

import os
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from chainrule.data.corpora import read_sms
from chainrule.data.mime import parse_message
from chainrule.data.text import (
    HEADER_PREFIXES,
    Hasher,
    HashingConfig,
    _normal_form,
    inverse_document_frequency,
    message_tokens,
    sms_tokens,
    word_tokens,
)


def test_words_shapes_capitals_and_bigrams():
    toks = word_tokens("FREE entry!!! Call 07781482378 now to win £1,500 cash", bigrams=True)
    for t in ("free", "entry", "upper:free", "punct:!!!", "num:d11", "money:£d,ddd", "call now", "win cash"):
        assert t in toks, t
    assert "FREE" not in toks  # lower-cased


def test_header_prefixes_urls_and_attachments():
    raw = (b"From: Bob <bob@mail.example.com>\nTo: alice@example.org\nSubject: Cheap MEDS\n"
           b"Content-Type: multipart/mixed; boundary=XX\n\n--XX\nContent-Type: text/plain\n\n"
           b"visit http://www.pills.example.net/buy now\n--XX\nContent-Type: application/pdf\n"
           b"Content-Transfer-Encoding: base64\n\nJVBERi0=\n--XX--\n")
    toks = message_tokens(parse_message(raw))
    for t in ("subject:cheap", "subject:upper:meds", "from:@mail.example.com", "to:@example.org",
              "url:www.pills.example.net", "url:example.net", "url:.net", "attach:application/pdf", "visit"):
        assert t in toks, t


def test_sms_tokens_and_char_ngrams():
    toks = sms_tokens("Txt WIN to 80086 now", HashingConfig(char_ngrams=4))
    assert "txt" in toks and "num:d5" in toks and "c:<tx" in toks and "c:<txt" in toks


def test_words_keep_their_combining_marks():
    """Scripts that write vowels, tones and points as combining marks were cut at every mark
    (Python's `re` counts no mark as part of a word): Hindi 'नमस्ते' read 'नमस', 'त'."""
    assert word_tokens("नमस्ते! मुफ्त ऑफर") == ["नमस्ते", "मुफ्त", "ऑफर", "punct:!"]  # Devanagari
    assert word_tokens("สวัสดีครับ สมัครฟรี") == ["สวัสดีครับ", "สมัครฟรี"]  # Thai (no spaces inside a clause)
    for text in ("مَجَّانًا", "הַרְשָׁמָה", "Tiếng"):  # Arabic with its vowel marks, pointed Hebrew, Vietnamese in NFD
        word = unicodedata.normalize("NFD", text)
        assert word_tokens(word) == [unicodedata.normalize("NFC", word).lower()]
    # Vietnamese in windows-1258 decodes to letters followed by their tone marks: the same words as in UTF-8
    raw = (b"From: a@example.vn\nSubject: hi\nContent-Type: text/plain; charset=windows-1258\n\n"
           b"Khuy\xea\xecn ma\xdei Ti\xea\xecng Vi\xea\xf2t\n")
    assert word_tokens(parse_message(raw).text) == ["khuyến", "mãi", "tiếng", "việt"]


def test_nfc_and_nfd_spellings_give_the_same_tokens():
    """Text in NFD (a letter, then its accent: as macOS names files and some mailers send) gave
    other tokens than the same text composed: 'résumé' read 're', 'sume'."""
    text = "Café RÉSUMÉ résumé Tiếng Việt İSTANBUL"
    nfc, nfd = unicodedata.normalize("NFC", text), unicodedata.normalize("NFD", text)
    assert word_tokens(nfd) == word_tokens(nfc)
    assert word_tokens(nfd)[:6] == ["café", "résumé", "résumé", "tiếng", "việt", "istanbul"]


def test_a_long_text_gives_the_tokens_of_its_nfc_and_nfd_forms():
    """A text was cut at 30,000 characters before it was read in NFC, so the NFD form of a long
    Vietnamese text (40,000 characters, 28,000 in NFC) lost the last quarter of its tokens, and the
    text with a zero-width space before each space (taken out when it is read) lost a sixth."""
    text = "Tiếng Việt có dấu được viết " * 1000
    nfc, nfd = unicodedata.normalize("NFC", text), unicodedata.normalize("NFD", text)
    assert len(nfc) < 30_000 < len(nfd)
    assert word_tokens(nfd) == word_tokens(nfc) == word_tokens(text.replace(" ", "\u200b "))
    assert len(word_tokens(nfc)) == 6000


def test_a_long_run_of_combining_marks_is_cut_to_thirty_before_normalising():
    """NFKC sorts each run of combining marks by their classes, in time growing with the square of
    the run's length (marks of classes 220 and 230 in turn: 30,000 took 0.6 s, a 660 KB mail 8 s to
    classify). A run is cut to its first 30 characters, as Unicode's Stream-Safe Text Format (UAX
    #15) cuts it, whatever follows it reads as before, and characters that NFKC writes with a mark
    first (Tibetan ཱི, half-width katakana ﾞ) count as marks."""
    for marks in ("\u0316\u0301", "\u0301\u0316", "\u0f73\u0316", "\uff9e\u0316", "\u0316\u200b\u0301"):
        run = marks * 1000
        assert _normal_form("a" + run) == unicodedata.normalize("NFKC", "a" + run.replace("\u200b", "")[:30])
        assert word_tokens("free a" + run + " cash") == word_tokens("free a" + run.replace("\u200b", "")[:30]
                                                                    + " cash")
    assert _normal_form("a" + "\u0301" * 30 + "b" + "\u0316" * 30) == unicodedata.normalize(
        "NFKC", "a" + "\u0301" * 30 + "b" + "\u0316" * 30)  # (runs up to 30 stay whole)


_INTL = st.text(alphabet=st.sampled_from(list("aZ09 .-'éÉe\u0301\u0300İI\u0307ßẞΣσςНн한\u1100\u1161"
                                              "नस\u094d\u0947ส\u0e31\u0e35公司の\u30fcキ\uff21\uff11\u200b\u00ad$!💰")),
                max_size=40)


@settings(max_examples=300, deadline=None)
@given(_INTL)
def test_any_text_gives_the_tokens_of_its_nfc_and_nfd_forms(text):
    assert word_tokens(unicodedata.normalize("NFD", text)) == word_tokens(unicodedata.normalize("NFC", text))


def test_obfuscated_letters_and_digits_read_as_plain_ones():
    """Full-width letters and digits (`ＦＲＥＥ`, `＄１００`), and a zero-width character or soft hyphen
    inside a word (`V\\u200biagra`), hid a word from the filter: they gave other tokens than the
    letters they show, or cut the word in two."""
    assert word_tokens("ＦＲＥＥ ＶＩＡＧＲＡ") == word_tokens("FREE VIAGRA")
    assert word_tokens("＄１００ １２３") == ["money:$ddd", "num:ddd"]
    assert word_tokens("V\u200biagra C\u00adialis Vi\u2060agra Ci\ufeffalis V\u200ci\u200dagra") == [
        "viagra", "cialis", "viagra", "cialis", "viagra"]


def test_digits_of_every_script_have_the_same_shapes():
    """Arabic-Indic or Devanagari digits kept their digits in a short number ('num:٥٠٠') but gave
    'num:d5' in a long one: only ASCII digits became 'd'."""
    assert word_tokens("٥٠٠ ٥٠٠٠٠ १२३ ￡٥٠٠") == ["num:ddd", "num:d5", "num:ddd", "money:£ddd"]


def test_capitals_and_case_of_other_alphabets():
    """Words in capitals counted only in ASCII (`[A-Z]`), and lower case was not a caseless form:
    'STRASSE' and 'straße' were two words, 'İSTANBUL' read 'i', 'stanbul' (Unicode lower-cases İ as
    i and a combining dot)."""
    assert word_tokens("БЕСПЛАТНО СЕЙЧАС ΔΩΡΕΑΝ") == [
        "бесплатно", "сейчас", "δωρεαν", "upper:бесплатно", "upper:сейчас", "upper:δωρεαν", "caps:0"]
    assert word_tokens("STRASSE Straße") == ["strasse", "strasse", "upper:strasse", "caps:0"]
    assert word_tokens("İSTANBUL İNDİRİM") == word_tokens("ISTANBUL INDIRIM")
    assert word_tokens("İstanbul'da indirim") == ["istanbul'da", "indirim"]


def test_chinese_and_japanese_runs_become_character_bigrams():
    """Han, Hiragana and Katakana are written without spaces: a clause was one token (and a run
    over 30 characters `long:N`), so such mail was read by its headers alone. Each run gives its
    overlapping pairs of characters, a lone character itself, as Lucene's CJK analyser does."""
    assert word_tokens("我们公司提供发票服务，欢迎。") == ["我们", "们公", "公司", "司提", "提供", "供发", "发票",
                                                    "票服", "服务", "欢迎"]
    long_run = "恭喜您获得本公司年终大抽奖一等奖奖金五十万元请立即联系我们的客服人员领取奖品"
    toks = word_tokens(long_run)
    assert len(toks) == len(long_run) - 1 and not any(t.startswith("long:") for t in toks)
    assert word_tokens("キャンペーンのお知らせ 無料") == ["キャ", "ャン", "ンペ", "ペー", "ーン", "ンの", "のお",
                                                  "お知", "知ら", "らせ", "無料"]
    assert word_tokens("500元优惠券 点击领取http x") == ["元优", "优惠", "惠券", "点击", "击领", "领取", "http", "x",
                                                 "num:ddd"]
    assert word_tokens("特 价") == ["特", "价"]
    assert word_tokens("무료 가입 이벤트") == ["무료", "가입", "이벤트"]  # Korean: words between spaces, as before


def test_sms_url_right_after_chinese_text_is_a_url():
    """`sms_tokens` looked for a link after a word boundary, and there is none between 取 and h."""
    toks = sms_tokens("【京东】恭喜您获得500元优惠券，点击领取http://jd-x.cn/a 回T退订")
    assert toks[:2] == ["url:jd-x.cn", "url:.cn"]
    assert not any(t.startswith("url:") for t in sms_tokens("Awww.. so sweet"))  # (a word's "www.": no link)


def test_emoji_are_tokens():
    """Emoji carried no token at all, though spam uses them heavily ('💰💰💰 FREE')."""
    assert word_tokens("💰💰💰 FREE ❤\ufe0f ©") == ["free", "upper:free", "caps:0", "💰", "💰", "💰", "❤"]


def test_hash_rows_are_signed_normalised_and_mappable():
    h = Hasher(HashingConfig(n_features=1 << 10))
    tokens = ["spam", "spam", "ham", "eggs", "spam eggs"]
    idx, val = h.row(tokens)
    assert idx.dtype == np.int32 and val.dtype == np.float32
    assert np.all(np.diff(idx) > 0) and np.all((idx >= 0) & (idx < 1 << 10))
    np.testing.assert_allclose(np.linalg.norm(val), 1.0, rtol=1e-6)
    feats = h.token_features(tokens)
    assert set(feats) == {"spam", "ham", "eggs", "spam eggs"}
    buckets = {b for b, _ in feats.values()}
    assert buckets == set(idx.tolist())
    # "spam" appears twice: weight 1 + log 2 relative to a single token, with its own sign
    # (when nothing collides with it)
    b, s = feats["spam"]
    others = [t for t, (bb, _) in feats.items() if bb == b and t != "spam"]
    if not others:
        b_eggs, s_eggs = feats["eggs"]
        ratio = val[idx == b][0] / val[idx == b_eggs][0]
        np.testing.assert_allclose(ratio, s * s_eggs * (1 + np.log(2)), rtol=1e-5)


def test_empty_row_and_csr_stacking():
    h = Hasher(HashingConfig(n_features=64))
    token_lists = [["a", "b"], [], ["c"]]
    x = h.matrix(token_lists)
    assert sp.issparse(x) and x.shape == (3, 64) and x.dtype == np.float32
    assert x[1].nnz == 0 and x[0].nnz in (1, 2)
    for i, tokens in enumerate(token_lists):  # each row is the message's own row
        idx, val = h.row(tokens)
        np.testing.assert_array_equal(x[i].indices, idx)
        np.testing.assert_array_equal(x[i].data, val)


def test_hashing_is_stable_across_processes():
    """The bucket of a token must not depend on Python's per-process string hash salt."""
    code = ("from chainrule.data.text import Hasher; h = Hasher();"
            "print([h.signed_index(t) for t in ('viagra', 'subject:free', 'url:example.com')])")
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                check=True).stdout)
    assert len(outs) == 1
    h = Hasher()
    assert str([h.signed_index(t) for t in ("viagra", "subject:free", "url:example.com")]) == outs.pop().strip()


def test_config_round_trip_and_validation():
    cfg = HashingConfig(n_features=1 << 12, bigrams=False, char_ngrams=4)
    assert HashingConfig.from_dict(cfg.to_dict()) == cfg
    import pytest

    with pytest.raises(ValueError, match="power of two"):
        HashingConfig.from_dict({"n_features": 1000})


def test_matrix_equals_the_formula_row_by_row():
    """Hasher.matrix: x[b] = Σ_{t in bucket b} s(t)(1 + log count(t)), then x / ||x||, per message."""
    h = Hasher(HashingConfig(n_features=16))  # few buckets, so tokens collide and signs cancel
    lists = [["a", "b", "a", "c", "d", "e", "f", "g", "h"], [], ["x"] * 5, list("abcdefghijklmnopqrstuvwxyz")]
    x = h.matrix(lists)
    assert x.shape == (4, 16) and x.dtype == np.float32 and x.indices.dtype == np.int32
    for i, tokens in enumerate(lists):
        expected = np.zeros(16)
        for tok, (b, s) in h.token_features(tokens).items():
            expected[b] += s * (1 + np.log(tokens.count(tok)))
        if expected.any():
            expected /= np.linalg.norm(expected)
        np.testing.assert_allclose(x[i].toarray()[0], expected, rtol=1e-6, atol=1e-7)
        idx, val = h.row(tokens)
        np.testing.assert_array_equal(idx, x[i].indices)
        np.testing.assert_array_equal(val, x[i].data)


def test_split_norm_scales_header_and_body_blocks_apart():
    """split_norm: header tokens and body tokens each to norm 1/√2 (the formula above per block),
    then added; a row with only one block is that block at unit length."""
    h = Hasher(HashingConfig(n_features=16, split_norm=True))
    plain = Hasher(HashingConfig(n_features=16))
    head = ["subject:free", "from:@example.com", "received:mx.example.com", "url:example.com", "has:html"]
    body = ["free", "money", "money", "num:ddd", "upper:free", "click"]
    x = h.matrix([head + body, body, head, []])
    expected = np.zeros(16)
    for part in (head, body):
        block = np.zeros(16)
        for tok, (b, s) in h.token_features(part).items():
            block[b] += s * (1 + np.log(part.count(tok)))
        expected += block / np.linalg.norm(block) / np.sqrt(2)
    np.testing.assert_allclose(x[0].toarray()[0], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(x[1].toarray(), plain.matrix([body]).toarray(), rtol=1e-6)
    np.testing.assert_allclose(x[2].toarray(), plain.matrix([head]).toarray(), rtol=1e-6)
    assert x[3].nnz == 0
    assert HashingConfig.from_dict({"n_features": 16}).split_norm is False  # models saved before it


def test_inverse_document_frequency_counts_rows_not_occurrences():
    """idf = ln((1 + n) / (1 + df)) + 1, df = rows where the bucket is non-zero (3 rows here)."""
    x = sp.csr_matrix(np.array([[2.0, 0, 1, 0], [0.5, 0, 0, 0], [3.0, 0, -1, 0]]))
    x.data[-1] = 0.0  # an explicit zero (tokens that cancelled) is not an occurrence
    idf = inverse_document_frequency(x)
    assert idf.dtype == np.float32
    np.testing.assert_allclose(idf, [1.0, np.log(4) + 1, np.log(4 / 2) + 1, np.log(4) + 1], rtol=1e-6)


def test_min_df_leaves_out_the_buckets_of_fewer_training_rows():
    """df = (3, 0, 1, 0) rows: with min_df 2 only the first bucket keeps its weight; the other
    weights are exactly 0 (a bucket no message has included), not a small idf."""
    x = sp.csr_matrix(np.array([[2.0, 0, 1, 0], [0.5, 0, 0, 0], [3.0, 0, 0, 0]]))
    np.testing.assert_array_equal(inverse_document_frequency(x, min_df=2), [1.0, 0, 0, 0])
    np.testing.assert_allclose(inverse_document_frequency(x, min_df=1), [1.0, 0, np.log(2) + 1, 0], rtol=1e-6)
    np.testing.assert_array_equal(inverse_document_frequency(x, min_df=0), inverse_document_frequency(x))


def test_min_df_in_a_saved_config_is_checked():
    assert HashingConfig.from_dict({"n_features": 16, "idf": True}).min_df == 0  # models saved before it
    assert HashingConfig.from_dict({"n_features": 16, "idf": True, "min_df": 3}).min_df == 3
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(ValueError, match="min_df must be an integer"):
            HashingConfig.from_dict({"n_features": 16, "idf": True, "min_df": bad})
    with pytest.raises(ValueError, match="min_df needs idf"):
        HashingConfig.from_dict({"n_features": 16, "min_df": 3})


def test_delivery_in_a_saved_config_is_checked():
    assert HashingConfig.from_dict({"n_features": 16, "version": 1}).delivery is True  # models saved before it
    off = HashingConfig(n_features=16, delivery=False)
    # version 2: a chainrule from before `delivery` (which accepts version 1 only) refuses the model
    # rather than reading the headers the model was trained without
    assert off.to_dict()["version"] == 2 and HashingConfig().to_dict()["version"] == 1
    assert HashingConfig.from_dict(off.to_dict()) == off
    for bad in (0, "no", None):
        with pytest.raises(ValueError, match="delivery must be true or false"):
            HashingConfig.from_dict({"n_features": 16, "delivery": bad, "version": 2})
    for d in ({"n_features": 16, "delivery": False}, {"n_features": 16, "delivery": False, "version": 1},
              {"n_features": 16, "version": 2}):
        with pytest.raises(ValueError, match="does not go with delivery"):
            HashingConfig.from_dict(d)
    for version in (3, "1", 1.0, True):
        with pytest.raises(ValueError, match="is not understood"):
            HashingConfig.from_dict({"n_features": 16, "version": version})


def test_without_delivery_the_received_hosts_and_to_header_are_left_out(spamassassin_messages):
    """`delivery=False` drops exactly the tokens of the Received lines and the To header, in every
    real message, and keeps the rest in their order."""
    off = HashingConfig(delivery=False)
    dropped = ("received:", "received0:", "received1:", "received2:", "to:")  # (not the body word "received")
    seen = set()
    for m in spamassassin_messages[::10]:
        parsed = parse_message(m.data)
        full, without = message_tokens(parsed), message_tokens(parsed, off)
        assert without == [t for t in full if not t.startswith(dropped)]
        seen.update(t.split(":", 1)[0] for t in full if t.startswith(dropped))
    assert seen == {"received", "received0", "received1", "received2", "to"}  # (the corpus has them: the test can fail)


def test_idf_weights_each_bucket_before_the_norm():
    """With idf, each bucket's tf·sign sum is multiplied by its weight, then (per split_norm block)
    the row is normalised: the formula of the split_norm test, weighted."""
    cfg = HashingConfig(n_features=16, split_norm=True, idf=True)
    idf = np.linspace(1.0, 4.0, 16).astype(np.float32)
    h = Hasher(cfg, idf)
    head = ["subject:free", "from:@example.com", "url:example.com"]
    body = ["free", "money", "money", "num:ddd", "click"]
    x = h.matrix([head + body])
    expected = np.zeros(16)
    for part in (head, body):
        block = np.zeros(16)
        for tok, (b, s) in h.token_features(part).items():
            block[b] += s * (1 + np.log(part.count(tok)))
        block *= idf
        expected += block / np.linalg.norm(block) / np.sqrt(2)
    np.testing.assert_allclose(x[0].toarray()[0], expected, rtol=1e-5, atol=1e-7)
    unweighted = Hasher(HashingConfig(n_features=16, split_norm=True)).matrix([head + body])
    assert not np.allclose(x.toarray(), unweighted.toarray())
    with pytest.raises(ValueError, match="idf has shape"):
        Hasher(cfg, idf[:8])
    with pytest.raises(ValueError, match="needs the idf weights"):  # no hashing without the model's weights
        Hasher(cfg)
    with pytest.raises(ValueError, match="needs no idf weights"):
        Hasher(HashingConfig(n_features=16), idf)
    assert HashingConfig.from_dict({"n_features": 16}).idf is False  # models saved before it


_BODY_PREFIXES = ("num:", "money:", "upper:", "caps:", "punct:", "long:", "c:")


def test_header_prefixes_name_every_header_token(spamassassin_messages):
    # every token of a real message is a body token or starts with one of HEADER_PREFIXES, so
    # split_norm puts each in the block it came from; and the header tokens come first, which is
    # what lets Hasher.matrix bisect for the boundary
    for m in spamassassin_messages:
        toks = message_tokens(parse_message(m.data))
        for tok in toks:
            if ":" in tok and not tok.startswith(_BODY_PREFIXES):
                assert tok.startswith(HEADER_PREFIXES), tok
        is_header = [t.startswith(HEADER_PREFIXES) for t in toks]
        assert is_header == sorted(is_header, reverse=True), "a header token after a body token"


def test_sms_tokens_put_url_domains_first(data_root):
    texts, _ = read_sms(data_root / "sms-spam" / "SMSSpamCollection")
    assert sum("url:" in " ".join(sms_tokens(t)) for t in texts) > 10  # (messages with links are tested)
    for text in texts:
        is_header = [t.startswith(HEADER_PREFIXES) for t in sms_tokens(text)]
        assert is_header == sorted(is_header, reverse=True), text


_TEXTS = st.text(alphabet=st.sampled_from(list("aZQx09_$£€!? .,:/-'’&\néÉ٣BÄДдΣß\u0301公の")), max_size=60)


@settings(max_examples=300, deadline=None)
@given(_TEXTS)
def test_fast_patterns_match_the_plain_ones(text):
    """The scan-friendly regexes find exactly what the plain forms find, on ASCII and other text."""
    import re

    from chainrule.data import text as t

    marks = t._MARKS_RE.findall(text)  # numbers, capitals and !? runs in one scan, told apart by their first character
    assert [m for m in marks if m[0] in "$£€" or m[0].isdecimal()] == re.findall(r"[$£€]?\d[\d.,:/-]*", text)
    assert [m for m in marks if "A" <= m[0] <= "Z"] == re.findall(r"\b[A-Z]{3,}\b", text)
    assert [m for m in marks if m[0] in "!?"] == re.findall(r"[!?]+", text)
    if text.isascii():
        assert t._WORD_ASCII_RE.findall(text.lower()) == t._WORD_RE.findall(text.lower())
    marks = t._MARKS_UNICODE_RE.findall(text)  # (the same with the capitals of every alphabet)
    assert [m for m in marks if m[0] in "$£€" or m[0].isdecimal()] == re.findall(r"[$£€]?\d[\d.,:/-]*", text)
    assert [m for m in marks if m[0].isupper()] == re.findall(rf"\b[A-Z{re.escape(t._CAPITALS)}]{{3,}}\b", text)
    assert [m for m in marks if m[0] in "!?"] == re.findall(r"[!?]+", text)
    if not t._CJK_RE.search(text):  # (the pattern that parts Chinese from other words finds the same words)
        assert t._CJK_WORD_RE.findall(text.casefold()) == t._WORD_RE.findall(text.casefold())


def test_matrix_hashes_tokens_with_lone_surrogates_like_signed_index():
    """Strict UTF-8 refuses a lone surrogate (text decoded with surrogateescape); the slow path
    must give the bucket and sign `signed_index` gives."""
    h = Hasher(HashingConfig(n_features=1 << 12))
    tokens = ["caf\udce9", "plain"]
    x = h.matrix([tokens])
    expected = {abs(h.signed_index(t)) - 1: np.sign(h.signed_index(t)) for t in tokens}
    assert dict(zip(x.indices.tolist(), np.sign(x.data).tolist(), strict=True)) == expected


def _same_row(h: Hasher, tokens: list[str]) -> bool:
    x = h.matrix([tokens])
    idx, val = h.row(tokens)
    return (idx.dtype == np.int32 and val.dtype == np.float32 and np.array_equal(idx, x.indices)
            and val.tobytes() == x.data.tobytes())


def test_one_row_is_the_matrix_row_bit_for_bit(spamassassin_messages):
    """Hasher.row (one message, no CSR matrix) gives exactly the row Hasher.matrix gives, for every
    SpamAssassin message, with split_norm and idf as `spam train` uses them on mail and without."""
    idf = (1 + 4 * np.random.default_rng(0).random(1 << 16)).astype(np.float32)
    mail = Hasher(HashingConfig(split_norm=True, idf=True), idf)
    plain = Hasher(HashingConfig(n_features=1 << 10))
    token_lists = [message_tokens(parse_message(m.data), mail.config) for m in spamassassin_messages]
    assert len(token_lists) == 3250
    for h in (mail, plain):
        mismatched = [i for i, tokens in enumerate(token_lists) if not _same_row(h, tokens)]
        assert mismatched == []
    batch = mail.matrix(token_lists[:200])  # and the rows of a batch, too
    for i, tokens in enumerate(token_lists[:200]):
        idx, val = mail.row(tokens)
        assert np.array_equal(idx, batch[i].indices) and val.tobytes() == batch[i].data.tobytes()


def test_one_row_edge_cases_match_the_matrix():
    """No tokens, a header block only, a count beyond the 1 + log(count) table, a lone surrogate,
    and so few buckets that tokens collide within and across the two blocks."""
    cases = [[], ["subject:free"], ["free"] * 5000 + ["money"], ["subject:x\udcff", "x\udcff", "a"],
             ["subject:a", "from:b", "url:c", *"abcdefghijklmnopqrstuvwxyz", "a", "a"]]
    for cfg in (HashingConfig(n_features=16, split_norm=True), HashingConfig(n_features=16),
                HashingConfig(n_features=4, split_norm=True, idf=True)):
        h = Hasher(cfg, np.linspace(1, 3, cfg.n_features).astype(np.float32) if cfg.idf else None)
        for tokens in cases:
            assert _same_row(h, tokens), (cfg, tokens[:5])


def test_a_huge_address_or_received_header_is_read_only_to_its_first_thousand_characters():
    """Their patterns take time growing with the square of a run that never completes a match (a
    60,000-letter From header took 10 s), so only the first 1,000 characters (RFC 5322's line) count."""
    def tokens(from_, received):
        raw = (b"Received: from " + received + b"\nFrom: " + from_ + b"\nTo: " + from_ +
               b"\nSubject: hi\n\nhello there\n")
        return message_tokens(parse_message(raw))

    huge = tokens(b"a" * 60_000, b"1." * 30_000)
    assert huge == tokens(b"a" * 1_000, b"1." * 500)  # (both Received lines are cut at 1,000 characters)
    assert "hello" in huge and "subject:hi" in huge
