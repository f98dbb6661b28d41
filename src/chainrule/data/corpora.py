"""Mail and SMS corpora: RFC 822 messages from files, directories, mbox files, Maildirs, tar and
zip archives and standard input, and `label<TAB>text` SMS collections, with their labels.

Three promises shape this module:

* **A message never stops a run.** Each message read is a `RawMessage`; a file that cannot be read
  becomes a `RawMessage` with `error` set (a one-line reason), for the caller to report and go on.
* **Bytes are capped.** At most `max_bytes` of each message are read (default 1 MiB); a 25 MB
  message costs 1 MiB of memory and is marked `truncated`, and lines are read in pieces, so a
  300 MB line in an mbox costs no more.
* **Nothing hangs.** Inside a folder only regular files are read: a FIFO there would wait forever
  for a writer, so it (or a socket, or a device) is reported and skipped. A path named on the
  command line is read whatever it is, so that `<(zcat mail.gz)` works.

A file compressed with gzip, bzip2 or xz (an archived `spam.mbox.gz`, say; recognised by its first
bytes) is read through its decompressor, as a stream; one saved in UTF-16 or UTF-32 with its byte
order mark (Windows' "Unicode") is read in UTF-8, as the web API reads it (`_decoded`). An archive's
member is read as the file it would be unpacked: an mbox is split, a compressed one decompressed, and
of a Maildir only new/ and cur/ are read (`_archive_mail`).

An empty message, or standard input when it is closed, is a problem too, not a message.

Labels come from names, as the SpamAssassin corpus lays them out (`label_from_names`): of the
folders from the path named on the command line down, of an archive, and of an mbox named on the
command line (or called *.mbox); never from a message file's own name (a Maildir file is named
after its host: 1.graham-laptop) nor from the folders above a folder named ("ham" counts only as a
word: graham, shampoo). A file named on the command line (a message, an mbox, an archive) takes
its folder's name too, where its own says nothing (spam/2002.mbox); an mbox inside a folder labels
its messages by its own name only if it is called *.mbox (a file that merely starts with a "From "
line is a message).

What a mail message says is `chainrule.data.mime`'s business: this module reads its bytes, and looks
into them only to tell where one message ends and the next begins. An mbox's "From " line after a
blank line starts a message only where it is one (a sender and a date, as mail programs write it:
`MBOX_FROM_LINE`) and a header line follows it; and whether the bytes of standard
input (or of a file to be written back) are an mbox of several messages takes the first message's
headers, parsed, for its MIME boundary: a "From " line inside its multipart body is no other
message (`_several_messages`).
"""

from __future__ import annotations

import bisect
import bz2
import codecs
import contextlib
import email.parser
import errno
import functools
import gzip
import io
import lzma
import os
import posixpath
import re
import stat
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from chainrule.data.mime import COMPAT32, HEADER_NAME, decode_text, without_cut_character
from chainrule.errors import DataError, one_line
from chainrule.files import link_problem

MAX_BYTES = 1 << 20
"""Default cap on the bytes read per message: enough for any text, not for a 25 MB attachment."""

SPAM, HAM = 1, 0


@dataclass
class RawMessage:
    """One message as read: where it came from, its (capped) bytes, and its label if known.

    `label` is 1 (spam), 0 (ham) or None; `error` is a one-line reason the message could not be
    read at all (then `data` is empty).
    """

    source: str
    data: bytes
    label: int | None = None
    truncated: bool = False
    error: str | None = None


# Files that lie among messages and are none: the SpamAssassin tarballs' list of shell commands, and
# mail clients' indexes and settings (Thunderbird's Mork index beside each mbox, Junk.msf; Apple
# Mail's binary table_of_contents and Info.plist inside each Junk.mbox folder; Windows Explorer's
# Thumbs.db and desktop.ini). Dot files (.DS_Store, .mh_sequences, .uidvalidity) are left out too.
_SKIP_NAMES = {"cmds", "table_of_contents", "Info.plist", "Thumbs.db", "desktop.ini"}
_SKIP_SUFFIXES = (".msf",)


def _not_mail(name: str) -> bool:
    """Whether the file `name` in a mail folder is left out, unread: a dot file, or one above."""
    return name.startswith(".") or name in _SKIP_NAMES or name.lower().endswith(_SKIP_SUFFIXES)


# In one name: "spam" anywhere is spam, except negated (nonspam, not-spam, no_spam, NotSpam: ham)
# and in the SpamAssassin project's own name (its mailing lists' folders hold ham); "ham" only as
# a word between non-letters (graham, Birmingham and shampoo are not ham).
_NOT_SPAM = re.compile(r"(?<![a-z])(?:non|not|no)[^a-z]?spam")
_SPAM = re.compile(r"spam(?!assassin)")


def label_from_names(names: Iterable[str]) -> int | None:
    """1 if one of `names` (folders, outermost first) says spam, 0 if it says ham, else None.

    The SpamAssassin corpus layout: `spam/`, `easy_ham/`, `hard_ham/`, and what people call their
    folders (`nonspam`, `spam-archive`). The innermost name that says either wins, so
    `spam-archive/ham` is ham.
    """
    for name in reversed([n.lower() for n in names]):
        if _NOT_SPAM.search(name):
            return HAM
        if _SPAM.search(name):
            return SPAM
        if "ham" in re.split(r"[^a-z]+", name):
            return HAM
    return None


def _label(label: int | None, names: tuple[str, ...]) -> int | None:
    """The label forced on every message, or else the one `names` give."""
    return label if label is not None else label_from_names(names)


def _read_capped(f, max_bytes: int) -> tuple[bytes, bool]:
    data = f.read(max_bytes + 1)
    return data[:max_bytes], len(data) > max_bytes


# The first bytes of each compressed format read through its decompressor (bzip2's: "BZh", the
# block size 1-9, then the magic number of its first block).
_COMPRESSED = ((re.compile(rb"\x1f\x8b"), gzip.open), (re.compile(rb"BZh[1-9]1AY&SY"), bz2.open),
               (re.compile(rb"\xfd7zXZ\x00"), lzma.open))
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")
# What reading a damaged file raises: a truncated gzip or bzip2 stream EOFError, gzip's damaged
# deflate data zlib.error, xz's LZMAError, bzip2's OSError; an archive's member cut short tarfile's
# ReadError, one whose bytes do not match their checksum zipfile's BadZipFile.
_READ_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error, tarfile.TarError, zipfile.BadZipFile)


def _compressed_by(head: bytes):
    """The opener of the compression whose magic number `head` starts with, or None."""
    return next((opener for pattern, opener in _COMPRESSED if pattern.match(head[:10])), None)


@contextlib.contextmanager
def _decoded(f):
    """The buffered binary stream `f` (a file, an archive's member, standard input) as its mail is
    read: through its decompressor if it is gzip, bzip2 or xz, and in UTF-8 if it is UTF-16 or
    UTF-32 with its byte order mark, as the web API reads such a mail, which raw had a NUL in every
    other byte (`_in_utf8`). Its first bytes are peeked at, not read: a pipe (`<(cat mail.gz)`) can
    be read only once."""
    opener = _compressed_by(f.peek(10))
    with contextlib.nullcontext(f) if opener is None else opener(f, "rb") as inflated:
        yield _in_utf8(inflated)


@contextlib.contextmanager
def _open(path: Path):
    """The file `path` opened for reading its mail (`_decoded`)."""
    with open(path, "rb") as f, _decoded(f) as mail:
        yield mail


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


_MBOX_HEAD = 4096  # a file is an mbox only if its first line, "From ...", ends within this many bytes


# The "From " line that mail programs write above each message of an mbox: "From ", the sender,
# then when the message came, as C's asctime writes a date. Its variants, as mutt's reader takes them:
#   From MAILER-DAEMON Fri Jul  8 12:08:34 2011                (Python's mailbox module)
#   From user@example.com  Sat Jan  3 01:05:34 1996            (procmail; the SpamAssassin corpus)
#   From - Fri Jul 08 12:08:34 2011                            (Thunderbird)
#   From 1738452946312093018@xxx Fri Jul 29 09:44:16 +0000 2022  (Gmail's export)
#   From me at example.org  Mon Jan  1 00:00:00 2024           (a mailing list's archive)
#   From xxxx@yyyyyyy.fr Wed Aug  2 00:39:12 MET DST 1995      (two time zone names)
#   From user Sat Jan  3 01:05 1996 remote from uunet          (no seconds; anything after the year)
# and a quoted sender with spaces in it, or none at all. A line of a message's text that starts with
# the word "From" ("From our records:") is none.
MBOX_FROM_LINE = re.compile(
    rb'From (?:(?:"[^"\r\n]*"|[^\s"])+(?: at \S+)? +)?(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) +'
    rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +\d\d? +\d\d?:\d\d(?::\d\d)?"
    rb"(?: +[A-Za-z+-]\S*){0,2} +\d\d(?:\d\d)?(?=\s|\Z)")
_MBOX_FROM_LINE_MAX = 1000  # a "From " line longer than this is none (a sender's address is at most 254)


def _looks_like_mbox(head: bytes) -> bool:
    # An mbox starts with a "From " separator line; a single message starts with a header line, and
    # a note may start with the word ("From now on..."). (After the UTF-8 byte order mark that Windows
    # programs put before the text they save.)
    return MBOX_FROM_LINE.match(head.removeprefix(codecs.BOM_UTF8)) is not None and b"\n" in head


# The first bytes of the mailbox formats that are not read, each of which the mbox reader would take for
# one message, a blend of all of them: MMDF's (a line of four ^A before each message) and Babyl's
# (Emacs Rmail's). Few programs still write either; Python's `mailbox` module converts them to mbox.
_OTHER_MAILBOXES = (((b"\x01\x01\x01\x01\n", b"\x01\x01\x01\x01\r\n"), "an MMDF mailbox"),
                    ((b"BABYL OPTIONS:",), "a Babyl mailbox (Emacs Rmail's)"))


def _other_mailbox(head: bytes) -> str | None:
    """Why a file that starts with `head` is not read, where it is an MMDF or a Babyl mailbox."""
    kind = next((kind for marks, kind in _OTHER_MAILBOXES if head.startswith(marks)), None)
    return None if kind is None else f"{kind}, a format not read: convert it to mbox or Maildir"


def _several_messages(data: bytes) -> bool:
    """Whether `data` is an mbox of more than one message. A "From " line with headers after it
    inside the first message's multipart body is not another message: one after that body's
    closing boundary is, and where that boundary is missing (cut off, or never written, as in
    much spam), one that does not start a part (a `git format-patch` attachment starts so)."""
    if not _looks_like_mbox(data):
        return False
    head = re.split(rb"\r?\n\r?\n", data.split(b"\n", 1)[-1], maxsplit=1)[0]  # (below the "From " line)
    first = email.parser.BytesHeaderParser(policy=COMPAT32).parsebytes(head)
    boundary = first.get_param("boundary") if first.get_content_maintype() == "multipart" else None
    if not isinstance(boundary, str):
        return _SECOND_MESSAGE.search(data) is not None
    mark = boundary.encode("utf-8", "surrogateescape")
    closing = data.find(b"\n--" + mark + b"--")
    if closing >= 0:
        return _SECOND_MESSAGE.search(data, closing) is not None
    # A part starts with its boundary line and its own header lines, then the blank line before it,
    # the boundary within 64 KB above. The boundary lines are found once and the one above each "From "
    # line looked up (a search of the 64 KB above each took time growing with their number times
    # 64 KB: 1 MiB of parts that start with one took 16 s). A part's header lines end at its blank
    # line, so a boundary line starts the part of one "From " line at most.
    boundary_line = re.compile(rb"\n(?=(--" + re.escape(mark) + rb"[ \t]*\r?\n))")
    starts, ends = [], []  # where each boundary line starts (at the line break before it) and ends
    for line in boundary_line.finditer(data):
        starts.append(line.start())
        ends.append(line.end(1))
    previous = -1
    for m in _SECOND_MESSAGE.finditer(data):
        above = m.start() + 1  # (where the line above the blank line ends)
        i = bisect.bisect_right(ends, above) - 1  # the last boundary line above it
        if (i < 0 or i == previous or starts[i] < m.start() - 65536
                or not _HEADER_LINES.fullmatch(data, ends[i], above)):
            return True
        previous = i
    return False


def _is_archive(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".zip"))


# A Maildir's sub-folders that hold its messages, in the order read: not tmp/, which holds those being
# delivered, half written.
_MAILDIR_MESSAGES = ("new", "cur")


def _is_maildir(path: Path) -> bool:
    return path.is_dir() and all((path / sub).is_dir() for sub in _MAILDIR_MESSAGES)


def read_messages(sources: Iterable[str | os.PathLike], max_bytes: int = MAX_BYTES,
                  label: int | None = None) -> Iterator[RawMessage]:
    """Every message in `sources`, in order: files, directories (recursively, sorted), mbox files,
    Maildirs, tar archives (any compression tarfile knows) and zip archives, each read as the folder
    it unpacks to, and "-" for standard input.

    Args:
        label: force this label on every message; by default it comes from the names of the
            folders from each source down, and of an mbox or archive (`label_from_names`).

    Problems (a missing file, an unreadable archive, an unreadable member) come back as
    `RawMessage`s with `error` set, so a caller can report them on one line and go on.
    """
    for src in sources:
        for msg in _read_source(str(src), max_bytes, label):
            if not msg.error and (not msg.data or msg.data.isspace()):
                msg.error = "empty message"
            yield msg


def readable(messages: Iterable[RawMessage],
             on_problem: Callable[[str, str], None] | None = None) -> Iterator[RawMessage]:
    """The `messages` that could be read; each of the others goes to `on_problem(source, reason)`,
    if given, for the caller to report it and go on."""
    for msg in messages:
        if not msg.error:
            yield msg
        elif on_problem is not None:
            on_problem(msg.source, msg.error)


def stdin_problem() -> str | None:
    """Why standard input cannot be read, or None: it is closed where the program was started with
    it closed (`<&-`), which Python tells by setting `sys.stdin` to None."""
    return "standard input is closed" if sys.stdin is None else None


def read_as_is(src: str | os.PathLike, max_bytes: int = MAX_BYTES) -> RawMessage:
    """The bytes of one file (or "-", standard input) as one message, just as they are, so that
    whoever writes the message back out changes nothing of it (`spam classify --annotate`).
    Problems come back as for `read_messages`; so does a compressed file or a file that is an mbox
    of several messages, which cannot be one message written back as it came. Standard input is one
    message, as a mail program hands a filter one: a paragraph of its body that looks like the
    start of another ("From our records:" and a line "Name: ...") must not get it refused, which
    would pass it on unfiltered. A message over `max_bytes` keeps its first `max_bytes` + 1 bytes,
    `truncated`, for a writer to pass it on whole with the rest of its source."""
    src = str(src)
    try:
        if src == "-":
            if problem := stdin_problem():
                return RawMessage("-", b"", None, error=problem)
            data = sys.stdin.buffer.read(max_bytes + 1)
        else:
            with open(src, "rb") as f:
                data = f.read(max_bytes + 1)
        msg = RawMessage(src, data, None, len(data) > max_bytes)
    except OSError as exc:
        reason = _reason(exc) if os.path.exists(src) else link_problem(src) or "no such file or directory"
        return RawMessage(src, b"", None, error=reason)
    if not data or data.isspace():
        msg.error = "empty message"
    elif _compressed_by(data) is not None:
        msg.error = "compressed (gzip, bzip2 or xz): decompress it first, to have the message written back"
    elif src != "-" and _several_messages(data):
        msg.error = "an mbox of several messages: give one message, to have it written back"
    elif (other := _other_mailbox(data)) is not None:
        msg.error = other
    return msg


def _stdin(max_bytes: int, label: int | None) -> RawMessage:
    """Standard input as one message, read as a file is (`_decoded`: decompressed, in UTF-8)."""
    if problem := stdin_problem():
        return RawMessage("-", b"", label, error=problem)
    try:
        with _decoded(sys.stdin.buffer) as f:
            data, truncated = _read_capped(f, max_bytes)
    except _READ_ERRORS as exc:
        return RawMessage("-", b"", label, error=_reason(exc))
    return RawMessage("-", data, label, truncated)


def _read_source(src: str, max_bytes: int, label: int | None) -> Iterator[RawMessage]:
    if src == "-":
        msg = _stdin(max_bytes, label)
        if _several_messages(msg.data):  # (one verdict, or one lesson, for a blend of them all)
            msg = RawMessage("-", b"", label, error="an mbox of several messages: standard input is one message; "
                             "name the mbox file to read its messages one by one")
        elif (other := _other_mailbox(msg.data)) is not None:
            msg = RawMessage("-", b"", label, error=other)
        yield msg
        return
    path = Path(src)
    if not path.exists():
        yield RawMessage(src, b"", label, error=link_problem(path) or "no such file or directory")
        return
    named = Path(os.path.abspath(path))  # (`.` and `..` named, symbolic links not followed)
    if path.is_dir():  # (a Maildir too)
        yield from _read_folder(path, max_bytes, label, (named.name,))
    elif _is_archive(path):
        yield from _read_archive(path, max_bytes, label, (named.parent.name, named.name))
    else:  # a message (its folder's name) or an mbox (and its own)
        yield from _read_file(path, max_bytes, label, (named.parent.name,), named=True)


def _not_regular(path: Path) -> str:
    """Why a directory entry that is not a regular file is not read."""
    link = link_problem(path)
    if link:
        return link
    if not os.path.lexists(path):
        return "gone before it could be read (moved or deleted meanwhile)"
    if path.is_dir():
        return "a folder where a message file was expected"
    return "not a regular file (a FIFO, socket or device)"


def _read_folder(root: Path, max_bytes: int, label: int | None, names: tuple[str, ...]) -> Iterator[RawMessage]:
    """The messages in the mail folder `root` (`_mail_files`); `names`: the folder names above what
    `root` holds that may label them (its own, as given)."""
    unlisted: list[OSError] = []
    for path, folders, in_maildir in _mail_files(root, names, unlisted):
        yield from _unlisted(unlisted, _label(label, names))
        if in_maildir:
            yield from _read_maildir_message(path, max_bytes, _label(label, folders))
        elif not path.is_file():
            yield RawMessage(str(path), b"", _label(label, folders), error=_not_regular(path))
        elif _is_archive(path):
            yield from _read_archive(path, max_bytes, label, folders + (path.name,))
        else:
            yield from _read_file(path, max_bytes, label, folders, named=False)
    yield from _unlisted(unlisted, _label(label, names))


def _read_maildir_message(path: Path, max_bytes: int, label: int | None) -> Iterator[RawMessage]:
    """A file of a Maildir's new/ or cur/, one message as it is (`_decoded`). A mail client moves a
    message from new/ to cur/ (and renames it in cur/ as its flags change) while this runs: one that
    is gone meanwhile is skipped without a word."""
    if not path.is_file():
        if os.path.lexists(path):
            yield RawMessage(str(path), b"", label, error=_not_regular(path))
        return
    try:
        with _open(path) as f:
            data, truncated = _read_capped(f, max_bytes)
    except FileNotFoundError:
        return
    except _READ_ERRORS as exc:
        yield RawMessage(str(path), b"", label, error=_reason(exc))
        return
    yield RawMessage(str(path), data, label, truncated)


def _mail_files(root: Path, names: tuple[str, ...],
                unlisted: list[OSError]) -> Iterator[tuple[Path, tuple[str, ...], bool]]:
    """(path, the folder names that may label it, whether it lies in a Maildir) of each file of the
    mail folder `root` that may hold mail, in the order read: a Maildir's new/, then its cur/; a
    directory's files, then each folder's under it (`_folders`), of which a Maildir gives its new/
    and cur/ and nothing else. Sorted, with dot files and the files `_not_mail` names left out (of
    a Maildir's, which its delivery agent names, only dot files). `names`: the folder names above
    what `root` holds (its own, as given). Folders that cannot be listed (`root`, a folder under it,
    a Maildir's new/ or cur/) go to `unlisted`.

    What `read_messages` reads of a folder and `changed_files` lists, alike.
    """
    if _is_maildir(root):
        yield from _maildir_files(root, names, unlisted)
        return
    for here, dirnames, filenames in _folders(root, unlisted):
        folders = names + here.relative_to(root).parts
        if _is_maildir(here):
            dirnames[:] = []
            yield from _maildir_files(here, folders, unlisted)
        else:
            yield from ((here / name, folders, False) for name in filenames if not _not_mail(name))


def _maildir_files(maildir: Path, folders: tuple[str, ...],
                   unlisted: list[OSError]) -> Iterator[tuple[Path, tuple[str, ...], bool]]:
    """`_mail_files` of a Maildir: its new/, then its cur/; one of the two that cannot be listed goes
    to `unlisted` (the other one's messages are still read)."""
    for sub in _MAILDIR_MESSAGES:
        try:
            names = sorted(os.listdir(maildir / sub))
        except OSError as exc:
            unlisted.append(exc)
            continue
        yield from ((maildir / sub / name, folders, True) for name in names if not name.startswith("."))


def _folders(root: Path, unlisted: list[OSError]) -> Iterator[tuple[Path, list[str], list[str]]]:
    """(folder, its sub-folders, its files) of `root` and every folder under it, top down, in
    sorted order, dot folders left out: `os.walk` with links to folders followed, as `find -L`
    follows them (a folder linked from two places is read under both names), except a link back
    to a folder above it, which would loop. The sub-folders list may be emptied to go no deeper.
    Folders that cannot be listed go to `unlisted`."""
    identity: dict[Path, tuple[int, int]] = {}  # of each folder walked (its parents come first)
    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted.append, followlinks=True):
        here = Path(dirpath)
        try:
            st = os.stat(here)
        except OSError as exc:
            unlisted.append(exc)
            dirnames[:] = []
            continue
        identity[here] = (st.st_dev, st.st_ino)
        if any(identity.get(parent) == identity[here] for parent in here.parents):  # a loop: here again
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield here, dirnames, sorted(filenames)


def _unlisted(unlisted: list[OSError], label: int | None) -> Iterator[RawMessage]:
    """A problem for each folder `_mail_files` could not list (which it then empties)."""
    for exc in unlisted:
        yield RawMessage(str(exc.filename), b"", label, error=unreadable_folder(exc))
    unlisted.clear()


def unreadable_folder(exc: OSError) -> str:
    """What is wrong with a folder that could not be listed, as a problem says it."""
    return f"a folder that cannot be read ({_reason(exc)})"


def changed_files(root, since_ns: int = 0, unlisted: list[OSError] | None = None) -> list[Path]:
    """The regular files in the mail folder `root` whose inode changed at or after `since_ns`
    (nanoseconds since the epoch): of the files `read_messages` reads of the folder (`_mail_files`),
    in its order. For reading only what is new in a folder since an earlier run.

    The inode's change time (st_ctime) rather than the modification time, because moving a message
    into a folder (a rename, as IMAP servers do for a Maildir) keeps its modification time but sets
    its change time. So does changing its flags, which renames it too: such a message comes back.
    A symbolic link counts from the later of its own change time and its target's: a link put in the
    folder today to a message kept for years is new.
    Folders that cannot be listed (`root` itself, a Maildir's cur/) go to `unlisted`: what is new in
    them is not known yet (a run that passes over them must not count them as read).
    NotADirectoryError where `root` is not a folder.
    """
    unlisted = [] if unlisted is None else unlisted
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder or Maildir", str(root))
    changed = []
    for path, _, _ in _mail_files(root, (), unlisted):
        try:
            st, own = path.stat(), path.lstat()  # (the file, and the link to it where `path` is one)
        except OSError:  # gone since it was listed (moved on by a mail client)
            continue
        if stat.S_ISREG(st.st_mode) and max(st.st_ctime_ns, own.st_ctime_ns) >= since_ns:
            changed.append(path)
    return changed


def _read_file(path: Path, max_bytes: int, label: int | None, names: tuple[str, ...],
               named: bool) -> Iterator[RawMessage]:
    """A message, or the messages of an mbox. An mbox's own name labels its messages too
    (`spam.mbox`) where it was `named` on the command line or is called *.mbox; a file in a folder
    that merely starts with a "From " line (each of the SpamAssassin corpus's) is a message."""
    try:
        with _open(path) as f:
            yield from _read_opened(path, f, max_bytes, label, names, named)
    except _READ_ERRORS as exc:  # (it could not be opened, or its first bytes not peeked at)
        yield RawMessage(str(path), b"", _label(label, names), error=_reason(exc))


def _read_opened(path: Path, f, max_bytes: int, label: int | None, names: tuple[str, ...],
                 named: bool) -> Iterator[RawMessage]:
    """`_read_file` of the file `path` (or archive member), open as `f` (`_decoded`)."""
    lab = _label(label, names)
    # As much as a message may keep (and at least the bytes that tell an mbox), into one buffer: a
    # message read in two parts and joined left the freed second part as a hole in the heap, which
    # the next message's larger read could not use, so the messages kept cost twice their size.
    head, failed = _read_kept(f, max(max_bytes, _MBOX_HEAD) + 1)
    if (other := _other_mailbox(head)) is not None:
        yield RawMessage(str(path), b"", lab, error=other)
    elif _looks_like_mbox(head[:_MBOX_HEAD]):  # (read on from here: a pipe cannot be opened again at its start)
        plain = path.with_suffix("") if path.suffix.lower() in _COMPRESSED_SUFFIXES else path
        own = (path.name,) if named or plain.suffix.lower() in (".mbox", ".mbx") else ()
        yield from _read_mbox(path, f, head, max_bytes, _label(label, names + own), failed)
    elif failed is not None:  # (a single message cut short is not kept in part)
        yield RawMessage(str(path), b"", lab, error=_reason(failed))
    else:
        yield RawMessage(str(path), head[:max_bytes], lab, len(head) > max_bytes)


def _read_kept(f, size: int) -> tuple[bytes, BaseException | None]:
    """Up to `size` bytes of `f`, and what stopped the reading before its end, if anything did: the
    bytes read up to a cut or damage are kept (a cut .mbox.gz's first messages are readable), which
    one `f.read(size)` loses with its exception. Read as the decompressor gives them out (`read1`),
    into one buffer."""
    data = bytearray()
    try:
        while len(data) < size and (piece := f.read1(size - len(data))):
            data += piece
    except _READ_ERRORS as exc:
        return bytes(data), exc
    return bytes(data), None


def _read_mbox(path: Path, f, head: bytes, max_bytes: int, label: int | None,
               failed: BaseException | None) -> Iterator[RawMessage]:
    """Messages of the mbox file `path`, open as `f`, whose first bytes `head` have been read from
    it, split at "From " lines (`MBOX_FROM_LINE`) that follow a blank line (or start the file).
    Where reading `head` `failed` (the file is cut or damaged within it), the messages it holds,
    then that problem.

    Read as a stream, so a huge mbox is never held in memory; each message is capped separately.
    Sources are "path:N" (from 1); a file holding a single message (such as each file of the
    SpamAssassin corpus, which starts with a "From " line) is just "path".
    """
    pending = None
    for index, item in enumerate(_mbox_messages(path, f, head, max_bytes, label, failed), 1):
        if pending is not None:
            yield pending
        item.source = f"{path}:{index}"
        pending = item
    if pending is not None:
        if pending.source == f"{path}:1":
            pending.source = str(path)
        yield pending


LINE_PIECE = 1 << 16  # an mbox is read in lines of at most this many bytes; a longer one in pieces


# A header field's first line: a name of printable ASCII but ":", then ":" (RFC 5322).
_HEADER_LINE = re.compile(HEADER_NAME.encode() + rb":")
# A run of lines that are not empty, as a part's header lines are.
_HEADER_LINES = re.compile(rb"(?:[^\r\n]+\r?\n)*")
# Where an mbox's next message starts, as `_mbox_messages` tells it: a "From " line (`MBOX_FROM_LINE`)
# after a blank line, a header line after it.
_SECOND_MESSAGE = re.compile(rb"\n\r?\n" + MBOX_FROM_LINE.pattern + rb"[^\n]*\n" + _HEADER_LINE.pattern)


def _mbox_messages(path: Path, f, head: bytes, max_bytes: int, label: int | None,
                   failed: BaseException | None) -> Iterator[RawMessage]:
    """`_read_mbox`'s messages, each with the file's name as its source: split at "From " lines
    (`MBOX_FROM_LINE`) that follow a blank line and have a header line after them, unquoted, each
    cut to `max_bytes`."""
    pieces = _MboxPieces(f, head, failed)
    try:
        pieces.skip_line()  # (the first message's "From " line: `_read_mbox` reads a file that starts with one)
        message, truncated, after_blank = bytearray(), False, False
        for piece, starts_line in pieces:
            line = [piece]
            # Only a piece that starts a line can be a "From " separator or a blank line. A "From "
            # line is a separator if it has a sender and a date and a header follows it: a line of a
            # message's body that a program wrote into a file of its own unquoted ("From our
            # records:", "From the desk of..."), is no separator.
            if (starts_line and after_blank and piece.startswith(b"From ")
                    and MBOX_FROM_LINE.match(pieces.line_from(piece, _MBOX_FROM_LINE_MAX))):
                line += pieces.rest_of_line(max_bytes - len(piece))
                ahead = pieces.peek_line(1000)
                if not ahead or _HEADER_LINE.match(ahead):
                    yield _mbox_message(path, message, label, truncated)
                    message, truncated, after_blank = bytearray(), False, False
                    continue
            after_blank = starts_line and piece in (b"\n", b"\r\n")
            for part in line:  # (the message's first max_bytes, as for a file)
                kept = part[:max_bytes - len(message)]
                message += kept
                truncated = truncated or len(kept) < len(part)
        yield _mbox_message(path, message, label, truncated)
    except _READ_ERRORS as exc:
        yield RawMessage(str(path), b"", label, error=_reason(exc))


def _mbox_message(path: Path, data: bytearray, label: int | None, truncated: bool) -> RawMessage:
    # mboxrd/mboxo quoting: ">From " at a line start was "From " in the message
    return RawMessage(str(path), re.sub(rb"(?m)^>(>*From )", rb"\1", bytes(data)), label, truncated)


class _MboxPieces:
    """An mbox file's bytes in pieces of at most LINE_PIECE bytes, each a line or a part of one
    (`for line in f` would hold a whole line, however long), with whether each starts a line.

    `head`, the first bytes of the file `f`, already read from it, is read again as if it had not
    been (without the byte order mark that Windows programs put before the text they save: it is
    no part of the first message), then the rest of `f`; where reading `head` `failed`, the file
    ends there, with that problem raised.
    """

    def __init__(self, f, head: bytes, failed: BaseException | None):
        self._f = f
        self._head = io.BytesIO(head.removeprefix(codecs.BOM_UTF8))
        self._failed = failed
        self._ahead: list[bytes] = []  # pieces peeked at, to be read again in order
        self._line_ended = True  # whether the last piece read ended its line

    def __iter__(self) -> Iterator[tuple[bytes, bool]]:
        """(piece, whether it starts a line) of each piece left."""
        while piece := self._next():
            starts_line, self._line_ended = self._line_ended, piece.endswith(b"\n")
            yield piece, starts_line

    def skip_line(self) -> None:
        """Read past the line that the next piece starts."""
        while (piece := self._next()) and not piece.endswith(b"\n"):
            pass

    def rest_of_line(self, keep: int) -> list[bytes]:
        """The pieces left of the line being read while they hold fewer than `keep` bytes; those
        after them are read past, never held."""
        rest: list[bytes] = []
        while not self._line_ended and (piece := self._next()):
            self._line_ended = piece.endswith(b"\n")
            if sum(map(len, rest)) < keep:
                rest.append(piece)
        return rest

    def line_from(self, piece: bytes, size: int) -> bytes:
        """The line that `piece`, the piece just read, starts: `piece` and the pieces after it that
        it takes to reach its end or `size` bytes, left to be read."""
        return piece if self._line_ended else piece + self.peek_line(size - len(piece))

    def peek_line(self, size: int) -> bytes:
        """The next line, or its first pieces once they hold `size` bytes, left to be read."""
        ahead: list[bytes] = []
        while (not ahead or not ahead[-1].endswith(b"\n")) and sum(map(len, ahead)) < size and (
                piece := self._next()):
            ahead.append(piece)
        self._ahead[:0] = ahead
        return b"".join(ahead)

    def _next(self) -> bytes:
        if self._ahead:
            return self._ahead.pop(0)
        piece = self._head.readline(LINE_PIECE)
        if len(piece) < LINE_PIECE and not piece.endswith(b"\n"):  # (`head` ends inside this line, or has ended)
            if self._failed is not None:
                raise self._failed
            piece += self._f.readline(LINE_PIECE - len(piece))
        return piece


def capped_lines(f, max_bytes: int = MAX_BYTES) -> Iterator[bytes]:
    """The lines of a binary stream, each cut to at most `max_bytes`; the rest of a longer line is
    read past in pieces, never held, so one 300 MB line costs `max_bytes` of memory."""
    while line := f.readline(max_bytes):
        if not line.endswith(b"\n"):
            while (rest := f.readline(LINE_PIECE)) and not rest.endswith(b"\n"):
                pass
        yield line


@dataclass
class _Member:
    """A file or folder of an archive: its name there, and how to open its bytes (`open`: a stream, or
    None where it is a link to a folder, whose own members are read anyway)."""

    name: str
    folder: bool
    open: Callable[[], io.BufferedIOBase | None]


# What opening an archive or its member raises besides, where either is damaged or not read: zipfile's
# NotImplementedError (a zip version or compression method it lacks), RuntimeError (an encrypted
# member) and UnicodeDecodeError (a name not in the UTF-8 its flag says).
_ARCHIVE_ERRORS = (*_READ_ERRORS, RuntimeError, ValueError)


class _UnreadableMember(Exception):
    """Why an archive's member cannot be read, as a problem says it: a link to what it does not hold."""


def _read_archive(path: Path, max_bytes: int, label: int | None, names: tuple[str, ...]) -> Iterator[RawMessage]:
    """The messages in a tar or zip archive: of each member that would be read of it unpacked
    (`_archive_mail`), those that file would give (`_read_member`), labelled by its folders in the
    archive, else by `names` (which end with the archive's own name: `20030228_spam.tar.bz2`)."""
    kind, listing = ("zip", _zip_members) if path.name.lower().endswith(".zip") else ("tar", _tar_members)
    with contextlib.ExitStack() as stack:
        try:
            members, damage = stack.enter_context(listing(path))
        except _ARCHIVE_ERRORS as exc:
            yield RawMessage(str(path), b"", label, error=f"not a readable {kind} archive ({one_line(exc)})")
            return
        for member, folders, in_maildir in _archive_mail(members):
            yield from _read_member(path, member, folders, in_maildir, max_bytes, label, names)
        if damage is not None:
            yield RawMessage(str(path), b"", label, error=f"archive is damaged ({one_line(damage)})")


@contextlib.contextmanager
def _tar_members(path: Path) -> Iterator[tuple[list[_Member], BaseException | None]]:
    """(the files, links and folders of the tar archive `path`, what cut their list short or None).
    All are listed before any is read, to tell its Maildirs by their new/ and cur/, which may come
    after their tmp/; the members listed before damage are read all the same."""
    with tarfile.open(path, "r:*") as tar:
        listed, damage = [], None
        try:
            listed.extend(tar)
        except _READ_ERRORS as exc:
            damage = exc
        yield [_Member(m.name, m.isdir(), functools.partial(_open_tar_member, tar, m)) for m in listed
               if m.isdir() or m.isfile() or m.islnk() or m.issym()], damage


def _open_tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> io.BufferedIOBase | None:
    """The bytes of `member`: a hard link's are the same bytes again, and a symbolic link's those of
    the member it names, as the same files are read on disk."""
    try:
        return tar.extractfile(member)
    except KeyError:
        raise _UnreadableMember(f"a link to {member.linkname}, which the archive does not hold") from None
    except RecursionError:  # (tarfile follows a link to a link by recursing, without end)
        raise _UnreadableMember("a loop of symbolic links") from None


@contextlib.contextmanager
def _zip_members(path: Path) -> Iterator[tuple[list[_Member], None]]:
    """`_tar_members` of a zip archive, whose list (at its end) is read whole, or not at all."""
    with zipfile.ZipFile(path) as archive:
        yield [_Member(info.filename, info.is_dir(), functools.partial(_open_zip_member, archive, info))
               for info in archive.infolist()], None


def _open_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> io.BufferedIOBase | None:
    """The bytes of the zip member `info`; of a symbolic link (`zip -y`: its bytes name its target),
    those of the member it names, as tar reads one."""
    seen = set()
    while stat.S_ISLNK(info.external_attr >> 16):
        if info.filename in seen:
            raise _UnreadableMember("a loop of symbolic links")
        seen.add(info.filename)
        with archive.open(info) as link:
            target = link.read(4096).decode("utf-8", "surrogateescape")
        name = posixpath.normpath(posixpath.join(posixpath.dirname(info.filename), target))
        info = archive.NameToInfo.get(name) or archive.NameToInfo.get(name + "/")
        if info is None:
            raise _UnreadableMember(f"a link to {target}, which the archive does not hold")
    return None if info.is_dir() else archive.open(info)


def _archive_mail(members: list[_Member]) -> Iterator[tuple[_Member, tuple[str, ...], bool]]:
    """(member, the folders that may label it, whether it lies in a Maildir) of each file of an
    archive that `_mail_files` would read of it unpacked, in the archive's order: in a Maildir (a
    folder that holds a new/ and a cur/), a file of its new/ or cur/ and nothing else (not its tmp/,
    messages half delivered, nor its server's index files); elsewhere, a file that `_not_mail` does
    not name; never one in a dot folder ("./spam/1" is in none)."""
    named = [(m, tuple(part for part in m.name.split("/") if part not in ("", "."))) for m in members]
    # every folder that holds a member (the archive's own, (), among them), and every folder member
    folders = {parts[:i] for m, parts in named for i in range(len(parts) + m.folder)}
    maildirs = {f for f in folders if all(f + (sub,) in folders for sub in _MAILDIR_MESSAGES)}
    for member, parts in named:
        if member.folder or not parts or any(part.startswith(".") for part in parts[:-1]):
            continue
        above, name = parts[:-1], parts[-1]
        maildir = next((i for i in range(len(above) + 1) if above[:i] in maildirs), None)
        if maildir is None:
            if not _not_mail(name):
                yield member, above, False
        elif len(above) == maildir + 1 and above[maildir] in _MAILDIR_MESSAGES and not name.startswith("."):
            yield member, above[:maildir], True


def _read_member(archive: Path, member: _Member, folders: tuple[str, ...], in_maildir: bool, max_bytes: int,
                 label: int | None, names: tuple[str, ...]) -> Iterator[RawMessage]:
    """The messages of an archive's member, read as the file would be unpacked: a Maildir's as its
    message (`_read_maildir_message`), any other as `_read_file` reads a file in a folder (an mbox
    split, one in `folders` or called *.mbox labelled by its name). An archive in it is a problem."""
    path = Path(f"{archive}:{member.name}")
    lab = _label(label, names + folders)
    if _is_archive(path):
        yield RawMessage(str(path), b"", lab, error="an archive in an archive, not read: unpack it first")
        return
    try:
        stream = member.open()
        if stream is None:
            return
        with stream, _decoded(stream) as f:
            if in_maildir:
                data, truncated = _read_capped(f, max_bytes)
                yield RawMessage(str(path), data, lab, truncated)
            else:
                yield from _read_opened(path, f, max_bytes, label, names + folders, named=False)
    except _UnreadableMember as exc:
        yield RawMessage(str(path), b"", lab, error=str(exc))
    except _ARCHIVE_ERRORS as exc:
        yield RawMessage(str(path), b"", lab, error=f"unreadable archive member ({one_line(exc)})")


# Byte order marks of the Unicode encodings whose text is full of NUL bytes (UTF-32's first: its
# little-endian mark begins with UTF-16's). Each codec named reads the mark itself.
_BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                     (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def marked_encoding(head: bytes) -> str | None:
    """"utf-16" or "utf-32" where `head` begins with that encoding's byte order mark (Windows'
    Notepad saves "Unicode" as UTF-16 with its mark), else None."""
    return next((encoding for mark, encoding in _BYTE_ORDER_MARKS if head.startswith(mark)), None)


class _AsUtf8(io.RawIOBase):
    """A binary stream of text in `encoding`, read as UTF-8: decoded a piece at a time, so that
    `capped_lines` reads it as it reads any file, in the same memory."""

    def __init__(self, f, encoding: str):
        self._f = f
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            piece = self._f.read1(LINE_PIECE)  # (what has come: a pipe is read as it is written)
            self._pending = self._decoder.decode(piece, final=not piece).encode("utf-8")
            if not piece:
                break
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _in_utf8(f):
    """The buffered binary stream `f`, read in UTF-8 where it starts with the byte order mark of
    UTF-16 or UTF-32 (`marked_encoding`), else as it is."""
    encoding = marked_encoding(f.peek(4)[:4])
    return f if encoding is None else io.BufferedReader(_AsUtf8(f, encoding))


def text_lines(f, max_bytes: int = MAX_BYTES) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, the line without its line break) for each line of a buffered binary
    stream of one text per line that is not blank: each cut to `max_bytes` (`capped_lines`) between
    characters, not inside one, the first without the byte order mark Windows programs put before
    the text they save. What SMS collections and texts to classify are read with, alike.

    A text in UTF-16 or UTF-32 with its byte order mark is read as such, and its lines given in
    UTF-8, as UTF-8 text's are. Any other text whose first line holds a NUL byte raises DataError:
    8-bit text has none, and UTF-16 without its mark one in every ASCII character, so that read byte
    by byte it became single letters.
    """
    f = _in_utf8(f)
    first = True
    for lineno, line in enumerate(capped_lines(f, max_bytes), 1):
        if len(line) == max_bytes and not line.endswith(b"\n"):  # cut at max_bytes
            line = without_cut_character(line)
        if lineno == 1:
            line = line.removeprefix(codecs.BOM_UTF8)
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue
        if first and b"\x00" in line:
            raise DataError(f"line {lineno} holds NUL bytes: not text in UTF-8 or another 8-bit charset (UTF-16 "
                            "without its byte order mark? save it as UTF-8)")
        first = False
        yield lineno, line


def read_sms(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> tuple[list[str], list[int]]:
    """A UCI SMS Spam Collection file: `ham<TAB>text` or `spam<TAB>text` per line, each line cut
    to `max_bytes` (between characters, not inside one).

    Returns (texts, labels). Raises ValueError naming the first bad line, since a collection with
    an unlabelled line is a broken training file, not one odd message.
    """
    texts, labels = [], []
    with open(path, "rb") as f:
        try:
            for lineno, line in text_lines(f, max_bytes):
                tag, sep, text = line.partition(b"\t")
                tag = tag.strip().lower()
                if not sep or tag not in (b"spam", b"ham"):
                    raise ValueError(f"{path}:{lineno}: expected 'spam<TAB>text' or 'ham<TAB>text'")
                if not text.strip():  # (an empty message is a problem everywhere else, not a message)
                    raise ValueError(f"{path}:{lineno}: a label with no text after it")
                texts.append(decode_text(text, "utf-8"))
                labels.append(SPAM if tag == b"spam" else HAM)
        except DataError as exc:  # (text_lines': not text)
            raise DataError(f"{path}: {exc}") from None
    return texts, labels

