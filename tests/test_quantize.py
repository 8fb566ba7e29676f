"""INT8 quantisation: layer groups, ONNX Runtime QDQ and OpenVINO NNCF outputs run through
load_model and `bsrn upscale`, the sensitivity sweep, and (with the official weights) the
PSNR cost of the default mixed precision on Set5."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from bsrn.cli import main
from bsrn.errors import BsrnError, ConfigError

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
onnx = pytest.importorskip("onnx", reason="onnx is not installed")

from bsrn.checkpoint import load_model, save_model  # noqa: E402
from bsrn.export import SAMPLE_PHOTO, export_onnx  # noqa: E402
from bsrn.metrics import psnr  # noqa: E402
from bsrn.models import create_model  # noqa: E402
from bsrn.quantize import (calibration_patches, choose_keep, layer_group,  # noqa: E402
                           layer_groups, quantize, quantize_onnxruntime, sensitivity_sweep)


@pytest.fixture(scope="module")
def model():
    g = torch.Generator().manual_seed(0)
    m = create_model("bsrn", scale=2, num_feat=16, num_block=2)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()) * 0.5)
    return m.eval()


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny_x2.safetensors"
    save_model(model, path)
    return str(path)


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    """A folder of real HR photos: six 160 px crops of the bundled sample photo."""
    folder = tmp_path_factory.mktemp("calib")
    photo = Image.open(SAMPLE_PHOTO).convert("RGB")
    w, h = photo.size
    for i in range(6):
        x, y = (i * 97) % max(1, w - 160), (i * 53) % max(1, h - 160)
        photo.crop((x, y, x + 160, y + 160)).save(folder / f"c{i}.png")
    return folder


@pytest.fixture(scope="module")
def fp32_onnx(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    export_onnx(model, path, optimize=False)
    return path


def _photo(h=40, w=48):
    a = np.asarray(Image.open(SAMPLE_PHOTO).convert("RGB"))[:h, :w]
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255


def _u8(t):
    return (t[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def test_layer_group_names():
    assert layer_group("/fea_conv/pw/Conv") == "fea_conv"
    assert layer_group("/B3/c1_r/dw/Conv") == "B3.distill"
    assert layer_group("/B3/c5/Conv") == "B3.distill"
    assert layer_group("/B12/esa/conv_max/pw/Conv") == "B12.esa"
    assert layer_group("/B1/cca/conv_du/conv_du.0/Conv") == "B1.cca"
    assert layer_group("/B1/conv_du/conv_du.0/Conv") == "B1.cca"
    assert layer_group("/Conv_3") is None
    assert layer_group("/c2/dw/Conv") == "c1c2"
    assert layer_group("/upsampler/upsampleOneStep/upsampleOneStep.0/Conv") == "upsampler"
    assert layer_group("/Concat") is None


def test_groups_cover_every_conv(fp32_onnx):
    groups = layer_groups(fp32_onnx)
    convs = [n for n in onnx.load(str(fp32_onnx)).graph.node if n.op_type == "Conv"]
    assert sum(map(len, groups.values())) == len(convs)
    assert list(groups)[:3] == ["fea_conv", "B1.distill", "B1.esa"]
    assert "B1.cca" in groups  # (graph order: the block-by-block fusion may come before it)
    assert {"c1c2", "upsampler", "B2.esa"} <= set(groups)


def test_calibration_patches_are_matlab_lr(calib):
    patches = calibration_patches(calib, 2, images=3, patch=32, progress=False)
    assert len(patches) == 6 and all(p.shape == (1, 3, 32, 32) for p in patches)
    assert all(0 <= p.min() and p.max() <= 1 for p in patches)
    with pytest.raises(BsrnError, match="too small"):
        calibration_patches(calib, 4, images=1, patch=64, progress=False)


def _weight_dq_convs(path):
    """Names of Conv nodes whose weight comes from a DequantizeLinear (run in INT8)."""
    g = onnx.load(str(path)).graph
    dq_out = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in g.node if n.op_type == "Conv" and n.input[1] in dq_out}


def test_onnxruntime_int8_keeps_groups_fp32(model, fp32_onnx, calib, tmp_path):
    patches = calibration_patches(calib, 2, images=4, patch=32, progress=False)
    groups = layer_groups(fp32_onnx)
    keep = ("fea_conv", "upsampler")
    out = tmp_path / "m.int8.onnx"
    res = quantize_onnxruntime(fp32_onnx, out, patches, keep=keep)
    int8 = _weight_dq_convs(out)
    kept = {n for g in keep for n in groups[g]}
    assert int8 and not int8 & kept
    assert int8 | kept == {n for v in groups.values() for n in v}
    assert res["int8_convs"] == len(int8)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["bsrn.scale"] == "2" and meta["bsrn.precision"] == "int8"
    # it runs through load_model like the torch network, and stays close to fp32
    runner = load_model(out)
    assert runner.scale == 2 and runner.runtime == "onnxruntime"
    x = _photo()
    with torch.no_grad():
        ref, got = model(x), runner(x)
    assert got.shape == ref.shape == (1, 3, 80, 96)
    assert 30 < psnr(_u8(got), _u8(ref)) < 99  # int8 changes the output, but not much
    with pytest.raises(ConfigError, match="unknown layer groups"):
        quantize_onnxruntime(fp32_onnx, tmp_path / "bad.onnx", patches, keep=("B9.esa",))


def test_sweep_rows(model, fp32_onnx, calib, tmp_path):
    from bsrn.quantize import benchmark_pairs

    patches = calibration_patches(calib, 2, images=2, patch=32, progress=False)
    pairs = benchmark_pairs(calib, 2, limit=1, skip=4, crop=64)
    rows = sensitivity_sweep(fp32_onnx, patches, pairs, 2, tmp_path, progress=False)
    assert {r["group"] for r in rows} == set(layer_groups(fp32_onnx))
    costs = [r["cost_db"] for r in rows]
    assert costs == sorted(costs, reverse=True) and all(np.isfinite(costs))
    assert choose_keep(rows, max_group_cost=-1e9) == tuple(r["group"] for r in rows)
    assert choose_keep(rows, max_group_cost=1e9) == ()


def test_openvino_int8(model, weights, calib, tmp_path):
    pytest.importorskip("nncf", reason="nncf is not installed")
    pytest.importorskip("openvino", reason="openvino is not installed")
    out = tmp_path / "m.int8.xml"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = quantize(weights, calib, out, runtime="openvino", images=3, keep=("fea_conv",),
                       progress=False)
    assert out.is_file() and out.with_suffix(".bin").is_file()
    assert res.kept_fp32 == ["fea_conv"] and res.int8_convs == res.convs - 2
    import openvino as ov

    fed_by_fq = {}  # conv name -> its activation comes through a FakeQuantize
    from bsrn.runtimes import ov_core

    for op in ov_core().read_model(str(out)).get_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution"):
            src = op.input_value(0).get_node().get_type_name()
            fed_by_fq[op.get_friendly_name()] = src == "FakeQuantize"
    kept = [k for k in fed_by_fq if k.startswith("/fea_conv/")]
    assert len(kept) == 2 and not any(fed_by_fq[k] for k in kept)
    assert sum(fed_by_fq.values()) >= res.int8_convs - 4  # convs sharing an input share one FQ
    runner = load_model(out)
    assert runner.runtime == "openvino" and runner.scale == 2
    # float parts in bf16 by default, where the CPU has bf16 units (else fp32)
    from bsrn.runtimes import ov_has_bf16

    assert res.float_precision == runner.float_precision == "bf16"
    hint = runner.requests.config["INFERENCE_PRECISION_HINT"]
    assert hint == ("bf16" if ov_has_bf16() else "f32")
    for size in ((40, 48), (33, 21)):  # a new shape after the first (recompiled, no crash)
        x = _photo(*size)
        with torch.no_grad():
            ref, got = model(x), runner(x)
        assert got.shape == ref.shape
        assert 30 < psnr(_u8(got), _u8(ref)) < 99
    # asked for fp32 float parts: recorded and honoured
    out32 = tmp_path / "m.int8f32.xml"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res32 = quantize(weights, calib, out32, runtime="openvino", images=3, keep=("fea_conv",),
                         progress=False, float_precision="fp32")
    r32 = load_model(out32)
    assert res32.float_precision == r32.float_precision == "fp32"
    assert r32.requests.config["INFERENCE_PRECISION_HINT"] == "f32"
    with pytest.raises(ConfigError):
        quantize(weights, calib, tmp_path / "x.onnx", images=3, float_precision="bf16")


def test_cli_quantize_and_upscale(weights, calib, tmp_path, capsys):
    out = tmp_path / "m.int8.onnx"
    args = ["quantize", "--weights", weights, "--calib", str(calib), "--images", "3",
            "-o", str(out), "-q"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
    assert "kept in float: fea_conv, B1.distill, c1c2, upsampler)" in capsys.readouterr().out
    assert main(args) == 1  # never overwrites unasked
    assert "exists" in capsys.readouterr().err
    assert main(args[:-1] + ["--keep", "nope", "--overwrite", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown layer groups" in err
    assert main(["quantize", "--weights", weights, "--calib", str(calib), "--runtime",
                 "openvino", "-o", str(tmp_path / "m.onnx")]) == 1
    assert ".xml" in capsys.readouterr().err
    # the INT8 file upscales a real image, runtime inferred from the suffix
    src = tmp_path / "in.png"
    Image.open(SAMPLE_PHOTO).convert("RGB").crop((0, 0, 40, 30)).save(src)
    assert main(["upscale", str(src), "--weights", str(out), "-o", str(tmp_path / "o.png"),
                 "-q"]) == 0
    assert Image.open(tmp_path / "o.png").size == (80, 60)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_official_x4_int8_cost_on_set5(official, dataset, tmp_path, runtime):
    """The default mixed precision costs the official x4 under 0.15 dB on Set5 (ONNX Runtime;
    OpenVINO with its float parts in bf16 where the CPU has bf16 units)."""
    from bsrn.quantize import benchmark_pairs, score
    from bsrn.runtimes import load_graph

    if runtime == "openvino":
        pytest.importorskip("nncf", reason="nncf is not installed")
    w = official("net_g_BSRN_x4.pth")
    calib_dir = dataset("BSD200")
    out = tmp_path / ("x4.int8.onnx" if runtime == "onnxruntime" else "x4.int8.xml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize(w, calib_dir, out, runtime=runtime, images=16, progress=False)
    pairs = benchmark_pairs(dataset("Set5"), 4)
    base = score(load_model(w), pairs, 4, ssim=False)["psnr"]
    q = score(load_graph(out), pairs, 4, ssim=False)["psnr"]
    assert 0 <= base - q < 0.15
