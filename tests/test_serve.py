"""``bsrn serve`` against real uvicorn servers on 127.0.0.1, real uploads and the real CLI.

Each server is ``python -m bsrn serve`` in a subprocess (its memory is read from /proc), with
TMPDIR pointing into the test's folder so its private temp folder can be inspected. Replies are
compared with ``bsrn.cli.main(["upscale", ...])`` run in this process on the same files.
"""
from __future__ import annotations

import concurrent.futures
import io
import json
import os
import re
import shutil
import signal
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
import pytest
import torch
from PIL import Image, ImageCms

from bsrn import cli

for _mod in ("fastapi", "gradio", "uvicorn", "python_multipart"):
    pytest.importorskip(_mod, reason=f"{_mod} is not installed (pip install 'bsrn[serve]')")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


# ----------------------------------------------------------------------------- servers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m bsrn serve`` in a subprocess, on a free port of 127.0.0.1."""

    def __init__(self, tmp: Path, *args: str, env: dict | None = None, host="127.0.0.1"):
        self.port = _free_port()
        self.tmp = tmp / f"tmp-{self.port}"
        self.tmp.mkdir(parents=True)
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, "TMPDIR": str(self.tmp), "PYTHONUNBUFFERED": "1",
                   "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                  os.environ.get("PYTHONPATH", "")]),
                   "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
        self.log = self.tmp.parent / f"server-{self.port}.log"
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bsrn", "serve", "--host", host, "--port", str(self.port),
             "--device", "cpu", "--threads", str(torch.get_num_threads()), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=environ)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                if request(self.url + "/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start: {self.output()}")
            time.sleep(0.3)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def rss(self) -> int:
        """Resident memory of the server process, in bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024

    def private_folders(self) -> list[Path]:
        return sorted(self.tmp.glob("bsrn-serve-*"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def request(url: str, data: bytes | None = None, headers: dict | None = None,
            timeout: float = 300) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one HTTP request; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=data, headers=headers or {},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def multipart(name: str, payload: bytes, field: str = "file") -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode() \
        + payload + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def upload(server: Server, name: str, payload: bytes, query: str = "", headers=None,
           retry_busy: bool = False, timeout: float = 300):
    body, h = multipart(name, payload)
    busy = 0
    while True:
        status, hdrs, out = request(f"{server.url}/v1/upscale{query}", body,
                                    {**h, **(headers or {})}, timeout=timeout)
        if status != 503 or not retry_busy:
            return status, hdrs, out, busy
        busy += 1
        assert int(hdrs["retry-after"]) >= 1
        time.sleep(min(2.0, int(hdrs["retry-after"])))


def upload_expecting_continue(server: Server, name: str, payload: bytes) -> tuple[int, bytes]:
    """A multipart upload sent as curl sends large ones: headers first with ``Expect:
    100-continue``, the body only if the server asks for it. Returns (status, body)."""
    body, headers = multipart(name, payload)
    head = (f"POST /v1/upscale HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: {headers['Content-Type']}\r\nContent-Length: {len(body)}\r\n"
            "Expect: 100-continue\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as s:
        s.sendall(head.encode())
        reply = s.recv(65536)
        if reply.startswith(b"HTTP/1.1 100"):
            s.sendall(body)
            reply = reply.split(b"\r\n\r\n", 1)[1]
        while chunk := s.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    return status, reply.split(b"\r\n\r\n", 1)[1]


def cli_output(src: Path, out_dir: Path, *args: str) -> Path:
    """What ``bsrn upscale`` writes for ``src``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    assert cli.main(["upscale", str(src), "-o", str(out_dir), "--device", "cpu", "-q",
                     *args]) == 0
    (written,) = [p for p in out_dir.iterdir() if p.is_file()]
    return written


def assert_same_image(reply: bytes, reference: Path):
    """Same format, mode, size, ICC profile and pixels as the CLI's file."""
    with Image.open(io.BytesIO(reply)) as got, Image.open(reference) as ref:
        assert (got.format, got.mode, got.size) == (ref.format, ref.mode, ref.size)
        assert got.info.get("icc_profile") == ref.info.get("icc_profile")
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    assert reply == reference.read_bytes()


# ----------------------------------------------------------------------------- test images
def _noise(h, w, c, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    peak = 65535 if dtype == np.uint16 else 255
    base = np.linspace(0, peak, w, dtype=np.float64)[None, :, None]
    a = base * 0.6 + rng.uniform(0, peak * 0.4, (h, w, c))
    return a.astype(dtype)


def make_images(folder: Path, side: int = 24) -> dict[str, Path]:
    """Good inputs of several kinds, written by the test."""
    folder.mkdir(parents=True, exist_ok=True)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    files = {}
    p = folder / "rgb.png"
    Image.fromarray(_noise(side, side + 4, 3)).save(p)
    files["rgb.png"] = p
    p = folder / "photo.jpg"
    Image.fromarray(_noise(side, side, 3, seed=1)).save(p, quality=90, icc_profile=srgb)
    files["photo.jpg"] = p
    p = folder / "alpha.png"
    rgba = _noise(side, side, 4, seed=2)
    rgba[: side // 2, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(p)
    files["alpha.png"] = p
    p = folder / "grey16.png"
    Image.fromarray(_noise(side, side, 1, np.uint16, seed=3)[:, :, 0]).save(p)
    files["grey16.png"] = p
    return files


def make_bad(folder: Path) -> dict[str, bytes]:
    """Uploads that must be refused with a 4xx."""
    good = io.BytesIO()
    Image.fromarray(_noise(64, 64, 3)).save(good, "PNG")
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")  # 400 MP in a few tens of KB
    return {"truncated.png": good.getvalue()[: len(good.getvalue()) // 2],
            "empty.png": b"",
            "notes.png": b"this is not an image\n" * 50,
            "bomb.png": bomb.getvalue()}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory, tiny_x2_weights):
    tmp = tmp_path_factory.mktemp("tiny")
    server = Server(tmp, "--weights", tiny_x2_weights, "--max-pixels", "1e6",
                    "--max-upload-mb", "1", "--queue", "2")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    """The bundled weights; a queue of 3 so that a burst of 17 requests overflows it."""
    tmp = tmp_path_factory.mktemp("real")
    server = Server(tmp, "--max-pixels", "1e6", "--max-upload-mb", "2", "--queue", "3")
    yield server
    server.stop()


# ----------------------------------------------------------------------------- API
def test_health_models_openapi(tiny_server):
    status, _, body = request(tiny_server.url + "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = request(tiny_server.url + "/v1/models")
    models = {m["name"]: m for m in json.loads(body)["models"]}
    assert status == 200
    assert models["tiny_x2"]["default"] and models["tiny_x2"]["source"] == "server"
    assert {"bsrn-x2", "bsrn-x3", "bsrn-x4"} <= set(models)
    assert models["bsrn-x4"]["scale"] == 4
    assert "/tmp" not in body.decode() and str(ROOT) not in body.decode()  # no server paths
    status, _, body = request(tiny_server.url + "/openapi.json")
    schema = json.loads(body)
    assert status == 200
    assert {"/v1/upscale", "/v1/models", "/healthz"} <= set(schema["paths"])
    upscale = schema["paths"]["/v1/upscale"]["post"]
    assert "multipart/form-data" in upscale["requestBody"]["content"]
    assert {p["name"] for p in upscale["parameters"]} >= {"scale", "weights", "format"}


def test_user_weights_folder_is_listed(tmp_path, tiny_x2_weights):
    pytest.importorskip("bsrn.weights_folder", reason="this install has no weights folder")
    folder = tmp_path / "home" / "weights"
    folder.mkdir(parents=True)
    shutil.copy(tiny_x2_weights, folder / "mine-x2.safetensors")
    server = Server(tmp_path, env={"BSRN_HOME": str(tmp_path / "home")})
    try:
        models = {m["name"]: m for m in json.loads(request(server.url + "/v1/models")[2])["models"]}
        assert models["mine-x2"]["source"] == "user" and models["mine-x2"]["scale"] == 2
        src = make_images(tmp_path / "in", side=8)["rgb.png"]
        ref = cli_output(src, tmp_path / "cli", "--weights", tiny_x2_weights)
        status, _, body, _ = upload(server, src.name, src.read_bytes(), "?weights=mine-x2")
        assert status == 200, body
        with Image.open(io.BytesIO(body)) as got, Image.open(ref) as want:
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["rgb.png", "photo.jpg", "alpha.png", "grey16.png"])
def test_upscale_equals_cli(tiny_server, tiny_x2_weights, tmp_path, kind):
    src = make_images(tmp_path / "in")[kind]
    ref = cli_output(src, tmp_path / "cli", "--weights", tiny_x2_weights)
    status, headers, body, _ = upload(tiny_server, src.name, src.read_bytes())
    assert status == 200, body
    assert_same_image(body, ref)
    assert headers["content-disposition"].endswith(f'filename="{ref.name}"')


def test_raw_body_format_and_scale(tiny_server, tiny_x2_weights, tmp_path):
    src = make_images(tmp_path / "in")["rgb.png"]
    ref = cli_output(src, tmp_path / "cli", "--weights", tiny_x2_weights, "--scale", "3",
                     "--ext", "webp")
    status, headers, body = request(
        f"{tiny_server.url}/v1/upscale?scale=3&format=webp&filename=rgb.png", src.read_bytes(),
        {"Content-Type": "image/png"})
    assert status == 200, body
    assert headers["content-type"] == "image/webp"
    assert_same_image(body, ref)


def test_other_bundled_weights_by_name(tiny_server, tmp_path):
    src = make_images(tmp_path / "in", side=16)["rgb.png"]
    ref = cli_output(src, tmp_path / "cli", "--weights", "bsrn-x2")
    status, _, body, _ = upload(tiny_server, src.name, src.read_bytes(), "?weights=bsrn-x2")
    assert status == 200, body
    assert_same_image(body, ref)


@pytest.mark.parametrize("name", ["truncated.png", "empty.png", "notes.png", "bomb.png"])
def test_bad_uploads_get_4xx_naming_the_problem(tiny_server, tmp_path, name):
    payload = make_bad(tmp_path)[name]
    status, headers, body, _ = upload(tiny_server, name, payload)
    assert 400 <= status < 500, body
    assert headers["content-type"] == "application/json"
    message = json.loads(body)["error"]
    assert name in message  # names the client's file ...
    assert str(tiny_server.tmp) not in message  # ... never the server's path
    expected = {"truncated.png": "decode", "empty.png": "empty", "notes.png": "not an image",
                "bomb.png": "limit"}[name]
    assert expected in message
    assert request(tiny_server.url + "/healthz")[0] == 200  # still serving


@pytest.mark.parametrize("query, status, words", [
    ("?weights=nope", 404, "unknown weights"),
    ("?weights=/etc/passwd", 404, "unknown weights"),
    ("?format=gif", 400, "format"),
    ("?scale=abc", 422, "scale"),
    ("?scale=0", 400, "scale"),
])
def test_bad_parameters(tiny_server, tmp_path, query, status, words):
    src = make_images(tmp_path / "in", side=8)["rgb.png"]
    got, _, body, _ = upload(tiny_server, src.name, src.read_bytes(), query)
    assert got == status and words in json.loads(body)["error"]


def test_errors_are_json(tiny_server):
    status, _, body = request(tiny_server.url + "/v1/nothing")
    assert status == 404 and "error" in json.loads(body)
    body, headers = multipart("x.png", b"\x89PNG", field="image")
    status, _, body = request(tiny_server.url + "/v1/upscale", body, headers)
    assert status == 400 and "'file' part" in json.loads(body)["error"]


def test_oversized_upload_is_413_and_server_goes_on(tiny_server, tmp_path):
    status, _, body, _ = upload(tiny_server, "big.png", os.urandom(3 * 2**20))
    assert status == 413 and "limit" in json.loads(body)["error"]
    # far over the limit: refused from the headers, before the body is sent (as curl does it)
    status, body = upload_expecting_continue(tiny_server, "huge.png", os.urandom(12 * 2**20))
    assert status == 413 and "limit" in json.loads(body)["error"]
    src = make_images(tmp_path / "in", side=8)["rgb.png"]
    assert upload(tiny_server, src.name, src.read_bytes())[0] == 200


def test_chunked_upload_over_the_limit_is_413(tiny_server):
    chunks = (os.urandom(2**16) for _ in range(40))  # 2.5 MiB, no Content-Length
    status, _, body = request(tiny_server.url + "/v1/upscale?filename=big.png", chunks,
                              {"Content-Type": "application/octet-stream"})
    assert status == 413 and "limit" in json.loads(body)["error"]
    assert request(tiny_server.url + "/healthz")[0] == 200


def test_timeout_is_504_and_the_job_is_cleaned_up(tmp_path):
    # the work must outlast the timeout on any machine: x4 of 640x480 takes seconds on 2 cores
    server = Server(tmp_path, "--timeout", "0.25")
    try:
        src = tmp_path / "photo.png"
        Image.fromarray(_noise(480, 640, 3)).save(src)
        status, _, body, _ = upload(server, src.name, src.read_bytes())
        assert status == 504 and "timed out" in json.loads(body)["error"]
        (folder,) = server.private_folders()
        deadline = time.monotonic() + 300
        while json.loads(request(server.url + "/healthz")[2])["served"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert not list(folder.glob("job-*"))  # removed once the abandoned work ended
    finally:
        server.stop()


def test_private_temp_folder_is_emptied_and_removed(tmp_path, tiny_x2_weights):
    server = Server(tmp_path, "--weights", tiny_x2_weights, "--max-pixels", "1e6")
    try:
        (folder,) = server.private_folders()
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        src = make_images(tmp_path / "in", side=8)["rgb.png"]
        assert upload(server, src.name, src.read_bytes())[0] == 200
        assert upload(server, "bad.png", b"nope")[0] == 400
        assert not list(folder.glob("job-*"))  # removed after the reply and after the error
    finally:
        server.stop()
    assert not server.private_folders()  # removed when the server stops


def test_token_required_off_loopback(tmp_path, tiny_x2_weights):
    server = Server(tmp_path, "--weights", tiny_x2_weights, host="0.0.0.0",
                    env={"BSRN_SERVE_TOKEN": "s3cret-token"})
    try:
        assert "warning" in server.output() and "0.0.0.0" in server.output()
        src = make_images(tmp_path / "in", side=8)["rgb.png"]
        status, _, body, _ = upload(server, src.name, src.read_bytes())
        assert status == 401 and "token" in json.loads(body)["error"]
        assert upload(server, src.name, src.read_bytes(),
                      headers={"Authorization": "Bearer wrong"})[0] == 401
        assert upload(server, src.name, src.read_bytes(),
                      headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        assert request(server.url + "/v1/models")[0] == 401
        assert request(server.url + "/")[0] == 401
        assert request(server.url + "/?token=s3cret-token")[0] == 200
        assert request(server.url + "/healthz")[0] == 200
    finally:
        server.stop()


# ----------------------------------------------------------------------------- real weights
def test_real_256_x4_request_equals_cli(real_server, tmp_path):
    src = tmp_path / "photo.png"
    Image.fromarray(_noise(256, 256, 3, seed=7)).save(src)
    ref = cli_output(src, tmp_path / "cli", "--scale", "4")
    status, _, body, _ = upload(real_server, src.name, src.read_bytes(), "?scale=4",
                                retry_busy=True)
    assert status == 200, body
    assert_same_image(body, ref)
    assert Image.open(io.BytesIO(body)).size == (1024, 1024)


def test_readme_curl_example(real_server, tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    line = next(l for l in README.read_text().splitlines() if l.strip().startswith("curl -F"))
    assert line.strip() == ('curl -F file=@photo.jpg "http://127.0.0.1:7860/v1/upscale?scale=4"'
                            ' -o out.jpg')
    src = tmp_path / "photo.jpg"
    Image.fromarray(_noise(48, 64, 3, seed=5)).save(src, quality=92)
    ref = cli_output(src, tmp_path / "cli", "--scale", "4")
    command = line.strip().replace(":7860", f":{real_server.port}")
    subprocess.run(command, shell=True, cwd=tmp_path, check=True)
    assert_same_image((tmp_path / "out.jpg").read_bytes(), ref)


def _percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def test_load_mixed_burst(real_server, tmp_path):
    """16 concurrent requests (good and bad) plus one oversized upload, against a queue of 3."""
    good = make_images(tmp_path / "good", side=32)
    big = tmp_path / "good" / "photo256.png"
    Image.fromarray(_noise(256, 256, 3, seed=9)).save(big)
    good["photo256.png"] = big
    refs = {name: cli_output(p, tmp_path / "cli" / name, "--scale", "4")
            for name, p in good.items()}
    bad = make_bad(tmp_path)
    # warm up (the model loads on first use), then the memory baseline
    assert upload(real_server, big.name, big.read_bytes(), "?scale=4", retry_busy=True)[0] == 200
    time.sleep(0.5)
    rss_start = real_server.rss()

    plan = []
    for i in range(16):
        if i % 2 == 0:
            name = list(good)[(i // 2) % len(good)]
            plan.append(("good", name, good[name].read_bytes()))
        else:
            name = list(bad)[(i // 2) % len(bad)]
            plan.append(("bad", name, bad[name]))
    plan.append(("oversized", "huge.png", os.urandom(5 * 2**20)))

    peak = [rss_start]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], real_server.rss())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = threading.Barrier(len(plan))

    def send(item):
        kind, name, payload = item
        start.wait()
        t0 = time.perf_counter()
        if kind == "oversized":
            status, body = upload_expecting_continue(real_server, name, payload)
            busy = 0
        else:
            status, _, body, busy = upload(real_server, name, payload, "?scale=4",
                                           retry_busy=True)
        return kind, name, status, body, busy, time.perf_counter() - t0

    try:
        with concurrent.futures.ThreadPoolExecutor(len(plan)) as pool:
            replies = list(pool.map(send, plan))
    finally:
        stop.set()
        watcher.join()

    busy = sum(r[4] for r in replies)
    assert busy >= 1, "the queue limit never answered 503"
    for kind, name, status, body, _, _ in replies:
        if kind == "good":
            assert status == 200, (name, body)
            assert_same_image(body, refs[name])
        elif kind == "bad":
            assert 400 <= status < 500, (name, status, body)
            assert "error" in json.loads(body)
        else:
            assert status == 413, (name, status, body)

    # memory returns to about where it started; no job folder is left behind
    deadline = time.monotonic() + 20
    while real_server.rss() > rss_start * 1.15 + 32 * 2**20 and time.monotonic() < deadline:
        time.sleep(0.5)
    rss_end = real_server.rss()
    assert rss_end <= rss_start * 1.15 + 32 * 2**20, (rss_start, rss_end, peak[0])
    (folder,) = real_server.private_folders()
    assert not list(folder.glob("job-*"))

    # 256x256 x4 numbers (indicative: this is not a timed test)
    latencies = []

    def one(_):
        t0 = time.perf_counter()
        status = upload(real_server, big.name, big.read_bytes(), "?scale=4",
                        retry_busy=True)[0]
        assert status == 200
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        latencies = list(pool.map(one, range(6)))
    wall = time.perf_counter() - t0
    report = {"requests_per_s": len(latencies) / wall,
              "p50_s": _percentile(latencies, 50), "p95_s": _percentile(latencies, 95),
              "rss_start_mib": rss_start / 2**20, "rss_peak_mib": peak[0] / 2**20,
              "rss_end_mib": rss_end / 2**20, "burst_503s": busy,
              "threads": torch.get_num_threads()}
    print("\nserve load (256x256 x4, CPU):", json.dumps(report, indent=None))
    out = os.environ.get("BSRN_SERVE_REPORT")
    if out:
        Path(out).write_text(json.dumps(report, indent=2))


# ----------------------------------------------------------------------------- the page
CHROMIUM = os.environ.get("BSRN_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by Playwright (no downloaded browser)."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set BSRN_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        except Exception as e:  # noqa: BLE001 - a browser that cannot start is a skip
            pytest.skip(f"headless Chromium cannot start: {str(e).splitlines()[0]}")
        yield browser
        browser.close()


def _clip_left(page) -> float:
    """Where the slider cuts the 'after' image, in % of its width."""
    style = page.locator("#bsrn-slider img").nth(1).get_attribute("style")
    return float(re.search(r"clip-path:\s*inset\([^)]*?([\d.]+)%\)", style).group(1))


def test_page_upload_compare_download(real_server, browser, tmp_path):
    """Upload the sample photo and a small image, wait for the results, move the slider,
    download a result and the zip: they are the CLI's outputs; then show the other result. The
    screenshot is kept ($BSRN_SERVE_SCREENSHOT, else the test folder)."""
    import zipfile

    from bsrn.upscale import SAMPLE

    src = tmp_path / "photo.png"
    shutil.copy(SAMPLE, src)
    small = tmp_path / "small.png"
    Image.fromarray(_noise(24, 32, 3, seed=4)).save(small)
    refs = {p.name: cli_output(p, tmp_path / "cli" / p.stem, "--scale", "4")
            for p in (src, small)}
    ref = refs["photo.png"]
    page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page.goto(real_server.url + "/")
    page.set_input_files("#bsrn-inputs input[type=file]", [str(src), str(small)])
    for name in ("photo.png", "small.png"):  # both uploaded
        page.locator(f'#bsrn-inputs [aria-label="{name}"]').wait_for(timeout=60_000)
    page.click("#bsrn-run")
    links = page.locator("#bsrn-results a[download]")
    links.nth(2).wait_for(timeout=600_000)
    assert [links.nth(i).get_attribute("download") for i in range(links.count())] == \
        ["photo_x4.png", "small_x4.png", "bsrn_results.zip"]
    images = page.locator("#bsrn-slider img")

    def slider_sizes():
        assert images.count() == 2
        for i in range(2):
            page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                   arg=images.nth(i).element_handle(), timeout=60_000)
        return [tuple(images.nth(i).evaluate("img => [img.naturalWidth, img.naturalHeight]"))
                for i in range(2)]

    assert slider_sizes() == [Image.open(ref).size] * 2  # both sides at the result's size

    before = _clip_left(page)
    box = page.locator("#bsrn-slider .slider-wrap").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.3, y, steps=12)
    page.mouse.up()
    after = _clip_left(page)
    assert after < before - 10, (before, after)

    downloads = {}
    for i in (0, 2):
        with page.expect_download() as download:
            links.nth(i).click()
        got = tmp_path / "download" / download.value.suggested_filename
        download.value.save_as(got)
        downloads[got.name] = got
    assert_same_image(downloads["photo_x4.png"].read_bytes(), ref)
    with zipfile.ZipFile(downloads["bsrn_results.zip"]) as z:
        assert sorted(z.namelist()) == ["photo_x4.png", "small_x4.png"]
        for name, reference in refs.items():
            assert_same_image(z.read(reference.name), reference)

    shot = Path(os.environ.get("BSRN_SERVE_SCREENSHOT") or tmp_path / "serve.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.mouse.move(0, 0)
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")
    assert Image.open(shot).size[0] == 1400

    page.locator("#bsrn-pick input").click()  # show the other result
    page.get_by_role("option", name="small_x4.png").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#bsrn-slider img')].every(i => i.naturalWidth == 128"
        " && i.complete)", timeout=60_000)
    assert slider_sizes() == [Image.open(refs["small.png"]).size] * 2
    page.close()
