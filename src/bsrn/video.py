"""Video upscaling on PyAV: frames stream from the decoder through the network to the encoder.

``upscale_video(src, dst, upscaler)`` keeps what a player relies on:

- every frame, with its own timestamp (variable frame rate included), the stream's time base
  and frame rate, so the frame count and the duration do not change;
- the rotation (display matrix) and the colour tags (primaries, transfer, matrix, range); the
  YUV <-> RGB conversions use the source's matrix and range;
- audio and subtitle streams, copied packet by packet (not re-encoded), so they stay in sync.

Memory is flat in the video's length: frames are decoded, upscaled in small batches (several
frames per forward on CUDA) and encoded one batch at a time. The output is written to a hidden
``.<name>.partial<ext>`` next to it and renamed at the end, so an interrupted run never leaves a
file that looks finished; a rerun starts that video again. Needs the ``video`` extra (PyAV).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .errors import BsrnError

VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
CODECS = {"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1", "ffv1": "ffv1"}
"""``--codec`` names -> PyAV/FFmpeg encoders."""
DEFAULT_CODEC = "h264"
DEFAULT_CRF = {"h264": 18, "hevc": 20, "av1": 28}
"""Visually near-transparent quality per codec (ffv1 is lossless and takes no CRF)."""
COPIED_TYPES = ("audio", "subtitle")


class VideoError(BsrnError):
    """A video that cannot be read, encoded or written."""


@dataclass
class VideoResult:
    """What ``upscale_video`` wrote."""

    path: Path
    frames: int
    in_size: tuple[int, int]  # (height, width)
    out_size: tuple[int, int]
    codec: str
    copied: list[str]  # "audio (aac)", "subtitle (mov_text)", ...


def is_video(path) -> bool:
    """Whether ``path`` has a video file extension."""
    return Path(path).suffix.lower() in VIDEO_EXTS


def _av():
    try:
        import av
    except ImportError:
        raise VideoError("video needs PyAV: pip install \"bsrn-sr[video]\" (or pip install av)") \
            from None
    return av


def partial_path(dst) -> Path:
    """Where ``dst`` is written until it is complete: a hidden sibling ``.<stem>.partial<ext>``."""
    dst = Path(dst)
    return dst.with_name(f".{dst.stem}.partial{dst.suffix}")


# ----------------------------------------------------------------------------- probing
@dataclass
class _Probe:
    width: int
    height: int
    pix_fmt: str
    high_depth: bool
    rotation: int
    colorspace: int
    color_range: int
    color_primaries: int
    color_trc: int
    frames: int  # 0 when the container does not say


def _probe(av, src: Path) -> _Probe:
    """Properties of the first video stream, read from its first decoded frame."""
    with av.open(str(src)) as inp:
        if not inp.streams.video:
            raise VideoError(f"{src}: no video stream")
        vs = inp.streams.video[0]
        for frame in inp.decode(vs):
            fmt = frame.format
            depth = max(c.bits for c in fmt.components) if fmt.components else 8
            frames = vs.frames
            if not frames and vs.average_rate:  # estimate, for the progress bar's ETA
                seconds = (vs.duration * vs.time_base if vs.duration
                           else (inp.duration or 0) / 1e6)
                frames = round(seconds * vs.average_rate)
            return _Probe(frame.width, frame.height, fmt.name, depth > 8, int(frame.rotation or 0),
                          int(frame.colorspace), int(frame.color_range),
                          int(frame.color_primaries), int(frame.color_trc), int(frames or 0))
    raise VideoError(f"{src}: the video stream has no frames")


def _pix_fmt(av, encoder: str, probe: _Probe, w: int, h: int) -> str:
    """The encoder's pixel format closest to the source's that fits a w x h output."""
    supported = [f.name for f in av.Codec(encoder, "w").video_formats or []]
    hi = probe.high_depth
    wanted = [probe.pix_fmt, "yuv420p10le" if hi else "yuv420p", "yuv444p10le" if hi else "yuv444p",
              "yuv420p", "yuv444p"]
    for name in wanted:
        halves_w = any(k in name for k in ("420", "422", "nv12", "nv21", "nv16", "nv20"))
        halves_h = any(k in name for k in ("420", "nv12", "nv21"))
        if name in supported and not (halves_w and w % 2 or halves_h and h % 2):
            return name
    raise VideoError(f"{encoder} cannot encode a {w}x{h} frame in any of "
                     f"{', '.join(dict.fromkeys(wanted))}; use --codec ffv1 or a scale that gives "
                     "an even size")


# ----------------------------------------------------------------------------- frames
def _upscale_batch(upscaler, frames: list[np.ndarray], size: int = 1) -> list[np.ndarray]:
    """HxWx3 uint8/uint16 frames -> upscaled frames of the same dtype; one forward per batch
    when the scale is the weights' own (else frame by frame, for the bicubic resize). A short
    last batch is padded to ``size`` frames so every forward has the same shape."""
    from .tiling import forward_auto

    n = len(frames)
    peak = 65535.0 if frames[0].dtype == np.uint16 else 255.0
    stack = np.stack(frames + frames[-1:] * (size - n) if size > n else frames)
    if stack.dtype == np.uint16:
        stack = stack.astype(np.int32)  # torch has no uint16 arithmetic on every device
    x = torch.from_numpy(stack).to(upscaler.device).permute(0, 3, 1, 2).float() / peak
    if upscaler.scale == upscaler.native_scale:
        y = forward_auto(upscaler.model, x, device=upscaler.device,
                         precision=upscaler.precision, tile=upscaler.tile,
                         tile_pad=upscaler.tile_pad).clamp(0, 1)
    else:
        y = torch.cat([upscaler.upscale_planes(x[i:i + 1]) for i in range(n)])
    y = torch.floor(y[:n] * peak + 0.5).permute(0, 2, 3, 1).cpu().numpy()
    return [a.astype(frames[0].dtype) for a in y]


def default_batch(upscaler) -> int:
    """Frames per forward: 8 on CUDA (fixed shapes, so CUDA graphs and cudnn autotuning pay
    off), 1 elsewhere (no speed-up on CPU, only more memory)."""
    return 8 if upscaler.device.type == "cuda" else 1


# ----------------------------------------------------------------------------- the job
def upscale_video(src, dst, upscaler, codec: str = DEFAULT_CODEC, crf: int | None = None,
                  batch: int | None = None, progress: bool = True) -> VideoResult:
    """Upscale the first video stream of ``src`` into ``dst`` (container from its extension),
    copying audio and subtitle streams; see the module docstring for what is kept."""
    av = _av()
    src, dst = Path(src), Path(dst)
    if codec not in CODECS:
        raise VideoError(f"--codec must be one of {', '.join(CODECS)}, got {codec!r}")
    encoder = CODECS[codec]
    try:
        av.Codec(encoder, "w")
    except Exception:  # noqa: BLE001 - PyAV raises several kinds for a missing encoder
        raise VideoError(f"{src}: the {codec} encoder ({encoder}) is not in this PyAV build") \
            from None
    if crf is not None and codec == "ffv1":
        raise VideoError("--crf does not apply to ffv1 (it is lossless)")
    if crf is not None and not 0 <= crf <= 63:
        raise VideoError(f"--crf must be in 0..63, got {crf}")
    try:
        probe = _probe(av, src)
    except av.FFmpegError as e:
        raise VideoError(f"{src}: cannot read the video ({e.strerror or e})") from None
    h, w = upscaler.output_size(probe.height, probe.width)
    pix_fmt = _pix_fmt(av, encoder, probe, w, h)
    rgb_fmt = "rgb48le" if probe.high_depth else "rgb24"
    batch = batch or default_batch(upscaler)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(dst)
    tmp.unlink(missing_ok=True)  # an earlier interrupted run: start again
    try:
        result = _transcode(av, src, tmp, upscaler, codec, encoder, crf, pix_fmt, rgb_fmt,
                            probe, (h, w), batch, progress)
        os.replace(tmp, dst)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, av.FFmpegError):
            raise VideoError(f"{src}: {e.strerror or e}") from None
        raise
    result.path = dst
    return result


def _colour_kwargs(probe: _Probe) -> dict:
    return {"colorspace": probe.colorspace, "color_range": probe.color_range,
            "color_primaries": probe.color_primaries, "color_trc": probe.color_trc}


def _transcode(av, src, tmp, upscaler, codec, encoder, crf, pix_fmt, rgb_fmt, probe, size,
               batch, progress) -> VideoResult:
    from tqdm import tqdm

    h, w = size
    with av.open(str(src)) as inp, av.open(str(tmp), "w") as out:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        supported = out.supported_codecs
        if encoder not in supported and codec not in supported:
            raise VideoError(f"{src}: {tmp.suffix} files cannot hold {codec}; choose another "
                             "--codec or an .mkv output")
        rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        vout = out.add_stream(encoder, rate=rate)
        vout.width, vout.height, vout.pix_fmt = w, h, pix_fmt
        vout.time_base = vin.time_base
        cc = vout.codec_context
        cc.time_base = vin.time_base
        cc.framerate = rate
        if vin.sample_aspect_ratio:
            cc.sample_aspect_ratio = vin.sample_aspect_ratio
        for key, value in _colour_kwargs(probe).items():
            setattr(cc, key, value)
        if codec != "ffv1":
            cc.options = {"crf": str(DEFAULT_CRF[codec] if crf is None else crf)}
            if codec == "av1":
                cc.options["preset"] = "8"
                os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner otherwise
        if probe.rotation:
            vout.set_display_rotation(probe.rotation)
        copied, streams = [], {}
        for s in inp.streams:
            if s.type not in COPIED_TYPES:
                continue
            name = s.codec_context.name if s.codec_context else "?"
            if name not in supported:
                raise VideoError(f"{src}: its {s.type} stream ({name}) cannot be copied into a "
                                 f"{tmp.suffix} file; write .mkv instead (-o name.mkv)")
            streams[s.index] = out.add_stream_from_template(s)
            if s.metadata.get("language"):
                streams[s.index].metadata["language"] = s.metadata["language"]
            copied.append(f"{s.type} ({name})")

        bar = tqdm(total=probe.frames or None, desc=src.name, unit="frame", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True, leave=False)
        pending: list = []  # (rgb array, pts, duration)
        state = {"frames": 0, "last_pts": None}

        def flush():
            if not pending:
                return
            ups = _upscale_batch(upscaler, [p[0] for p in pending], batch)
            for a, (_, pts, dur) in zip(ups, pending):
                f = av.VideoFrame.from_ndarray(a, format=rgb_fmt)
                f = f.reformat(format=pix_fmt, dst_colorspace=probe.colorspace,
                               dst_color_range=probe.color_range)
                for key, value in _colour_kwargs(probe).items():
                    setattr(f, key, value)
                f.pts, f.time_base = pts, vin.time_base
                if dur:
                    f.duration = dur
                out.mux(vout.encode(f))
            bar.update(len(pending))
            pending.clear()

        step = max(1, round(1 / (rate * vin.time_base))) if vin.time_base else 1
        for packet in inp.demux([vin, *(inp.streams[i] for i in streams)]):
            if packet.stream.index in streams:
                if not packet.size:  # the demuxer's end-of-stream marker
                    continue
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
                continue
            for frame in packet.decode():
                pts = frame.pts
                last = state["last_pts"]
                if pts is None or (last is not None and pts <= last):
                    pts = step * state["frames"] if last is None else last + step
                state["last_pts"] = pts
                a = frame.to_ndarray(format=rgb_fmt, src_colorspace=probe.colorspace,
                                     src_color_range=probe.color_range)
                pending.append((a, pts, frame.duration))
                state["frames"] += 1
                if len(pending) >= batch:
                    flush()
        flush()
        out.mux(vout.encode(None))
        bar.close()
    return VideoResult(tmp, state["frames"], (probe.height, probe.width), (h, w), codec, copied)
