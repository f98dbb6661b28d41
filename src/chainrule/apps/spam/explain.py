"""Why a message got its verdict: the tokens that pushed it towards spam and towards ham
(`explain_row`), and one-message classification for other programs (`classify_message`).
"""

from __future__ import annotations

import codecs
import math
import re
from collections import Counter

import numpy as np
import scipy.sparse as sp

from chainrule.apps.spam.annotate import FIELD_START
from chainrule.apps.spam.features import item_tokens
from chainrule.apps.spam.model import SpamModel, verdict
from chainrule.data.corpora import MAX_BYTES
from chainrule.data.mime import decode_text, header_block_lines, without_cut_character
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
        out = net.forward(x)
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


# The first line of an email: a header that mail software writes, or an mbox "From " line (the
# sender, then the date as asctime writes it). A bare "Name: text" is not enough — an SMS such as
# "URGENT: call now" has that shape too — and neither is a first word "From" ("From now on you...").
_EMAIL_START = re.compile(
    rb"(?i)\A\s*(?:from|to|cc|subject|date|received|return-path|delivered-to|message-id|"
    rb"mime-version|content-type|reply-to|sender|envelope-to|x-[\w-]+)[ \t]*:")
_MBOX_FROM = re.compile(rb"\A\s*From \S+ +(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) +"
                        rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ")


def looks_like_email(raw: bytes) -> bool:
    """Whether pasted text is an email with headers (else it is treated as an SMS or a bare note).

    It starts with an mbox "From " line, or with a common header field followed (past that field's
    folded lines) by a blank line or another field: an SMS may start like one field ("To: all -
    free prize ...", "From: mum") and nothing follows it as a header block."""
    head = raw[:8192].removeprefix(codecs.BOM_UTF8)  # (an .eml saved by a Windows program)
    if _MBOX_FROM.match(head):
        return True
    if not _EMAIL_START.match(head):
        return False
    after = [line for line in head.lstrip().splitlines()[1:] if not line.startswith((b" ", b"\t"))]
    if not after:  # the first field is all there is, or all of the head
        return len(raw) > len(head)
    return not after[0].strip() or FIELD_START.match(after[0]) is not None


def classify_message(bundle: SpamModel, raw: bytes, top: int = 5) -> dict:
    """Classify one message for programs such as the web app: an email with its headers, or the
    text of an SMS (anything that does not start like an email), tokenised as training saw each.

    Parsing and tokenising, the slow part (a deep 1 MB HTML mail takes a second or two), need no
    lock; the model's is held only around the network's passes (`explain_row`).

    Returns {"label": "spam"|"ham"|"unsure", "probability": P(spam), "top_tokens":
    [{"token", "weight"}...] (the strongest in either direction), "problem": str|None, "read_as":
    "mail"|"sms", "header_lines": the lines of the mail's header block (`header_block_lines`; 0 for
    an SMS, or a mail read as plain text)}: a page showing the message marks a header's tokens in
    its header's lines, and a body's below them, where the server read each.
    """
    raw = raw if len(raw) <= MAX_BYTES else without_cut_character(raw[:MAX_BYTES])
    item = ("mail", raw) if looks_like_email(raw) else ("sms", decode_text(raw, "utf-8"))  # (as `read_sms` does)
    tokens, problem = item_tokens(*item, bundle.config)
    parsed = item[0] == "mail" and problem is None  # (else all of it was read as text)
    p, to_spam, to_ham = explain_row(bundle, tokens, top)
    strongest = sorted(to_spam + to_ham, key=lambda t: -abs(t[1]))[:top]
    return {"label": verdict(p, bundle.spam_cutoff, bundle.ham_cutoff), "probability": p,
            "top_tokens": [{"token": t, "weight": round(w, 6)} for t, w in strongest],
            "problem": problem, "read_as": item[0], "header_lines": header_block_lines(raw) if parsed else 0}
