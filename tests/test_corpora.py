"""Reading mail and SMS corpora (chainrule.data.corpora): the real SpamAssassin tarballs, every
reader (directories, mbox, Maildir, tar, stdin, SMS files), labels from paths, capped and
unreadable input."""

import bz2
import codecs
import email.message
import gzip
import io
import lzma
import mailbox
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainrule.data import corpora
from chainrule.data.corpora import HAM, MAX_BYTES, SPAM, label_from_names, read_as_is, read_messages, read_sms
from chainrule.data.mime import parse_message
from chainrule.web.http import declared_text
from conftest import damaged, mail_with_an_attachment


def test_tarball_layout_labels(spamassassin_messages):
    assert len(spamassassin_messages) == 3250
    assert sum(m.label == SPAM for m in spamassassin_messages) == 500
    assert all(m.label in (SPAM, HAM) for m in spamassassin_messages)
    assert not any(m.source.endswith("/cmds") for m in spamassassin_messages)


def _msg(subject: str, body: str = "hello there\n") -> bytes:
    return f"From: a@example.com\nTo: b@example.org\nSubject: {subject}\n\n{body}".encode()


def _piped(data: bytes) -> io.TextIOWrapper:
    """Standard input with `data` to read, buffered as Python's is."""
    return io.TextIOWrapper(io.BufferedReader(io.BytesIO(data)))


def _in_corpus_layout(messages) -> list[bytes]:
    """The bytes of each of `messages` as the SpamAssassin corpus's files hold them, an mbox "From "
    line first (which `read_messages` leaves out, of the files unpacked or in the tarballs)."""
    return [b"From someone@example.com Thu Jan  1 00:00:00 2002\n" + m.data for m in messages]


def test_directory_recursive_and_labels(tmp_path):
    (tmp_path / "spam" / "deep").mkdir(parents=True)
    (tmp_path / "easy_ham").mkdir()
    (tmp_path / "spam" / "deep" / "1").write_bytes(_msg("one"))
    (tmp_path / "easy_ham" / "2").write_bytes(_msg("two"))
    (tmp_path / "easy_ham" / ".hidden").write_bytes(_msg("hidden"))
    got = {parse_message(m.data).subject: m.label for m in read_messages([tmp_path])}
    assert got == {"one": SPAM, "two": HAM}
    assert label_from_names(["x", "spam-archive", "ham"]) == HAM and label_from_names(["inbox"]) is None
    assert label_from_names(["20030228_easy_ham.tar.bz2"]) == HAM and label_from_names(["Hard_Ham"]) == HAM
    for not_ham in ("graham", "birmingham", "shampoo", "graham-laptop"):  # "ham" only as a word
        assert label_from_names([not_ham]) is None
    # negated spam is ham, and SpamAssassin's name says nothing (its lists' folders hold ham); both
    # were spam, ham folders included
    for ham in ("nonspam", "not-spam", "NotSpam", "nospam", "no_spam", "non-spam-2002"):
        assert label_from_names(["spam", ham]) == HAM, ham
    assert label_from_names(["ham", "lists", "spamassassin-talk"]) == HAM
    assert label_from_names(["spamassassin-talk"]) is None
    for spam in ("spam_2", "20050311_spam_2.tar.bz2", "SpamArchive", "myspam", "ham-spamtrap"):
        assert label_from_names(["ham", spam]) == SPAM, spam


def test_mail_clients_index_files_are_not_read_as_messages(tmp_path):
    """Thunderbird keeps a Mork index beside each mbox (Junk.msf), Apple Mail a binary
    table_of_contents and an Info.plist inside each X.mbox folder, Windows a Thumbs.db and a
    desktop.ini: each was read as one more message of the folder (a verdict for it, a training
    example of its label)."""
    spam = tmp_path / "spam"
    (spam / "Junk.mbox").mkdir(parents=True)
    for path in (spam / "Junk", spam / "Junk.mbox" / "mbox"):
        box = mailbox.mbox(path)
        box.add(_msg(f"in {path.name}"))
        box.close()
    index_files = {"Junk.msf": b'// <!-- <mdb:mork:z v="1.4"/> -->\n< <(a=c)> // (f=iso-8859-1)\n  (B8=Junk)>\n',
                   "Junk.mbox/table_of_contents": b"bplist00\xd1\x01\x02Stoc\xa6\x03\x07\n\r\x10\x13",
                   "Junk.mbox/Info.plist": b'<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0">\n'
                                           b"<dict><key>LocalizedName</key><string>Junk</string></dict>\n</plist>\n",
                   "Thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "desktop.ini": b"[.ShellClassInfo]\r\n"}
    for name, data in index_files.items():
        (spam / name).write_bytes(data)
    with tarfile.open(tmp_path / "spam.tar", "w") as tar:
        tar.add(spam, arcname="spam")
    for source in (spam, tmp_path / "spam.tar"):
        got = [(parse_message(m.data).subject, m.label, m.error) for m in read_messages([source])]
        assert got == [("in Junk", SPAM, None), ("in mbox", SPAM, None)], source
    assert sorted(p.name for p in corpora.changed_files(spam)) == ["Junk", "mbox"]  # (what spam learn reads)


def test_labels_come_from_folders_from_the_given_path_down_never_from_file_names(tmp_path):
    """A Maildir file is named after its host (1.graham-laptop), and a user's home may be
    /home/graham: neither is a label. A message file named on the command line takes its folder's."""
    (tmp_path / "graham" / "corpus" / "spam").mkdir(parents=True)
    (tmp_path / "graham" / "corpus" / "spam" / "1.graham-laptop.eml").write_bytes(_msg("one"))
    (tmp_path / "graham" / "corpus" / "2.birmingham.eml").write_bytes(_msg("two"))
    # a message that starts with a "From " line, as the SpamAssassin corpus's do, is still a message
    (tmp_path / "graham" / "corpus" / "spam" / "also-ham").write_bytes(b"From a@b.c Mon Jan 1 00:00:00 2002\n"
                                                                       + _msg("three"))
    got = {parse_message(m.data).subject: m.label for m in read_messages([tmp_path / "graham" / "corpus"])}
    assert got == {"one": SPAM, "two": None, "three": SPAM}
    single = read_messages([tmp_path / "graham" / "corpus" / "spam" / "1.graham-laptop.eml"])
    assert [m.label for m in single] == [SPAM]
    # a link keeps the name it was given by (its target's name says nothing)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "1").write_bytes(_msg("linked"))
    (tmp_path / "spam").symlink_to(tmp_path / "store")
    assert [m.label for m in read_messages([tmp_path / "spam"])] == [SPAM]
    assert [m.label for m in read_messages([tmp_path / "graham" / "corpus" / "2.birmingham.eml"])] == [None]


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


def test_a_hard_link_in_an_archive_is_read_as_the_file_it_links(tmp_path):
    """`tar cf` of a folder stores a second name of a file as a hard link: it was dropped, unreported,
    where the folder itself gives both files."""
    (tmp_path / "box" / "spam").mkdir(parents=True)
    (tmp_path / "box" / "spam" / "1").write_bytes(_msg("s"))
    os.link(tmp_path / "box" / "spam" / "1", tmp_path / "box" / "spam" / "2")
    with tarfile.open(tmp_path / "box.tar", "w") as tar:
        tar.add(tmp_path / "box", arcname="box")
    assert tarfile.open(tmp_path / "box.tar").getmember("box/spam/2").islnk()
    got = [(m.source.rsplit("/", 1)[-1], m.data, m.label) for m in read_messages([tmp_path / "box.tar"])]
    assert sorted(got) == [("1", _msg("s"), SPAM), ("2", _msg("s"), SPAM)]


def test_links_in_a_folder_and_in_its_archive_read_the_same_messages(tmp_path):
    """A linked folder was skipped without a word (os.walk does not follow links), and a symbolic
    link in an archive too, so a folder and its archive gave different counts. A folder linked
    twice is read twice, as `find -L` lists it, but a link back up is not followed (a loop); a dot
    folder is left out of an archive, as it is on disk; a link out of an archive is a problem of
    its own."""
    box = tmp_path / "box"
    for folder, subject in (("spam", "s"), ("easy_ham", "h"), (".git", "hidden")):
        (tmp_path / "real" / folder).mkdir(parents=True)
        (tmp_path / "real" / folder / "1").write_bytes(_msg(subject))
    box.mkdir()
    (box / "spam").symlink_to(tmp_path / "real" / "spam")
    (box / "ham").symlink_to(tmp_path / "real" / "easy_ham")
    (box / "ham" / "up").symlink_to(box)  # a loop
    (box / "spam-copy").symlink_to(tmp_path / "real" / "spam")  # the spam folder a second time
    (tmp_path / "real" / "spam" / "2").symlink_to("1")
    folder = sorted((m.source.removeprefix(str(box)), parse_message(m.data).subject, m.label)
                    for m in read_messages([box]))
    assert folder == [("/ham/1", "h", HAM), ("/spam-copy/1", "s", SPAM), ("/spam-copy/2", "s", SPAM),
                      ("/spam/1", "s", SPAM), ("/spam/2", "s", SPAM)]
    with tarfile.open(tmp_path / "box.tar", "w") as tar:
        tar.add(tmp_path / "real", arcname="box")
        for name, target in (("3", "../../../etc/passwd"), ("4", "5"), ("5", "4")):  # out, and a loop (RecursionError)
            link = tarfile.TarInfo(f"box/spam/{name}")
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
    archive = sorted((m.source.rsplit(":", 1)[1], m.data and parse_message(m.data).subject, m.label, m.error)
                     for m in read_messages([tmp_path / "box.tar"]))
    # two folders that link each other: each read under both names, and no further (it went round
    # until the kernel's limit of 40 links, and three such folders for ever)
    for name in ("a", "b", "c"):
        (tmp_path / "mutual" / f"spam_{name}").mkdir(parents=True)
        (tmp_path / "mutual" / f"spam_{name}" / "1").write_bytes(_msg(name))
    for name, other in (("a", "b"), ("b", "c"), ("c", "a"), ("a", "c"), ("b", "a"), ("c", "b")):
        (tmp_path / "mutual" / f"spam_{name}" / f"to_{other}").symlink_to(f"../spam_{other}")
    paths = sorted(m.source.removeprefix(str(tmp_path / "mutual")) for m in read_messages([tmp_path / "mutual"]))
    assert len(paths) == 15 and "/spam_a/to_b/to_c/1" in paths and "/spam_a/to_b/to_a/1" not in paths
    assert archive == [("box/easy_ham/1", "h", HAM, None),
                       ("box/easy_ham/up", b"", HAM, f"a link to {box}, which the archive does not hold"),
                       ("box/spam/1", "s", SPAM, None),
                       ("box/spam/2", "s", SPAM, None),
                       ("box/spam/3", b"", SPAM, "a link to ../../../etc/passwd, which the archive does not hold"),
                       ("box/spam/4", b"", SPAM, "a loop of symbolic links"),
                       ("box/spam/5", b"", SPAM, "a loop of symbolic links")]


def _relative(messages, prefix: str) -> list[tuple]:
    """(source less `prefix`, bytes, label, problem) of each of `messages`, sorted: what two readings
    of the same mail, from two places, must agree on."""
    return sorted((m.source.removeprefix(prefix), m.data, m.label, m.error) for m in messages)


def _backup(root: Path, spamassassin_messages) -> Path:
    """A folder of real mail as people keep it: an mbox of ham and a gzipped one of spam in Mail/, a
    Maildir of spam with a message half delivered in its tmp/ and its server's index beside new/ and
    cur/, messages in the corpus's layout (a "From " line first) in easy_ham/, with a symbolic link
    among them, and a dot folder."""
    ham = [m for m in spamassassin_messages if m.label == HAM]
    spam = [m for m in spamassassin_messages if m.label == SPAM]
    (root / "Mail").mkdir(parents=True)
    box = mailbox.mbox(root / "Mail" / "ham.mbox")
    for m in ham[:4]:
        box.add(m.data)
    box.close()
    box = mailbox.mbox(root / "spam.mbox")
    for m in spam[:3]:
        box.add(m.data)
    box.close()
    (root / "Mail" / "spam.mbox.gz").write_bytes(gzip.compress((root / "spam.mbox").read_bytes()))
    (root / "spam.mbox").unlink()
    maildir = mailbox.Maildir(root / "spam", create=True)
    maildir.add(spam[3].data)  # (to new/)
    seen = mailbox.MaildirMessage(spam[4].data)
    seen.set_subdir("cur")
    seen.add_flag("S")
    maildir.add(seen)
    (root / "spam" / "tmp" / "1.half.host").write_bytes(spam[5].data[:700])
    (root / "spam" / "dovecot-uidlist").write_bytes(b"3 V1 N3\n1 :1.host\n")
    (root / "easy_ham").mkdir()
    for i, data in enumerate(_in_corpus_layout(ham[4:7])):
        (root / "easy_ham" / f"{i:05d}").write_bytes(data)
    (root / "easy_ham" / "00003").symlink_to("00000")
    (root / ".Trash").mkdir()
    (root / ".Trash" / "1").write_bytes(ham[7].data)
    return root


def test_an_archive_is_read_as_the_folder_it_unpacks_to(tmp_path, spamassassin_messages):
    """A tar archive's members were each read as one message: an mbox of 4 ham was one blend of
    them (and `spam train` on the archive refused it, unlabelled, where on disk its name labels
    it), a compressed mbox its compressed bytes, and a Maildir's half delivered tmp/ message and
    its server's index were read where on disk only new/ and cur/ are. A zip archive was one binary
    message. Each is now read as the folder it unpacks to, message by message, label by label."""
    backup = _backup(tmp_path / "backup", spamassassin_messages)
    folder = _relative(read_messages([backup]), f"{backup}/")
    assert len(folder) == 4 + 3 + 2 + 4 and all(error is None for *_, error in folder)
    assert [label for source, _, label, _ in folder if source.startswith("Mail/")] == [HAM] * 4 + [SPAM] * 3
    with tarfile.open(tmp_path / "backup.tar.gz", "w:gz") as tar:
        for path in sorted(backup.iterdir()):
            tar.add(path, arcname=path.name)
    subprocess.run(["zip", "-qry", tmp_path / "backup.zip", "."], cwd=backup, check=True)  # (-y: links kept)
    for archive in ("backup.tar.gz", "backup.zip"):
        assert _relative(read_messages([tmp_path / archive]), f"{tmp_path / archive}:") == folder, archive


def test_an_archive_in_an_archive_and_links_out_of_a_zip_are_problems(tmp_path, spamassassin_messages):
    """A zip's symbolic links (`zip -y`) are read as the members they name, as a tar's are; one to
    what the archive does not hold, a loop, an encrypted member and an archive in an archive are each
    a problem, on one line, and the rest is read."""
    data = spamassassin_messages[0].data
    spam = tmp_path / "box" / "spam"
    spam.mkdir(parents=True)
    (spam / "1").write_bytes(data)
    for name, target in (("2", "1"), ("3", "../../../etc/passwd"), ("4", "5"), ("5", "4")):
        (spam / name).symlink_to(target)
    (spam / "6").write_bytes(data)
    with tarfile.open(spam / "old.tar.gz", "w:gz") as tar:
        tar.add(spam / "1", arcname="spam/1")
    zip_files = ["zip", "-qy", tmp_path / "box.zip"]
    subprocess.run([*zip_files, *(f"box/spam/{name}" for name in ("1", "2", "3", "4", "5", "old.tar.gz"))],
                   cwd=tmp_path, check=True)
    subprocess.run([*zip_files, "-P", "secret", "box/spam/6"], cwd=tmp_path, check=True)  # (encrypted)
    got = [(m.source.rsplit(":", 1)[1], m.data == data, m.label, m.error)
           for m in read_messages([tmp_path / "box.zip"])]
    assert got[:5] == [("box/spam/1", True, SPAM, None), ("box/spam/2", True, SPAM, None),
                       ("box/spam/3", False, SPAM, "a link to ../../../etc/passwd, which the archive does not hold"),
                       ("box/spam/4", False, SPAM, "a loop of symbolic links"),
                       ("box/spam/5", False, SPAM, "a loop of symbolic links")]
    assert got[5] == ("box/spam/old.tar.gz", False, SPAM, "an archive in an archive, not read: unpack it first")
    assert got[6][:3] == ("box/spam/6", False, SPAM) and "encrypted" in got[6][3] and "\n" not in got[6][3]
    assert len(got) == 7


@pytest.mark.parametrize(("encoding", "mark"), [("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
                                                ("utf-32-le", codecs.BOM_UTF32_LE), ("utf-32-be", codecs.BOM_UTF32_BE)])
def test_mail_saved_in_utf16_or_utf32_is_read_as_its_utf8_copy(tmp_path, monkeypatch, spamassassin_messages,
                                                               encoding, mark):
    """Mail saved as "Unicode" (UTF-16 with its byte order mark, as Notepad saves it; or UTF-32) was
    read as its bytes, a NUL in every other one: `spam classify` scored each such ham 0.44 where its
    UTF-8 copy scored 0.14, while the web API reads the mark and scored it as the copy. A message,
    an mbox, compressed or not, in a folder, a Maildir, an archive or on standard input, is read
    as its UTF-8 copy, the bytes the web API reads of it."""
    def unicode(data: bytes) -> bytes:
        return mark + data.decode("ascii").encode(encoding)

    ascii_mail = [m for m in spamassassin_messages if m.data.isascii()]
    copies = {}
    for name, convert in (("utf8", bytes), ("unicode", unicode)):
        root = tmp_path / name
        (root / "ham" / "md" / "tmp").mkdir(parents=True)
        for sub in ("new", "cur"):
            (root / "ham" / "md" / sub).mkdir()
        (root / "ham" / "1").write_bytes(convert(ascii_mail[0].data))
        (root / "ham" / "2.gz").write_bytes(gzip.compress(convert(ascii_mail[1].data)))
        (root / "ham" / "box.mbox").write_bytes(convert(b"".join(_in_corpus_layout(ascii_mail[2:4]))))
        (root / "ham" / "md" / "cur" / "1.host:2,S").write_bytes(convert(ascii_mail[4].data))
        with tarfile.open(tmp_path / f"{name}.tar.gz", "w:gz") as tar:
            tar.add(root / "ham", arcname="ham")
        monkeypatch.setattr("sys.stdin", _piped(convert(ascii_mail[5].data)))
        copies[name] = (_relative(read_messages([root, "-"]), str(root)),
                        _relative(read_messages([tmp_path / f"{name}.tar.gz"]), str(tmp_path / name)))
    assert copies["unicode"] == copies["utf8"]
    read = [data for messages in copies["utf8"] for _, data, _, _ in messages]
    assert len(read) == 6 + 5 and all(read) and not any(b"\x00" in data for data in read)
    for m in ascii_mail[:6]:  # (the web API's reading of the same bytes)
        assert declared_text("message/rfc822", unicode(m.data)) == m.data


def test_a_folder_that_cannot_be_listed_is_a_problem_not_left_out(tmp_path):
    """os.walk passed over a folder it could not list (here its path is longer than the system
    allows), and its messages were dropped without a word."""
    (tmp_path / "mail" / "spam").mkdir(parents=True)
    (tmp_path / "mail" / "spam" / "1").write_bytes(_msg("s"))
    fd = os.open(tmp_path / "mail", os.O_RDONLY)
    for _ in range(20):  # 20 folders of 250 characters, one in the other: past PATH_MAX (4096)
        os.mkdir("d" * 250, dir_fd=fd)
        fd, parent = os.open("d" * 250, os.O_RDONLY, dir_fd=fd), fd
        os.close(parent)
    os.close(fd)
    got = list(read_messages([tmp_path / "mail"]))
    assert [m.label for m in got if m.error is None] == [SPAM]
    assert [m.error for m in got if m.error is not None] == ["a folder that cannot be read (File name too long)"]


def test_a_maildir_cur_that_cannot_be_listed_is_worded_as_any_folder_that_cannot_be_read(tmp_path, monkeypatch):
    """Reading a Maildir whose cur/ could not be listed said only "Permission denied" of it, where
    `spam learn --since-last` (`changed_files`) and every other folder said "a folder that cannot be
    read (Permission denied)". (Root reads any folder: os.listdir refuses cur/ here as it refuses
    another user.)"""
    junk = tmp_path / "spam" / "Junk"
    junk.parent.mkdir()
    mailbox.Maildir(junk, create=True).add(_msg("new one"))
    (new,) = (junk / "new").iterdir()
    listdir = os.listdir

    def refusing_cur(path="."):
        if str(path) == str(junk / "cur"):
            raise PermissionError(13, "Permission denied", str(path))
        return listdir(path)

    monkeypatch.setattr(corpora.os, "listdir", refusing_cur)
    for source in (junk, tmp_path / "spam"):  # (the Maildir named, and inside a folder named)
        assert [(m.source, m.error) for m in read_messages([source])] == [
            (str(new), None), (str(junk / "cur"), "a folder that cannot be read (Permission denied)")], source
        unlisted = []
        assert corpora.changed_files(source, 0, unlisted) == [new]
        assert [(e.filename, corpora.unreadable_folder(e)) for e in unlisted] == [
            (str(junk / "cur"), "a folder that cannot be read (Permission denied)")]


def test_changed_files_lists_what_read_messages_reads_in_its_order(tmp_path):
    """`spam learn --since-last` reads the files `changed_files` lists, in its order, as a run
    without it reads the folder: the same files, dot files and mail clients' index files left out, a
    Maildir's new/ and cur/ but not its tmp/."""
    root = tmp_path / "mail"
    for name in ("spam/2", "spam/1", "spam/.DS_Store", "spam/cmds", "spam/Junk.msf", "ham/sub/3", "ham/4",
                 ".hidden/5", "spam/box/new/6", "spam/box/cur/7:2,S", "spam/box/cur/.8", "spam/box/tmp/9"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_msg(name))
    expected = [root / name for name in ("ham/4", "ham/sub/3", "spam/1", "spam/2", "spam/box/new/6",
                                         "spam/box/cur/7:2,S")]
    for source in (root, root / "spam" / "box"):
        read = [Path(m.source) for m in read_messages([source])]
        assert read == corpora.changed_files(source) == [p for p in expected if source in p.parents]


def test_changed_files_lists_a_link_put_in_the_folder_after_its_target_was_written(tmp_path):
    """A message added to a folder as a symbolic link (mail indexers' "links" folders) is new to
    `spam learn --since-last` when the link is, however old the file it leads to: the target's change
    time alone left it out of every run."""
    stored = tmp_path / "archive" / "1"
    stored.parent.mkdir()
    stored.write_bytes(_msg("kept for years"))
    time.sleep(0.05)
    since = time.time_ns()
    time.sleep(0.05)
    links = tmp_path / "found"
    for sub in ("cur", "new", "tmp"):
        (links / sub).mkdir(parents=True)
    (links / "cur" / "1.host:2,S").symlink_to(stored)
    assert corpora.changed_files(links, since) == [links / "cur" / "1.host:2,S"]
    assert corpora.changed_files(tmp_path / "archive", since) == []


def test_stdin_reader(monkeypatch):
    monkeypatch.setattr("sys.stdin", _piped(_msg("piped")))
    (m,) = list(read_messages(["-"]))
    assert m.source == "-" and parse_message(m.data).subject == "piped"


def test_an_mbox_of_several_messages_on_standard_input_is_refused(monkeypatch, spamassassin_messages):
    """Standard input is one message (a mail filter's); an mbox piped to `spam learn -` was learned
    as one blend of its messages, and counted once. One message in the corpus's layout (a "From "
    line first) is still one message."""
    real = _in_corpus_layout(spamassassin_messages[:3])
    mbox = b"".join(data if data.endswith(b"\n") else data + b"\n" for data in real)
    # a `git format-patch` attachment starts with a "From " line and headers: inside the first
    # message's multipart body, that is no second message (a developer's mail was refused)
    patch_mail = (b"From alice@example.org Mon Dec  7 04:00:00 2026\nFrom: Alice <alice@example.org>\n"
                  b"Subject: [PATCH] fix the frobnicator\nMIME-Version: 1.0\n"
                  b'Content-Type: multipart/mixed; boundary="XX"\n\n--XX\nContent-Type: text/plain\n\n'
                  b"Hi Bob, the patch is attached.\n\n--XX\nContent-Type: text/x-patch\n\n"
                  b"From 3f2a1b9c0d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a Mon Sep 17 00:00:00 2001\n"
                  b"From: Alice <alice@example.org>\nSubject: [PATCH] fix the frobnicator\n\n---\n--XX--\n")
    for data, error in ((mbox, "an mbox of several messages"), (gzip.compress(mbox), "an mbox of several messages"),
                        (real[0], None), (patch_mail, None), (patch_mail + b"\n" + real[0], "an mbox of several"),
                        # (a first message whose multipart body never closes, as spam's often does, or
                        # was cut at --max-bytes: the attachment still starts a part, the next mail not)
                        (patch_mail.replace(b"--XX--", b"") + b"\n" + real[0], "an mbox of several"),
                        (patch_mail.replace(b"--XX--", b""), None)):
        monkeypatch.setattr("sys.stdin", _piped(data))
        (m,) = list(read_messages(["-"]))
        assert (m.error or "").startswith(error or "") and bool(m.error) == bool(error), m.error
        assert m.data == (b"" if error else data)


def test_the_boundary_of_a_message_on_standard_input_is_read_from_its_first_63_semicolons(monkeypatch):
    """Whether standard input is an mbox of several messages depends on the first message's boundary,
    read by the email package's parameter parser, whose time grows with a value's ";"s times its
    length (a quote, then 128 KB of ";": 8.9 s). It sees the first 63 ";" only, as the mail parser."""
    seen = []
    parseparam = email.message._parseparam
    monkeypatch.setattr(email.message, "_parseparam", lambda value: seen.append(str(value)) or parseparam(value))
    head = b'From a@b Mon Jan  1 00:00:00 2024\nContent-Type: multipart/mixed; boundary="b"; a="'
    assert not corpora._several_messages(head + b";" * 5000 + b"\n\n--b\n\nbody\n")
    assert seen and max(value.count(";") for value in seen) == 63


class _Scanning:
    """A regex pattern, or the `re` module, whose patterns add the length of the text they are run
    over (from `pos` to `endpos`) to `scanned[0]`."""

    def __init__(self, target, scanned: list):
        self.target, self.scanned = target, scanned

    def __getattr__(self, name):
        attribute = getattr(self.target, name)
        if name == "compile":
            return lambda *args: _Scanning(attribute(*args), self.scanned)
        if not isinstance(self.target, re.Pattern) or not callable(attribute):
            return attribute

        def run(string, pos=0, endpos=sys.maxsize):
            self.scanned[0] += max(min(endpos, len(string)) - pos, 0)
            return attribute(string, pos, endpos)

        return run


def test_a_first_message_s_unclosed_parts_are_told_from_more_messages_in_one_pass(monkeypatch):
    """Where the first message's multipart body is never closed, each "From " line (with a header
    line after it) was checked for a part's start by a search of the 64 KB above it: 1 MiB of such
    lines on standard input took 16 s before any parsing. The regex work now grows with the data,
    not with the lines times 64 KB; the verdicts are those of before."""
    def scanned(data: bytes, several: bool) -> int:
        count = [0]
        monkeypatch.setattr(corpora, "re", _Scanning(re, count))
        for name in ("_SECOND_MESSAGE", "_HEADER_LINES"):
            if hasattr(corpora, name):
                monkeypatch.setattr(corpora, name, _Scanning(getattr(corpora, name), count))
        assert corpora._several_messages(data) == several
        monkeypatch.undo()
        return count[0]

    head = b'From a@b Mon Jan  1 00:00:00 2024\nContent-Type: multipart/mixed; boundary="b"\n\n'
    from_line = b"From x@y Mon Jan  1 00:00:00 2024\nA: 1\n"  # (and a header line after it)
    parts = b"--b\nContent-Type: text/plain\n\n" + from_line
    assert scanned(head + parts * 2000, False) < 2.5 * scanned(head + parts * 1000, False)
    # a "From " line that starts no part, or whose part's boundary is over 64 KB above, starts a message
    assert scanned(head + parts * 1000 + b"\n" + from_line, True)
    def part(header_lines: int) -> bytes:  # (80 bytes a line)
        return b"--b\n" + (b"X-Filler: " + b"x" * 69 + b"\n") * header_lines + b"\n" + from_line

    assert corpora._several_messages(head + part(820)) and not corpora._several_messages(head + part(810))


def test_sms_reader(tmp_path):
    f = tmp_path / "sms.txt"
    f.write_bytes(b"ham\tOk lar...\nspam\tFree entry \xa3100\n\n")
    texts, labels = read_sms(f)
    assert labels == [HAM, SPAM] and texts[0] == "Ok lar..." and "100" in texts[1]
    f.write_bytes(b"ham\tfine\nnot a label line\n")
    with pytest.raises(ValueError, match=":2:"):
        read_sms(f)
    f.write_bytes(b"ham\tfine\nspam\t \r\n")  # (was scored and counted: an empty mail is a problem)
    with pytest.raises(ValueError, match=":2: a label with no text after it"):
        read_sms(f)
    # saved by Notepad, with a byte order mark: it was "line 1: expected 'spam<TAB>text'"
    f.write_bytes(codecs.BOM_UTF8 + b"ham\tfine\nspam\tWIN now\n")
    assert read_sms(f) == (["fine", "WIN now"], [HAM, SPAM])
    # --max-bytes cuts each line (it was ignored), between characters, not inside one
    f.write_text("spam\tвы выиграли приз\n", encoding="utf-8")
    assert read_sms(f, max_bytes=13) == (["вы в"], [SPAM])  # (13 bytes end inside the second "ы")


def test_sms_files_in_utf16_are_read_as_such(tmp_path):
    """A file saved as UTF-16 with its byte order mark (Windows' "Unicode") was read byte by byte:
    every other byte a NUL, the line breaks' NULs starting the next lines, so that a collection
    failed at line 2 and a text to classify became single letters and an empty "message". Read as
    UTF-16 (or UTF-32), by its mark; a file with NUL bytes and no mark is refused in one line."""
    f = tmp_path / "sms.txt"
    text = "ham\tOk lar... Joking wif u oni\r\nspam\tFree entry £100, вы выиграли приз\r\n\r\nham\tfine\n"
    expected = (["Ok lar... Joking wif u oni", "Free entry £100, вы выиграли приз", "fine"], [HAM, SPAM, HAM])
    # (the utf-16 and utf-32 codecs write the mark themselves, in this machine's byte order)
    for encoding, mark in (("utf-16", b""), ("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
                           ("utf-32", b""), ("utf-32-be", codecs.BOM_UTF32_BE)):
        f.write_bytes(mark + text.encode(encoding))
        assert read_sms(f) == expected, encoding
        # each line cut to max_bytes of UTF-8, between characters, as any other file's (17 bytes end
        # inside the "£")
        assert read_sms(f, max_bytes=17)[0][1] == "Free entry ", encoding
    with open(f, "rb") as stream:
        assert [n for n, _ in corpora.text_lines(stream)] == [1, 2, 4]
    for raw in ("ham\tfine\n".encode("utf-16-le"), b"ham\tfi\x00ne\n"):
        f.write_bytes(raw)
        with pytest.raises(ValueError, match=r"sms.txt: line 1 holds NUL bytes: .*byte order mark"):
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


# Reads a folder of messages in a fresh interpreter whose allocator has seen a large buffer freed,
# as it has once a filter is loaded, and prints by how much its resident memory grew and the bytes
# of the messages it holds.
_KEPT_SCRIPT = """
import os, sys
from chainrule.data.corpora import read_messages

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

bytes(10 << 20)  # (freed at once: glibc serves buffers up to its size from the heap from now on)
before = resident()
messages = list(read_messages([sys.argv[1]]))
print(resident() - before, sum(len(m.data) for m in messages))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="resident memory read from /proc (Linux)")
def test_messages_kept_cost_their_own_size_in_memory_not_twice_it(tmp_path):
    """A message file was read as its first 4 KB, then the rest, joined in a third buffer: the
    freed rest left a hole its size in the heap that the next message's read could not use (its
    buffer 4 KB larger), so the messages kept took twice their bytes (2,088 MB held by `spam
    classify` for 4,000 mails of 257 KB)."""
    mail = mail_with_an_attachment()
    (tmp_path / "ham").mkdir()
    for i in range(200):
        (tmp_path / "ham" / f"{i}.eml").write_bytes(mail)
    proc = subprocess.run([sys.executable, "-c", _KEPT_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          check=True)
    grew, kept = map(int, proc.stdout.split())
    assert kept == 200 * len(mail)
    assert grew < 1.3 * kept, (grew, kept)


def test_unreadable_sources_are_reported_not_raised(tmp_path):
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tarball")
    msgs = list(read_messages([tmp_path / "missing", tmp_path / "broken.tar.gz"]))
    assert len(msgs) == 2 and all(m.error and "\n" not in m.error for m in msgs)


def test_a_symbolic_link_loop_is_named_as_one(tmp_path):
    """A link that leads round to itself was "no such file or directory" given by name, and "a
    broken symbolic link" in a folder; a link to nothing is a broken one."""
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "loop").symlink_to(tmp_path / "mail" / "loop")
    (tmp_path / "mail" / "dangling").symlink_to(tmp_path / "nowhere")
    loop, dangling = tmp_path / "mail" / "loop", tmp_path / "mail" / "dangling"
    for read in (read_messages, lambda sources: [read_as_is(s) for s in sources]):
        assert [m.error for m in read([loop, loop / "1.eml", dangling, tmp_path / "missing"])] == [
            "a loop of symbolic links", "a loop of symbolic links", "a broken symbolic link",
            "no such file or directory"]
    assert sorted((os.path.basename(m.source), m.error) for m in read_messages([tmp_path / "mail"])) == [
        ("dangling", "a broken symbolic link"), ("loop", "a loop of symbolic links")]


def test_empty_and_closed_standard_input_are_problems_not_messages(monkeypatch, tmp_path):
    for data in (b"", b"  \n\r\n"):
        monkeypatch.setattr("sys.stdin", _piped(data))
        (m,) = list(read_messages(["-"]))
        assert m.error == "empty message"
    monkeypatch.setattr("sys.stdin", None)  # what Python makes of a closed descriptor 0 (`<&-`)
    (m,) = list(read_messages(["-"]))
    assert m.error == "standard input is closed"
    (tmp_path / "empty.eml").write_bytes(b"")
    (m,) = list(read_messages([tmp_path / "empty.eml"]))
    assert m.error == "empty message"


@pytest.mark.parametrize("maildir", [False, True])
def test_a_fifo_in_a_mail_folder_is_skipped_not_waited_for(tmp_path, maildir):
    folder = tmp_path / "mail"
    where = folder / "new" if maildir else folder
    where.mkdir(parents=True)
    (folder / "cur").mkdir(exist_ok=True)
    (where / "1").write_bytes(_msg("one"))
    os.mkfifo(where / "2")  # opening it to read would wait for a writer that never comes
    (where / "3").symlink_to(tmp_path / "gone")
    got = []
    reader = threading.Thread(target=lambda: got.extend(read_messages([folder])), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # stuck in open(): give it a writer, so that the test fails rather than hangs
        os.close(os.open(where / "2", os.O_WRONLY))
        reader.join()
    assert [(os.path.basename(m.source), m.error) for m in got] == [
        ("1", None), ("2", "not a regular file (a FIFO, socket or device)"), ("3", "a broken symbolic link")]


def test_a_maildir_message_moved_away_meanwhile_is_skipped_without_a_word(tmp_path, monkeypatch):
    """A mail client moves messages from new/ to cur/ while a run reads the Maildir: each one gone
    was reported as "not a regular file (a FIFO, socket or device)" (3,251 such lines in one run)."""
    md = mailbox.Maildir(tmp_path / "inbox", create=True)
    md.add(_msg("stays"))
    (tmp_path / "inbox" / "cur" / "sub").mkdir()
    listdir = os.listdir
    monkeypatch.setattr(corpora.os, "listdir", lambda p: [*listdir(p), "1.moved.host"])  # listed, then gone
    got = [(os.path.basename(m.source), m.error) for m in read_messages([tmp_path / "inbox"])]
    assert [error for _, error in got] == [None, "a folder where a message file was expected"]  # new/, cur/
    assert "gone before it could be read" in corpora._not_regular(tmp_path / "inbox" / "cur" / "1.moved.host")


def test_a_300_mb_mbox_line_costs_no_more_than_the_cap(tmp_path):
    # (20 MB stands in for 300: without the line reader in pieces, reading it holds the whole line)
    mbox = tmp_path / "mbox"
    with open(mbox, "wb") as f:
        f.write(b"From a@b Mon Jan  1 00:00:00 2024\n" + _msg("long") + b"x" * (20 << 20) + b"\n\n")
        f.write(b"From c@d Mon Jan  1 00:00:00 2024\n" + _msg("short"))
    tracemalloc.start()
    try:
        msgs = list(read_messages([mbox], max_bytes=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [parse_message(m.data).subject for m in msgs] == ["long", "short"]
    assert msgs[0].truncated and not msgs[1].truncated and len(msgs[0].data) <= 1 << 20
    assert peak < 4 << 20


MBOX_LINES = st.lists(st.sampled_from([b"\n", b"\r\n", b"From x@y Mon Jan  1 00:00:00 2024\n",
                                       b"From x@y Mon Jan  1 00:00:00 2024\r\n", b"From our records:\n",
                                       b">From quoted\n", b"From", b"Subject: s\n", b"Subject: s\r\n",
                                       b"body text\n", b"y" * 40 + b"\n", b"z" * 25, b"w" * 1100 + b"\n"]),
                      max_size=40)


@settings(max_examples=150, deadline=None)
@given(lines=MBOX_LINES, max_bytes=st.integers(1, 200))
def test_an_mbox_read_in_pieces_is_the_mbox_read_by_lines(tmp_path_factory, lines, max_bytes):
    # pieces of 7 bytes: long lines, separators and blank lines split across pieces must change nothing
    mbox = tmp_path_factory.mktemp("mbox") / "mbox"
    mbox.write_bytes(b"".join(lines))
    whole = [(m.source, m.data, m.truncated) for m in read_messages([mbox], max_bytes=max_bytes)]
    piece = corpora.LINE_PIECE
    corpora.LINE_PIECE = 7
    try:
        pieces = [(m.source, m.data, m.truncated) for m in read_messages([mbox], max_bytes=max_bytes)]
    finally:
        corpora.LINE_PIECE = piece
    assert [s for s, _, _ in pieces] == [s for s, _, _ in whole]
    assert pieces == whole
    assert all(len(data) <= max_bytes for _, data, _ in whole)


def test_a_long_message_of_an_mbox_keeps_its_first_bytes_as_a_file_does(tmp_path):
    """At most max_bytes of a message are read: its first ones, in an mbox as in a file (an mbox's
    reader dropped a line that did not fit and went on with the lines after it)."""
    message = b"From: x@y\nSubject: hi\n\n" + b"a" * 200 + b"\nlast line\n"
    (tmp_path / "mbox").write_bytes(b"From x@y Mon Jan  1 00:00:00 2024\n" + message)
    (tmp_path / "file").write_bytes(message)
    for path in ("mbox", "file"):
        (m,) = read_messages([tmp_path / path], max_bytes=100)
        assert (m.data, m.truncated) == (message[:100], True), path


@pytest.mark.parametrize(("compress", "suffix"),
                         [(gzip.compress, ".gz"), (bz2.compress, ".bz2"), (lzma.compress, ".xz")])
def test_a_compressed_mbox_or_message_is_read_through_its_decompressor(compress, suffix, tmp_path,
                                                                       spamassassin_messages):
    """An archived spam.mbox.gz was read as one binary "message" (and classified)."""
    real = _in_corpus_layout(spamassassin_messages[:3])  # each starts with its own "From " line
    mbox = b"".join(data if data.endswith(b"\n") else data + b"\n" for data in real)
    (tmp_path / "spam.mbox").write_bytes(mbox)
    (tmp_path / "box").mkdir()
    (tmp_path / "box" / f"spam.mbox{suffix}").write_bytes(compress(mbox))  # in a folder: labelled as *.mbox
    (tmp_path / "one.eml").write_bytes(compress(real[0].split(b"\n", 1)[1]))  # a message, without From_
    plain = list(read_messages([tmp_path / "spam.mbox"]))
    packed = list(read_messages([tmp_path / "box"]))
    assert len(packed) == 3 and [m.data for m in packed] == [m.data for m in plain]
    assert all(m.label == SPAM and m.error is None for m in packed)
    (one,) = read_messages([tmp_path / "one.eml"])
    assert one.data == real[0].split(b"\n", 1)[1]
    (tmp_path / "cut.gz").write_bytes(compress(mbox)[: len(compress(mbox)) // 2])
    assert [m.error for m in read_messages([tmp_path / "cut.gz"])][-1]  # reported, not raised


@pytest.mark.parametrize("compress", [None, gzip.compress, bz2.compress])
def test_a_pipe_named_on_the_command_line_is_read_as_the_file_would_be(compress, tmp_path, spamassassin_messages):
    """`spam classify MODEL <(cat spam.mbox)`: an mbox's first 4,096 bytes were lost (the pipe was
    opened again to read it as an mbox), so was a single message in the corpus's layout (it starts
    with a "From " line), and a compressed one was read as its compressed bytes."""
    real = _in_corpus_layout(spamassassin_messages[:3])  # each starts with its own "From " line
    mbox = b"".join(data if data.endswith(b"\n") else data + b"\n" for data in real)
    for name, data in (("spam.mbox", mbox), ("one", real[0])):
        (tmp_path / name).write_bytes(data)
        expected = [m.data for m in read_messages([tmp_path / name])]
        read_end, write_end = os.pipe()  # named as bash names `<(...)`: /dev/fd/N

        def write(sent: bytes, fd: int) -> None:
            with open(fd, "wb") as f:
                f.write(sent)

        writer = threading.Thread(target=write, args=(compress(data) if compress else data, write_end))
        writer.start()
        try:
            got = [m.data for m in read_messages([f"/dev/fd/{read_end}"])]
        finally:
            writer.join()
            os.close(read_end)
        assert len(expected) == (3 if name == "spam.mbox" else 1) and got == expected


@pytest.fixture(scope="module")
def small_archives(spamassassin_messages) -> dict[str, bytes]:
    """Eight real SpamAssassin messages in a tar archive under spam/, plain and compressed three
    ways, in a zip archive, and as an mbox (plain and gzipped)."""
    messages = spamassassin_messages[:8]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i, m in enumerate(messages):
            info = tarfile.TarInfo(f"spam/{i:05d}")
            info.size = len(m.data)
            tar.addfile(info, io.BytesIO(m.data))
    mbox = b"".join(b"From someone@example.com Thu Jan  1 00:00:00 2002\n" + m.data.replace(b"\nFrom ", b"\n>From ")
                    + b"\n" for m in messages)
    tar_bytes = buffer.getvalue()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, m in enumerate(messages):
            archive.writestr(f"spam/{i:05d}", m.data)
    return {"spam.tar": tar_bytes, "spam.tar.gz": gzip.compress(tar_bytes), "spam.tar.bz2": bz2.compress(tar_bytes),
            "spam.tar.xz": lzma.compress(tar_bytes), "spam.zip": buffer.getvalue(), "spam.mbox": mbox,
            "spam.mbox.gz": gzip.compress(mbox)}


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(["spam.tar", "spam.tar.gz", "spam.tar.bz2", "spam.tar.xz", "spam.zip", "spam.mbox",
                             "spam.mbox.gz"]),
       data=st.data())
def test_any_damage_to_an_archive_or_mbox_is_reported_per_message_never_raised(small_archives, tmp_path_factory,
                                                                               name, data):
    """Bytes of an archive or mbox cut, changed or inserted: reading it yields messages and
    problems (each a one-line reason), never an exception, and never more than was there."""
    raw = damaged(small_archives[name], data)
    path = tmp_path_factory.mktemp("damaged") / name
    path.write_bytes(raw)
    out = list(read_messages([path]))
    for m in out:
        assert m.error is None or ("\n" not in m.error and m.error.strip())  # (a reason, on one line)
    assert sum(m.error is None for m in out) <= 8 + len(raw) // 50  # (an mbox may split at a damaged line)


@pytest.mark.parametrize("name", ["spam.mbox.gz", "spam.tar.xz", "spam.tar.gz", "spam.tar.bz2"])
def test_damaged_compressed_data_is_a_reported_problem(small_archives, tmp_path, name):
    """A byte changed inside the compressed data: gzip's deflate (zlib.error) and xz (LZMAError)
    raised their own errors out of the reader."""
    raw = bytearray(small_archives[name])
    for where in range(len(raw) // 3, len(raw) // 3 + 40):
        raw[where] ^= 0x5A
    (tmp_path / name).write_bytes(bytes(raw))
    out = list(read_messages([tmp_path / name]))
    assert any(m.error for m in out)


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress])
def test_a_compressed_mbox_cut_short_yields_its_messages_up_to_the_cut_then_one_problem(compress, tmp_path,
                                                                                         spamassassin_messages):
    """A .mbox.gz (or .xz) cut short within its first MiB was one problem and none of its messages:
    the file's first read, as much as a message may keep, raised and took with it what it had
    read. A single message cut short is still one problem."""
    real = _in_corpus_layout(spamassassin_messages[:20])  # each starts with its own "From " line
    mbox = b"".join(data if data.endswith(b"\n") else data + b"\n" for data in real)
    (tmp_path / "spam.mbox").write_bytes(mbox)
    whole = [m.data for m in read_messages([tmp_path / "spam.mbox"])]
    packed = compress(mbox)
    (tmp_path / "cut.mbox.gz").write_bytes(packed[: len(packed) * 3 // 4])
    *read, problem = read_messages([tmp_path / "cut.mbox.gz"])
    assert len(read) >= 10 and [m.data for m in read] == whole[: len(read)]
    assert all(m.error is None for m in read) and problem.error
    assert problem.source == f"{tmp_path / 'cut.mbox.gz'}:{len(read) + 1}"
    one = compress(real[0].split(b"\n", 1)[1])  # a message, without From_
    (tmp_path / "one.eml.gz").write_bytes(one[: len(one) * 3 // 4])
    (cut,) = read_messages([tmp_path / "one.eml.gz"])
    assert cut.data == b"" and cut.error


def test_a_byte_order_mark_before_an_mbox_or_a_message_is_not_part_of_it(tmp_path):
    """Windows programs save text with a UTF-8 byte order mark: an mbox so saved was one message,
    and a message so saved had its headers read as body text."""
    message = b"From: x@y\nSubject: hello 7\n\nbody\n"
    mbox = codecs.BOM_UTF8 + b"".join(b"From x@y Mon Jan  1 00:00:00 2024\n" + message + b"\n" for _ in range(2))
    (tmp_path / "box.mbox").write_bytes(mbox)
    assert [m.data for m in read_messages([tmp_path / "box.mbox"])] == [message + b"\n", message + b"\n"]
    assert parse_message(codecs.BOM_UTF8 + message).subject == "hello 7"


def test_a_from_line_is_a_separator_only_where_headers_follow_it(tmp_path):
    """A message file in the SpamAssassin corpus's layout (an envelope "From " line, then the
    message) whose body has a paragraph starting "From the desk of..." was split there: one
    message became two, the second a headerless fragment. A real mbox still splits."""
    message = (b"Return-Path: <x@y>\nFrom: x@y\nSubject: offer\n\nDear friend,\n\n"
               b"From the desk of Dr. Smith, a great offer.\n\nThanks\n")
    (tmp_path / "spam").mkdir()
    (tmp_path / "spam" / "0001.abc").write_bytes(b"From x@y  Thu Aug 22 13:17:22 2002\n" + message)
    (m,) = read_messages([tmp_path])
    assert m.data == message and m.label == SPAM
    two = b"".join(b"From x@y  Thu Aug 22 13:17:22 2002\n" + message + b"\n" for _ in range(2))
    (tmp_path / "two.mbox").write_bytes(two)
    assert [m.data for m in read_messages([tmp_path / "two.mbox"])] == [message + b"\n"] * 2
    # read as it is (spam classify --annotate), the single message is one message, the mbox two
    assert read_as_is(tmp_path / "spam" / "0001.abc").error is None
    assert "several messages" in read_as_is(tmp_path / "two.mbox").error
    # a "From " line with nothing after it ends the mbox's last message, as it did
    (tmp_path / "end.mbox").write_bytes(two + b"From x@y  Thu Aug 22 13:17:22 2002\n")
    assert [m.error for m in read_messages([tmp_path / "end.mbox"])] == [None, None, "empty message"]


# "From " lines as mail programs write them above each message of an mbox
MBOX_FROM_LINES = (b"From MAILER-DAEMON Fri Jul  8 12:08:34 2011",  # Python's mailbox module
                   b"From user@example.com  Sat Jan  3 01:05:34 1996",  # procmail (the SpamAssassin corpus)
                   b"From - Fri Jul 08 12:08:34 2011",  # Thunderbird
                   b"From 1738452946312093018@xxx Fri Jul 29 09:44:16 +0000 2022",  # Gmail's export
                   b"From me at example.org  Mon Jan  1 00:00:00 2024",  # a mailing list's archive (pipermail)
                   b"From xxxx@yyyyyyy.fr Wed Aug  2 00:39:12 MET DST 1995",  # two time zone names
                   b"From user Sat Jan  3 01:05:34 1996 remote from uunet",  # UUCP
                   b'From "john smith"@example.com Mon Jan  1 00:00 2024')  # a quoted sender, no seconds


def test_a_from_line_separates_messages_only_with_a_sender_and_a_date(tmp_path, monkeypatch, spamassassin_messages):
    """A mail in the corpus's layout (an envelope "From " line first, as procmail delivers it) whose
    body has a paragraph "From our records:" then a line "Name: John Smith", the shape of a header
    line, was read as an mbox of two messages: refused on standard input, two messages named as a
    file, refused to be written back (--annotate). A "From " line separates messages only where it
    has a sender and a date, as every mail program writes one; an mbox of such mails still splits."""
    (ham,) = _in_corpus_layout([next(m for m in spamassassin_messages if m.label == HAM)])
    envelope, message = ham.split(b"\n", 1)
    body = message.rstrip(b"\n") + b"\n\nFrom our records:\nName: John Smith\nAccount: 1234\n\nRegards\n"
    mail = envelope + b"\n" + body
    (tmp_path / "fromline.eml").write_bytes(mail)
    (m,) = read_messages([tmp_path / "fromline.eml"])
    assert (m.source, m.data, m.error) == (str(tmp_path / "fromline.eml"), body, None)
    assert read_as_is(tmp_path / "fromline.eml").error is None
    monkeypatch.setattr("sys.stdin", _piped(mail))
    (m,) = read_messages(["-"])
    assert (m.data, m.error) == (mail, None)
    for from_line in MBOX_FROM_LINES:
        mbox = b"".join(from_line + b"\n" + body + b"\n" for _ in range(3))
        (tmp_path / "box.mbox").write_bytes(mbox)
        assert [m.data for m in read_messages([tmp_path / "box.mbox"])] == [body + b"\n"] * 3, from_line
        assert corpora._several_messages(mbox), from_line


def test_a_text_whose_first_word_is_from_keeps_its_first_line(tmp_path):
    """A note or an SMS saved as a file whose text begins "From now on..." was taken for an mbox, and
    its first line dropped as the envelope line: only a real "From " line (a sender and a date) makes
    a file an mbox."""
    note = b"From now on the meetings are on Mondays.\nBring the figures.\n"
    (tmp_path / "note.txt").write_bytes(note)
    (m,) = read_messages([tmp_path / "note.txt"])
    assert (m.data, m.error) == (note, None)


@pytest.mark.parametrize("kind,box", [("MMDF", mailbox.MMDF), ("Babyl", mailbox.Babyl)])
def test_an_mmdf_or_babyl_mailbox_is_a_problem_not_one_blended_message(tmp_path, monkeypatch, kind, box):
    """Both formats were read as one message, every message of the box in it: classify gave the
    blend one verdict, evaluate counted it as one message and train learnt it as one."""
    path = tmp_path / "spam" / f"box.{kind.lower()}"
    path.parent.mkdir()
    mbox = box(path)
    for i in range(3):
        mbox.add(_msg(f"m{i}"))
    mbox.close()
    for source in (path, path.parent):
        (m,) = read_messages([source])
        assert (m.source, m.data, m.label) == (str(path), b"", SPAM) and f"{kind} mailbox" in m.error
    assert f"{kind} mailbox" in read_as_is(path).error  # (--annotate)
    monkeypatch.setattr(sys, "stdin", _piped(path.read_bytes()))
    (m,) = read_messages(["-"])
    assert f"{kind} mailbox" in m.error
