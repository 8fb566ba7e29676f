"""Real-ESRGAN's inference_realesrgan.py command lines run unchanged through `bsrn upscale`."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bsrn.checkpoint import bundled_weights
from bsrn.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")
RNG = np.random.default_rng(5)


def save(path, h=20, w=16, c=3):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (h, w, c), dtype=np.uint8)).save(path)
    return path


def run(capsys, *args):
    rc = main(["upscale", "--device", "cpu", "-q", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_verbatim_realesrgan_command_line(tmp_path, capsys, monkeypatch):
    if "bsrn-x4" not in bundled_weights():
        pytest.skip("no bundled bsrn-x4 in this install")
    save(tmp_path / "in" / "a.png")
    save(tmp_path / "in" / "b.jpg")
    save(tmp_path / "in" / "c.png", c=4)
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "-i", "in", "-o", "out", "-n", "bsrn-x4", "-s", "3.5", "-t",
                       "200", "--fp32", "--suffix", "out")
    assert rc == 0, err
    # Real-ESRGAN: <output>/<imgname>_<suffix>.<ext>, ext of the input; RGBA -> png
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_out.png", "b_out.jpg", "c_out.png"]
    with Image.open(tmp_path / "out" / "a_out.png") as im:
        assert im.size == (56, 70)  # 16 x 20 times 3.5
    with Image.open(tmp_path / "out" / "c_out.png") as im:
        assert im.mode == "RGBA"


def test_realesrgan_defaults_and_flag_mapping(tmp_path, capsys, tiny_x2_weights, monkeypatch):
    src = save(tmp_path / "p.png", c=4)
    rc, out, err = run(capsys, "-i", src, "-o", tmp_path / "o", "--model_path", tiny_x2_weights,
                       "--outscale", "2", "--tile_pad", "4", "--pre_pad", "0",
                       "--alpha_upsampler", "bicubic", "--ext", "png")
    assert rc == 0, err
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["p_out.png"]  # suffix default out
    rc, out, err = run(capsys, "-i", src, "-o", tmp_path / "o2", "--model_path", tiny_x2_weights,
                       "--suffix", "")
    assert rc == 0, err
    assert [p.name for p in (tmp_path / "o2").iterdir()] == ["p.png"]
    # without -i, Real-ESRGAN reads the folder inputs/
    save(tmp_path / "inputs" / "q.png")
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "--model_path", tiny_x2_weights, "-o", "o4")
    assert rc == 0, err
    assert [p.name for p in (tmp_path / "o4").iterdir()] == ["q_out.png"]
    # without Real-ESRGAN names, bsrn's own naming stays
    rc, out, err = run(capsys, src, "-o", tmp_path / "o3", "--weights", tiny_x2_weights)
    assert [p.name for p in (tmp_path / "o3").iterdir()] == ["p_x2.png"]


def test_parser_maps_values():
    from bsrn.cli import _apply_realesrgan_aliases

    args = build_parser().parse_args(
        ["upscale", "-i", "x.png", "--model_path", "w.pth", "-s", "2.5", "--tile_pad", "7",
         "--half", "--alpha_upsampler", "realesrgan", "-g", "1", "-t", "0"])
    _apply_realesrgan_aliases(args)
    assert (args.inputs, args.weights, args.scale, args.tile_pad, args.precision,
            args.alpha_upsampler, args.device, args.tile, args.suffix) == (
        ["x.png"], "w.pth", 2.5, 7, "auto", "network", "cuda:1", 0, "_out")


@pytest.mark.parametrize("name,why", [("RealESRGAN_x4plus", "a Real-ESRGAN model, not BSRN"),
                                      ("nonsense", "not a bsrn model name")])
def test_unknown_model_name_is_one_line(tmp_path, capsys, name, why):
    src = save(tmp_path / "p.png")
    rc, out, err = run(capsys, "-i", src, "-o", tmp_path / "o", "-n", name)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"-n {name}: {why}; bsrn's models: " in lines[0]
    for known in bundled_weights():
        assert known in lines[0]
    assert not (tmp_path / "o").exists()


def test_model_name_finds_the_user_weights_folder(tmp_path, capsys, monkeypatch,
                                                  tiny_x2_weights):
    from bsrn.weights_folder import add_weights

    monkeypatch.setenv("BSRN_HOME", str(tmp_path / "home"))
    add_weights(tiny_x2_weights, name="my-x2", progress=False)
    src = save(tmp_path / "in" / "p.png")
    rc, out, err = run(capsys, "-i", tmp_path / "in", "-o", tmp_path / "o", "-n", "my-x2")
    assert rc == 0, err
    with Image.open(tmp_path / "o" / "p_out.png") as im:
        assert im.size == (2 * 16, 2 * 20)
    assert src.exists()
    rc, _, err = run(capsys, "-i", src, "-o", tmp_path / "o2", "-n", "other")
    assert rc == 1 and "my-x2" in err  # listed among the known names


def test_conflicting_flags(tmp_path, capsys, tiny_x2_weights):
    src = save(tmp_path / "p.png")
    rc, _, err = run(capsys, "-i", src, "--model_path", tiny_x2_weights, "--weights",
                     tiny_x2_weights)
    assert rc == 1 and "give one of --weights, --model_path" in err
    rc, _, err = run(capsys, "-i", src, "--model_path", tiny_x2_weights, "--fp32", "--half")
    assert rc == 1 and "--fp32 or --half" in err


def test_help_lists_the_aliases_in_their_own_group(capsys):
    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    text = capsys.readouterr().out
    group = text[text.index("Real-ESRGAN options"):]
    for flag in ("-i PATH, --input PATH", "-n NAME, --model_name NAME", "--model_path",
                 "--outscale", "--tile_pad", "--pre_pad", "--fp32", "--half",
                 "--alpha_upsampler", "-g N, --gpu-id N"):
        assert flag in group
