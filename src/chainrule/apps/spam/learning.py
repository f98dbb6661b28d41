"""Teaching a trained filter the messages it got wrong (`learn`), as `bogofilter -s/-n` does."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

import chainrule as cr
from chainrule.apps.spam.model import REPLAY_SIZE, SpamModel, load_replay, save_model


def learn(bundle: SpamModel, x_new: sp.csr_matrix, y_new: np.ndarray, epochs: int = 4, lr: float = 5e-4,
          replay_per_new: int = 8, seed: int | None = None) -> dict:
    """Incremental training on corrected messages, like `bogofilter -s/-n`.

    A few epochs of Adam on the new messages mixed with a random sample of the replay set (up to
    `replay_per_new` old examples per new one, so the network rehearses what it knew instead of
    bending entirely towards the new mail), then the new messages join the replay set. Saves the
    model and the replay set together, in one commit (`save_model`). The idf weights stay those of the training
    messages: a few new messages say little about how common a word is. Returns the new messages'
    probabilities before and after.
    """
    directory = bundle.directory
    x_old, y_old = load_replay(bundle.files.get("replay"), bundle.config.n_features)
    rng = np.random.default_rng(seed)
    take = rng.permutation(x_old.shape[0])[: replay_per_new * x_new.shape[0]]
    x = sp.vstack([x_new, x_old[take]]).tocsr().astype(np.float32)
    y = np.concatenate([np.asarray(y_new, np.int64), y_old[take]])
    before = bundle.probabilities(x_new)
    pos_weight = float(bundle.metadata.get("training", {}).get("pos_weight", 1.0))
    optimizer = cr.Adam(bundle.model.parameters(), lr=lr)
    cr.fit(bundle.model, x, y, cr.BinaryCrossEntropy(pos_weight=pos_weight), optimizer, epochs=epochs,
           batch_size=32, verbose=False, seed=int(rng.integers(1 << 31)))
    after = bundle.probabilities(x_new)
    x_keep = sp.vstack([x_old, x_new]).tocsr()
    y_keep = np.concatenate([y_old, y_new])
    if x_keep.shape[0] > REPLAY_SIZE:  # forget the oldest first
        x_keep, y_keep = x_keep[-REPLAY_SIZE:], y_keep[-REPLAY_SIZE:]
    meta = bundle.metadata
    meta["learned"] = int(meta.get("learned", 0)) + int(x_new.shape[0])
    save_model(bundle, directory, replay=(x_keep, y_keep))
    return {"before": before.tolist(), "after": after.tolist()}
