"""The spam filter in the mail path: one client process per message, as a mail server runs filters.

Filters, all on the SpamAssassin test split of bench/spam.py (the three 20030228 tarballs,
stratified 80/20 with seed 0; 650 test messages), all trained on its 2,600 training messages:

* ``chainrule spamd``: `chainrule spam daemon MODEL` (the daemon of `chainrule spam
  daemon`) with the model bench/spam.py trains for this split (5-fold committee, 2^16 buckets),
  asked by Debian's `spamc -c` once per message over TCP (127.0.0.1).
* ``chainrule spamd, Unix socket``: the same daemon through its `--socket` (`spamc -U PATH -c`).
* ``SpamAssassin spamd``: Debian's spamd 4.0 run as a local process with its own configuration and
  home in a temporary directory: the stock rules, network tests off (`-L`, no DNS, no Razor/Pyzor),
  Bayes trained by `sa-learn` on the same training mail, auto-learning off; `spamc -c` per message.
* ``bogofilter``: trained with `-s`/`-n` on the training mail; one `bogofilter` process per
  message (exit code 0 = spam).
* ``chainrule spam classify``: one `chainrule spam classify MODEL -` process per message (a fresh
  interpreter, imports and model load each time). Its speed is measured on a sample of the test
  messages (--classify-sample, every k-th); its accuracy columns come from the same command run once
  over all the test messages, which gives the same verdict per message.

Two more rows classify nothing and bound what a spamc-driven filter can reach: ``spamc alone``
(`spamc -V`: start, print the version, exit) and ``spamc -K`` (a PING to the chainrule daemon:
start plus one round trip), timed in the same turns on the same messages as the filters. The
daemon's own time per CHECK, from its log line (reading the request to the answer sent), is
reported with them.

Timing: every message is sent by `subprocess.run` from this script (fork/exec, stdin, exit code), so
each filter pays the same client overhead. The filters take turns in blocks of 25 messages (block 1:
every filter, block 2: every filter, ...), so that a busy spell on this shared machine slows all of
them. messages/s = messages / the sum of their wall times; p50/p99 = percentiles of one message's
wall time, from the start of its client process to its exit. `unsure` counts as ham, as in
bench/spam.py.

Load run: 16 threads, each running `spamc -c` on 500 messages one after another (8,000 in all,
the test split cycled), against the chainrule daemon. An error is any exit code other than 0/1 or
an answer other than "score/5.0" or a verdict different from the one-at-a-time run's. RSS is the
daemon's resident memory (/proc/PID/status) before the load run, half way and after it.

Run:  flock /tmp/chainrule-cpu.lock python bench/spam_daemon.py [--data DIR]
Writes bench/results/spam_daemon.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from chainrule.apps.spam import binary_report, save_model
from spam import SETTINGS, load_split, train_chainrule  # bench/spam.py: the same split and chainrule settings

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
BLOCK = 25
SA_CONFIG = """use_bayes 1
bayes_auto_learn 0
bayes_path {home}/bayes/bayes
use_auto_whitelist 0
skip_rbl_checks 1
dns_available no
use_razor2 0
use_pyzor 0
report_safe 0
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _write(directory: Path, messages: list[bytes]) -> list[Path]:
    directory.mkdir(parents=True)
    paths = []
    for i, m in enumerate(messages):
        p = directory / f"{i:05d}"
        p.write_bytes(m)
        paths.append(p)
    return paths


def _rss_mb(pid: int) -> dict:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def cpu_model() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    m = re.search(r"model name\s*:\s*(.+)", info)
    flags = set(re.search(r"flags\s*:\s*(.+)", info).group(1).split()) if "flags" in info else set()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "x86-64" if flags else platform.machine()
    return f"{m.group(1).strip() if m else platform.processor()}, {os.cpu_count()} cores, {isa}"


# ---------------------------------------------------------------------------------------------
# The filters: each is a command that classifies one message read from stdin, and a reading of
# its result as (is spam, ok).


class ChainruleDaemon:
    name = "chainrule spamd"

    def __init__(self, model: Path, log: Path):
        # Its log goes to a file, as SpamAssassin's does: read through a pipe, each line would wake
        # this process while it times the next client.
        self.log_path = log
        self.log = open(log, "w")  # noqa: SIM115 (open while the daemon runs)
        self.socket = log.parent / "chainrule-spamd.sock"
        self.proc = subprocess.Popen([sys.executable, "-m", "chainrule.cli", "spam", "daemon", str(model),
                                      "--listen", "127.0.0.1:0", "--socket", str(self.socket)],
                                     stderr=self.log, env=_env())
        deadline = time.monotonic() + 120
        while (m := re.search(r"ready: listening on 127\.0\.0\.1:(\d+)", log.read_text())) is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"chainrule spamd did not start; see {log}")
            time.sleep(0.1)
        self.port = int(m.group(1))
        self.command = ["spamc", "-d", "127.0.0.1", "-p", str(self.port), "-c"]

    @staticmethod
    def read(rc: int, out: bytes) -> tuple[bool, bool]:
        return rc == 1, rc in (0, 1) and re.fullmatch(rb"-?\d+\.\d/5\.0\n", out) is not None

    def logged_ms(self) -> np.ndarray:
        """The daemon's own time for each CHECK so far, as its log line gives it (from the request's
        first byte read to the answer sent, in 0.1 ms)."""
        return np.array([float(ms) for ms in re.findall(r"CHECK \S+ .* in ([\d.]+) ms", self.log_path.read_text())])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


class ChainruleDaemonUnix:
    """The same daemon through its Unix socket (`spamc -U`), as a mail server on the same host can
    reach it: no TCP connection to set up and tear down."""

    name = "chainrule spamd, Unix socket"

    def __init__(self, daemon: ChainruleDaemon):
        self.command = ["spamc", "-U", str(daemon.socket), "-c"]

    read = staticmethod(ChainruleDaemon.read)

    def stop(self) -> None:
        pass


class SpamAssassin:
    name = "SpamAssassin spamd"

    def __init__(self, tmp: Path, spam: list[Path], ham: list[Path], port: int = 17833):
        site, home = tmp / "site", tmp / "home"
        site.mkdir()
        (home / "bayes").mkdir(parents=True)
        for pre in Path("/etc/spamassassin").glob("*.pre"):
            shutil.copy(pre, site)
        (site / "local.cf").write_text(SA_CONFIG.format(home=home))
        t0 = time.perf_counter()
        for flag, paths in (("--spam", spam), ("--ham", ham)):
            for i in range(0, len(paths), 500):
                subprocess.run(["sa-learn", "--siteconfigpath", str(site), "--no-sync", flag,
                                *map(str, paths[i:i + 500])], check=True, capture_output=True)
        subprocess.run(["sa-learn", "--siteconfigpath", str(site), "--sync"], check=True, capture_output=True)
        self.train_seconds = time.perf_counter() - t0
        dump = subprocess.run(["sa-learn", "--siteconfigpath", str(site), "--dump", "magic"], capture_output=True,
                              text=True).stdout
        self.learned = {k: int(v) for v, k in re.findall(r"(\d+)\s+\S+\s+non-token data: (nspam|nham)", dump)}
        user = "debian-spamd" if os.geteuid() == 0 else None
        if user:
            subprocess.run(["chown", "-R", user, str(tmp)], check=True)
        cmd = ["spamd", "-L", "--listen", f"127.0.0.1:{port}", "-H", str(home), "--siteconfigpath", str(site),
               "--nouser-config", "-s", "stderr", "-r", str(tmp / "spamd.pid")] + (["-u", user] if user else [])
        self.log = open(tmp / "spamd.log", "w")  # noqa: SIM115 (open while spamd runs)
        self.proc = subprocess.Popen(cmd, stderr=self.log, stdout=self.log)
        self.command = ["spamc", "-d", "127.0.0.1", "-p", str(port), "-c"]
        deadline = time.monotonic() + 120
        while subprocess.run(["spamc", "-d", "127.0.0.1", "-p", str(port), "-K"], capture_output=True).returncode:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"spamd did not start; see {tmp / 'spamd.log'}")
            time.sleep(0.5)

    read = staticmethod(ChainruleDaemon.read)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


class Bogofilter:
    name = "bogofilter"

    def __init__(self, tmp: Path, spam: list[Path], ham: list[Path]):
        db = tmp / "bogofilter"
        db.mkdir()
        t0 = time.perf_counter()
        for flag, paths in (("-s", spam), ("-n", ham)):
            for i in range(0, len(paths), 500):
                subprocess.run(["bogofilter", "-d", str(db), flag, "-B", *map(str, paths[i:i + 500])], check=True)
        self.train_seconds = time.perf_counter() - t0
        self.command = ["bogofilter", "-d", str(db)]

    @staticmethod
    def read(rc: int, out: bytes) -> tuple[bool, bool]:
        return rc == 0, rc in (0, 1, 2)

    def stop(self) -> None:
        pass


class ChainruleClassify:
    name = "chainrule spam classify"

    def __init__(self, model: Path):
        self.command = [sys.executable, "-m", "chainrule.cli", "spam", "classify", str(model), "-"]

    read = staticmethod(Bogofilter.read)  # exit code 0 spam, 1 ham, 2 unsure, 3 error

    def stop(self) -> None:
        pass


class SpamcAlone:
    """Not a filter: `spamc -V`, which starts, prints its version and exits, connecting nowhere —
    the part of every spamc-driven row that no daemon can make faster."""

    name = "spamc alone (-V)"
    command = ["spamc", "-V"]

    @staticmethod
    def read(rc: int, out: bytes) -> tuple[bool, bool]:
        return False, rc == 0

    def stop(self) -> None:
        pass


class SpamcPing:
    """Not a filter: `spamc -K` against the chainrule daemon, a PING: spamc's start plus a round
    trip through the daemon (connect, request, answer) that classifies nothing."""

    name = "spamc -K (PING)"

    def __init__(self, daemon: ChainruleDaemon):
        self.command = ["spamc", "-d", "127.0.0.1", "-p", str(daemon.port), "-K"]

    read = staticmethod(SpamcAlone.read)

    def stop(self) -> None:
        pass


FLOORS = (SpamcAlone.name, SpamcPing.name)


# ---------------------------------------------------------------------------------------------


def run_one(command: list[str], message: bytes) -> tuple[int, bytes, float]:
    t0 = time.perf_counter()
    res = subprocess.run(command, input=message, capture_output=True, env=_env())
    return res.returncode, res.stdout, time.perf_counter() - t0


def in_turns(filters: list, messages: list[bytes], sample: dict[str, int]) -> dict[str, dict]:
    """Every filter on every message (a filter named in `sample`: on every k-th), in blocks taken
    in turn. Returns {name: {"index", "spam", "ok", "seconds"}}, lists over the messages it saw."""
    out = {f.name: {"index": [], "spam": [], "ok": [], "seconds": []} for f in filters}
    for start in range(0, len(messages), BLOCK):
        order = filters[start // BLOCK % len(filters):] + filters[:start // BLOCK % len(filters)]
        for f in order:
            every = sample.get(f.name, 1)
            for i in range(start, min(start + BLOCK, len(messages))):
                if i % every:
                    continue
                rc, stdout, seconds = run_one(f.command, messages[i])
                is_spam, ok = f.read(rc, stdout)
                r = out[f.name]
                r["index"].append(i)
                r["spam"].append(is_spam)
                r["ok"].append(ok)
                r["seconds"].append(seconds)
        done = min(start + BLOCK, len(messages))
        print(f"  {done}/{len(messages)} messages", end="\r", flush=True)
    print()
    return out


def summary(r: dict, y: np.ndarray | None) -> dict:
    """Speed and errors of one row; with the labels `y`, its accuracy too (not for the floors)."""
    seconds = np.array(r["seconds"])
    out = {"messages": len(seconds), "messages_per_s": len(seconds) / seconds.sum(),
           "p50_ms": 1000 * float(np.percentile(seconds, 50)), "p99_ms": 1000 * float(np.percentile(seconds, 99)),
           "errors": int(len(r["ok"]) - sum(r["ok"]))}
    if y is not None:
        rep = binary_report(y[r["index"]], np.array(r["spam"], float), 0.5)
        out.update({k: rep[k] for k in ("accuracy", "spam_caught", "blocked_ham", "mcc", "confusion_matrix")})
    return out


def load_run(daemon: ChainruleDaemon, messages: list[bytes], expected: list[bool], clients: int = 16,
             per_client: int = 500) -> dict:
    """`clients` threads, each sending `per_client` messages with spamc -c one after another."""
    pid = daemon.proc.pid
    rss = {"before": _rss_mb(pid)}
    errors, latencies = [], []
    done = [0]
    lock = threading.Lock()

    def client(c: int):
        for k in range(per_client):
            i = (c * 37 + k) % len(messages)
            rc, out, seconds = run_one(daemon.command, messages[i])
            is_spam, ok = daemon.read(rc, out)
            with lock:
                latencies.append(seconds)
                if not ok or is_spam != expected[i]:
                    errors.append((i, rc, out[:80].decode(errors="replace")))
                done[0] += 1
                if done[0] == max(1, clients * per_client // 2):  # (one request in all: half way is the first)
                    rss["half_way"] = _rss_mb(pid)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    rss["after"] = _rss_mb(pid)
    lat = np.array(latencies)
    return {"clients": clients, "messages": len(lat), "seconds": wall, "messages_per_s": len(lat) / wall,
            "p50_ms": 1000 * float(np.percentile(lat, 50)), "p99_ms": 1000 * float(np.percentile(lat, 99)),
            "errors": len(errors), "first_errors": errors[:5], "rss_mb": rss}


def table(rows: dict[str, dict]) -> str:
    head = (f"{'filter':<26}{'msgs/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'accuracy':>10}{'caught':>8}{'blocked':>9}"
            f"{'MCC':>8}{'errors':>7}")
    lines = [head]
    for name, r in rows.items():
        quality = (f"{100 * r['accuracy']:9.2f}%{100 * r['spam_caught']:7.2f}%{100 * r['blocked_ham']:8.2f}%"
                   f"{r['mcc']:8.4f}" if "accuracy" in r else f"{'-':>10}{'-':>8}{'-':>9}{'-':>8}")
        lines.append(f"{name:<26}{r['messages_per_s']:8.1f}{r['p50_ms']:8.2f}{r['p99_ms']:8.1f}{quality}{r['errors']:7d}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="data directory (default: $CHAINRULE_DATA, then the user cache)")
    parser.add_argument("--classify-sample", type=int, default=13,
                        help="time `spam classify` on every k-th test message (default 13: 50 of 650)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=500)
    parser.add_argument("--out", default=str(HERE / "results" / "spam_daemon.json"))
    args = parser.parse_args()
    for binary in ("spamc", "spamd", "sa-learn", "bogofilter"):
        if shutil.which(binary) is None:
            sys.exit(f"bench/spam_daemon.py: {binary} is not installed (apt-get install spamc spamd spamassassin "
                     "bogofilter)")

    kind, x_tr, y_tr, x_te, y_te, names = load_split("spamassassin", args.data)
    y_te = np.asarray(y_te)
    print(f"SpamAssassin split: {len(y_tr)} training, {len(y_te)} test messages ({int(y_te.sum())} spam)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o711)  # (SpamAssassin's spamd runs as its own user and must reach its files in here)
        t0 = time.perf_counter()
        result = train_chainrule(kind, x_tr, y_tr, SETTINGS["spamassassin"])
        model = tmp / "model"
        save_model(result.bundle, model, replay=result.replay)
        train_seconds = {"chainrule": time.perf_counter() - t0}
        print(f"chainrule trained in {train_seconds['chainrule']:.1f}s")
        spam = _write(tmp / "train" / "spam", [m for m, label in zip(x_tr, y_tr, strict=True) if label])
        ham = _write(tmp / "train" / "ham", [m for m, label in zip(x_tr, y_tr, strict=True) if not label])
        test_dir = tmp / "test"
        _write(test_dir, x_te)

        bogo = Bogofilter(tmp, spam, ham)
        train_seconds["bogofilter"] = bogo.train_seconds
        (tmp / "sa").mkdir()
        sa = SpamAssassin(tmp / "sa", spam, ham)
        train_seconds["SpamAssassin"] = sa.train_seconds
        print(f"sa-learn: {sa.learned} in {sa.train_seconds:.0f}s; bogofilter trained in {bogo.train_seconds:.1f}s")
        ours = ChainruleDaemon(model, tmp / "chainrule-spamd.log")
        classify = ChainruleClassify(model)
        filters = [ours, ChainruleDaemonUnix(ours), sa, bogo, classify, SpamcAlone(), SpamcPing(ours)]
        try:
            for f in filters:  # warm-up: page cache, first-use costs (not for a classify process)
                if f is not classify:
                    run_one(f.command, x_te[0])
            runs = in_turns(filters, x_te, {classify.name: args.classify_sample})
            rows = {name: summary(r, None if name in FLOORS else y_te) for name, r in runs.items()}
            # `spam classify` accuracy: the same command over all the test messages at once
            batch = subprocess.run([sys.executable, "-m", "chainrule.cli", "spam", "classify", str(model),
                                    str(test_dir), "--json"], capture_output=True, text=True, env=_env(), check=True)
            verdicts = {Path(d["source"]).name: d["verdict"] for d in map(json.loads, batch.stdout.splitlines())}
            pred = np.array([verdicts[f"{i:05d}"] == "spam" for i in range(len(y_te))], float)
            rep = binary_report(y_te, pred, 0.5)
            rows[classify.name].update({k: rep[k] for k in ("accuracy", "spam_caught", "blocked_ham", "mcc",
                                                            "confusion_matrix")})
            rows[classify.name]["accuracy_from"] = "one `spam classify MODEL DIR` run over all test messages"
            own_ms = ours.logged_ms()  # before the load run adds its own lines
            expected = [bool(v) for v in runs[ours.name]["spam"]]
            print(f"load run: {args.clients} spamc clients x {args.per_client} messages ...", flush=True)
            load = load_run(ours, x_te, expected, args.clients, args.per_client)
        finally:
            for f in filters:
                f.stop()

    print(table(rows))
    rss = load["rss_mb"]
    print(f"load run ({load['clients']} concurrent spamc clients, {load['messages']} messages): "
          f"{load['messages_per_s']:.0f} msgs/s, p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms, "
          f"{load['errors']} errors; daemon RSS {rss['before']['VmRSS']:.0f} MB before, "
          f"{rss['half_way']['VmRSS']:.0f} half way, {rss['after']['VmRSS']:.0f} after "
          f"(peak {rss['after']['VmHWM']:.0f})")
    c, b, a = rows["chainrule spamd"], rows["bogofilter"], rows["SpamAssassin spamd"]
    mean_ms = {name: 1000 / r["messages_per_s"] for name, r in rows.items()}  # mean wall time per message
    alone = mean_ms[SpamcAlone.name]
    bounds = {"spamc_alone_ms": alone, "spamc_ping_ms": mean_ms[SpamcPing.name],
              "chainrule_ms": mean_ms["chainrule spamd"], "bogofilter_ms": mean_ms["bogofilter"],
              "chainrule_beyond_spamc_ms": mean_ms["chainrule spamd"] - alone,
              "bogofilter_beyond_spamc_ms": mean_ms["bogofilter"] - alone,
              "chainrule_own_ms_mean": float(own_ms.mean()), "chainrule_own_ms_p50": float(np.median(own_ms))}
    print(f"mean ms per message: spamc alone {alone:.2f}, spamc PING {bounds['spamc_ping_ms']:.2f}, chainrule "
          f"{bounds['chainrule_ms']:.2f}, bogofilter {bounds['bogofilter_ms']:.2f}; beyond spamc's own start "
          f"and exit, chainrule's round trip takes {bounds['chainrule_beyond_spamc_ms']:.2f} ms and bogofilter's "
          f"whole run {bounds['bogofilter_beyond_spamc_ms']:.2f} ms; the daemon's own time per CHECK (its log) "
          f"{own_ms.mean():.2f} ms mean, {np.median(own_ms):.1f} p50")
    u = rows[ChainruleDaemonUnix.name]
    goals = [
        ("per-message rate >= 1.0x bogofilter's", c["messages_per_s"] / b["messages_per_s"] >= 1.0,
         f"{c['messages_per_s'] / b['messages_per_s']:.2f}x (Unix socket: "
         f"{u['messages_per_s'] / b['messages_per_s']:.2f}x)"),
        ("per-message rate >= 10x SpamAssassin's", c["messages_per_s"] / a["messages_per_s"] >= 10,
         f"{c['messages_per_s'] / a['messages_per_s']:.1f}x"),
        ("p99 <= 20 ms", c["p99_ms"] <= 20, f"{c['p99_ms']:.1f} ms"),
        ("more accurate than SpamAssassin (MCC)", c["mcc"] > a["mcc"], f"{c['mcc']:.4f} vs {a['mcc']:.4f}"),
        ("load run: 0 errors", load["errors"] == 0, f"{load['errors']}"),
        ("load run: flat memory (RSS after <= 1.1x half way)",
         rss["after"]["VmRSS"] <= 1.1 * rss["half_way"]["VmRSS"],
         f"{rss['half_way']['VmRSS']:.0f} -> {rss['after']['VmRSS']:.0f} MB"),
    ]
    for text, met, value in goals:
        print(f"{'goal met    ' if met else 'goal missed '} {text}: {value}")
    versions = {"spamc": subprocess.run(["spamc", "-V"], capture_output=True, text=True).stdout.splitlines()[0],
                "spamd": subprocess.run(["spamd", "--version"], capture_output=True, text=True).stdout.splitlines()[0],
                "bogofilter": subprocess.run(["bogofilter", "-V"], capture_output=True,
                                             text=True).stdout.splitlines()[0]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"cpu": cpu_model(), "python": platform.python_version(), "platform": platform.platform()},
        "versions": versions, "split": {"train": len(y_tr), "test": len(y_te), "test_spam": int(y_te.sum())},
        "train_seconds": train_seconds, "sa_learned": sa.learned, "results": rows, "bounds": bounds,
        "load_run": load,
        "goals": [{"goal": t, "met": bool(m), "value": v} for t, m, v in goals]}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
