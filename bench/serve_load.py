"""Load test of the web app (issue 7): N concurrent clients against `chainrule serve` on 127.0.0.1.

    python bench/serve_load.py                          # newest models under runs/, 8 clients
    python bench/serve_load.py --clients 16 --requests 3000 --digits runs/digits-mlp --spam runs/spam-sms

The server is the real one, started as `chainrule serve --port 0` in its own process (uvicorn, one
worker, as a user runs it). The clients are asyncio tasks sharing keep-alive connections (httpx), each
sending its next request as soon as the previous one is answered, until the fixed number of requests
per endpoint is done. Measured per endpoint: requests/s over the whole run, and the p50/p99 of
each request's latency (send to last byte of the answer). Any non-200 answer counts as an error; the
script exits non-zero if there was one.

Payloads are real data, cycled: MNIST test digits turned into the kind of image the page uploads
(dark ink on white, 112x112 PNG), the same with `?explain=true` (what the page sends while you draw:
every layer's activations as well), and raw SMS messages from the SMS Spam Collection.

The clients run on the same machine as the server and share its cores, so the figures are a lower
bound for a server with the machine to itself; they are what one laptop-class box does end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from chainrule.data.locate import candidate_dirs
from chainrule.data.mnist import load_mnist
from chainrule.files import atomic_write_bytes
from chainrule.web.services import find_latest_image_models, find_latest_model, saved_models
from speed import machine

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "serve_load.json"


def digit_pngs(count: int, data_dir) -> list[bytes]:
    """MNIST test digits as a drawing pad would upload them: dark ink on white, 112x112 PNG."""
    images, _ = load_mnist("test", data_dir)
    out = []
    for img in images[:count]:
        pil = Image.fromarray(255 - img).resize((112, 112), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        pil.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def sms_messages(count: int, data_dir) -> list[bytes]:
    """The first `count` messages of the SMS Spam Collection (one `label<TAB>text` per line)."""
    for d in candidate_dirs("sms-spam", data_dir):
        path = d / "SMSSpamCollection"
        if path.is_file():
            lines = path.read_bytes().splitlines()
            return [line.split(b"\t", 1)[1] for line in lines[:count] if b"\t" in line]
    raise SystemExit("serve_load: SMSSpamCollection not found; set CHAINRULE_DATA or pass --data")


def start_server(digits: Path | None, spam: Path | None) -> tuple[subprocess.Popen, str]:
    """`chainrule serve --port 0` in a subprocess; returns it and its base URL once it answers."""
    cmd = [sys.executable, "-m", "chainrule.cli", "serve", "--port", "0", "--runs", os.devnull]
    for flag, path in (("--digits", digits), ("--spam", spam)):
        if path is not None:
            cmd += [flag, str(path)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        m = re.search(r"open (http://127\.0\.0\.1:\d+)/", line)
        if m:
            url = m.group(1)
            break
    else:
        raise SystemExit("serve_load: the server did not start:\n" + "".join(lines))
    # Keep reading its stderr, so a chatty server can never block on a full pipe.
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    for _ in range(100):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"serve_load: {url}/healthz never answered")


async def run_endpoint(url: str, path: str, bodies: list[bytes], content_type: str, clients: int,
                       requests: int) -> dict:
    """`clients` concurrent clients send `requests` requests in all; latencies in seconds."""
    latencies: list[float] = []
    errors: list[str] = []
    next_index = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            try:
                r = await client.post(path, content=bodies[i % len(bodies)], headers={"Content-Type": content_type})
                await r.aread()
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            latencies.append(time.perf_counter() - t0)

        async def worker() -> None:
            nonlocal next_index
            while next_index < requests:
                i = next_index
                next_index += 1
                await one(i)

        for i in range(min(clients, 20)):  # warm-up: first-use costs are not what is measured
            await one(i)
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - start
    lat_ms = np.array(latencies) * 1000
    return {
        "endpoint": path, "requests": requests, "clients": clients, "errors": len(errors),
        "first_errors": errors[:3], "seconds": round(seconds, 3), "requests_per_s": round(requests / seconds, 1),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 2), "p99_ms": round(float(np.percentile(lat_ms, 99)), 2),
        "mean_ms": round(float(lat_ms.mean()), 2), "mean_body_bytes": round(float(np.mean([len(b) for b in bodies]))),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--digits", help="digits model directory (default: the newest MNIST model under runs/)")
    ap.add_argument("--spam", help="spam model directory (default: the newest under runs/)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per endpoint (default 2000)")
    ap.add_argument("--data", help="data directory (default $CHAINRULE_DATA, then the user cache)")
    ap.add_argument("--out", default=str(RESULTS), help=f"JSON results (default {RESULTS.relative_to(HERE.parent)})")
    args = ap.parse_args(argv)
    saved = saved_models()  # (runs/, scanned once for both)
    digits = Path(args.digits) if args.digits else find_latest_image_models(saved).get("mnist")
    spam = Path(args.spam) if args.spam else find_latest_model("spam", saved)
    if digits is None and spam is None:
        raise SystemExit("serve_load: no models: train them with `chainrule digits train` and "
                         "`chainrule spam train`, or pass --digits/--spam")
    runs = []
    if digits is not None:
        pngs = digit_pngs(200, args.data)
        runs += [("/api/digits/predict", pngs, "image/png"),
                 ("/api/digits/predict?explain=true", pngs, "image/png")]
    else:
        print("serve_load: no digits model; measuring the spam endpoint only", file=sys.stderr)
    if spam is not None:
        runs.append(("/api/spam/classify", sms_messages(200, args.data), "text/plain; charset=utf-8"))
    else:
        print("serve_load: no spam model; measuring the digits endpoint only", file=sys.stderr)
    proc, url = start_server(digits, spam)
    try:
        results = [asyncio.run(run_endpoint(url, p, b, t, args.clients, args.requests)) for p, b, t in runs]
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    print(f"{args.clients} clients, {args.requests} requests per endpoint, server and clients on 127.0.0.1")
    print(f"{'endpoint':<36} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in results:
        rate, p50, p99 = r["requests_per_s"], r["p50_ms"], r["p99_ms"]
        print(f"{r['endpoint']:<36} {rate:>8.1f} {p50:>8.2f} {p99:>8.2f} {r['errors']:>7}")
    doc = {
        "benchmark": "serve_load",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "models": {"digits": digits and str(digits), "spam": spam and str(spam)},
        "results": results,
    }
    out = Path(args.out)
    atomic_write_bytes(out, (json.dumps(doc, indent=2) + "\n").encode())
    print(f"wrote {out}")
    errors = [e for r in results for e in r["first_errors"]]
    if errors:
        total = sum(r["errors"] for r in results)
        print(f"serve_load: {total} requests failed, e.g. {errors[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
