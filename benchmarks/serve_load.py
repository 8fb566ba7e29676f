"""Load on ``bsrn serve``: requests/s, p50 and p95 latency of 256x256 -> x4 uploads, and the
server's peak resident memory.

    python benchmarks/serve_load.py [--requests 16] [--concurrency 2] [--workers 1]
                                    [--threads N] [--size 256] [--device cpu]

Starts ``python -m bsrn serve`` on a free port of 127.0.0.1 (bundled weights), warms it up with
one request, then sends ``--requests`` uploads from ``--concurrency`` clients; 503 replies are
retried after their ``Retry-After``. Memory is the server process's VmRSS from /proc.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) * 1024


def post(url: str, payload: bytes) -> int:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            "filename=\"photo.png\"\r\n\r\n").encode() + payload + \
        f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, body, headers),
                                        timeout=600) as r:
                r.read()
                return r.status
        except urllib.error.HTTPError as e:
            if e.code != 503:
                return e.code
            time.sleep(float(e.headers.get("Retry-After", "1")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    port = free_port()
    cmd = [sys.executable, "-m", "bsrn", "serve", "--port", str(port), "--device", args.device,
           "--workers", str(args.workers), "--queue", str(max(8, args.concurrency))]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                       os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        rng = np.random.default_rng(0)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)).save(
            buf, "PNG")
        payload = buf.getvalue()
        target = f"{url}/v1/upscale?scale=4"
        assert post(target, payload) == 200  # warm-up: loads the model
        start_rss = peak = rss(server.pid)
        done = threading.Event()

        def watch():
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss(server.pid))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()

        def one(_):
            t0 = time.perf_counter()
            assert post(target, payload) == 200
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            latencies = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
        done.set()
        watcher.join()
        print(json.dumps({
            "size": f"{args.size}x{args.size} x4", "device": args.device,
            "requests": args.requests, "concurrency": args.concurrency,
            "workers": args.workers, "requests_per_s": round(args.requests / wall, 3),
            "p50_s": round(float(np.percentile(latencies, 50)), 3),
            "p95_s": round(float(np.percentile(latencies, 95)), 3),
            "rss_start_mib": round(start_rss / 2**20, 1), "rss_peak_mib": round(peak / 2**20, 1),
            "rss_end_mib": round(rss(server.pid) / 2**20, 1)}, indent=2))
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
