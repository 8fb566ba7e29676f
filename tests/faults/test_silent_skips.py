"""Nothing is skipped in silence: unreadable folder entries are failures, folder scans take every
format that works when named, animations stay animated, extra TIFF pages are reported, and
limits are reported as the user gave them."""
from __future__ import annotations

import os

import numpy as np
import pytest
from fault_files import error_lines, pixels, run_upscale, save
from PIL import Image

from bsrn.image_io import Picture, read_exts
from bsrn.upscale import Upscaler

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tiny_x2_weights):
    return tiny_x2_weights


run = run_upscale


def test_broken_links_and_link_loops_are_named_failures(tmp_path, capsys, weights):
    src = tmp_path / "src"
    save(src / "good.png")
    os.symlink("gone.png", src / "dangling.png")
    os.symlink("loop_b", src / "loop_a.jpg")
    os.symlink("loop_a.jpg", src / "loop_b")
    os.symlink("nowhere", src / "no_extension")
    (src / "sub").mkdir()
    os.symlink("..", src / "sub" / "parent")
    save(src / "sub" / "deep.png")
    rc, out, err = run(capsys, weights, src, "-o", tmp_path / "o", "--recursive")
    assert rc == 1
    lines = error_lines(err)
    for name in ("dangling.png", "loop_a.jpg", "loop_b", "no_extension", "parent"):
        assert sum(name in ln for ln in lines) == 1, (name, lines)
    assert any("dangling.png" in ln and "broken symbolic link" in ln for ln in lines)
    assert any("loop_a.jpg" in ln and "loop" in ln for ln in lines)
    assert (tmp_path / "o" / "good_x2.png").is_file()
    assert (tmp_path / "o" / "sub" / "deep_x2.png").is_file()
    assert out.strip().endswith(", 5 failed") and "2 images upscaled" in out


def test_a_folder_of_only_broken_entries_fails(tmp_path, capsys, weights):
    os.symlink("gone.png", tmp_path / "dangling.png")
    rc, _, err = run(capsys, weights, tmp_path, "-o", tmp_path / "o")
    assert rc == 1 and "dangling.png" in error_lines(err)[0]
    rc, _, err = run(capsys, weights, tmp_path / "dangling.png", "-o", tmp_path / "o")
    assert rc == 1 and "broken symbolic link" in error_lines(err)[0]
    rc, _, err = run(capsys, weights, str(tmp_path / "*.png"), "-o", tmp_path / "o")
    assert rc == 1 and "dangling.png" in error_lines(err)[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders without permission")
def test_unreadable_sub_folder_is_a_failure(tmp_path, capsys, weights):
    save(tmp_path / "src" / "a.png")
    locked = tmp_path / "src" / "locked"
    save(locked / "b.png")
    locked.chmod(0)
    try:
        rc, _, err = run(capsys, weights, tmp_path / "src", "-o", tmp_path / "o", "-r")
    finally:
        locked.chmod(0o755)
    assert rc == 1 and "locked" in error_lines(err)[0]


# Formats Pillow writes that are read here, each saved by Pillow itself.
WRITABLE = {".gif": {}, ".tga": {}, ".ppm": {}, ".pcx": {}, ".qoi": {}, ".sgi": {},
            ".dib": {"format": "DIB"}, ".jfif": {"format": "JPEG"}}


def test_folder_scan_takes_every_format_that_works_when_named(tmp_path, capsys, weights):
    exts = [e for e in WRITABLE if e in read_exts()]
    assert ".gif" in exts
    folder = tmp_path / "src"
    for e in exts:
        save(folder / f"img{e.replace('.', '_')}{e}", pixels(), **WRITABLE[e])
    rc, out, err = run(capsys, weights, folder, "-o", tmp_path / "scan")
    assert rc == 0, err
    scanned = sorted(p.name for p in (tmp_path / "scan").iterdir())
    named_out = tmp_path / "named"
    for f in sorted(folder.iterdir()):
        assert run(capsys, weights, f, "-o", named_out)[0] == 0
    assert scanned == sorted(p.name for p in named_out.iterdir())
    assert len(scanned) == len(exts) and f"{len(exts)} images upscaled" in out


def _frames(n=3, h=8, w=10, alpha=False):
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        a = np.zeros((h, w, 4 if alpha else 3), np.uint8)
        a[..., :3] = rng.integers(0, 256, (h, w, 3))
        if alpha:
            a[..., 3] = 255
            a[: h // 2, : (i + 1) * 2, 3] = 0
        out.append(a)
    return out


def _read_all(path):
    with Image.open(path) as im:
        frames, durations = [], []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info.get("duration"))
            frames.append(np.asarray(im.convert("RGBA")))
        return im.format, frames, durations, im.info.get("loop")


@pytest.mark.parametrize("kind", ["gif", "apng", "webp", "gif-alpha", "apng-alpha"])
def test_animations_come_out_animated_with_their_timing(tmp_path, capsys, weights, kind):
    alpha = kind.endswith("alpha")
    frames = _frames(alpha=alpha)
    ims = [Image.fromarray(a) for a in frames]
    ext = {"gif": ".gif", "apng": ".png", "webp": ".webp"}[kind.split("-")[0]]
    src = tmp_path / f"anim{ext}"
    durations = [40, 120, 70]
    kw = {"lossless": True} if ext == ".webp" else {}
    if ext == ".gif" and alpha:
        ims = [im.quantize(255) for im in ims]
        for im, a in zip(ims, frames):
            idx = np.asarray(im).copy()
            idx[a[..., 3] == 0] = 255
            im.putdata(idx.ravel().tolist())
            im.info["transparency"] = 255
        kw.update(transparency=255, disposal=2)
    ims[0].save(src, save_all=True, append_images=ims[1:], duration=durations, loop=3, **kw)
    _, src_frames, src_durations, src_loop = _read_all(src)
    # Bicubic alpha: the random tiny network would make the alpha (not the test) meaningless.
    rc, out, err = run(capsys, weights, tmp_path, "-o", tmp_path / "o", "--alpha-upsampler",
                       "bicubic")
    assert rc == 0, err
    dst = tmp_path / "o" / f"anim_x2{ext}"
    fmt, got, got_durations, loop = _read_all(dst)
    assert len(got) == 3 and got_durations == src_durations and loop == src_loop == 3
    assert all(g.shape[:2] == (16, 20) for g in got)
    up = Upscaler(weights, device="cpu", alpha_upsampler="bicubic")
    for s, g in zip(src_frames, got):  # every frame is the upscaled frame, not a copy of one
        ref = up.upscale_picture(Picture(s if alpha else s[..., :3])).pixels
        if alpha:
            np.testing.assert_array_equal(g[..., 3] > 127, ref[..., 3] > 127)
        visible = ref[..., 3] > 127 if alpha else np.ones(ref.shape[:2], bool)
        diff = np.abs(g[..., :3].astype(int) - ref[..., :3])[visible]
        if ext == ".png":  # APNG is lossless
            assert diff.max() == 0
        else:  # GIF: 256-colour palette; WebP: lossy
            assert np.median(diff) <= 12
    assert not np.array_equal(got[0], got[1])


def test_animation_named_for_a_still_format_becomes_apng(tmp_path, capsys, weights):
    ims = [Image.fromarray(a) for a in _frames()]
    ims[0].save(tmp_path / "a.gif", save_all=True, append_images=ims[1:], duration=50)
    rc, _, err = run(capsys, weights, tmp_path / "a.gif", "-o", tmp_path / "o", "--ext", "jpg")
    assert rc == 0, err
    fmt, got, durations, _ = _read_all(tmp_path / "o" / "a_x2.png")
    assert fmt == "PNG" and len(got) == 3 and durations == [50, 50, 50]


def test_multi_page_tiff_warns_in_one_line(tmp_path, capsys, weights):
    ims = [Image.fromarray(a) for a in _frames(4)]
    ims[0].save(tmp_path / "pages.tif", save_all=True, append_images=ims[1:])
    rc, _, err = run(capsys, weights, tmp_path / "pages.tif", "-o", tmp_path / "o")
    assert rc == 0
    warnings = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "pages.tif" in warnings[0] and "4 pages" in warnings[0]
    assert (tmp_path / "o" / "pages_x2.tif").is_file()


@pytest.mark.parametrize("limit, text", [("1000", "1,000"), ("1e3", "1,000"),
                                         ("2_500", "2,500"), ("100", "100")])
def test_limits_are_reported_as_given(tmp_path, capsys, weights, limit, text):
    big = save(tmp_path / "big.png", pixels(60, 60))
    rc, _, err = run(capsys, weights, big, "-o", tmp_path / "o", "--max-pixels", limit)
    (line,) = error_lines(err)
    assert rc == 1 and f"limit of {text} pixels" in line
    doubled = f"{2 * int(float(limit.replace('_', ''))):,}"
    assert doubled not in line and doubled.replace(",", "") not in line


def test_animation_limit_counts_every_frame(tmp_path, capsys, weights):
    ims = [Image.fromarray(a) for a in _frames(5)]
    ims[0].save(tmp_path / "a.gif", save_all=True, append_images=ims[1:])
    rc, _, err = run(capsys, weights, tmp_path / "a.gif", "-o", tmp_path / "o",
                     "--max-pixels", "300")
    (line,) = error_lines(err)
    assert rc == 1 and "5 frames" in line and "limit of 300 pixels" in line


def test_a_pipe_named_like_an_image_is_a_failure_not_a_hang(tmp_path, capsys, weights):
    save(tmp_path / "src" / "a.png")
    os.mkfifo(tmp_path / "src" / "pipe.png")
    rc, out, err = run(capsys, weights, tmp_path / "src", "-o", tmp_path / "o")
    (line,) = error_lines(err)
    assert rc == 1 and "pipe.png" in line and "not a regular file" in line
    assert (tmp_path / "o" / "a_x2.png").is_file() and "1 image upscaled" in out
