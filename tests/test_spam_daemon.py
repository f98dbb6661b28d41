"""The spamd-protocol daemon, driven by Debian's real `spamc` (and procmail) on SpamAssassin mail.

One small model is trained on real SpamAssassin messages per session; each daemon is the real
thing, `chainrule spam daemon MODEL ...` in its own process. Answers are compared
with the same model loaded here (`SpamFilter`), so a verdict that reaches spamc wrong shows.
"""

import contextlib
import fcntl
import json
import os
import re
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from chainrule.apps.spam import save_model, train_filter, training_features
from chainrule.apps.spam.daemon import INLINE_BYTES, SpamFilter, checked_inline
from chainrule.apps.spam.protocol import THRESHOLD, Verdict, format_score, markup_lines
from chainrule.cli import main
from chainrule.data.corpora import read_messages
from chainrule.data.text import HashingConfig
from conftest import as_a_user as _as_a_user
from conftest import open_files, with_huge_weights

DATA = os.environ.get("CHAINRULE_DATA")
SRC = str(Path(__file__).resolve().parents[1] / "src")
MAX_SIZE = 60_000  # the main daemon's --max-size
# the daemon's command line after the interpreter: `chainrule`, or the same on asyncio's own event loop
# (as where uvloop is not installed)
CHAINRULE = ["-m", "chainrule.cli"]
WITHOUT_UVLOOP = ["-c", "import sys; sys.modules['uvloop'] = None; from chainrule.cli import main; sys.exit(main())"]


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        msg = f"{binary} is not installed (apt-get install {binary})"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


# --- a model and daemons --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def mail():
    """(train, held out): (bytes, label) of real SpamAssassin messages, each under MAX_SIZE bytes."""
    if not DATA:
        pytest.skip("CHAINRULE_DATA is not set")
    train, held = [], []
    limits = {"spam": (150, 40), "easy_ham": (150, 40), "hard_ham": (40, 10)}
    for tarball in sorted((Path(DATA) / "spamassassin").glob("*.tar*")):
        counts = {}
        for m in read_messages([tarball]):
            folder = m.source.split(":", 1)[1].split("/")[0]
            k = counts.get(folder, 0)
            n_train, n_held = limits[folder]
            if k >= n_train + n_held:
                break
            if m.error or len(m.data) >= MAX_SIZE - 1000:
                continue
            counts[folder] = k + 1
            (train if k < n_train else held).append((m.data, m.label))
    return train, held


@pytest.fixture(scope="session")
def model_dir(mail, tmp_path_factory):
    """A small real filter: one network (8 hidden units, 2^14 buckets) trained on 340 messages."""
    train, _ = mail
    config = HashingConfig(n_features=1 << 14, split_norm=True, idf=True)
    x, _, idf = training_features([("mail", m) for m, _ in train], config, processes=1)
    y = np.array([label for _, label in train])
    result = train_filter(x, y, config, hidden=(8,), epochs=10, batch_size=32, folds=0, seed=0, idf=idf)
    out = tmp_path_factory.mktemp("spamd-model") / "model"
    save_model(result.bundle, out, replay=result.replay)
    return out


class Daemon:
    """`chainrule spam daemon MODEL ARGS`, started and read until it says it is ready; `as_a_user`
    (`_as_a_user`) where it must meet file modes as a user does; `program` (`CHAINRULE`,
    `WITHOUT_UVLOOP`) and `preexec_fn` as the test needs them."""

    def __init__(self, model: Path, *args: str, as_a_user: bool = False, program=CHAINRULE, preexec_fn=None):
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        prefix = _as_a_user() if as_a_user else []
        self.proc = subprocess.Popen([*prefix, sys.executable, *program, "spam", "daemon", str(model), *args],
                                     stderr=subprocess.PIPE, text=True, env=env, preexec_fn=preexec_fn)
        self.log: list[str] = []
        self.port = None
        for line in self.proc.stderr:
            self.log.append(line)
            if "ready: listening on" in line:
                m = re.search(r"127\.0\.0\.1:(\d+)", line)
                self.port = int(m.group(1)) if m else None
                break
        else:
            raise RuntimeError("daemon did not start:\n" + "".join(self.log))
        self._reader = threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True)
        self._reader.start()

    def spamc(self, *args: str, data: bytes = b"", socket_path: Path | None = None) -> tuple[int, bytes]:
        where = ["-U", str(socket_path)] if socket_path else ["-d", "127.0.0.1", "-p", str(self.port)]
        res = subprocess.run(["spamc", *where, "-t", "20", *args], input=data, capture_output=True, timeout=60)
        return res.returncode, res.stdout

    def raw(self, request: bytes, shutdown: bool = True, timeout: float = 20) -> bytes:
        """Send bytes as a client would and read the whole answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(request)
            if shutdown:
                s.shutdown(socket.SHUT_WR)
            out = b""
            while data := s.recv(65536):
                out += data
            return out

    def log_text(self) -> str:
        time.sleep(0.1)  # (the reader thread may be a line behind)
        return "".join(self.log)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(scope="session")
def ham_cutoff(model_dir, mail):
    """The model's ham cut-off, or, if no held-out message falls between its cut-offs, one that puts
    the highest-scoring message below the spam cut-off there (so that `unsure` can be seen)."""
    base = SpamFilter.load(model_dir)
    spam_cut, ham_cut = base.bundle.spam_cutoff, base.bundle.ham_cutoff
    p = np.array([base.check(m).probability for m, _ in mail[1]])
    if np.any((p >= ham_cut) & (p < spam_cut)):
        return ham_cut
    return float(p[p < spam_cut].max())


@pytest.fixture(scope="session")
def reference(model_dir, ham_cutoff):
    """The model loaded here, with the main daemon's cut-offs, to compare its answers with."""
    return SpamFilter.load(model_dir, ham_cutoff=ham_cutoff)


@pytest.fixture(scope="session")
def held(mail, reference):
    """Held-out messages with the reference verdict of each: [(bytes, label, Verdict)]."""
    return [(m, label, reference.check(m)) for m, label in mail[1]]


@pytest.fixture(scope="session")
def user_models(model_dir, tmp_path_factory):
    """--user-models with one user, alice, whose copy of the model calls nothing spam."""
    root = tmp_path_factory.mktemp("users")
    shutil.copytree(model_dir, root / "alice")
    _set_cutoffs(root / "alice", spam=1.0, ham=0.0)
    return root


def _set_cutoffs(model: Path, spam: float, ham: float) -> None:
    """Change a model's cut-offs in its model.json, atomically, as `spam train` writes it."""
    path = model / "model.json"
    doc = json.loads(path.read_text())
    doc["metadata"]["cutoffs"].update(spam=spam, ham=ham)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


@pytest.fixture(scope="session")
def daemon(model_dir, user_models, ham_cutoff, tmp_path_factory):
    _need("spamc")
    sock = tmp_path_factory.mktemp("sock") / "spamd.sock"
    d = Daemon(model_dir, "--listen", "127.0.0.1:0", "--socket", str(sock), "--socket-mode", "0640",
               "--max-size", str(MAX_SIZE), "--read-timeout", "2", "--user-models", str(user_models),
               "--reload-interval", "0", "--ham-cutoff", repr(ham_cutoff))
    d.socket = sock
    yield d
    assert d.stop() == 0


@pytest.fixture(scope="session")
def learner(model_dir, tmp_path_factory):
    """A daemon with --allow-tell on its own copy of the model."""
    _need("spamc")
    copy = tmp_path_factory.mktemp("learner") / "model"
    shutil.copytree(model_dir, copy)
    d = Daemon(copy, "--listen", "127.0.0.1:0", "--allow-tell", "--reload-interval", "0.2")
    d.model = copy
    yield d
    assert d.stop() == 0


def _score_line(v: Verdict) -> bytes:
    return f"{format_score(v.score, v.label)}/{THRESHOLD:.1f}\n".encode()


def _body(raw: bytes) -> bytes:
    i = [k for k in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if k >= 0]
    return raw[min(i):] if i else b""


# --- every request type through spamc ------------------------------------------------------------

def test_check_prints_score_and_exit_code_like_spamd(daemon, held):
    labels = set()
    for raw, _, v in held[::3]:
        rc, out = daemon.spamc("-c", data=raw)
        assert out == _score_line(v)
        assert rc == (1 if v.is_spam else 0)
        labels.add(v.label)
    assert {"spam", "ham"} <= labels
    accuracy = np.mean([v.is_spam == bool(label) for _, label, v in held])
    assert accuracy > 0.8  # a real filter, not a coin (the reference verdicts are the daemon's)
    assert re.search(r"CHECK (spam|ham|unsure) \(-?\d+\.\d/5\.0, P\(spam\) [01]\.\d{4}\) for \S+ in [\d.]+ ms, "
                     r"\d+ bytes", daemon.log_text())


def test_process_adds_headers_and_leaves_the_body_byte_for_byte(daemon, held):
    for raw, _, v in held[::7]:
        rc, out = daemon.spamc("-E", data=raw)
        assert rc == (1 if v.is_spam else 0)
        assert _body(out) == _body(raw)
        head = out[:len(out) - len(_body(out))]
        assert (b"\nX-Spam-Flag: YES" in head) == v.is_spam
        assert f"X-Spam-Status: {'Yes' if v.is_spam else 'No'}, score={format_score(v.score, v.label)} "\
               f"required=5.0 tests=CHAINRULE_{v.label.upper()}".encode() in head
        assert f"X-Chainrule-Spam-Verdict: {v.label}".encode() in head
        assert f"X-Chainrule-Spam-Probability: {v.probability:.6f}".encode() in head
        rc, headers_mode = daemon.spamc("--headers", data=raw)  # spamc puts the body back itself
        assert rc == 0 and headers_mode == out


def test_forged_markup_is_replaced(daemon, held):
    raw, _, v = next(h for h in held if h[2].label == "ham")
    forged = b"X-Spam-Flag: YES\nX-Chainrule-Spam-Verdict: spam\nX-Spam-Score: 99\nX-Spam-Report: spam!\n" + raw
    _, out = daemon.spamc(data=forged)
    head = out[:len(out) - len(_body(out))]
    assert b"X-Spam-Flag" not in head and head.count(b"X-Chainrule-Spam-Verdict: ham") == 1
    assert b"X-Spam-Score" not in head and b"X-Spam-Report" not in head  # (spamd removes every X-Spam-* too)


@pytest.mark.parametrize("nl", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_process_keeps_every_byte_of_a_message_whatever_its_line_ends(daemon, reference, held, nl):
    """A message with classic Mac OS line ends (a bare CR, no LF) came back from spamc as the markup
    alone where its first line was an X-Spam field (the whole message was taken for that one field,
    and removed with it), and with the markup after its body, in LF lines, where it was not. Every
    byte of a message but its forged X-Spam fields comes back, the markup lines ending as its own do."""
    for raw, _, _ in held[::7]:
        head, blank, body = raw.partition(b"\n\n")
        lines = head.split(b"\n")
        second = next(i for i, line in enumerate(lines) if i and not line.startswith((b" ", b"\t")))  # (a field's)
        forged = b"\n".join([*lines[:second], b"X-Spam-Flag: NO", *lines[second:], b"X-Spam-Status: No, score=-9.0",
                             b"\tfolded"]) + blank + body
        message, forged = raw.replace(b"\n", nl), forged.replace(b"\n", nl)
        markup = b"".join(line.encode() + nl for line in markup_lines(reference.check(message)))
        for sent in (message, forged):
            rc, out = daemon.spamc(data=sent)
            assert rc == 0 and out.count(markup) == 1
            at = out.index(markup)
            assert out[:at] + out[at + len(markup):] == message and at == message.index(nl + nl) + len(nl)
            # (spamc --headers appends what follows "\n\n" or "\r\n\r\n", and passes a message with neither as it is)
            assert daemon.spamc("--headers", data=sent) == (0, out if nl != b"\r" else sent)


def test_a_classic_mac_message_whose_first_line_is_a_forged_field_keeps_its_subject_and_body(daemon):
    rc, out = daemon.spamc(data=b"X-Spam-Flag: NO\rSubject: meeting\r\rhello friend, see you\r")
    assert rc == 0 and b"\n" not in out and b"X-Spam-Flag: NO" not in out
    assert out.startswith(b"Subject: meeting\rX-Spam-") and out.endswith(b"\r\rhello friend, see you\r")


@pytest.mark.parametrize("raw,blank_added", [
    # a Subject wrapped onto an unindented line, as broken spam software writes it
    (b"Received: from mx.example.org\nSubject: Cheap meds, best prices on all\nthe pills you need\n"
     b"From: seller@example.com\nTo: you@example.net\nMessage-ID: <1@example.com>\n\nBuy now.\n", False),
    (b"Subject: a\r\n>From x\r\nTo: b@example.net\r\n\r\nbody\r\n", False),  # a quoted envelope line
    # a first line that is no field: a message of body alone, which the markup goes above, with a
    # blank line (no body line is taken for a field, or removed as one)
    (b"Subj ect: a\nFrom: b@example.com\n\nbody\n", True),
    (b"body only, no headers\nX-Spam-Status: a line of it\n\nsecond paragraph\n", True),
    (b"Subject: lunch\nHi Alice, noon?\nBob\n", True),  # no blank line at all
    # a UTF-8 byte order mark in front, as Windows programs save a message: it stays there, and the
    # fields after it stay fields
    (b"\xef\xbb\xbfFrom: alice@example.org\nTo: bob@example.org\nSubject: lunch\n\nNoon?\n", False),
    (b"\xef\xbb\xbfFrom: alice@example.org\r\nSubject: lunch\r\n\r\nNoon?\r\n", False),
])
def test_a_malformed_header_block_keeps_every_line_in_process_and_headers_mode(daemon, raw, blank_added):
    """A line that is neither a field nor a continuation above the blank line ended the headers: the
    markup went there with a blank line of its own, so the fields below it became body text, and
    `spamc --headers`, which appends what follows the message's first blank line, lost them."""
    rc, out = daemon.spamc(data=raw)
    assert rc == 0 and b"X-Chainrule-Spam-Verdict: " in out
    start = out.index(b"X-Spam-")  # (the markup: from its first line to its last)
    end = out.index(b"\n", out.index(b"X-Chainrule-Spam-Verdict: ")) + 1
    assert out[:start] + out[end + blank_added:] == raw and out[end:end + blank_added] == b"\n"[:blank_added]
    # (spamc --headers passes a message with no blank line on unchanged, whatever the answer: spamd's too)
    assert daemon.spamc("--headers", data=raw) == (0, out if b"\n\n" in raw.replace(b"\r", b"") else raw)


def test_symbols_and_reports(daemon, held):
    spam = next(h for h in held if h[2].label == "spam")
    ham = next(h for h in held if h[2].label == "ham")
    for raw, _, v in (spam, ham):
        rc, out = daemon.spamc("-y", data=raw)
        assert rc == 0 and out.strip() == f"CHAINRULE_{v.label.upper()}".encode()
        rc, out = daemon.spamc("-R", data=raw)
        first, report = out.split(b"\n", 1)
        assert rc == 0 and first + b"\n" == _score_line(v)
        assert f"P(spam) {v.probability:.4f}".encode() in report
        assert b"Tokens that pushed it towards" in report
        rc, out = daemon.spamc("-r", data=raw)  # only for spam
        assert rc == 0 and (out.startswith(_score_line(v)) if v.is_spam else out == b"")


def test_unsure_stays_visible(daemon, held):
    raw, _, v = next(h for h in held if h[2].label == "unsure")  # (there is one: see `ham_cutoff`)
    assert 2.5 <= v.score < THRESHOLD
    rc, out = daemon.spamc("-E", data=raw)
    assert rc == 0 and b"X-Chainrule-Spam-Verdict: unsure" in out and b"X-Spam-Flag" not in out
    assert b"X-Spam-Status: No, score=" in out
    assert daemon.spamc("-c", data=raw) == (0, _score_line(v))
    assert daemon.spamc("-y", data=raw)[1].strip() == b"CHAINRULE_UNSURE"


def test_ping_and_skip(daemon):
    rc, out = daemon.spamc("-K")
    assert rc == 0 and out == b"SPAMD/1.5 0\n"
    assert daemon.raw(b"SKIP SPAMC/1.5\r\n\r\n") == b""
    assert daemon.raw(b"PING SPAMC/1.5\r\n\r\n") == b"SPAMD/1.5 0 PONG\r\n"


def test_unix_socket_answers_like_tcp(daemon, held):
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o640
    for raw, _, _ in held[:3]:
        assert daemon.spamc("-c", data=raw, socket_path=daemon.socket) == daemon.spamc("-c", data=raw)
    assert "unix socket" in daemon.log_text()


def test_clients_that_go_at_once_are_one_log_line_each(daemon):
    """A client that connects and closes (a health check, a second daemon's probe of the socket)
    was an "internal error" with two tracebacks on the Unix socket (uvloop refuses a write to a
    closed transport); one that resets at once over TCP was logged as refused by --allowed-ips."""
    before = len(daemon.log_text().splitlines())
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(daemon.socket))
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", daemon.port)) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
    assert daemon.spamc("-K") == (0, b"SPAMD/1.5 0\n")  # (and the log has caught up)
    new = daemon.log_text().splitlines()[before:]
    assert any("unix socket: bad request: Bad header line: (closed before headers)" in line for line in new), new
    assert not [line for line in new if "Traceback" in line or "internal error" in line or "--allowed-ips" in line]


def test_compressed_request(daemon, held):
    # (Debian's spamc is built without zlib, so `-z` is sent by hand, as spamc would send it)
    raw, _, v = held[1]
    packed = zlib.compress(raw)
    out = daemon.raw(b"CHECK SPAMC/1.5\r\nCompress: zlib\r\nContent-length: %d\r\n\r\n" % len(packed) + packed)
    assert out == f"SPAMD/1.1 0 EX_OK\r\nSpam: {v.is_spam} ; {format_score(v.score, v.label)} / 5.0\r\n\r\n".encode()


def test_older_clients_exim_and_milters(daemon, held):
    """Exim's `spam =` sends REPORT SPAMC/1.2 and parses the 1.2 answer (no Content-length, then
    "Spam: ..."); spamass-milter sends SYMBOLS SPAMC/1.2 with no Content-length at all."""
    raw, _, v = next(h for h in held if h[2].label == "spam")
    out = daemon.raw(b"REPORT SPAMC/1.2\r\nUser: nobody\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
    m = re.match(rb"SPAMD/1\.1 0 EX_OK\r\nSpam: True ; (-?\d+\.\d) / 5\.0\r\n\r\n", out)
    assert m and m.group(1) == format_score(v.score, "spam").encode()
    assert b"CHAINRULE_SPAM" in out[m.end():]
    out = daemon.raw(b"SYMBOLS SPAMC/1.2\r\nUser: milter\r\n\r\n" + raw)
    assert out.endswith(b"\r\n\r\nCHAINRULE_SPAM\r\n") and out.startswith(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; ")


def test_too_large_message_is_passed_back_unchecked(daemon, held):
    raw = held[0][0]
    big = raw + b"\n" + b"".join(m for m, _, _ in held)[:3 * MAX_SIZE]  # real mail, over --max-size
    assert len(big) > MAX_SIZE
    size = ["-s", str(4 * MAX_SIZE)]  # (spamc's own limit must let it through to the daemon)
    assert daemon.spamc(*size, "-c", data=big) == (0, b"0.0/5.0\n")
    assert daemon.spamc(*size, data=big) == (0, big)
    assert daemon.spamc(*size, "--headers", data=big) == (0, big)
    assert daemon.spamc(*size, "-y", data=big)[1].strip() == b"CHAINRULE_SKIPPED_TOO_BIG"
    assert f"it has {len(big)} bytes, more than the daemon's limit".encode() in daemon.spamc(*size, "-R", data=big)[1]
    assert re.search(rf"PROCESS skipped for \S+: {len(big)} bytes over --max-size {MAX_SIZE}", daemon.log_text())
    # compressed, it is inflated only as far as its reading had got when it passed the limit (the
    # rest would be up to 256 MB of work on the event loop): what it says is a lower bound, and says so
    packed = zlib.compress(big, 0)  # (stored: it spans several of the daemon's reads)
    out = daemon.raw(b"REPORT SPAMC/1.5\r\nCompress: zlib\r\nContent-length: %d\r\n\r\n" % len(packed) + packed)
    m = re.search(rb"it has at least (\d+) bytes, more than the daemon's limit", out)
    assert m and MAX_SIZE < int(m.group(1)) < len(big), out


def test_a_too_large_message_whose_header_block_is_too_large_is_passed_back_unchecked_by_headers_too(
        daemon, held):
    """`spamc --headers` writes the daemon's header block, then the message from its first blank
    line on. Of a message over --max-size, the daemon read its first --max-size bytes only: one
    whose blank line came later was refused (`spamc --headers -x`, which an MTA that should retry
    later runs: exit 74 every time, until the message bounced), and one whose body followed its
    fields with no blank line, and had a blank line later, lost everything in between."""
    raw = held[0][0]
    head, body = raw.split(b"\n\n", 1)  # (SpamAssassin's messages end their lines with "\n")
    fields = b"".join(b"Received: from relay%d.example.net by mx.example.org; %s\n" % (i, b"x" * 40)
                      for i in range(MAX_SIZE // 80))
    size = ["-s", str(4 * MAX_SIZE)]
    for big in (head + b"\n" + fields + b"\n" + body,  # a header block over --max-size
                # a body line right after the fields, and a blank line only beyond --max-size
                head + b"\nHi Alice,\n" + fields + b"\n" + body,
                head + b"\n" + fields):  # no blank line at all
        assert len(big) > MAX_SIZE
        for x in ([], ["-x"]):
            assert daemon.spamc(*size, "--headers", *x, data=big) == (0, big)
            assert daemon.spamc(*size, "-c", *x, data=big) == (0, b"0.0/5.0\n")
    assert re.search(rf"HEADERS skipped for \S+: {len(big)} bytes over --max-size {MAX_SIZE}", daemon.log_text())


def test_malformed_requests_get_protocol_errors(daemon, held):
    raw = held[0][0]
    cases = [
        b"HELLO SPAMC/1.5\r\n\r\n",
        b"\x00\xff\xfe garbage\r\n",
        b"CHECK SPAMC/1.5\r\nContent-length: twelve\r\n\r\n",
        b"CHECK SPAMC/1.5\r\nno colon here\r\n\r\n",
        b"CHECK SPAMC/1.5\r\nCompress: gzip\r\nContent-length: 3\r\n\r\nabc",
        b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % (len(raw) + 10) + raw,  # shorter than it says
        b"CHECK SPAMC/1.5\r\n" + b"X-Header: 1\r\n" * 300 + b"\r\n",
        # refused part-way through a large request: the rest is read and dropped, so that closing
        # the connection does not reset it before the client has read the answer
        b"CHECK SPAMC/1.5\r\nX-Big: " + b"a" * 2_000_000 + b"\r\nContent-length: 5\r\n\r\nhello",
        b"CHECK SPAMC/1.5\r\n" + b"X-Header: 1\r\n" * 200_000 + b"\r\n",
        b"CHECK SPAMC/1.5\r\nContent-length: 5\r\nCompress: zlib\r\n\r\nnot z",
        b"TELL SPAMC/1.5\r\nMessage-class: spam\r\nSet: local\r\nContent-length: 3\r\n\r\nabc",  # no --allow-tell
        b"CHECK SPAMC/1.0\r\n\r\n",
    ]
    for request in cases:
        out = daemon.raw(request)
        assert re.fullmatch(rb"SPAMD/1\.0 (76|69|65) [^\r\n]+\r\n", out), (request[:40], out)
    assert daemon.raw(b"").startswith(b"SPAMD/1.0 76")
    for empty in (b"", b"\r\n \r\n"):  # judged, as spamd judges it: refused, it failed `spamc -x` (exit 74),
        # and a mail system that defers a message on that retried it for days
        assert re.fullmatch(rb"SPAMD/1\.1 0 EX_OK\r\nSpam: (True|False) ; -?\d+\.\d / 5\.0\r\n\r\n",
                            daemon.raw(b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(empty) + empty))
    rc, out = daemon.spamc("-x", data=b"\r\n \r\n")  # (spamc refuses a message of no bytes itself)
    assert rc == 0 and b"X-Spam-Status: " in out and out.endswith(b"\r\n\r\n \r\n")
    assert daemon.spamc("-K") == (0, b"SPAMD/1.5 0\n")  # still serving


def test_a_live_socket_is_never_taken_over_and_a_stale_one_is(daemon, model_dir, tmp_path):
    """A second daemon on the first one's socket path must fail, not unlink the live socket (spamc
    would then pass all mail unchecked); a socket left by a daemon that died is reused."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def second(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "chainrule.cli", "spam", "daemon", str(model_dir),
                               "--socket", str(path)], capture_output=True, text=True, env=env, timeout=60)

    res = second(daemon.socket)
    assert res.returncode == 2 and res.stderr == f"chainrule: error: cannot listen on {daemon.socket}: " \
        "a running daemon is listening there\n"
    assert daemon.spamc("-K", socket_path=daemon.socket) == (0, b"SPAMD/1.5 0\n")
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    res = second(precious)
    assert res.returncode == 2 and "a file that is not a socket is there" in res.stderr
    assert precious.read_text() == "keep me"
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # the file stays, nobody listens
    d = Daemon(model_dir, "--socket", str(stale), "--reload-interval", "0")
    try:
        assert d.spamc("-K", socket_path=stale) == (0, b"SPAMD/1.5 0\n")
    finally:
        assert d.stop() == 0
    assert not stale.exists()


def test_an_address_that_is_not_this_machines_is_refused_without_the_root_hint(model_dir, capsys):
    """The hint about ports below 1024 is for a bind refused permission; it was given for any error
    on such a port, port 0 included (which asks for any free port)."""
    assert main(["spam", "daemon", str(model_dir), "--listen", "192.0.2.1:0"]) == 2  # (TEST-NET-1: nobody's)
    err = capsys.readouterr().err
    assert err.startswith("chainrule: error: cannot listen on 192.0.2.1:0: ") and err.count("\n") == 1, err
    assert "root" not in err and "error while attempting to bind" not in err  # (asyncio's words, said once more)


def _daemon_run(model: Path, *args: str) -> subprocess.CompletedProcess:
    """`chainrule spam daemon MODEL ARGS` as a user (`_as_a_user`), expected to fail before it serves."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([*_as_a_user(), sys.executable, "-m", "chainrule.cli", "spam", "daemon", str(model), *args],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("closed", [0, 1])
def test_a_daemon_started_with_standard_input_or_output_closed_serves_and_stops_cleanly(model_dir, held, closed):
    """Started with `<&-`, the daemon's listening socket took descriptor 0, and uvloop aborted the
    process as it closed it at the stop (exit 134, "uv__close: Assertion `fd > STDERR_FILENO'");
    with `>&-` descriptor 1 the same. A closed standard output is no reason to refuse a server,
    which prints nothing there (init scripts close it)."""
    d = Daemon(model_dir, "--listen", "127.0.0.1:0", preexec_fn=lambda: os.close(closed))
    try:
        assert d.spamc("-c", data=held[0][0])[0] in (0, 1)
    finally:
        assert d.stop() == 0, d.log_text()


def test_a_low_port_refused_is_explained_once(model_dir):
    """The error said it twice: "cannot listen on 127.0.0.1:783: error while attempting to bind on
    address ('127.0.0.1', 783): permission denied (ports below 1024 need ...)": asyncio's strerror
    is its whole message."""
    first_free = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if first_free <= 783:
        pytest.skip(f"any user may bind port 783 here (net.ipv4.ip_unprivileged_port_start = {first_free})")
    res = _daemon_run(model_dir, "--listen", "127.0.0.1:783")
    assert (res.returncode, res.stderr) == (2, "chainrule: error: cannot listen on 127.0.0.1:783: Permission denied "
                                            "(ports below 1024 need root or CAP_NET_BIND_SERVICE)\n"), res.stderr


def test_a_socket_this_user_may_not_use_is_not_called_a_running_daemon(model_dir, tmp_path):
    """A stale socket of another user (nothing listens; connecting to it is refused permission) was
    reported as "a running daemon is listening there". It is left in place (a daemon of its owner
    may be listening: this user cannot tell), and the error says what stops this one."""
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    stale.chmod(0)  # (connecting needs write permission: as another user's socket of mode 0755)
    res = _daemon_run(model_dir, "--socket", str(stale))
    assert (res.returncode, res.stderr) == (2, f"chainrule: error: cannot listen on {stale}: a socket this user may "
                                            "not use is there (Permission denied): remove it, or run the daemon "
                                            "as its owner\n"), res.stderr
    assert stale.is_socket()


def test_silent_and_vanishing_clients_never_hang_the_daemon(daemon, held):
    raw = held[0][0]
    t0 = time.monotonic()
    out = daemon.raw(b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw[:100], shutdown=False)
    assert out.startswith(b"SPAMD/1.0 79 Timeout") and time.monotonic() - t0 < 10  # --read-timeout 2
    for _ in range(3):  # disconnects mid-body
        with socket.create_connection(("127.0.0.1", daemon.port)) as s:
            s.sendall(b"PROCESS SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw[:len(raw) // 2])
    rc, out = daemon.spamc("-c", data=raw)
    assert rc in (0, 1) and out == _score_line(held[0][2])
    assert "Content-Length mismatch" in daemon.log_text()


def test_concurrent_clients(daemon, held):
    jobs = [h for h in held for _ in range(2)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda h: daemon.spamc("-c", data=h[0]), jobs))
    assert results == [(1 if v.is_spam else 0, _score_line(v)) for _, _, v in jobs]


def _waiting_clients(port: int, n: int) -> list[socket.socket]:
    """`n` clients that have sent a request line and wait (until the test closes them)."""
    clients = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(n)]
    for c in clients:
        c.sendall(b"CHECK SPAMC/1.5\r\n")
    return clients


def _checked(rc: int, out: bytes) -> bool:
    """Whether `spamc -c` printed a verdict (not 0/0, what it prints for a daemon it cannot reach)."""
    return rc in (0, 1) and re.fullmatch(rb"-?[0-9.]+/5\.0\n", out) is not None


def test_a_low_soft_open_file_limit_is_raised_so_that_waiting_clients_lock_nobody_out(model_dir, held):
    """Under `ulimit -n 40` (the soft limit; systemd's default is 1,024) 30 clients that had sent a
    request line and waited, well under --max-connections 64, took every file descriptor: meanwhile
    spamc -x got its connection reset (exit 74), plain spamc passed the mail unchecked (0/0), and the
    log said nothing. The daemon raises its soft limit to the hard one as it starts."""
    _need("spamc")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    d = Daemon(model_dir, "--listen", "127.0.0.1:0", "--reload-interval", "0",
               preexec_fn=open_files(40, min(hard, 4096)))
    waiting = _waiting_clients(d.port, 30)
    try:
        for raw, _, _ in held[:3]:
            rc, out = d.spamc("-x", "-c", data=raw)
            assert _checked(rc, out), (rc, out, d.log_text())
    finally:
        for c in waiting:
            c.close()
        assert d.stop() == 0
    assert "cannot accept" not in d.log_text()


def test_max_connections_the_open_file_limit_cannot_hold_are_refused_in_one_line(model_dir):
    """Under a hard limit of 40 open files, --max-connections 64 (the default) cannot be held; the
    daemon started, and dropped clients once the descriptors ran out."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, *CHAINRULE, "spam", "daemon", str(model_dir), "--listen", "127.0.0.1:0"],
                         capture_output=True, text=True, env=env, timeout=20, preexec_fn=open_files(40, 40))
    assert (res.returncode, res.stderr) == (2, "chainrule: error: --max-connections 64 needs up to 160 open files, "
                                            "and this process may open 40 (`ulimit -Hn`; systemd's LimitNOFILE=): "
                                            "lower --max-connections or raise the limit\n"), res.stderr


@pytest.mark.parametrize("program", [CHAINRULE, WITHOUT_UVLOOP], ids=["uvloop", "asyncio"])
def test_clients_beyond_the_open_file_limit_wait_to_be_accepted_and_the_log_says_so_once(model_dir, held, program):
    """Out of file descriptors (40, soft and hard, with 30 clients waiting after a request line),
    uvloop's server accepted and closed every new client without a word (spamc -x: exit 74; plain
    spamc passed the mail unchecked), and asyncio's logged a traceback for every try, thousands in
    a few seconds. New clients now wait to be accepted, as those over --max-connections wait for a
    place, and are served once the waiting ones leave; the log says so in one line."""
    _need("spamc")
    d = Daemon(model_dir, "--listen", "127.0.0.1:0", "--max-connections", "4", "--reload-interval", "0",
               program=program, preexec_fn=open_files(40, 40))
    waiting = _waiting_clients(d.port, 30)
    try:
        with ThreadPoolExecutor(3) as pool:
            checks = [pool.submit(d.spamc, "-x", "-c", data=raw) for raw, _, _ in held[:3]]
            time.sleep(2)
            for c in waiting:
                c.close()
            for check in checks:
                rc, out = check.result()
                assert _checked(rc, out), (rc, out, d.log_text())
    finally:
        for c in waiting:
            c.close()
        assert d.stop() == 0
    log = d.log_text()
    said = [line for line in log.splitlines() if "cannot accept" in line]
    assert len(said) == 1 and said[0].endswith(
        "cannot accept connections: Too many open files (this process may open 40: `ulimit -n`, systemd's "
        "LimitNOFILE=); clients wait until connections end"), log[-3000:]
    assert "Traceback" not in log


def test_a_small_message_of_many_parts_is_checked_on_a_thread_not_on_the_event_loop(held):
    """A message under 64 KB was classified on the event loop however long it took: 32 nested parts and
    60,000 empty lines (within mime's limits) take the email package a few tenths of a second, and every
    other client waited as long. Messages of many parts go to a thread, where the loop goes on beside them."""
    for nl, depth in (("\n", 32), ("\n", 16), ("\r", 31)):  # (a lone "\r" ends a line too)
        nested = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"{nl}{nl}--b{i}{nl}' for i in range(depth))
        message = ("Subject: parts" + nl + nested + nl * (60_000 - 40 * depth)).encode()
        assert len(message) <= INLINE_BYTES and not checked_inline(message), (nl, depth)
    small = [raw for raw, _, _ in held if len(raw) <= INLINE_BYTES]
    assert sum(map(checked_inline, small)) >= 0.95 * len(small)  # (real mail stays: 3,234 of the corpus's 3,241)


def test_per_user_models(daemon, held):
    raw, _, v = next(h for h in held if h[2].label == "spam" and h[2].probability < 0.999)
    assert daemon.spamc("-c", "-u", "bob", data=raw)[0] == 1  # no model of his own: the default
    rc, out = daemon.spamc("-c", "-u", "alice", data=raw)  # hers calls nothing spam
    assert rc == 0 and float(out.split(b"/")[0]) < THRESHOLD
    assert daemon.spamc("-c", "-u", "../alice", data=raw)[0] == 1  # not a path


def test_a_user_name_is_logged_as_spamc_sent_it_and_a_long_one_shortened(daemon, held):
    """spamc sends -u's bytes as given, UTF-8 on any modern system: they were logged as Latin-1
    ("jÃ¶rg"), a name with a UTF-8 byte of 0x80-0x9f ("Michał") was refused as holding control
    characters (and spamc passed the mail unchecked), and a 5,000-character name was logged whole.
    None of them names a --user-models folder: the default model checks their mail."""
    raw, _, v = next(h for h in held if h[2].label == "spam" and h[2].probability < 0.999)
    for name in ("jörg", "Michał"):
        assert daemon.spamc("-c", "-u", name, data=raw)[0] == 1
        assert f"for {name} in " in daemon.log_text()
    # bytes that are not UTF-8 (a Latin-1 system's spamc) are read as Latin-1, as before
    out = daemon.raw(b"CHECK SPAMC/1.5\r\nUser: j\xf6rg\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
    assert out.startswith(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; ") and "for jörg in " in daemon.log_text()
    assert daemon.raw(b"PING SPAMC/1.5\r\nUser: a\xc2\x85b\r\n\r\n").startswith(b"SPAMD/1.0 76 ")  # (U+0085: NEL)
    long_name = "x" * 5000
    out = daemon.raw(b"CHECK SPAMC/1.5\r\nUser: %s\r\nContent-length: %d\r\n\r\n" % (long_name.encode(), len(raw))
                     + raw)
    assert out.startswith(b"SPAMD/1.1 0 EX_OK\r\n")
    line = next(x for x in daemon.log_text().splitlines() if "x" * 64 in x)
    assert len(line) < 400 and "5000 characters" in line, line

# --- learning, reloading, stopping -----------------------------------------------------------------

def _probability(d: "Daemon", raw: bytes) -> float:
    """P(spam) of `raw` as the daemon reports it (spamc's PROCESS: X-Chainrule-Spam-Probability)."""
    rc, out = d.spamc(data=raw)
    return float(re.search(rb"X-Chainrule-Spam-Probability: ([0-9.]+)", out).group(1))


def _wait_for(d: "Daemon", raw: bytes, p: float) -> float:
    """The daemon's P(spam) of `raw` once it serves the model that gives `p` (it reloads a model
    changed on disk every 0.2 s), or what it says after 10 s."""
    deadline = time.monotonic() + 10
    while abs(_probability(d, raw) - p) > 1e-6 and time.monotonic() < deadline:
        time.sleep(0.1)
    return _probability(d, raw)


def test_tell_learns_once_and_forget_undoes_it(learner, held):
    # the held-out message nearest the spam cut-off: taught as the class it is not called now
    raw, _, v = min(held, key=lambda h: abs(h[2].score - THRESHOLD))
    teach = "ham" if v.is_spam else "spam"
    learned = SpamFilter.load(learner.model).bundle.metadata.get("learned", 0)
    before = _probability(learner, raw)
    assert learner.spamc("-L", teach, data=raw) == (0, b"Message successfully un/learned\n")
    now = _probability(learner, raw)  # the new filter serves as soon as the TELL is answered
    assert (now < before) == (teach == "ham") and now != before
    disk = SpamFilter.load(learner.model)
    assert disk.bundle.metadata["learned"] == learned + 1 and abs(disk.check(raw).probability - now) < 1e-6
    assert "TELL learned as " + teach in learner.log_text()
    # while the filter does not yet give it the verdict taught, the same lesson teaches it again,
    # uncounted; once it does, the lesson is recognised, as spamd's Bayes does: nothing learned
    for _ in range(10):
        if SpamFilter.load(learner.model).check(raw).label == teach:
            break
        assert learner.spamc("-L", teach, data=raw) == (0, b"Message successfully un/learned\n")
    else:
        pytest.fail(f"10 more lessons did not give the message the verdict {teach}")
    assert learner.spamc("-L", teach, data=raw) == (0, b"Message was already un/learned\n")
    assert SpamFilter.load(learner.model).bundle.metadata["learned"] == learned + 1
    assert f"TELL already learned as {teach}; not learned again" in learner.log_text()
    # forget: the lesson is undone, the message put back where it was
    assert learner.spamc("-L", "forget", data=raw) == (0, b"Message successfully un/learned\n")
    assert abs(_probability(learner, raw) - before) < abs(now - before)
    assert SpamFilter.load(learner.model).bundle.metadata["learned"] == learned
    assert learner.spamc("-L", "forget", data=raw) == (0, b"Message was already un/learned\n")


def test_a_tell_is_logged_in_the_words_spam_learn_prints(model_dir, held, tmp_path, capsys):
    """A message taught as spam, then as ham, then unlearned: `spam learn` says "relearned as ham
    (was learned as spam)" and "unlearned (was learned as ham)"; the daemon logged the same TELLs as
    "learned as ham" and "unlearned", its words rebuilt from whether the lesson changed anything."""
    _need("spamc")
    raw = held[0][0]
    message = tmp_path / "message.eml"
    message.write_bytes(raw)
    for copy in ("cli", "daemon"):
        shutil.copytree(model_dir, tmp_path / copy)
    said = []
    for option in (["--spam", "--seed", "0"], ["--ham", "--seed", "0"], ["--unlearn"]):
        capsys.readouterr()
        assert main(["spam", "learn", str(tmp_path / "cli"), str(message), *option]) == 0
        said.append(capsys.readouterr().out.splitlines()[0].split("\t")[1])  # (file, what it did, P(spam))
    assert said[1:] == ["relearned as ham (was learned as spam)", "unlearned (was learned as ham)"]
    d = Daemon(tmp_path / "daemon", "--listen", "127.0.0.1:0", "--allow-tell", "--reload-interval", "0")
    try:
        for lesson in ("spam", "ham", "forget"):
            assert d.spamc("-L", lesson, data=raw) == (0, b"Message successfully un/learned\n")
        log = d.log_text()
    finally:
        assert d.stop() == 0
    for words in said:
        assert f"TELL {words} for " in log, log


def test_a_tell_and_a_spam_learn_at_once_lose_nothing(learner, held, tmp_path):
    # `spamc -L spam` to the daemon and `chainrule spam learn --ham` from a cron job, at the same
    # time: both wait for the model's lock (held here until both have started), then take turns,
    # each on top of the other's result
    spam = min((h for h in held if h[1] == 1), key=lambda h: h[2].probability)[0]  # (room to go up)
    ham = max((h for h in held if h[1] == 0), key=lambda h: h[2].probability)[0]
    (tmp_path / "ham.eml").write_bytes(ham)
    start = SpamFilter.load(learner.model)
    learned = start.bundle.metadata.get("learned", 0)
    p_spam, p_ham = start.check(spam).probability, start.check(ham).probability
    command = [sys.executable, "-c", "import sys; from chainrule.cli import main; sys.exit(main())"]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(learner.model / "model.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cron = subprocess.Popen([*command, "spam", "learn", str(learner.model), "--ham", str(tmp_path / "ham.eml")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        with ThreadPoolExecutor(1) as pool:
            tell = pool.submit(learner.spamc, "-L", "spam", data=spam)
            time.sleep(2.0)
            assert cron.poll() is None and not tell.done()  # both wait for the lock
            fcntl.flock(lock, fcntl.LOCK_UN)
            assert tell.result(timeout=60) == (0, b"Message successfully un/learned\n")
    out, err = cron.communicate(timeout=120)
    assert cron.returncode == 0 and b"learned as ham" in out, err
    end = SpamFilter.load(learner.model)
    assert end.bundle.metadata["learned"] == learned + 2
    assert end.check(spam).probability > p_spam and end.check(ham).probability < p_ham
    # and the daemon serves that model, the cron job's lesson included
    assert abs(_wait_for(learner, ham, end.check(ham).probability) - end.check(ham).probability) < 1e-6


@pytest.mark.parametrize("unlocked", [True, False])
def test_lessons_waiting_for_the_models_lock_are_learned_or_counted_before_the_daemon_stops(
        model_dir, held, tmp_path, unlocked):
    """TELLs wait for the model's lock (a cron `spam learn` or a `spam train` into the folder holds
    it) until their clients give up (--timeout 2), then the daemon is stopped (systemctl stop):
    every lesson it received is learned once the lock is free, each with its log line. Where the
    lock stays taken past --timeout, the daemon stops without it and counts the lessons in a
    warning. Those queued behind the first were dropped, none was logged, and a daemon stopped
    while the lock was taken waited for it, however long."""
    _need("spamc")
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    learned = SpamFilter.load(copy).bundle.metadata.get("learned", 0)
    d = Daemon(copy, "--listen", "127.0.0.1:0", "--allow-tell", "--timeout", "2", "--reload-interval", "0")
    try:
        with open(copy / "model.lock", "a") as lock, ThreadPoolExecutor(3) as pool:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tells = [pool.submit(d.spamc, "-L", "spam" if label else "ham", data=raw) for raw, label, _ in held[:3]]
            assert all(t.result(timeout=60)[0] != 0 for t in tells)  # each client was told it timed out
            d.proc.send_signal(signal.SIGTERM)
            if unlocked:
                time.sleep(0.5)
                fcntl.flock(lock, fcntl.LOCK_UN)
            assert d.proc.wait(timeout=30) == 0  # (with the lock still taken, if not unlocked)
    finally:
        d.stop()
    log = d.log_text()
    logged = log.count("after its client had given up waiting (--timeout)")
    dropped = re.search(r"stopping: (\d+) TELL\(s\) received were not learned", log)
    assert SpamFilter.load(copy).bundle.metadata.get("learned", 0) == learned + logged
    if unlocked:
        assert logged == 3 and not dropped, log
    else:
        assert logged == 0 and dropped and dropped.group(1) == "3", log


def test_a_stop_waits_one_timeout_in_all_and_a_second_signal_stops_at_once(model_dir, held, tmp_path):
    """A TELL waits for the model's lock (a `spam train` into the folder holds it) when the daemon
    is told to stop: the connections and the learner share one --timeout from the signal. They
    each had one, one after the other: 2 x 300 s, past systemd's TimeoutStopSec=330, whose SIGKILL
    lost the warning. A second SIGINT (Ctrl-C again) stops at once, saying what it abandons, with
    128 + the signal's number; it did nothing."""
    _need("spamc")
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    before = (copy / "model.json").read_bytes()
    raw = held[0][0]
    for timeout, second in ((3, False), (20, True)):
        d = Daemon(copy, "--listen", "127.0.0.1:0", "--allow-tell", "--timeout", str(timeout),
                   "--reload-interval", "0")
        try:
            with open(copy / "model.lock", "a") as lock, ThreadPoolExecutor(1) as pool:
                fcntl.flock(lock, fcntl.LOCK_EX)
                tell = pool.submit(d.spamc, "-L", "spam", data=raw)
                time.sleep(0.5)
                started = time.monotonic()
                d.proc.send_signal(signal.SIGINT if second else signal.SIGTERM)
                if second:
                    time.sleep(0.5)
                    d.proc.send_signal(signal.SIGINT)
                rc = d.proc.wait(timeout=2 * timeout + 10)
                took = time.monotonic() - started
                assert tell.result(timeout=30)[0] != 0  # not learned, and spamc was not told it was
        finally:
            d.stop()
        log = d.log_text()
        assert "stopping: 1 TELL(s) received were not learned" in log, log
        if second:
            assert (rc, "stopping at once" in log) == (128 + signal.SIGINT, True), (rc, log)
            assert took < 3, (took, log)
        else:
            assert rc == 0 and timeout <= took < timeout + 1.5, (took, log)
        assert (copy / "model.json").read_bytes() == before


@pytest.mark.parametrize("program", [CHAINRULE, WITHOUT_UVLOOP], ids=["uvloop", "asyncio"])
def test_a_second_signal_closes_the_open_connections_without_a_traceback(model_dir, program):
    """A client has sent half a request when the daemon is told to stop, then told again: the
    connection is closed and the daemon exits with 128 + the signal's number, its log ending with
    "stopped". The connection's task was left to the event loop's shutdown, which cancelled it, and
    Python 3.11's StreamReaderProtocol, asking the cancelled task for its exception, wrote a
    traceback into the log (the journal) after "stopped"."""
    d = Daemon(model_dir, "--listen", "127.0.0.1:0", "--reload-interval", "0", program=program)
    try:
        with socket.create_connection(("127.0.0.1", d.port), timeout=20) as client:
            client.sendall(b"CHECK SPAMC/1.5\r\n")  # (and no more: the daemon waits for the rest)
            time.sleep(0.5)
            d.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 20
            while "stopping: finishing 1 connection(s)" not in d.log_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            d.proc.send_signal(signal.SIGTERM)
            assert d.proc.wait(timeout=20) == 128 + signal.SIGTERM
            assert client.recv(4096) == b""  # closed
    finally:
        d.stop()
    log = _cleanly_stopped_log(d)
    assert "second SIGTERM: stopping at once; 1 connection(s) in progress are closed" in log, log


def test_a_connection_still_open_a_timeout_after_the_stop_signal_is_closed_and_said_so(model_dir):
    """A client that does not read the message PROCESS hands back holds its connection past its own
    --timeout (the daemon waits a few seconds more for it to take the answer): one --timeout after
    SIGTERM, the daemon closes it, says so, and exits 0. It left it to the event loop's shutdown,
    which wrote a traceback into the log."""
    d = Daemon(model_dir, "--listen", "127.0.0.1:0", "--reload-interval", "0", "--timeout", "2",
               "--max-size", "1000")
    big = b"Subject: a large message\r\n\r\n" + b"x" * (32 << 20)  # (more than the socket buffers hold)
    try:
        with socket.create_connection(("127.0.0.1", d.port), timeout=20) as client:
            client.sendall(b"PROCESS SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(big) + big)  # and reads nothing
            d.proc.send_signal(signal.SIGTERM)
            assert d.proc.wait(timeout=20) == 0
    finally:
        d.stop()
    log = _cleanly_stopped_log(d)
    assert "stopping: 1 connection(s) still open after --timeout (2 s) are closed" in log, log


def _cleanly_stopped_log(d) -> str:
    """The log of the daemon `d`, stopped: it ends at "stopped", with no traceback on the way."""
    d._reader.join(timeout=10)
    log = d.log_text()
    assert "Traceback" not in log and "Exception in callback" not in log, log
    assert log.rstrip().endswith(": stopped"), log
    return log


def test_a_sighup_while_the_daemon_starts_is_a_reload_once_it_serves(model_dir, held, tmp_path):
    """`systemctl reload` (SIGHUP) while the model loads: the daemon died of it (SIGHUP's default),
    and systemd's Restart=on-failure counts that death as clean, so mail went unfiltered. Now it is
    remembered and done once the daemon serves: the model replaced after the load read it (a long
    load: here the daemon is held after it) is the one served."""
    _need("spamc")
    copy, gate = tmp_path / "model", tmp_path / "gate"
    shutil.copytree(model_dir, copy)
    raw = next(h for h in held if h[2].label == "ham")[0]
    # the real daemon, held after its load until `gate` exists
    code = ("import sys, time; from pathlib import Path; from chainrule.apps.spam import daemon; "
            "from chainrule.cli import main\n"
            "load = daemon.DaemonServer.load\n"
            "def held_load(self):\n"
            "    load(self); print('loaded', file=sys.stderr, flush=True)\n"
            f"    while not Path({str(gate)!r}).exists(): time.sleep(0.01)\n"
            "daemon.DaemonServer.load = held_load\n"
            "sys.exit(main())")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", code, "spam", "daemon", str(copy), "--listen", "127.0.0.1:0",
                             "--reload-interval", "0"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr.readline().strip() == "loaded"
        proc.send_signal(signal.SIGHUP)
        _set_cutoffs(copy, spam=0.0, ham=0.0)  # the model replaced: everything is spam
        gate.touch()
        log = []
        for line in proc.stderr:
            log.append(line)
            if "reloaded" in line:
                break
        assert "reloaded" in log[-1], "".join(log)
        port = int(re.search(r"ready: listening on 127\.0\.0\.1:(\d+)", "".join(log)).group(1))
        res = subprocess.run(["spamc", "-p", str(port), "-c"], input=raw, capture_output=True, timeout=60)
        assert res.returncode == 1, "".join(log)  # the replaced model serves
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_systemd_is_told_when_the_daemon_serves_and_when_it_stops(model_dir, tmp_path, monkeypatch):
    """Under a Type=notify unit (deploy/chainrule-spamd.service) systemd learns from READY=1 that the
    daemon serves, and holds a `systemctl reload` asked for before then: as Type=simple, the
    SIGHUP could reach the interpreter before chainrule's handler was in place, and end it."""
    _need("spamc")
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(address)
        systemd.settimeout(60)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        d = Daemon(model_dir, "--listen", "127.0.0.1:0", "--reload-interval", "0")
        try:
            assert systemd.recv(4096) == b"READY=1"
            assert d.spamc("-K")[0] == 0  # (it serves when it says so)
            d.proc.send_signal(signal.SIGTERM)
            assert systemd.recv(4096) == b"STOPPING=1"
            assert d.proc.wait(timeout=30) == 0
        finally:
            d.stop()


def test_a_user_model_loads_while_a_lesson_waits_for_the_shared_model(model_dir, held, tmp_path):
    """A TELL waits for the shared model's lock (a `spam learn` from cron holds it); a CHECK for a
    user whose own model is not yet in memory must not wait behind that TELL: loading it is not
    learning. (It did: alice's check waited as long as the lock was held.)"""
    _need("spamc")
    copy, users = tmp_path / "model", tmp_path / "users"
    shutil.copytree(model_dir, copy)
    shutil.copytree(model_dir, users / "alice")
    d = Daemon(copy, "--listen", "127.0.0.1:0", "--allow-tell", "--user-models", str(users), "--reload-interval", "0")
    raw = held[0][0]
    try:
        with open(copy / "model.lock", "a") as lock, ThreadPoolExecutor(2) as pool:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tell = pool.submit(d.spamc, "-L", "spam", data=raw)
            time.sleep(2.0)
            assert not tell.done()  # the lesson waits for the lock
            # alice's check is answered while the lock is held (spamc gives up after 20 s)
            rc, out = d.spamc("-c", "-u", "alice", data=raw)
            assert re.fullmatch(rb"-?[0-9.]+/5\.0\n", out), (rc, out)
            assert not tell.done()
            fcntl.flock(lock, fcntl.LOCK_UN)
            assert tell.result(timeout=60) == (0, b"Message successfully un/learned\n")
        assert "loaded alice's model" in d.log_text()
    finally:
        assert d.stop() == 0


def test_a_lesson_its_client_gave_up_on_is_still_logged(model_dir, held, tmp_path):
    """A TELL that outlasts --timeout (the model's lock held by a cron `spam learn`) is answered
    EX_TIMEOUT, and learned once the lock is free: that must be in the log (it was not), and a TELL
    sent again is recognised."""
    _need("spamc")
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    d = Daemon(copy, "--listen", "127.0.0.1:0", "--allow-tell", "--timeout", "1", "--reload-interval", "0")
    raw = next(h for h in held if h[2].label == "spam")[0]  # (called spam: learned once, it is not learned again)
    try:
        with open(copy / "model.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            assert d.spamc("-L", "spam", data=raw)[0] != 0  # no answer within 1 s
            fcntl.flock(lock, fcntl.LOCK_UN)
        deadline = time.monotonic() + 30
        while "after its client had given up" not in d.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "TELL learned as spam for the default model, after its client had given up waiting (--timeout)" \
            in d.log_text()
        assert d.spamc("-L", "spam", data=raw) == (0, b"Message was already un/learned\n")
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("program", [CHAINRULE, WITHOUT_UVLOOP], ids=["uvloop", "asyncio"])
def test_a_lesson_whose_client_closed_the_unix_socket_is_logged_as_learned_after_it_gave_up(
        model_dir, held, tmp_path, program):
    """spamc gives up on a TELL before --timeout (`spamc -t 2`; the model's lock is held by a cron
    `spam learn`) and closes its connection; the lesson is learned once the lock is free. On the
    Unix socket the answer then cannot be written, and the log said only "connection lost": nothing
    of the lesson that changed the model. (Over TCP the answer goes out, and the client's reset
    comes back after it: the daemon cannot tell that its client has gone.)"""
    _need("spamc")
    copy, sock = tmp_path / "model", tmp_path / "spamd.sock"
    shutil.copytree(model_dir, copy)
    d = Daemon(copy, "--socket", str(sock), "--allow-tell", "--reload-interval", "0", program=program)
    raw = next(h for h in held if h[2].label == "spam")[0]
    try:
        with open(copy / "model.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            assert d.spamc("-t", "2", "-L", "spam", data=raw, socket_path=sock)[0] != 0  # gave up after 2 s
            fcntl.flock(lock, fcntl.LOCK_UN)
        deadline = time.monotonic() + 30
        while "TELL learned" not in d.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = d.log_text()
        assert re.search(r"TELL learned as spam for \S+, after its client had given up waiting \(connection "
                         r"closed\), in \d+\.\d ms, \d+ bytes, unix socket", log), log
        assert "connection lost" not in log, log
        assert d.spamc("-L", "spam", data=raw, socket_path=sock) == (0, b"Message was already un/learned\n")
    finally:
        assert d.stop() == 0


def test_a_broken_user_model_is_reported_once_until_its_files_change(model_dir, held, tmp_path):
    """It was loaded again, and reported, at every message for that user."""
    _need("spamc")
    copy, users = tmp_path / "model", tmp_path / "users"
    shutil.copytree(model_dir, copy)
    shutil.copytree(model_dir, users / "erin")
    (users / "erin" / "model.json").write_text('{"format": broken')
    _set_cutoffs(copy, spam=1.0, ham=0.0)  # the default model calls nothing spam
    raw = next(h for h in held if h[2].label == "spam")[0]
    d = Daemon(copy, "--listen", "127.0.0.1:0", "--user-models", str(users), "--reload-interval", "0")
    try:
        for _ in range(3):
            assert d.spamc("-c", "-u", "erin", data=raw)[0] == 0  # the default model's verdict
        assert d.log_text().count("erin's model cannot be loaded") == 1
        d.proc.send_signal(signal.SIGHUP)  # tried again at erin's next message
        deadline = time.monotonic() + 10
        while "reloaded" not in d.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.spamc("-c", "-u", "erin", data=raw)[0] == 0
        assert d.log_text().count("erin's model cannot be loaded") == 2
        shutil.copytree(model_dir, users / "erin", dirs_exist_ok=True)  # repaired: its files changed
        _set_cutoffs(users / "erin", spam=0.0, ham=0.0)  # erin's model calls everything spam
        assert d.spamc("-c", "-u", "erin", data=raw)[0] == 1
        assert "loaded erin's model" in d.log_text()
    finally:
        assert d.stop() == 0


def test_a_user_model_the_daemon_may_not_read_is_reported_once_and_the_default_checks_their_mail(
        model_dir, held, tmp_path):
    """A user's model folder the daemon may not enter, or a model.json it may not read, raised
    PermissionError into the connection, which was closed: spamc printed 0/0 and passed the mail
    unchecked, and the log said "unix socket: connection lost (Permission denied)", naming neither
    user nor file. It is a model that cannot be loaded, as a broken one: reported once, naming the
    user and the file, and their mail checked by the default model; a chmod that lets the daemon
    read it is seen at their next message."""
    _need("spamc")
    copy, users = tmp_path / "model", tmp_path / "users"
    shutil.copytree(model_dir, copy)
    _set_cutoffs(copy, spam=1.0, ham=0.0)  # the default model calls nothing spam
    for user in ("alice", "bob"):
        shutil.copytree(model_dir, users / user)
        _set_cutoffs(users / user, spam=0.0, ham=0.0)  # theirs call everything spam
    (users / "alice").chmod(0)  # (another user's folder of mode 0700)
    (users / "bob" / "model.json").chmod(0)
    raw = next(h for h in held if h[2].label == "spam")[0]
    d = Daemon(copy, "--listen", "127.0.0.1:0", "--user-models", str(users), "--reload-interval", "0",
               as_a_user=True)
    try:
        default = d.spamc("-c", data=raw)
        assert default[0] == 0 and default[1] != b"0/0\n"
        for _ in range(2):
            for user in ("alice", "bob"):
                assert d.spamc("-c", "-u", user, data=raw) == default
        log = d.log_text()
        for user in ("alice", "bob"):
            assert log.count(f"{user}'s model cannot be loaded, using the default model until its files change: "
                             f"{users / user / 'model.json'}: Permission denied\n") == 1, log
        assert "connection lost" not in log and "Traceback" not in log, log
        (users / "alice").chmod(0o755)
        (users / "bob" / "model.json").chmod(0o644)
        for user in ("alice", "bob"):
            assert d.spamc("-c", "-u", user, data=raw)[0] == 1
            assert f"loaded {user}'s model" in d.log_text()
    finally:
        (users / "alice").chmod(0o755)  # (for pytest to remove)
        assert d.stop() == 0


def test_a_tell_whose_learning_diverges_is_one_log_line_and_leaves_the_model(model_dir, held, tmp_path):
    """A pos_weight of 1e300 in model.json blows the loss up: the daemon logged two tracebacks per
    TELL and answered "internal error". It logs one line per TELL and answers EX_SOFTWARE "not
    learned: learning diverged"; the model's files are as they were."""
    _need("spamc")
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    doc = json.loads((model / "model.json").read_text())
    doc["metadata"]["training"]["pos_weight"] = 1e300
    (model / "model.json").write_text(json.dumps(doc))
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    ham = next(raw for raw, label, v in held if label == 0 and not v.is_spam)  # (taught as spam: it must move)
    d = Daemon(model, "--listen", "127.0.0.1:0", "--allow-tell")
    try:
        rc, out = d.spamc("-L", "spam", data=ham)
        assert (rc, out) == (os.EX_IOERR, b""), (rc, out)  # (spamc's word for a TELL not learned)
        told = d.raw(b"TELL SPAMC/1.5\r\nMessage-class: spam\r\nSet: local\r\nContent-length: %d\r\n\r\n"
                     % len(ham) + ham)
        assert re.fullmatch(rb"SPAMD/1\.0 70 EX_SOFTWARE not learned: learning diverged: the loss became nan "
                            rb"at epoch 1, batch 1\r\n", told), told
        assert re.fullmatch(rb"[0-9.]+/5\.0\n", d.spamc("-c", data=ham)[1])  # (it still serves)
    finally:
        assert d.stop() == 0
    log = d.log_text()
    assert log.count("learning failed: the loss became nan") == 2 and "Traceback" not in log, log
    assert "TELL: EX_SOFTWARE not learned: learning diverged: the loss became nan" in log, log
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


def test_a_model_whose_weights_overflow_its_logit_answers_a_protocol_error_not_nan(model_dir, held, tmp_path):
    """Weights that are finite but huge (x1e30) load, and overflow the network's logit to NaN: the
    daemon answered CHECK "Spam: False ; nan / 5.0", REPORT "nan points", and spamc printed
    0.0/5.0 as for a message it had judged. It answers EX_CONFIG with the reason, as it answers a
    lesson for a model it cannot use, and logs it in one line: spamc falls back as for any error
    of the daemon's (0/0, and EX_IOERR with -x), and PROCESS passes the message on unchanged."""
    _need("spamc")
    model = with_huge_weights(model_dir, tmp_path / "model")
    raw = next(raw for raw, _, _ in held if checked_inline(raw))  # (checked on the event loop; REPORT on a thread)
    said = (f"EX_CONFIG not checked: {model}: the model's outputs overflowed to NaN or infinity: its weights, or "
            "its inputs, are too large for float32")
    d = Daemon(model, "--listen", "127.0.0.1:0")
    try:
        for command in (b"CHECK", b"REPORT"):
            answer = d.raw(b"%s SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % (command, len(raw)) + raw)
            assert answer == f"SPAMD/1.0 78 {said}\r\n".encode(), answer
        assert d.spamc("-c", data=raw) == (0, b"0/0\n")
        assert d.spamc("-c", "-x", data=raw) == (os.EX_IOERR, b"0/0\n")
        assert d.spamc(data=raw) == (0, raw)
    finally:
        assert d.stop() == 0
    log = d.log_text()
    assert log.count(f": CHECK: {said}\n") == 3 and log.count(f": REPORT: {said}\n") == 1, log
    assert log.count(f": PROCESS: {said}\n") == 1 and "Traceback" not in log, log


def test_tell_is_refused_without_allow_tell(daemon, held, model_dir):
    before = (model_dir / "model.json").stat().st_mtime_ns
    rc, _ = daemon.spamc("-L", "spam", data=held[0][0])
    assert rc != 0 and (model_dir / "model.json").stat().st_mtime_ns == before
    assert "TELL commands are not enabled" in daemon.log_text()


def test_a_lesson_goes_to_its_own_model_or_nowhere(model_dir, held, tmp_path):
    """TELL for a user whose model is broken must not teach the shared model instead; a broken
    model, or an empty message, is refused in one log line and with an error code, never learned."""
    _need("spamc")
    copy, users = tmp_path / "model", tmp_path / "users"
    shutil.copytree(model_dir, copy)
    shutil.copytree(model_dir, users / "carol")
    (users / "carol" / "model.json").write_text('{"format": broken')
    d = Daemon(copy, "--listen", "127.0.0.1:0", "--allow-tell", "--user-models", str(users), "--reload-interval", "0")
    try:
        raw = held[0][0]
        before = (copy / "model.json").read_bytes()
        assert d.spamc("-u", "carol", "-L", "spam", data=raw)[0] != 0
        assert d.raw(b"TELL SPAMC/1.5\r\nMessage-class: spam\r\nSet: local\r\nContent-length: 0\r\n\r\n") == \
            b"SPAMD/1.0 65 EX_DATAERR empty message; not learned\r\n"
        assert (copy / "model.json").read_bytes() == before
        # a user name --user-models does not accept, though a folder of that name holds a model:
        # its mail is checked by the shared model, its lessons must not go into it
        shutil.copytree(model_dir, users / "john..doe")
        assert d.spamc("-u", "john..doe", "-L", "spam", data=raw)[0] != 0
        assert (copy / "model.json").read_bytes() == before
        assert "user names for --user-models are" in d.log_text()
        # the model cannot be written (a full disk, a read-only folder): refused in a line, answered
        (copy / "model.lock").unlink(missing_ok=True)
        (copy / "model.lock").mkdir()  # (its lock file cannot be opened: what root's chmod cannot do)
        out = d.raw(b"TELL SPAMC/1.5\r\nMessage-class: spam\r\nSet: local\r\nContent-length: %d\r\n\r\n" % len(raw)
                    + raw)
        assert re.fullmatch(rb"SPAMD/1\.0 74 EX_IOERR not learned: \S+model\.lock: [^\r\n]+\r\n", out), out
        assert (copy / "model.json").read_bytes() == before
        (copy / "model.lock").rmdir()
        (copy / "model.json").write_text('{"format": broken')
        out = d.raw(b"TELL SPAMC/1.5\r\nMessage-class: spam\r\nSet: local\r\nContent-length: %d\r\n\r\n" % len(raw)
                    + raw)
        assert re.fullmatch(rb"SPAMD/1\.0 78 EX_CONFIG not learned: \S+model\.json: not valid JSON[^\r\n]*\r\n",
                            out), out
        log = d.log_text()
        assert "carol's model cannot be loaded" in log and "Traceback" not in log
    finally:
        assert d.stop() == 0


def test_allow_tell_on_a_model_folder_this_user_cannot_write_warns_at_start(model_dir, tmp_path):
    """The daemon started, "TELL allowed", and every TELL then failed ("learning failed: ...npz:
    Permission denied"), which nobody sees until mail is taught. It says so as it starts."""
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    model.chmod(0o555)
    try:
        d = Daemon(model, "--listen", "127.0.0.1:0", "--allow-tell", "--reload-interval", "0", as_a_user=True)
        assert d.stop() == 0
    finally:
        model.chmod(0o755)
    warnings = [line for line in d.log_text().splitlines(keepends=True) if "warning" in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        f"warning: --allow-tell: TELLs will fail: this user may not write to the model's folder {model}\n"), d.log


def test_a_changed_model_file_is_reloaded(learner, held):
    raw, _, v = next(h for h in held if h[2].label == "ham")
    _set_cutoffs(learner.model, spam=0.0, ham=0.0)
    deadline = time.monotonic() + 10
    while learner.spamc("-c", data=raw)[0] != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert learner.spamc("-c", data=raw)[0] == 1  # everything is spam now
    assert "reloaded" in learner.log_text()


def test_a_broken_or_removed_model_is_reported_once_not_at_every_look(model_dir, held, tmp_path):
    _need("spamc")
    copy, users = tmp_path / "model", tmp_path / "users"
    shutil.copytree(model_dir, copy)
    shutil.copytree(model_dir, users / "dave")
    _set_cutoffs(users / "dave", spam=1.0, ham=0.0)  # dave's model calls nothing spam
    raw, _, v = next(h for h in held if h[2].label == "spam")
    d = Daemon(copy, "--listen", "127.0.0.1:0", "--user-models", str(users), "--reload-interval", "0.1")
    try:
        assert d.spamc("-c", "-u", "dave", data=raw)[0] == 0
        (copy / "model.json").write_text('{"format": broken')
        shutil.rmtree(users / "dave")
        time.sleep(1.5)  # 15 looks at the files
        assert d.spamc("-c", "-u", "dave", data=raw)[0] == 1  # the default model, still the one loaded
        log = d.log_text()
        assert log.count("reload of") == 1 and "still serving the model loaded before" in log
        assert log.count("dave's model is gone") == 1
        shutil.copytree(model_dir, copy, dirs_exist_ok=True)  # repaired: loaded at the next look
        deadline = time.monotonic() + 10
        while d.log_text().count("reloaded") < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.log_text().count("reloaded") == 1
    finally:
        assert d.stop() == 0


def test_allowed_ips_sighup_and_sigterm(model_dir, held, tmp_path):
    _need("spamc")
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    sock = tmp_path / "s.sock"
    d = Daemon(copy, "--listen", "127.0.0.1:0", "--allowed-ips", "10.0.0.0/8", "--socket", str(sock),
               "--reload-interval", "0")
    try:
        raw, _, v = next(h for h in held if h[2].label == "spam" and h[2].probability < 0.999)
        assert d.spamc("-c", data=raw) == (0, b"0/0\n")  # refused over TCP: spamc's safe fallback
        assert "not in --allowed-ips" in d.log_text()
        assert d.spamc("-c", data=raw, socket_path=sock)[0] == 1  # a Unix socket is not an IP
        _set_cutoffs(copy, spam=1.0, ham=0.0)
        assert d.spamc("-c", data=raw, socket_path=sock)[0] == 1  # --reload-interval 0: not yet
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while d.spamc("-c", data=raw, socket_path=sock)[0] == 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.spamc("-c", data=raw, socket_path=sock)[0] == 0
        # SIGTERM while a request is half sent: it is still answered, then the daemon exits
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            s.sendall(b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw[:50])
            time.sleep(0.3)
            d.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            s.sendall(raw[50:])
            s.shutdown(socket.SHUT_WR)
            out = b""
            while data := s.recv(65536):
                out += data
        assert out.startswith(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; ")
        assert d.proc.wait(timeout=30) == 0
        assert not sock.exists()
    finally:
        d.stop()


@pytest.mark.parametrize(("value", "said"), [(" , ", "got none"), ("foo", "got 'foo'"),
                                             ("10.0.0.0/33", "got '10.0.0.0/33'")])
def test_allowed_ips_must_name_some_addresses(model_dir, value, said, capsys):
    """An empty list would refuse every TCP client, and spamc would then pass all mail unchecked."""
    with pytest.raises(SystemExit) as exit_:
        main(["spam", "daemon", str(model_dir), "--allowed-ips", value])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(f"--allowed-ips/-A: expected IP addresses or networks such as "
                                            f"192.168.0.0/16, {said}\n")
    with pytest.raises(SystemExit):
        main(["spam", "daemon", str(model_dir), "--allowed-ips", ""])
    assert capsys.readouterr().err.endswith("an empty argument after --allowed-ips (an unset shell variable?)\n")


@pytest.mark.parametrize(("args", "said"), [
    (["--spam-cutoff", "2"], "--spam-cutoff: expected a probability from 0 to 1, got '2'"),
    (["--ham-cutoff", "0.99999"], "the ham cut-off (0.99999, asked for) is above the spam cut-off"),
])
def test_cut_offs_that_cannot_work_are_the_option_s_fault(model_dir, args, said, capsys):
    with pytest.raises(SystemExit) if args[0] == "--spam-cutoff" else contextlib.nullcontext():
        assert main(["spam", "daemon", str(model_dir), "--listen", "127.0.0.1:0", *args]) == 2
    err = capsys.readouterr().err
    assert said in err and str(model_dir) not in err


@pytest.mark.parametrize(("args", "said"), [
    (["--socket-mode", "0600"], "--socket-mode is the mode of the Unix socket: give its --socket PATH"),
    (["--socket", "{tmp}/s.sock", "--allowed-ips", "10.9.9.9"], "--allowed-ips limits TCP clients"),
    (["--user-models", "{model}/model.json"], "model.json: a file, not a folder of users' models"),
])
def test_options_that_would_do_nothing_are_refused(model_dir, tmp_path, args, said, capsys):
    """Each started the daemon without a word: a socket mode with no socket, an address limit with no
    TCP port to limit (a user believed the socket restricted), a file for the users' models folder."""
    args = [a.format(tmp=tmp_path, model=model_dir) for a in args]
    assert main(["spam", "daemon", str(model_dir), *args]) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "s.sock").exists()


def test_a_bad_model_is_a_one_line_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-m", "chainrule.cli", "spam", "daemon", str(tmp_path),
                          "--listen", "127.0.0.1:0"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "model.json: not found" in res.stderr


# --- procmail -----------------------------------------------------------------------------------

def test_procmail_files_spam_and_ham_into_maildir_folders(daemon, held, tmp_path):
    _need("procmail")
    mail_dir = tmp_path / "Mail"
    mail_dir.mkdir()  # (were it missing, procmail would deliver into $HOME instead)
    rc_file = tmp_path / "procmailrc"
    rc_file.write_text(f"""MAILDIR={mail_dir}
LOGFILE={tmp_path}/procmail.log
:0fw
| spamc -d 127.0.0.1 -p {daemon.port}
:0
* ^X-Spam-Flag: YES
spam/
:0
* ^X-Chainrule-Spam-Verdict: unsure
unsure/
:0
inbox/
""")
    chosen = held[::5]
    for raw, _, _ in chosen:
        res = subprocess.run(["procmail", "-m", str(rc_file)], input=raw, capture_output=True, timeout=60)
        assert res.returncode == 0, res.stderr
    expected = {"spam": "spam", "ham": "inbox", "unsure": "unsure"}
    for folder in ("spam", "inbox", "unsure"):
        # (procmail ends a delivered message with a blank line; the daemon's own output is compared
        # byte for byte in the tests above)
        want = sorted(_body(raw).rstrip(b"\n") for raw, _, v in chosen if expected[v.label] == folder)
        new = mail_dir / folder / "new"
        got = sorted(_body(p.read_bytes()).rstrip(b"\n") for p in new.iterdir()) if new.is_dir() else []
        assert got == want, folder
    assert any((mail_dir / "spam" / "new").iterdir()) and any((mail_dir / "inbox" / "new").iterdir())
