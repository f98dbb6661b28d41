"""Messages to hashed rows on every core (chainrule.apps.spam.features): idf weighting of the
training messages, forked featurising and scoring equal to one process, the chunking."""

from dataclasses import replace

import numpy as np

from chainrule.apps.spam import featurize, load_spam_model, training_features
from chainrule.apps.spam.features import _guided_chunks
from chainrule.data.mime import parse_message
from chainrule.data.text import Hasher, HashingConfig, inverse_document_frequency, message_tokens


def _thirty_of_each(spam_corpus) -> list[tuple[str, bytes]]:
    """30 real spam and 30 real ham messages of the test corpus, as `featurize` items."""
    return [("mail", p.read_bytes()) for kind in ("spam", "easy_ham")
            for p in sorted((spam_corpus[1] / kind).iterdir())[:30]]


def test_training_features_weight_by_the_idf_of_the_training_messages(spam_corpus):
    items = _thirty_of_each(spam_corpus)
    config = HashingConfig(n_features=1 << 12, split_norm=True, idf=True)
    x, problems, idf = training_features(items, config, processes=1)
    plain, _ = featurize(items, HashingConfig(n_features=1 << 12, split_norm=True), processes=1)
    np.testing.assert_array_equal(idf, inverse_document_frequency(plain))
    weighted, _ = featurize(items, config, processes=1, idf=idf)
    assert (x != weighted).nnz == 0 and len(problems) == len(items)
    assert training_features(items, HashingConfig(n_features=1 << 12), processes=1)[2] is None


def test_min_df_leaves_the_rare_buckets_out_of_every_row(spam_corpus):
    """With min_df 3 the idf is the one `inverse_document_frequency` gives for it, a bucket found in
    fewer than 3 of the training messages holds 0 in every row, and the rows are those of the
    messages without the rare buckets' tokens (which take no share of the norm)."""
    items = _thirty_of_each(spam_corpus)
    config = HashingConfig(n_features=1 << 12, split_norm=True, idf=True, min_df=3)
    x, _, idf = training_features(items, config, processes=1)
    plain, _ = featurize(items, HashingConfig(n_features=1 << 12, split_norm=True), processes=1)
    np.testing.assert_array_equal(idf, inverse_document_frequency(plain, 3))
    df = np.bincount(plain.indices[plain.data != 0], minlength=1 << 12)
    assert (idf[df < 3] == 0).all() and (idf[df >= 3] >= 1).all() and (df[df > 0] < 3).any()
    assert not x[:, np.flatnonzero(df < 3)].count_nonzero()
    hasher = Hasher(replace(config, min_df=0), np.where(idf > 0, idf, 1).astype(np.float32))
    tokens = [message_tokens(parse_message(raw), config) for _, raw in items]
    kept = [[t for t in ts if df[hasher.token_features([t])[t][0]] >= 3] for ts in tokens]
    np.testing.assert_allclose(x.toarray(), hasher.matrix(kept).toarray(), rtol=1e-6, atol=1e-7)


def test_scoring_on_every_core_matches_one_process(spam_model, spam_corpus):
    # 400 real messages: enough for featurize and score to fork, in chunks of shrinking size
    items = [("mail", p.read_bytes()) for p in sorted(spam_corpus[0].rglob("*")) if p.is_file()][:400]
    bundle = load_spam_model(spam_model)
    x1, problems1 = featurize(items, bundle.config, processes=1, idf=bundle.idf)
    x2, problems2 = featurize(items, bundle.config, processes=2, idf=bundle.idf)
    assert x1.shape == (400, bundle.config.n_features) and (x1 != x2).nnz == 0 and problems1 == problems2
    p1, _ = bundle.score(items, processes=1)
    p2, problems = bundle.score(items, processes=2)
    # the network runs per chunk: float32 sums over batches of other sizes round differently
    np.testing.assert_allclose(p2, p1, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(p2, bundle.probabilities(x1), rtol=1e-6, atol=1e-9)
    assert problems == problems1


def test_guided_chunks_cover_the_items_in_order_and_shrink():
    items = list(range(5000))
    chunks = _guided_chunks(items, workers=2)
    assert [i for c in chunks for i in c] == items
    sizes = [len(c) for c in chunks]
    assert max(sizes) == 500 and sizes == sorted(sizes, reverse=True) and min(sizes[:-1]) >= 16
    assert _guided_chunks([], workers=2) == [] and _guided_chunks([1, 2], workers=4) == [[1, 2]]


def test_a_long_mail_gives_the_same_tokens_with_crlf_line_ends_as_with_lf(spamassassin_messages):
    """A message's text is read up to its first 30,000 characters, and each CR of CRLF line ends
    counted as one of them: past that length the same mail sent by spamc (CRLF) lost the words at
    the end of its text that a copy from a Maildir (LF) kept, scored differently (9 of the corpus's
    3,250) and counted as a second lesson."""
    config = HashingConfig()
    long_ones = [m.data for m in spamassassin_messages if len(m.data) > 40_000 and b"\r" not in m.data][:5]
    assert long_ones
    for raw in long_ones:
        lf = message_tokens(parse_message(raw), config)
        assert message_tokens(parse_message(raw.replace(b"\n", b"\r\n")), config) == lf
