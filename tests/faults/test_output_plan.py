"""No input and no finished output is replaced without --overwrite; the overwrite check and
--skip-existing look at the exact path that is written; temp files stay short and do not pile
up. Everything runs through ``bsrn.cli.main`` on files made here."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from fault_files import error_lines, pixels, rgba_bmp, run_upscale, save
from PIL import Image

from bsrn.image_io import read_image

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tiny_x2_weights):
    return tiny_x2_weights


run = run_upscale


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("ext", ["jpg", "bmp", "jpeg"])
def test_alpha_switch_to_png_cannot_replace_the_input(tmp_path, capsys, weights, ext):
    photo = save(tmp_path / "ov" / "photo.png", pixels(c=4))
    before = snapshot(tmp_path)
    rc, out, err = run(capsys, weights, photo, "--ext", ext, "--suffix", "", "-o", tmp_path / "ov")
    assert rc == 1 and snapshot(tmp_path) == before
    (line,) = error_lines(err)
    assert f"{photo}: output {photo} would overwrite an input" in line
    assert out.strip().endswith("1 failed")


@pytest.mark.parametrize("name", ["a.jpg", "a.bmp", "a.JPG"])
def test_output_file_name_that_becomes_the_input(tmp_path, capsys, weights, name):
    a = save(tmp_path / "a.png", pixels(c=4))
    before = a.read_bytes()
    rc, _, err = run(capsys, weights, a, "-o", tmp_path / name)
    assert rc == 1 and a.read_bytes() == before
    assert "would overwrite an input" in error_lines(err)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_output_folder_reached_through_a_link_is_the_input_folder(tmp_path, capsys, weights):
    a = save(tmp_path / "src" / "a.png")
    os.symlink(tmp_path / "src", tmp_path / "alias")
    before = a.read_bytes()
    rc, _, err = run(capsys, weights, a, "-o", tmp_path / "alias", "--suffix", "")
    assert rc == 1 and a.read_bytes() == before
    assert "would overwrite an input" in error_lines(err)[0]


def test_overwrite_allows_only_an_inputs_own_file(tmp_path, capsys, weights):
    a_png = save(tmp_path / "a.png")
    a_jpg = save(tmp_path / "a.jpg")
    before = a_png.read_bytes()
    rc, _, err = run(capsys, weights, a_png, a_jpg, "-o", tmp_path, "--suffix", "",
                     "--ext", "png", "--overwrite")
    assert rc == 1
    lines = error_lines(err)
    assert any(str(a_jpg) in ln and str(a_png) in ln for ln in lines), lines
    assert a_png.read_bytes() == before  # a.jpg -> a.png is another input: never written
    # The alpha switch onto another input, whose own result goes elsewhere.
    t_tif = save(tmp_path / "t" / "p.tif", pixels(c=4))
    t_png = save(tmp_path / "t" / "p.png")
    before = t_png.read_bytes()
    rc, _, err = run(capsys, weights, t_tif, t_png, "-o", tmp_path / "t", "--suffix", "",
                     "--ext", "jpg", "--overwrite")
    (line,) = error_lines(err)
    assert rc == 1 and f"{t_tif}: output {t_png} would overwrite the input {t_png}" in line
    assert t_png.read_bytes() == before and (tmp_path / "t" / "p.jpg").is_file()


# ----------------------------------------------------------------------------- outputs
def test_two_inputs_one_output_is_an_error_naming_both(tmp_path, capsys, weights):
    bmp = rgba_bmp(tmp_path / "in" / "pic.bmp", pixels(c=4))
    png = save(tmp_path / "in" / "pic.png")
    rc, out, err = run(capsys, weights, tmp_path / "in", "-o", tmp_path / "o")
    assert rc == 1
    lines = error_lines(err)
    assert len(lines) == 2 and all(str(bmp) in ln and str(png) in ln for ln in lines), lines
    assert not (tmp_path / "o" / "pic_x2.png").exists()
    assert "0 images upscaled" in out and "2 failed" in out


def test_alpha_and_ext_collisions_between_other_formats(tmp_path, capsys, weights):
    save(tmp_path / "in" / "p.tif", pixels(c=4))
    save(tmp_path / "in" / "p.webp", pixels(c=4), lossless=True)
    save(tmp_path / "in" / "q.png")
    rc, out, err = run(capsys, weights, tmp_path / "in", "-o", tmp_path / "o", "--ext", "jpg")
    assert rc == 1 and len(error_lines(err)) == 2
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["q_x2.jpg"]


def test_side_by_side_written_once_or_not_at_all(tmp_path, capsys, weights):
    a, b = save(tmp_path / "same.png"), save(tmp_path / "same.jpg")
    rc, out, err = run(capsys, weights, a, b, "--compare", "-o", tmp_path / "o")
    assert rc == 1 and len(error_lines(err)) == 2
    assert not (tmp_path / "o" / "same_x2_side_by_side.png").exists()
    # An input named like another input's side-by-side output is a conflict too.
    c = save(tmp_path / "k" / "c.png")
    d = save(tmp_path / "k" / "c_x2_side_by_side.png")
    rc, _, err = run(capsys, weights, c, d, "--compare", "-o", tmp_path / "k", "--suffix", "_x2")
    assert rc == 1 and any(str(c) in ln for ln in error_lines(err))
    assert read_image(d).pixels.shape[:2] == (10, 12)  # the input is untouched


def test_skip_existing_checks_the_alpha_png_name(tmp_path, capsys, weights):
    t = save(tmp_path / "t.png", pixels(c=4))
    rc, _, _ = run(capsys, weights, t, "--ext", "jpg", "-o", tmp_path / "o")
    written = tmp_path / "o" / "t_x2.png"
    assert rc == 0 and written.is_file()
    stamp = written.stat().st_mtime_ns
    time.sleep(0.01)
    rc, out, _ = run(capsys, weights, t, "--ext", "jpg", "-o", tmp_path / "o", "--skip-existing")
    assert rc == 0 and "1 skipped" in out and written.stat().st_mtime_ns == stamp
    assert not (tmp_path / "o" / "t_x2.jpg").exists()


# ----------------------------------------------------------------------------- temp files
def test_long_legal_names_are_written(tmp_path, capsys, weights):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    stem = "n" * (limit - len("_x2.png"))
    a = save(tmp_path / "in" / f"{stem[:limit - 4]}.png")
    rc, _, err = run(capsys, weights, a, "-o", tmp_path / "o", "--suffix", "_x2")
    assert rc == 0, err
    out = tmp_path / "o" / f"{stem[:limit - 4]}_x2.png"
    assert out.is_file() and len(out.name) <= limit
    exact = tmp_path / "f" / ("e" * (limit - 5) + ".webp")  # a 255-character -o name
    rc, _, err = run(capsys, weights, a, "-o", exact)
    assert rc == 0, err
    assert len(exact.name) == limit and exact.is_file()


def _writer_killed_mid_write(folder):
    """A process that starts an atomic write into ``folder`` and is killed -9 during it."""
    code = textwrap.dedent(f"""
        import time
        from bsrn.atomic import atomic_write
        def write(tmp):
            open(tmp, "wb").write(b"partial")
            print(tmp, flush=True)
            time.sleep(60)
        atomic_write({str(folder / "a_x2.png")!r}, write)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    tmp = p.stdout.readline().strip()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    return tmp


def test_stale_temp_files_of_a_killed_run_are_removed(tmp_path, capsys, weights):
    out = tmp_path / "o"
    out.mkdir()
    stale = _writer_killed_mid_write(out)
    assert os.path.exists(stale) and len(os.path.basename(stale)) <= 37
    from bsrn.atomic import _HOST

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = out / f".bsrn-{_HOST}-{live.pid}-0123abcd.tmp"  # a writer still running
        alive.write_bytes(b"in progress")
        other = "0" * 6 if _HOST != "0" * 6 else "1" * 6
        remote = out / f".bsrn-{other}-1-0123abcd.tmp"  # another machine's, fresh: kept
        remote.write_bytes(b"in progress elsewhere")
        old = out / f".bsrn-{other}-2-0123abcd.tmp"  # another machine's, two days old
        old.write_bytes(b"left behind")
        os.utime(old, (time.time() - 2 * 86400,) * 2)
        mine = out / "user.tmp"
        mine.write_bytes(b"a user's file")
        rc, _, err = run(capsys, weights, save(tmp_path / "a.png"), "-o", out)
        assert rc == 0, err
        assert not os.path.exists(stale) and not old.exists()
        assert alive.exists() and remote.exists() and mine.exists()
    finally:
        live.kill()
        live.wait()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [alive.name, remote.name, "a_x2.png", "user.tmp"])


def test_failed_write_leaves_no_temp(tmp_path):
    from bsrn.atomic import atomic_write

    def boom(tmp):
        open(tmp, "wb").write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "x.bin", boom)
    assert list(tmp_path.iterdir()) == []


def test_written_file_has_normal_permissions(tmp_path, capsys, weights):
    rc, _, _ = run(capsys, weights, save(tmp_path / "a.png"), "-o", tmp_path / "o")
    umask = os.umask(0)
    os.umask(umask)
    assert rc == 0
    assert (tmp_path / "o" / "a_x2.png").stat().st_mode & 0o777 == 0o666 & ~umask
    with Image.open(tmp_path / "o" / "a_x2.png") as im:
        assert im.size == (24, 20)


def test_output_names_over_the_file_system_limit_are_refused_up_front(tmp_path, capsys,
                                                                       weights):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    a = save(tmp_path / "in" / ("s" * (limit - 7) + ".png"))  # a_x2.png fits, its side-by-side not
    rc, out, err = run(capsys, weights, a, "-o", tmp_path / "o", "--compare")
    (line,) = error_lines(err)
    assert rc == 1 and "longer than" in line and "0 images upscaled" in out
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("suffix", ["/x", "_x2/../../up", "a/b"])
def test_suffix_cannot_leave_the_output_folder(tmp_path, capsys, weights, suffix):
    rc, _, err = run(capsys, weights, save(tmp_path / "a.png"), "-o", tmp_path / "o",
                     "--suffix", suffix)
    assert rc == 1 and "--suffix" in error_lines(err)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_library_upscale_file_alpha_switch_never_replaces_a_file(tmp_path, weights):
    from bsrn.errors import ImageError
    from bsrn.upscale import Upscaler

    a = save(tmp_path / "a.png", pixels(c=4))
    before = a.read_bytes()
    up = Upscaler(weights, device="cpu")
    with pytest.raises(ImageError, match="transparency"):
        up.upscale_file(a, tmp_path / "a.jpg")
    assert a.read_bytes() == before
    _, _, written = up.upscale_file(a, tmp_path / "b.jpg")
    assert written == tmp_path / "b.png" and read_image(written).has_alpha


def test_one_file_reached_twice_is_upscaled_once(tmp_path, capsys, weights):
    a = save(tmp_path / "src" / "a.png")
    os.symlink(tmp_path / "src", tmp_path / "alias")
    os.symlink("a.png", tmp_path / "src" / "b.png")  # another name: its own output
    rc, out, err = run(capsys, weights, a, tmp_path / "src", tmp_path / "alias", "-o",
                       tmp_path / "o")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_x2.png", "b_x2.png"]
    assert "2 images upscaled" in out
