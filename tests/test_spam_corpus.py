"""Labelled messages for the spam commands (chainrule.apps.spam.corpus): problems go to the
caller's callback, never to the terminal; unlabelled mail and broken SMS files are user errors."""

import numpy as np
import pytest

from chainrule.apps.spam import batches, collect
from chainrule.apps.spam import corpus as spam_corpus
from chainrule.errors import UserError


def _msg(subject: str) -> bytes:
    return f"From: a@example.com\nSubject: {subject}\n\nhello\n".encode()


def test_collect_reads_mail_and_sms_and_hands_problems_to_the_caller(tmp_path, capsys):
    (tmp_path / "spam").mkdir()
    (tmp_path / "ham").mkdir()
    (tmp_path / "spam" / "1").write_bytes(_msg("s"))
    (tmp_path / "ham" / "2").write_bytes(_msg("h"))
    (tmp_path / "ham" / "broken.tar.gz").write_bytes(b"not a tarball")
    (tmp_path / "sms.txt").write_bytes(b"spam\tWIN now\nham\tok\n")
    problems = []
    items, sources, y = collect([tmp_path / "spam", tmp_path / "ham", tmp_path / "missing"], [tmp_path / "sms.txt"],
                                on_problem=lambda source, reason: problems.append((source, reason)))
    assert [kind for kind, _ in items] == ["mail", "mail", "sms", "sms"] and list(y) == [1, 0, 1, 0]
    assert sources[0].endswith("spam/1") and sources[2:] == [f"{tmp_path / 'sms.txt'}:1", f"{tmp_path / 'sms.txt'}:2"]
    assert [s.rsplit("/", 1)[-1] for s, _ in problems] == ["broken.tar.gz", "missing"]
    assert all(reason and "\n" not in reason for _, reason in problems)
    # without a callback the problems are skipped quietly: the library prints nothing
    assert len(collect([tmp_path / "ham"])[0]) == 1
    assert capsys.readouterr() == ("", "")


def test_collect_refuses_unlabelled_mail_and_broken_sms_files(tmp_path):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "1").write_bytes(_msg("?"))
    with pytest.raises(UserError, match="cannot tell whether it is spam or ham"):
        collect([tmp_path / "inbox"])
    items, _, y = collect([tmp_path / "inbox"], labelled=False)
    assert len(items) == 1 and list(y) == [-1]
    items, _, y = collect([tmp_path / "inbox"], labelled=False, label=1)
    assert np.array_equal(y, [1])
    (tmp_path / "sms.txt").write_bytes(b"ham\tfine\nno label here\n")
    with pytest.raises(UserError, match=":2:"):
        collect([], [tmp_path / "sms.txt"])


def test_batches_close_at_their_count_or_once_they_hold_their_bytes(monkeypatch):
    monkeypatch.setattr(spam_corpus, "BATCH_MESSAGES", 3)
    monkeypatch.setattr(spam_corpus, "BATCH_BYTES", 10)
    sizes = [1, 1, 1, 5, 5, 20, 4, 4]  # (each message's bytes)
    assert list(batches(sizes, lambda n: n)) == [[1, 1, 1], [5, 5], [20], [4, 4]]
    assert list(batches([], len)) == []
