"""Why a message got its verdict: the tokens that pushed it towards spam and towards ham
(`explain_row`), and one-message classification for other programs (`classify_message`).
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import scipy.sparse as sp

from chainrule.apps.spam.annotate import FIELD_START
from chainrule.apps.spam.features import item_tokens
from chainrule.apps.spam.model import SpamModel, verdict
from chainrule.data.corpora import MAX_BYTES, MBOX_FROM_LINE
from chainrule.data.mime import LINE_END, decode_text, header_block_lines, without_cut_character
from chainrule.functional import sigmoid


def explain_row(bundle: SpamModel, tokens: list[str], top: int = 10) -> tuple[float, list, list]:
    """(P(spam), tokens towards spam, tokens towards ham) by gradient × input on the hashed features.

    The logit's gradient with respect to every input bucket is backpropagated through the layers
    above the first `Linear`: dlogit/dx_j = Σ_k W1[j, k] · dlogit/dh_k, where h = x·W1 + b1.
    Bucket j holds x_j = c · Σ sign(t) · (1 + log count(t)) over its tokens t, c the factors they
    share (the bucket's idf, the message's norm), so token t's share of x_j · dlogit/dx_j is its
    own term's share of that sum: tokens of opposite sign in one bucket (a hash collision) push
    opposite ways, and the shares add up to the bucket's. (With `split_norm`, a header token and
    a body token in one bucket are normed apart, and their shares are split as if they were not.)

    Layers cache their inputs in the forward pass for the backward one, so a network shared by
    threads must run one pass at a time: the model's `lock` is held around the two passes, and only
    them.
    """
    hasher = bundle.hasher
    idx, val = hasher.row(tokens)
    x = sp.csr_matrix((val, idx, [0, len(idx)]), shape=(1, bundle.config.n_features), dtype=np.float32)
    net = bundle.model
    first = net.layers[0]
    with net.lock:
        out = net.checked_outputs(net.forward(x))  # (a ModelFileError where the logit overflowed)
        grad = np.ones_like(out)
        for layer in reversed(net.layers[1:]):
            grad = layer.backward(grad)
        dlogit_dx = first.weight.data[idx] @ grad[0]  # (nnz,)
    contribution = dict(zip(idx.tolist(), (val * dlogit_dx).tolist(), strict=True))
    feats = hasher.token_features(tokens)
    counts = Counter(tokens)
    term = {tok: sign * (1 + math.log(counts[tok])) for tok, (_, sign) in feats.items()}
    bucket_sum: dict[int, float] = {}
    for tok, (b, _) in feats.items():
        bucket_sum[b] = bucket_sum.get(b, 0.0) + term[tok]
    sharing = Counter(b for b, _ in feats.values())
    # (terms that cancel, where the bucket's value is not 0: header and body normed apart)
    scored = [(tok, contribution.get(b, 0.0) * term[tok] / bucket_sum[b] if bucket_sum[b]
               else contribution.get(b, 0.0) / sharing[b]) for tok, (b, _) in feats.items()]
    scored.sort(key=lambda t: t[1])
    p = float(sigmoid(float(out[0, 0])))
    towards_spam = [(t, s) for t, s in reversed(scored[-top:]) if s > 0]
    towards_ham = [(t, s) for t, s in scored[:top] if s < 0]
    return p, towards_spam, towards_ham


# A field that mail software writes at the top of a message. Any field name counts where the lines
# after it go on as a header block (another field, or the first field's folded lines); one field
# followed by a blank line is an email only with one of these names: an SMS such as "URGENT: call
# now" has the shape of one field, and so may "Note: ..." with a blank line and more text after it.
_COMMON_FIELD = re.compile(
    rb"(?i)(?:from|to|cc|subject|date|received|return-path|delivered-to|message-id|"
    rb"mime-version|content-type|reply-to|sender|envelope-to|x-[\w-]+)[ \t]*:")
# What a pasted message may begin with before its first line of text: a byte order mark (an .eml
# saved by a Windows program), blank lines, spaces.
_LEADING_SPACE = re.compile(rb"\A(?:\xef\xbb\xbf)?\s*")
_HEAD_BYTES = 8192  # how much of a message `looks_like_email` reads


def looks_like_email(raw: bytes) -> bool:
    """Whether pasted text is an email with headers (else it is treated as an SMS or a bare note).

    From its first line of text (`_LEADING_SPACE` skipped), it starts with an mbox "From " line, or
    with a header field that the lines after it continue as a header block: another field after it
    (past its folded lines), or folded lines and then a blank line. A field of the names mail
    software writes first (`_COMMON_FIELD`) and a blank line after it will do as well; an SMS may
    start like one field ("To: all - free prize ...", "From: mum") and nothing follow it as a
    header block."""
    start = _LEADING_SPACE.match(raw).end()
    head = raw[start:start + _HEAD_BYTES]
    if MBOX_FROM_LINE.match(head):  # (not a first word "From": "From now on you...")
        return True
    if not FIELD_START.match(head):
        return False
    lines = head.splitlines()[1:]
    folded = bool(lines) and lines[0].startswith((b" ", b"\t"))
    common = _COMMON_FIELD.match(head) is not None
    after = [line for line in lines if not line.startswith((b" ", b"\t"))]
    if not after:  # the first field is all there is, or all of the head
        return len(raw) > start + len(head) and (folded or common)
    if FIELD_START.match(after[0]):
        return True
    return not after[0].strip() and (folded or common)


def _mail_start(raw: bytes) -> tuple[int, int]:
    """(where the text of a pasted email starts, how many lines end before it): a message pasted
    with blank lines above its headers is parsed from its first field, where a blank line would end
    an empty header block and leave every header to be read as body text. The lines skipped are
    counted in the answer's `header_lines`, which a page counts from the top of the text it sent."""
    start = _LEADING_SPACE.match(raw).end()
    return start, len(LINE_END.findall(raw, 0, start))  # (counted as `header_block_lines` counts)


def classify_message(bundle: SpamModel, raw: bytes, top: int = 5, mail: bool = False) -> dict:
    """Classify one message for programs such as the web app: an email with its headers, or the
    text of an SMS (anything that does not start like an email), tokenised as training saw each.
    With `mail` (a body declared message/rfc822), it is an email whatever its first lines look like.

    Parsing and tokenising, the slow part (a deep 1 MB HTML mail takes a second or two), need no
    lock; the model's is held only around the network's passes (`explain_row`).

    Returns {"label": "spam"|"ham"|"unsure", "probability": P(spam), "top_tokens":
    [{"token", "weight"}...] (the strongest in either direction), "problem": str|None, "read_as":
    "mail"|"sms", "header_lines": the lines of the mail's header block (`header_block_lines`), the
    blank lines above it included (0 for an SMS, or a mail read as plain text)}: a page showing the
    message marks a header's tokens in its header's lines, and a body's below them, where the
    server read each.
    """
    raw = raw if len(raw) <= MAX_BYTES else without_cut_character(raw[:MAX_BYTES])
    if mail or looks_like_email(raw):
        start, skipped = _mail_start(raw)
        item = ("mail", raw[start:])
    else:
        skipped, item = 0, ("sms", decode_text(raw, "utf-8"))  # (as `read_sms` does)
    tokens, problem = item_tokens(*item, bundle.config)
    parsed = item[0] == "mail" and problem is None  # (else all of it was read as text)
    p, to_spam, to_ham = explain_row(bundle, tokens, top)
    strongest = sorted(to_spam + to_ham, key=lambda t: -abs(t[1]))[:top]
    return {"label": verdict(p, bundle.spam_cutoff, bundle.ham_cutoff), "probability": p,
            "top_tokens": [{"token": t, "weight": round(w, 6)} for t, w in strongest],
            "problem": problem, "read_as": item[0],
            "header_lines": skipped + header_block_lines(item[1]) if parsed else 0}
