"""``bsrn serve``: a local web page and an HTTP API over loaded ``Upscaler``s, in one process.

- ``UpscaleService``: the engine behind both. It admits a bounded number of jobs (running plus
  waiting; beyond that ``Busy``, HTTP 503 with ``Retry-After``), runs them on ``workers``
  threads (one on a GPU, so jobs are serialised there) that share the CPU threads, gives up on
  a job after ``timeout`` seconds, and keeps every upload and result in a private temp folder
  that is removed after each reply, on error and at shutdown. A job is exactly ``bsrn upscale``
  on one file (``Upscaler.upscale_file``), so a reply is byte for byte what the CLI writes.
- ``create_app(service)``: the FastAPI app: ``POST /v1/upscale``, ``GET /v1/models``,
  ``GET /healthz``, the OpenAPI schema at ``/openapi.json``, JSON errors ``{"error": "..."}``,
  and the Gradio page (``gr.ImageSlider`` for before/after) mounted at ``/``.
- ``serve(...)``: runs it with uvicorn; loopback by default, a token everywhere else.
"""
import asyncio
import atexit
import concurrent.futures
import ctypes
import ipaddress
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from .errors import BsrnError, ConfigError, ImageError
from .image_io import IMAGE_EXTS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
TOKEN_ENV = "BSRN_SERVE_TOKEN"
TOKEN_COOKIE = "bsrn_token"
FORMATS = ("auto",) + tuple(e[1:] for e in IMAGE_EXTS)
_MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
                ".webp": "image/webp"}
_CHUNK = 1 << 20


# ----------------------------------------------------------------------------- errors
class ServeError(BsrnError):
    """A request the server refuses; ``status`` is its HTTP code."""

    status = 400


class TooLarge(ServeError):
    status = 413


class UnknownWeights(ServeError):
    status = 404


class Busy(ServeError):
    """The queue is full: try again after ``retry_after`` seconds."""

    status = 503

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class TimedOut(ServeError):
    status = 504


# ----------------------------------------------------------------------------- limits
@dataclass
class Limits:
    """What one server accepts. ``max_pixels`` bounds an input's width x height (and the output
    to ``max_pixels * 16``); ``queue`` jobs wait beyond the ``workers`` that run; ``threads``
    is the CPU thread count of each worker (None: the cores shared among the workers)."""

    max_upload_bytes: int = 50 * 2**20
    max_pixels: int = 16_000_000
    workers: int = 1
    queue: int = 8
    timeout: float = 300.0
    threads: int | None = None

    def __post_init__(self):
        if self.max_upload_bytes <= 0 or self.max_pixels <= 0:
            raise ConfigError("max upload size and max pixels must be > 0")
        if self.workers < 1 or self.queue < 0:
            raise ConfigError("workers must be >= 1 and queue >= 0")
        if not self.timeout > 0:
            raise ConfigError("timeout must be > 0 seconds")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("threads must be >= 1")


# ----------------------------------------------------------------------------- weights
def user_weights() -> dict[str, Path]:
    """Weights in the user's weights folder (``bsrn weights``), where this install has one."""
    try:
        from .weights_folder import user_weights as find
    except ImportError:
        return {}
    try:
        return dict(find())
    except (BsrnError, OSError, ImportError):
        return {}


def _release_memory() -> None:
    """Give freed heap pages back to the system (glibc), so a server's size follows its load."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _safe_name(filename: str | None) -> str:
    """A client's file name reduced to a harmless base name (never a path)."""
    name = re.sub(r"[^\w.\- ]", "_", Path((filename or "").replace("\\", "/")).name).strip(" .")
    return name[:120] or "image"


# ----------------------------------------------------------------------------- the service
@dataclass
class Result:
    """One upscaled file: its bytes, a download name and its media type."""

    data: bytes
    filename: str
    media_type: str


class Job:
    """One admitted request: a private folder; ``close()`` removes it and frees the place."""

    def __init__(self, service: "UpscaleService", folder: Path):
        self.service, self.folder = service, folder
        self.deadline = time.monotonic() + service.limits.timeout
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            shutil.rmtree(self.folder, ignore_errors=True)
            self.service._release()


class UpscaleService:
    """Upscaling behind the page and the API: bounded admission, worker threads, a private
    temp folder, and a small cache of loaded ``Upscaler``s (one per weights and scale).

    ``weights``: the default weights (a bundled name or a file; None: the bundled BSRN for the
    requested scale). ``device``/``precision``/``backend`` go to ``Upscaler``.
    """

    def __init__(self, weights: str | None = None, device="auto", precision: str = "fp32",
                 backend: str | None = None, limits: Limits | None = None,
                 max_models: int = 2):
        from .precision import resolve_device

        self.limits = limits or Limits()
        self.device = resolve_device(device)
        self.precision = precision
        self.backend = backend
        if backend is not None:
            from .upscale import Upscaler

            if not _takes(Upscaler, "backend"):
                raise ConfigError(f"--backend {backend}: this install's Upscaler has no "
                                  "backends")
        self.workers = 1 if self.device.type != "cpu" else self.limits.workers
        self.threads = self.limits.threads or max(1, (os.cpu_count() or 1) // self.workers)
        if self.device.type == "cpu":
            import torch

            torch.set_num_threads(self.threads)
        self.default_weights = None
        self._weights_files: dict[str, Path] = {}
        if weights is not None:
            from .checkpoint import bundled_weights, resolve_weights

            path = resolve_weights(weights)
            self.default_weights = str(weights) if str(weights) in bundled_weights() \
                else path.stem
            self._weights_files[self.default_weights] = path
        self.folder = Path(tempfile.mkdtemp(prefix="bsrn-serve-"))  # mode 0700
        atexit.register(self.close)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers,
                                                           thread_name_prefix="bsrn-serve")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        self._models: OrderedDict = OrderedDict()
        self._max_models = max_models
        self._model_lock = threading.Lock()
        self.served = 0
        self._seconds_per_job = 1.0  # running average, for Retry-After

    # -- weights
    def weights(self) -> dict[str, Path]:
        """Names a client may ask for -> files: bundled, the user's folder, the server's own."""
        from .checkpoint import bundled_weights

        bundled = bundled_weights()
        user = {k: v for k, v in user_weights().items() if k not in bundled}
        return {**bundled, **user, **self._weights_files}

    def models(self) -> list[dict]:
        """``GET /v1/models``: one entry per weights name (no server paths)."""
        from .checkpoint import bundled_weights

        bundled, user = bundled_weights(), user_weights()
        out = []
        for name in self.weights():
            m = re.search(r"x(\d+)", name)
            out.append({"name": name, "scale": int(m.group(1)) if m else None,
                        "source": "bundled" if name in bundled else
                        "user" if name in user else "server",
                        "default": name == self.default_weights})
        return out

    def upscaler(self, weights: str | None, scale: float | None):
        """The loaded ``Upscaler`` for (weights, scale), loading it on first use."""
        from .upscale import Upscaler, _check_scale

        weights = weights or self.default_weights
        scale = _check_scale(scale)
        if weights is not None and weights not in self.weights():
            raise UnknownWeights(f"unknown weights {weights!r}; GET /v1/models lists them")
        key = (weights, scale)
        with self._model_lock:
            up = self._models.get(key)
            if up is None:
                kwargs = {}
                if self.backend is not None:  # the engine's backends (Upscaler(backend=...))
                    kwargs["backend"] = self.backend
                if self.device.type == "cpu" and _takes(Upscaler, "threads"):
                    kwargs["threads"] = self.threads
                path = self.weights()[weights] if weights is not None else None
                up = Upscaler(path, scale=scale, device=self.device, precision=self.precision,
                              **kwargs)
                self._models[key] = up
                while len(self._models) > self._max_models:
                    self._models.popitem(last=False)
            self._models.move_to_end(key)
            return up

    # -- admission
    def admit(self) -> Job:
        """A place in the queue, or ``Busy`` when ``workers + queue`` jobs are already in."""
        with self._lock:
            if self._admitted >= self.workers + self.limits.queue:
                wait = self._seconds_per_job * self._admitted / self.workers
                raise Busy(f"server busy: {self._admitted} jobs running or waiting; retry later",
                           retry_after=max(1, math.ceil(wait)))
            self._admitted += 1
        folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.folder))
        return Job(self, folder)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1
        _release_memory()

    def state(self) -> dict:
        with self._lock:
            return {"running": self._running, "waiting": self._admitted - self._running,
                    "workers": self.workers, "queue": self.limits.queue, "served": self.served}

    # -- jobs
    def submit(self, job: Job, src: Path, filename: str, scale=None, weights=None,
               fmt: str | None = None) -> concurrent.futures.Future:
        """Run ``upscale`` on a worker; the job is closed when it ends, however it ends."""
        def run():
            try:
                if time.monotonic() > job.deadline:
                    raise TimedOut(f"{filename}: timed out after {self.limits.timeout:g} s in "
                                   "the queue")
                with self._lock:
                    self._running += 1
                t0 = time.monotonic()
                try:
                    return self.upscale(src, filename, scale, weights, fmt, job.folder)
                finally:
                    with self._lock:
                        self._running -= 1
                        self.served += 1
                        self._seconds_per_job += 0.2 * (time.monotonic() - t0
                                                        - self._seconds_per_job)
            finally:
                job.close()
        return self._pool.submit(run)

    def upscale(self, src: Path, filename: str, scale=None, weights=None, fmt: str | None = None,
                folder: Path | None = None) -> Result:
        """``bsrn upscale`` of one uploaded file: the output name and format follow the CLI
        (``<stem>_x<scale><ext>``, the upload's extension unless ``fmt``; PNG for alpha)."""
        from PIL import Image

        fmt = (fmt or "auto").lower().lstrip(".")
        if fmt not in FORMATS:
            raise ServeError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        up = self.upscaler(weights, scale)
        name = _safe_name(filename)
        stem, ext = Path(name).stem or "image", Path(name).suffix.lower()
        try:
            with Image.open(src) as im:
                w, h = im.size
        except Exception:  # noqa: BLE001 - read_image below names the problem
            w = h = 0
        oh, ow = up.output_size(h, w) if w and h else (0, 0)
        if w * h > self.limits.max_pixels or ow * oh > 16 * self.limits.max_pixels:
            raise TooLarge(f"{name}: {w}x{h} -> {ow}x{oh} is over this server's limit of "
                           f"{self.limits.max_pixels:,} input pixels")
        if fmt != "auto":
            ext = "." + fmt
        elif ext not in IMAGE_EXTS:  # as `bsrn upscale` names such inputs' outputs
            ext = ".png"
        dst = Path(folder or self.folder) / f"{stem}_x{up.scale:g}{ext}"
        try:
            _, _, written = up.upscale_file(src, dst, max_pixels=self.limits.max_pixels)
        except ImageError as e:  # name the client's file, never a server path
            raise ImageError(str(e).replace(str(src), name).replace(str(dst), dst.name)) \
                from None
        data = written.read_bytes()
        written.unlink(missing_ok=True)
        return Result(data, written.name, _MEDIA_TYPES.get(written.suffix, "image/png"))

    def close(self) -> None:
        """Stop the workers and remove the private temp folder."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def _takes(cls, name: str) -> bool:
    import inspect

    return name in inspect.signature(cls).parameters


# ----------------------------------------------------------------------------- HTTP
def _json_error(status: int, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Guard:
    """ASGI middleware: the access token (when set) and the API's upload size limit.

    An upload over the limit gets 413. One that overshoots by little (up to ``DRAIN`` times the
    limit) is read to its end first, so that clients which send the whole body before reading
    the reply see the 413 rather than a reset connection; a larger one is cut off at once.
    """

    DRAIN = 4

    def __init__(self, app, token: str | None, max_bytes: int):
        self.app, self.token, self.max_bytes = app, token, max_bytes

    def _token_of(self, scope) -> tuple[str | None, bool]:
        from http.cookies import SimpleCookie
        from urllib.parse import parse_qs

        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        if query:
            return query[0], True
        cookie = SimpleCookie(headers.get("cookie", "")).get(TOKEN_COOKIE)
        return (cookie.value if cookie else None), False

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.token and path != "/healthz":
            given, from_query = self._token_of(scope)
            if not given or not secrets.compare_digest(given, self.token):
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008})
                return await _json_error(401, "missing or wrong token (Authorization: Bearer "
                                              "TOKEN, or ?token=TOKEN)")(scope, receive, send)
            if from_query:  # the page keeps it as a cookie for its own requests
                send = _with_cookie(send, self.token)
        if scope["type"] == "http" and path.startswith("/v1/"):
            limit = self.max_bytes + 65536  # room for the multipart framing
            length = dict(scope.get("headers", [])).get(b"content-length", b"")
            if length.isdigit() and int(length) > limit:
                if int(length) <= self.DRAIN * limit:
                    await _drain(receive, self.DRAIN * limit)
                return await _json_error(413, f"upload of {int(length):,} bytes is over this "
                                              f"server's limit of {self.max_bytes:,}")(
                    scope, receive, send)
            receive = _counting(receive, limit, self.DRAIN * limit, self.max_bytes)
        return await self.app(scope, receive, send)


def _with_cookie(send, token: str):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            cookie = f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
            message = {**message, "headers": list(message.get("headers", []))
                       + [(b"set-cookie", cookie.encode("latin-1"))]}
        await send(message)
    return wrapped


async def _drain(receive, budget: int, seen: int = 0) -> None:
    """Read and drop the rest of a request body, up to ``budget`` bytes in all."""
    while seen <= budget:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _counting(receive, limit: int, budget: int, shown: int):
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                if message.get("more_body", False):
                    await _drain(receive, budget, seen)
                raise TooLarge(f"upload is over this server's limit of {shown:,} bytes")
        return message
    return wrapped


_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "responses": {
        "200": {"description": "the upscaled image, as `bsrn upscale` writes it",
                "content": {t: {} for t in sorted(set(_MEDIA_TYPES.values()))}},
        "400": {"description": "bad image or parameter"},
        "404": {"description": "unknown weights"},
        "413": {"description": "upload or image too large"},
        "503": {"description": "queue full; see Retry-After"},
        "504": {"description": "timed out"},
    },
}


def create_app(service: UpscaleService, token: str | None = None, page: bool = True):
    """The FastAPI app: the API under ``/v1``, ``/healthz``, and the page at ``/``."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException

    from . import __version__

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    app = FastAPI(title="bsrn", version=__version__, lifespan=lifespan,
                  description="BSRN super-resolution: upscale images over HTTP.")

    @app.exception_handler(BsrnError)
    async def _bsrn_error(request, e: BsrnError):
        headers = {"Retry-After": str(e.retry_after)} if isinstance(e, Busy) else None
        return _json_error(getattr(e, "status", 400), str(e), headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        return _json_error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return _json_error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _crash(request, e: Exception):
        return _json_error(500, f"internal error ({type(e).__name__})")

    @app.get("/healthz", summary="Health")
    def healthz():
        return {"status": "ok", **service.state()}

    @app.get("/v1/models", summary="Available weights")
    def models():
        return {"models": service.models()}

    @app.post("/v1/upscale", summary="Upscale one image", openapi_extra=_UPLOAD_DOC,
              response_class=Response)
    async def upscale(request: Request,
                      scale: float | None = Query(None, description="output scale (default: "
                                                  "the weights' scale, 4 for the default)"),
                      weights: str | None = Query(None, description="a name from /v1/models"),
                      format: str = Query("auto", description="output format: "
                                          + ", ".join(FORMATS)),
                      filename: str | None = Query(None, description="name of a raw-body "
                                                   "upload (its extension picks the format)")):
        job = service.admit()
        submitted = False
        try:
            src, name = await _receive_upload(request, job.folder, filename)
            future = service.submit(job, src, name, scale, weights, format)
            submitted = True
            try:
                result = await asyncio.wait_for(asyncio.wrap_future(future),
                                                max(0.0, job.deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise TimedOut(f"{name}: timed out after {service.limits.timeout:g} s") \
                    from None
        finally:
            if not submitted:
                job.close()
        quoted = result.filename.replace('"', "")
        return Response(result.data, media_type=result.media_type,
                        headers={"Content-Disposition": f'attachment; filename="{quoted}"'})

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                   include_in_schema=False)
    def unknown(rest: str):
        return _json_error(404, f"no API endpoint /v1/{rest} (see /docs)")

    if page:
        import gradio as gr

        from .serve_page import build_page

        app = gr.mount_gradio_app(app, build_page(service), path="",
                                  max_file_size=service.limits.max_upload_bytes,
                                  footer_links=[])
    app.add_middleware(_Guard, token=token, max_bytes=service.limits.max_upload_bytes)
    return app


async def _receive_upload(request, folder: Path, filename: str | None) -> tuple[Path, str]:
    """Store the request's image (a multipart ``file`` field or the raw body) in ``folder``."""
    ctype = request.headers.get("content-type", "")
    src = folder / "upload"
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=8)
        try:
            part = form.get("file")
            if part is None or isinstance(part, str):
                raise ServeError("multipart upload without a 'file' part (curl -F file=@IMAGE)")
            name = _safe_name(part.filename or filename)
            with open(src, "wb") as f:
                while chunk := await part.read(_CHUNK):
                    f.write(chunk)
        finally:
            await form.close()
    else:
        name = _safe_name(filename)
        with open(src, "wb") as f:
            async for chunk in request.stream():
                f.write(chunk)
    if src.stat().st_size == 0:
        raise ImageError(f"{name}: empty upload")
    return src, name


# ----------------------------------------------------------------------------- running it
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); choose another "
                              "--port or --host") from None


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, weights: str | None = None,
          device="auto", precision: str = "fp32", backend: str | None = None,
          limits: Limits | None = None, token: str | None = None, log=print) -> None:
    """Serve the page and the API until interrupted. Binding beyond loopback requires a token
    (``token``, else ``$BSRN_SERVE_TOKEN``, else a new random one that is printed)."""
    import uvicorn

    token = token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(host):
        log(f"bsrn serve: warning: listening on {host}, reachable from other machines; every "
            "request must carry the token")
        if not token:
            token = secrets.token_urlsafe(24)
            log(f"bsrn serve: token: {token}")
    _check_port(host, port)
    service = UpscaleService(weights, device=device, precision=precision, backend=backend,
                             limits=limits)
    # Everything this process spools (multipart parts, the page's uploads) stays in its folder.
    tempfile.tempdir = str(service.folder)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(service.folder / "page"))
    try:
        app = create_app(service, token=token)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
        log(f"bsrn serve: {url} (API: /v1/upscale, /v1/models, /docs); Ctrl+C stops")
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        service.close()
