"""Video upscaling (``bsrn upscale clip.mp4``) on clips made here with PyAV: frame count,
timestamps, duration, audio and subtitles, rotation, colour tags, codecs, interruption."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av", reason="video needs PyAV (the video extra)")

from bsrn.cli import main  # noqa: E402
from bsrn.upscale import Upscaler  # noqa: E402
from bsrn.video import VideoError, partial_path, upscale_video  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
NTSC = Fraction(30000, 1001)


def make_clip(path, n=30, w=48, h=36, rate=NTSC, audio=True, vfr=False, rotation=0,
              codec="libx264", subtitles=None):
    """A textured clip (frame i has mean grey 3 i mod 256) with optional AAC stereo audio
    as long as the video, variable frame durations, a display rotation and an .srt track."""
    rng = np.random.default_rng(0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = path.with_name("body_" + path.name) if subtitles else path
    with av.open(str(body), "w") as out:
        vs = out.add_stream(codec, rate=rate)
        vs.width, vs.height = w, h
        vs.pix_fmt = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
        tb = Fraction(1, 90000) if vfr else 1 / rate
        vs.time_base = vs.codec_context.time_base = tb
        cc = vs.codec_context
        cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range = 1, 1, 1, 1  # BT.709, tv
        if rotation:
            vs.set_display_rotation(rotation)
        a = out.add_stream("aac", rate=48000, layout="stereo") if audio else None
        pts = 0
        for i in range(n):
            img = ((i * 3) % 216 + rng.integers(0, 40, (h, w, 3))).astype(np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(
                format=vs.pix_fmt, dst_colorspace=1, dst_color_range=1)
            f.pts, f.time_base = pts, tb
            pts += (3000 if i % 2 else 6000) if vfr else 1
            out.mux(vs.encode(f))
        out.mux(vs.encode(None))
        if a is not None:
            total, t = int(float(pts * tb) * 48000), 0
            while t < total:
                k = min(1024, total - t)
                s = (0.1 * np.sin(2 * np.pi * 440 * np.arange(t, t + k) / 48000))
                fr = av.AudioFrame.from_ndarray(np.stack([s, s]).astype(np.float32),
                                                format="fltp", layout="stereo")
                fr.sample_rate, fr.pts, fr.time_base = 48000, t, Fraction(1, 48000)
                out.mux(a.encode(fr))
                t += k
            out.mux(a.encode(None))
    if subtitles:
        srt = path.with_suffix(".srt")
        srt.write_text(subtitles)
        with av.open(str(body)) as b, av.open(str(srt)) as s, av.open(str(path), "w") as out:
            packets = []
            for c in (b, s):
                m = {st.index: out.add_stream_from_template(st) for st in c.streams}
                packets += [((p.dts if p.dts is not None else p.pts) * p.time_base, p,
                             m[p.stream.index]) for p in c.demux() if p.size]
            for _, p, stream in sorted(packets, key=lambda t: t[0]):
                p.stream = stream
                out.mux(p)
        body.unlink()
        srt.unlink()
    return path


def info(path):
    """Streams, frame pts, frame count, rotation and colour of a file, read back by decoding."""
    with av.open(str(path)) as c:
        streams = {s.type: s for s in c.streams}
        v = c.streams.video[0]
        d = {"types": sorted(s.type for s in c.streams), "time_base": v.time_base,
             "rate": v.average_rate, "codec": v.codec_context.name}
        frames = list(c.decode(video=0))
        f0 = frames[0]
        d.update(n=len(frames), pts=[f.pts for f in frames], size=(f0.height, f0.width),
                 rotation=f0.rotation, colour=(f0.color_primaries, f0.color_trc, f0.colorspace,
                                               f0.color_range),
                 rgb=[f.to_ndarray(format="rgb24", src_colorspace=f.colorspace,
                                   src_color_range=f.color_range) for f in frames])
    with av.open(str(path)) as c:
        dur = {}
        for s in c.streams:
            last = [(p.pts + (p.duration or 0)) * p.time_base for p in c.demux(s)
                    if p.pts is not None]
            dur[s.type] = float(max(last))
            d.setdefault("packets", {})[s.type] = len(last)
            c.seek(0)
        d["end"] = dur
    d["streams"] = streams
    return d


def upscale_cli(capsys, weights, *args):
    rc = main(["upscale", "--weights", weights, "--device", "cpu", "-q", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------- must show
def test_ntsc_10s_with_aac_keeps_frames_duration_and_audio(tmp_path, capsys, tiny_x2_weights):
    clip = make_clip(tmp_path / "clip.mp4", n=300)  # 10.01 s at 30000/1001
    rc, out, err = upscale_cli(capsys, tiny_x2_weights, clip, "-o", tmp_path / "out")
    assert rc == 0, err
    res = tmp_path / "out" / "clip_x2.mp4"
    a, b = info(clip), info(res)
    assert b["n"] == a["n"] == 300
    assert b["size"] == (72, 96)
    assert b["rate"] == NTSC and b["time_base"] == a["time_base"]
    assert b["pts"] == a["pts"]
    assert abs(b["end"]["video"] - a["end"]["video"]) <= 1001 / 30000
    assert b["types"] == ["audio", "video"]
    assert b["end"]["audio"] == pytest.approx(a["end"]["audio"], abs=1e-9)  # copied as is
    assert b["packets"]["audio"] == a["packets"]["audio"] > 469  # 10.01 s of 1024 samples
    assert "1 video (300 frames) upscaled x2" in out


@pytest.mark.slow
def test_kill_mid_run_leaves_nothing_that_looks_finished(tmp_path, capsys, tiny_x2_weights):
    clip = make_clip(tmp_path / "in" / "clip.mp4", n=300, audio=True)
    out_dir = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "bsrn", "upscale", str(tmp_path / "in"), "-o", str(out_dir),
           "--weights", tiny_x2_weights, "--device", "cpu", "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = partial_path(out_dir / "clip_x2.mp4")
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.stat().st_size > 0) and proc.poll() is None:
        assert time.monotonic() < deadline, "the partial file never appeared"
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out_dir / "clip_x2.mp4").exists()
    assert [p.name for p in out_dir.iterdir()] == [".clip_x2.partial.mp4"]
    # a rerun neither takes the partial file as an input nor as a finished output
    rc, out, err = upscale_cli(capsys, tiny_x2_weights, tmp_path / "in", "-o", out_dir,
                               "--skip-existing")
    assert rc == 0, err
    assert "1 video (300 frames) upscaled" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["clip_x2.mp4"]
    assert info(out_dir / "clip_x2.mp4")["n"] == 300


def test_exception_mid_stream_removes_the_partial_file(tmp_path, tiny_x2_weights, monkeypatch):
    import bsrn.video

    clip = make_clip(tmp_path / "clip.mp4", n=20)
    calls = []
    real = bsrn.video._upscale_batch

    def failing(up, frames, size=1):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(up, frames, size)

    monkeypatch.setattr(bsrn.video, "_upscale_batch", failing)
    dst = tmp_path / "out" / "clip_x2.mp4"
    with pytest.raises(KeyboardInterrupt):
        upscale_video(clip, dst, Upscaler(tiny_x2_weights, device="cpu"), progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_batches_of_frames_equal_frame_by_frame(tiny_x2_weights):
    """Several frames per forward (the CUDA default; forced here on CPU), the short last batch
    padded to the same shape, give each frame's own result."""
    from bsrn.video import _upscale_batch

    up = Upscaler(tiny_x2_weights, device="cpu")
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (20, 26, 3), dtype=np.uint8) for _ in range(3)]
    got = _upscale_batch(up, frames, size=4)
    assert len(got) == 3
    for f, g in zip(frames, got):
        assert g.dtype == np.uint8 and g.shape == (40, 52, 3)
        assert np.abs(up.upscale(f).astype(int) - g).max() <= 1
    deep = [(f.astype(np.uint16) * 257) for f in frames[:2]]
    for f, g in zip(deep, _upscale_batch(up, deep, size=2)):
        assert g.dtype == np.uint16
        assert np.abs(up.upscale(f).astype(int) - g).max() <= 300


# ----------------------------------------------------------------------------- kinds of clips
def test_vfr_odd_size_rotation_and_colour_tags(tmp_path, tiny_x2_weights):
    clip = make_clip(tmp_path / "vfr.mp4", n=24, w=47, h=35, vfr=True, rotation=90)
    dst = tmp_path / "vfr_x2.mp4"
    r = upscale_video(clip, dst, Upscaler(tiny_x2_weights, device="cpu"), progress=False)
    a, b = info(clip), info(dst)
    assert r.frames == b["n"] == a["n"] == 24
    assert b["size"] == (70, 94)
    assert b["pts"] == a["pts"]  # each frame keeps its own time: 6000, 3000, 6000, ... ticks
    assert len(set(np.diff(b["pts"]))) == 2
    assert b["rotation"] == a["rotation"] == 90
    assert b["colour"] == a["colour"] == (1, 1, 1, 1)
    assert abs(b["end"]["video"] - a["end"]["video"]) <= 6000 / 90000
    assert b["end"]["audio"] == pytest.approx(a["end"]["audio"], abs=1e-9)


def test_subtitles_and_audio_are_copied_in_mkv(tmp_path, tiny_x2_weights):
    srt = "1\n00:00:00,100 --> 00:00:00,400\nhello\n\n2\n00:00:00,500 --> 00:00:00,900\nworld\n"
    clip = make_clip(tmp_path / "sub.mkv", n=30, subtitles=srt)
    dst = tmp_path / "sub_x2.mkv"
    r = upscale_video(clip, dst, Upscaler(tiny_x2_weights, device="cpu"), progress=False)
    assert r.copied == ["audio (aac)", "subtitle (subrip)"] or r.copied == [
        "audio (aac)", "subtitle (srt)"]
    with av.open(str(dst)) as c:
        subs = [(p.pts, bytes(p)) for p in c.demux(subtitles=0) if p.pts is not None]
        tb = c.streams.subtitles[0].time_base
    assert [float(p * tb) for p, _ in subs] == [0.1, 0.5]
    assert [t for _, t in subs] == [b"hello", b"world"]
    assert info(dst)["n"] == 30


@pytest.mark.parametrize("codec,ext", [("hevc", ".mp4"), ("av1", ".mkv"), ("ffv1", ".mkv")])
def test_codecs(tmp_path, tiny_x2_weights, codec, ext):
    clip = make_clip(tmp_path / f"c{ext}", n=12, audio=False)
    dst = tmp_path / f"c_x2{ext}"
    upscale_video(clip, dst, Upscaler(tiny_x2_weights, device="cpu"), codec=codec,
                  progress=False)
    b = info(dst)
    assert b["codec"] == {"hevc": "hevc", "av1": "libdav1d", "ffv1": "ffv1"}.get(codec) or \
        b["codec"] in ("av1", "libaom-av1")
    assert b["n"] == 12 and b["size"] == (72, 96)


def yuv_round_trip(rgb, pix_fmt="yuv420p"):
    """What a BT.709 limited-range YUV frame of ``rgb`` decodes back to."""
    f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    f = f.reformat(format=pix_fmt, dst_colorspace=1, dst_color_range=1)
    return f.to_ndarray(format="rgb24", src_colorspace=1, src_color_range=1)


def test_lossless_frames_are_the_image_upscalers_results_in_order(tmp_path):
    """Each ffv1 frame is ``Upscaler.upscale`` of its own input frame (bundled bsrn-x2), up to
    the RGB -> YUV 4:2:0 -> RGB round trip of the output format, and nobody else's."""
    clip = make_clip(tmp_path / "c.mkv", n=6, audio=False)
    dst = tmp_path / "c_x2.mkv"
    up = Upscaler("bsrn-x2", device="cpu")
    upscale_video(clip, dst, up, codec="ffv1", progress=False)
    a, b = info(clip), info(dst)
    assert a["n"] == b["n"] == 6
    ref = [yuv_round_trip(up.upscale(x)).astype(np.float32) for x in a["rgb"]]
    got = [y.astype(np.float32) for y in b["rgb"]]
    for i, g in enumerate(got):
        diffs = [np.abs(g - r).mean() for r in ref]
        assert diffs[i] < 0.5, diffs
        assert np.argmin(diffs) == i and sorted(diffs)[1] > 4 * diffs[i]


def test_folder_mixing_videos_and_images(tmp_path, capsys, tiny_x2_weights):
    from PIL import Image

    src = tmp_path / "in"
    make_clip(src / "clip.mkv", n=10)
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(src / "still.png")
    rc, out, err = upscale_cli(capsys, tiny_x2_weights, src, "-o", tmp_path / "out",
                               "--codec", "ffv1", "--ext", "jpg")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip_x2.mkv",
                                                                   "still_x2.jpg"]
    assert info(tmp_path / "out" / "clip_x2.mkv")["codec"] == "ffv1"
    assert "1 video (10 frames) and 1 image upscaled x2" in out


def test_bad_video_is_one_line(tmp_path, capsys, tiny_x2_weights):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    rc, out, err = upscale_cli(capsys, tiny_x2_weights, bad, "-o", tmp_path / "out")
    assert rc == 1
    line = [ln for ln in err.splitlines() if "error" in ln]
    assert len(line) == 1 and "bad.mp4" in line[0] and "Traceback" not in err
    assert not any((tmp_path / "out").glob("*bad*")) if (tmp_path / "out").exists() else True


def test_crf_checks(tmp_path, tiny_x2_weights):
    clip = make_clip(tmp_path / "c.mp4", n=2, audio=False)
    up = Upscaler(tiny_x2_weights, device="cpu")
    with pytest.raises(VideoError, match="ffv1"):
        upscale_video(clip, tmp_path / "o.mkv", up, codec="ffv1", crf=10, progress=False)
    with pytest.raises(VideoError, match="0..63"):
        upscale_video(clip, tmp_path / "o.mp4", up, crf=99, progress=False)


def test_ten_bit_video_stays_ten_bit(tmp_path, tiny_x2_weights):
    src = tmp_path / "ten.mkv"
    with av.open(str(src), "w") as out:
        s = out.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 48, 36, "yuv420p10le"
        for i in range(4):
            a = np.random.default_rng(i).integers(0, 65536, (36, 48, 3)).astype(np.uint16)
            f = av.VideoFrame.from_ndarray(a, format="rgb48le").reformat(format="yuv420p10le")
            f.pts = i
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    dst = tmp_path / "ten_x2.mkv"
    upscale_video(src, dst, Upscaler(tiny_x2_weights, device="cpu"), progress=False)
    b = info(dst)
    assert b["n"] == 4 and b["size"] == (72, 96)
    with av.open(str(dst)) as c:
        assert next(c.decode(video=0)).format.name == "yuv420p10le"


# ----------------------------------------------------------------------------- the output plan
def test_plan_videos_keep_their_container_and_need_a_video_name(tmp_path):
    from bsrn.batch import collect_inputs, plan_outputs

    src = tmp_path / "in"
    make_clip(src / "clip.MKV", n=2, audio=False)
    (src / ".clip_x2.partial.mp4").write_bytes(b"left by a killed run")  # hidden: no input
    found, problems = collect_inputs([src], output=tmp_path / "out", suffix="_x2")
    assert [f.name for f, _ in found] == ["clip.MKV"] and not problems
    plan = plan_outputs(found, tmp_path / "out", "_x2", ext="jpg")
    assert [j.dst.name for j in plan.jobs] == ["clip_x2.mkv"] and not plan.failed
    assert plan_outputs(found, tmp_path / "o.webm", "_x2").jobs[0].dst == tmp_path / "o.webm"
    plan = plan_outputs(found, tmp_path / "o.png", "_x2")
    assert not plan.jobs and "a video needs a video output name" in plan.failed[0][1]
    png = tmp_path / "still.png"
    png.write_bytes(b"")
    plan = plan_outputs([(png, Path(png.name))], tmp_path / "o.mp4", "_x2",
                        probe=lambda *a: pytest.fail("an image bound for a video name"))
    assert not plan.jobs and "names a video" in plan.failed[0][1]


def test_an_input_where_a_partial_file_would_go_is_refused_and_kept(tmp_path, capsys,
                                                                     tiny_x2_weights):
    clip = make_clip(tmp_path / "clip.mp4", n=2, audio=False)
    user = partial_path(tmp_path / "clip_x2.mp4")
    user.write_bytes(b"the user's own file")
    rc, out, err = upscale_cli(capsys, tiny_x2_weights, clip, user, "-o", tmp_path)
    assert rc == 1 and user.read_bytes() == b"the user's own file"
    assert f"{clip}: output {user} would overwrite the input {user}" in err
    assert not (tmp_path / "clip_x2.mp4").exists() and "Traceback" not in err


def test_skip_existing_skips_a_finished_video_only(tmp_path, capsys, tiny_x2_weights):
    clip = make_clip(tmp_path / "in" / "clip.mp4", n=3, audio=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    partial_path(out_dir / "clip_x2.mp4").write_bytes(b"killed")
    rc, out, err = upscale_cli(capsys, tiny_x2_weights, clip, "-o", out_dir, "--skip-existing")
    assert rc == 0 and "1 video (3 frames) upscaled" in out, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["clip_x2.mp4"]
    mtime = (out_dir / "clip_x2.mp4").stat().st_mtime_ns
    rc, out, err = upscale_cli(capsys, tiny_x2_weights, clip, "-o", out_dir, "--skip-existing")
    assert rc == 0 and "1 skipped" in out and "0 images upscaled" in out, err
    assert (out_dir / "clip_x2.mp4").stat().st_mtime_ns == mtime
