"""Smoke tests for `bsrn plot`: trade-off plots from eval/profile JSONs, and the comparison grid."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from bsrn import create_model, save_model
from bsrn.cli import main
from bsrn.figures import entry_point, pick_crop

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def _entries(tmp_path):
    out = []
    for name, psnr, params, madds in (("A", 32.1, 352400, 19.4e9), ("B", 32.0, 156288, 8.5e9)):
        ev = _write(tmp_path / f"{name}.eval.json",
                    [{"dataset": "Set14", "scale": 4, "psnr": psnr - 3.5},
                     {"dataset": "Set5", "scale": 4, "psnr": psnr}])
        pr = _write(tmp_path / f"{name}.profile.json", {"params": params, "multi_adds": madds})
        out.append((name, ev, pr))
    return out


def test_entry_point_merges_eval_and_profile(tmp_path):
    (name, ev, pr), _ = _entries(tmp_path)
    p = entry_point(name, [pr, ev], "Set5", 4)
    assert (p.psnr, p.params, p.multi_adds) == (32.1, 352400, 19.4e9)
    assert entry_point(name, [ev, pr], "Set14", 4).psnr == 32.1 - 3.5


def test_plot_tradeoff_writes_png_and_svg(tmp_path):
    argv = ["plot", "tradeoff", "--out", str(tmp_path / "fig"), "--format", "png", "svg",
            "--highlight", "A"]
    for name, ev, pr in _entries(tmp_path):
        argv += ["--entry", name, ev, pr]
    assert main(argv) == 0
    for stem in ("psnr_vs_params", "psnr_vs_multiadds"):
        png = tmp_path / "fig" / f"{stem}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        w, h = Image.open(png).size
        assert w > 300 and h > 200
        assert (tmp_path / "fig" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")


def test_plot_tradeoff_needs_params(tmp_path, capsys):
    ev = _write(tmp_path / "e.json", [{"dataset": "Set5", "scale": 4, "psnr": 30.0}])
    assert main(["plot", "tradeoff", "--entry", "X", ev, "--out", str(tmp_path)]) == 1
    assert "params" in capsys.readouterr().err


def test_pick_crop_finds_the_detailed_region():
    hr = np.zeros((64, 64, 3), np.uint8)
    base = hr.copy()
    base[40:56, 8:24] = 200                      # the only place where base differs from HR
    y, x, h, w = pick_crop(hr, base, 16)
    assert (h, w) == (16, 16) and abs(y - 40) <= 4 and abs(x - 8) <= 4


def test_plot_grid(tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    hr = np.stack([(127 + 120 * np.sin(xx / 3.0)), (127 + 120 * np.cos(yy / 5.0)),
                   (xx * 4) % 256], -1).astype(np.uint8)
    Image.fromarray(hr).save(tmp_path / "hr.png")
    weights = save_model(create_model("bsrn", num_feat=8, num_block=1), tmp_path / "m.safetensors")
    out = tmp_path / "grid.png"
    assert main(["plot", "grid", "--hr", str(tmp_path / "hr.png"), "--weights", "tiny",
                 str(weights), "--crop-size", "32", "--out", str(out), "--device", "cpu"]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert main(["plot", "grid", "--hr", str(tmp_path / "hr.png"), "--weights", "tiny",
                 str(weights), "--crop", "60,60,32,32", "--out", str(out)]) == 1
