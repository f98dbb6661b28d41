"""The real server under hostile-but-fair clients: slow senders are cut off, many large images at
once do not multiply the memory. Runs `chainrule serve` (uvicorn) in its own process."""

from __future__ import annotations

import resource
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from PIL import Image

from chainrule.web import services
from conftest import as_a_user, open_files
from web_models import running_server, trained_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return trained_models(tmp_path_factory)


@pytest.fixture(scope="module")
def served(models):
    """(base URL, process id) of `chainrule serve --timeout 1`."""
    with running_server(models, "--timeout", "1") as url_pid:
        yield url_pid


@pytest.fixture(scope="module")
def server(served):
    return served[0]


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _connect(url: str) -> socket.socket:
    parts = urlparse(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed `sock` within `seconds`, and what it sent before."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        pass
    return True, received


def test_clients_that_trickle_their_headers_are_cut_off(server):
    """20 clients that send half a request line and then wait (a "slowloris") are disconnected once
    the read timeout passes, and the server still answers everyone else meanwhile."""
    socks = [_connect(server) for _ in range(20)]
    for s in socks:
        s.sendall(b"POST /api/spam/classify HTTP/1.1\r\nHost: x\r\n")
    assert httpx.get(f"{server}/healthz", timeout=5).status_code == 200
    start = time.monotonic()
    results = [_closed_within(s, 10) for s in socks]
    assert all(closed for closed, _ in results)
    assert time.monotonic() - start < 8
    for s in socks:
        s.close()


def _waiting_clients(url: str, n: int) -> list[socket.socket]:
    """`n` clients that have sent a request line and wait (until the test or the server closes them)."""
    clients = [_connect(url) for _ in range(n)]
    for c in clients:
        c.sendall(b"GET /healthz HTTP/1.1\r\n")
    return clients


def test_a_low_soft_open_file_limit_is_raised_so_that_waiting_clients_lock_nobody_out(models):
    """Under `ulimit -n 40` (the soft limit; systemd's default is 1,024) 60 clients that had sent a
    request line took every file descriptor (under the 128 connections it serves): meanwhile every
    other client's connection was reset, and the log said nothing. `serve` raises its soft limit to
    the hard one as it starts."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    log = []
    with running_server(models, preexec_fn=open_files(40, min(hard, 4096)), log=log) as (url, _):
        waiting = _waiting_clients(url, 60)
        try:
            for _ in range(3):
                assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        finally:
            for c in waiting:
                c.close()
    assert not [line for line in log if "warning" in line or "cannot accept" in line], log


def test_clients_beyond_the_open_file_limit_wait_to_be_accepted_and_the_log_says_so_once(models):
    """Out of file descriptors (40, soft and hard, with 60 clients waiting after a request line),
    uvloop's server accepted and closed every new client without a word: a reset. Now a new client
    waits to be accepted until connections end (here the waiting ones, cut off after --timeout 2)
    and is answered; the log says so in one line, and warned at the start."""
    log = []
    with running_server(models, "--timeout", "2", preexec_fn=open_files(40, 40), log=log) as (url, _):
        waiting = _waiting_clients(url, 60)
        try:
            assert httpx.get(f"{url}/healthz", timeout=20).status_code == 200
        finally:
            for c in waiting:
                c.close()
    assert [line for line in log if "warning" in line] == [
        "chainrule serve: warning: this process may open 40 files (`ulimit -Hn`; systemd's LimitNOFILE=), fewer "
        "than 128 connections at once may need (288): clients beyond what it can hold wait to be accepted\n"], log
    said = [line for line in log if "cannot accept" in line]
    assert said == ["chainrule serve: cannot accept connections: Too many open files (this process may open 40: "
                    "`ulimit -n`, systemd's LimitNOFILE=); clients wait until connections end\n"], log
    assert not [line for line in log if "Traceback" in line], log


def test_a_body_that_stalls_gets_408(server):
    sock = _connect(server)
    sock.sendall(b"POST /api/spam/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                 b"Content-Length: 1000\r\n\r\nSubject: hello\r\n")
    closed, received = _closed_within(sock, 10)
    sock.close()
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b"no part of the body arrived" in received


def test_many_large_images_at_once_are_decoded_a_few_at_a_time(served, tmp_path):
    """Eight 4096x4096 colour uploads at once all get an answer, and the server's peak memory grows
    by what a couple of decodes need, not eight."""
    server, pid = served
    img = np.full((4096, 4096, 3), 255, np.uint8)
    img[1500:2600, 1900:2200] = 0  # a "1"
    path = tmp_path / "big.png"
    Image.fromarray(img).save(path)
    data = path.read_bytes()
    one = httpx.post(f"{server}/api/digits/predict", content=data, headers={"Content-Type": "image/png"},
                     timeout=120)
    assert one.status_code == 200
    before = _peak_rss_mb(pid)  # after one decode: the allocator has what one decode needs
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{server}/api/digits/predict", content=data,
                                                     headers={"Content-Type": "image/png"}, timeout=120),
                                range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert {a.json()["digit"] for a in answers} == {one.json()["digit"]}
    growth = _peak_rss_mb(pid) - before
    print(f"peak RSS {before:.0f} MB after one decode, +{growth:.0f} MB for eight at once")
    assert growth < 150 * services.MAX_PARALLEL_DECODES, growth


def test_bound_to_this_machine_it_answers_only_to_its_names(server):
    """A page on another site that points its own name at 127.0.0.1 (DNS rebinding) could read the
    API, /api/models with its local paths among it, from the browser of anyone running the server:
    bound to a loopback address, the server answers requests for other names with 400. And no
    browser guesses a type other than the one an answer declares."""
    port = urlparse(server).port
    for host in ("127.0.0.1", "localhost", "[::1]"):
        r = httpx.get(f"{server}/api/models", headers={"Host": f"{host}:{port}"}, timeout=10)
        assert r.status_code == 200, (host, r.text)
        assert r.headers["x-content-type-options"] == "nosniff"
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.attacker.example"):
        r = httpx.get(f"{server}/api/models", headers={"Host": host}, timeout=10)
        assert r.status_code == 400 and "/" not in r.text, (host, r.text)
    assert httpx.get(f"{server}/static/app.js", timeout=10).headers["x-content-type-options"] == "nosniff"


def _serve_as_a_user(*args: str) -> subprocess.CompletedProcess:
    """`chainrule serve ARGS` as a user (`as_a_user`), expected to fail before it serves."""
    return subprocess.run([*as_a_user(), sys.executable, "-m", "chainrule.cli", "serve", *args],
                          capture_output=True, text=True, timeout=60)


def test_serve_names_the_run_folders_it_cannot_read(models, tmp_path):
    """A run folder `serve` may not read was passed over without a word (so: "no models to serve:
    none under runs/"), and a model.json it may not read was "[Errno 13] Permission denied:
    'runs/digits-small/model.json'"."""
    runs = tmp_path / "runs"
    shutil.copytree(models["digits"], runs / "locked")
    shutil.copytree(models["digits"], runs / "digits-small")
    (runs / "locked").chmod(0)
    (runs / "digits-small" / "model.json").chmod(0)
    try:
        done = _serve_as_a_user("--runs", str(runs), "--port", "0")
    finally:
        (runs / "locked").chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert f"passed over {runs / 'locked'}: a folder that cannot be read (Permission denied)" in done.stderr
    assert f"passed over {runs / 'digits-small'}: {runs / 'digits-small' / 'model.json'}: Permission denied" \
        in done.stderr
    assert "Errno" not in done.stderr


def test_serve_on_a_port_below_1024_says_what_it_needs(models):
    """`serve --port 80` as a user said only "Permission denied", as `spam daemon` no longer does."""
    done = _serve_as_a_user("--spam", str(models["spam"]), "--port", "80")
    assert done.returncode == 2
    assert done.stderr.strip().endswith(
        "cannot listen on 127.0.0.1:80: Permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)")
