"""Reading mail and SMS corpora (chainrule.data.corpora): the real SpamAssassin tarballs, every
reader (directories, mbox, Maildir, tar, stdin, SMS files), labels from paths, capped and
unreadable input."""

import io
import mailbox
import tarfile

import pytest

from chainrule.data.corpora import HAM, MAX_BYTES, SPAM, label_from_path, read_messages, read_sms
from chainrule.data.mime import parse_message


def test_tarball_layout_labels(spamassassin_messages):
    assert len(spamassassin_messages) == 3250
    assert sum(m.label == SPAM for m in spamassassin_messages) == 500
    assert all(m.label in (SPAM, HAM) for m in spamassassin_messages)
    assert not any(m.source.endswith("/cmds") for m in spamassassin_messages)


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
    path = tmp_path / f"spamassassin_messages{suffix}"
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
