"""OpenVINO IR, ncnn and LiteRT exports: each written file is run in its own runtime (directly,
not through bsrn's runner) and compared with PyTorch; the CLI names and checks them."""
from __future__ import annotations

import math
import os
import warnings

import subprocess
import sys

import numpy as np
import pytest
import torch

from bsrn.cli import build_parser, main
from bsrn.errors import ConfigError
from bsrn.models import create_model


@pytest.fixture(scope="module")
def model():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    m = create_model("bsrn", scale=3, num_feat=16, num_block=2)
    with torch.no_grad():  # unit-gain weights so that every branch matters
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
    return m.eval()


def _torch(model, x):
    with torch.no_grad():
        return model(x).numpy()


def test_every_export_format_is_tested():
    """The formats `bsrn export --format` offers are those with round-trip tests."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    fmt = next(a for a in sub.choices["export"]._actions if a.dest == "format")
    assert set(fmt.choices) == {"onnx", "torchscript", "openvino", "ncnn", "tflite"}


def test_openvino_round_trip(model, tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed")
    from bsrn.export import export_openvino

    path = tmp_path / "m.xml"
    res = export_openvino(model, path)
    assert path.is_file() and path.with_suffix(".bin").is_file()
    assert "photo 48x64" in res["max_abs_diff"] and max(res["max_abs_diff"].values()) < 1e-3
    # independent run: OpenVINO's own API, fp32, a size the exporter did not check
    from bsrn.runtimes import ov_core

    core = ov_core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.rand(1, 3, 29, 22, generator=torch.Generator().manual_seed(3))
    got = compiled({0: x.numpy()})[0]
    ref = _torch(model, x)
    assert got.shape == ref.shape == (1, 3, 87, 66)
    assert np.abs(got - ref).max() < 1e-3
    # the bundled runner reads the scale back and runs it like a torch model
    from bsrn.checkpoint import load_model

    runner = load_model(path)
    assert runner.scale == 3 and runner.min_size == 15
    assert np.abs(runner(x).numpy() - ref).max() < 1e-3


def _need_without_import(*names):
    """Skip unless the packages are installed, without importing them here: pnnx and ncnn are
    native code that can crash a long-lived process, so bsrn runs them in a child process."""
    import importlib.util

    for name in names:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed")


def test_ncnn_round_trip(model, tmp_path):
    _need_without_import("ncnn", "pnnx")
    from bsrn.export import export_ncnn

    path = tmp_path / "m.ncnn.param"
    res = export_ncnn(model, path)
    bin_path = tmp_path / "m.ncnn.bin"
    assert path.is_file() and bin_path.is_file()
    assert max(res["max_abs_diff"].values()) < 1e-3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ncnn.bin", "m.ncnn.param"]
    # independent run with ncnn's own API at an odd size the exporter did not check; in a
    # child process, because ncnn is native code that can crash the process that loads it
    x = torch.rand(1, 3, 23, 30, generator=torch.Generator().manual_seed(4))
    np.save(tmp_path / "x.npy", x.numpy())
    code = f"""
import ncnn, numpy as np
net = ncnn.Net()
for opt in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_packed",
            "use_bf16_storage"):
    setattr(net.opt, opt, False)
assert net.load_param({str(path)!r}) == 0 and net.load_model({str(bin_path)!r}) == 0
x = np.load({str(tmp_path / "x.npy")!r})
mat = ncnn.Mat(30, 23, 3)
for c in range(3):
    np.array(mat.channel(c), copy=False)[:] = x[0, c]
with net.create_extractor() as ex:
    ex.input("in0", mat)
    _, out = ex.extract("out0")
    np.save({str(tmp_path / "y.npy")!r}, np.array(out)[None])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.load(tmp_path / "y.npy")
    ref = _torch(model, x)
    assert got.shape == ref.shape == (1, 3, 69, 90)
    assert np.abs(got - ref).max() < 1e-3


def test_edge_exports_check_suffix(model, tmp_path):
    from bsrn.export import export_ncnn, export_openvino, export_tflite

    with pytest.raises(ConfigError, match="xml"):
        export_openvino(model, tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="param"):
        export_ncnn(model, tmp_path / "m.bin")
    with pytest.raises(ConfigError, match="tflite"):
        export_tflite(model, tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="below the network's minimum of 15"):
        export_tflite(model, tmp_path / "m.tflite", (14, 32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt,name,runtime", [("openvino", "x2.xml", "openvino"),
                                              ("ncnn", "x2.param", "pnnx")])
def test_cli_export_edge(tiny_x2_weights, tmp_path, capsys, fmt, name, runtime):
    if runtime == "pnnx":
        _need_without_import("ncnn", "pnnx")
    else:
        pytest.importorskip(runtime, reason=f"{runtime} is not installed")
    out = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["export", str(out), "--weights", tiny_x2_weights]) == 0
    text = capsys.readouterr().out
    assert f"verified in {fmt}" in text and "photo 48x64" in text
    assert out.is_file() and out.with_suffix(".bin").is_file()


def test_tflite_round_trip(model, tmp_path):
    _need_without_import("litert_torch", "ai_edge_litert")
    from bsrn.errors import CheckpointError
    from bsrn.export import export_tflite

    path = tmp_path / "m.tflite"
    res = export_tflite(model, path, (24, 32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]
    assert res["input_shape"] == [1, 3, 24, 32]
    assert set(res["max_abs_diff"]) == {"photo 24x32", "1x24x32 smooth"}
    assert max(res["max_abs_diff"].values()) < 1e-3
    # independent run: the LiteRT interpreter's own API on an input the exporter did not check
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    assert list(inp["shape_signature"]) == [1, 3, 24, 32]  # static: the file takes this only
    x = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(5))
    it.set_tensor(inp["index"], x.numpy())
    it.invoke()
    got = it.get_tensor(out["index"])
    ref = _torch(model, x)
    assert got.shape == ref.shape == (1, 3, 72, 96)
    assert np.abs(got - ref).max() < 1e-3
    # the bundled runner reads the scale from the shapes, runs a batch image by image and
    # refuses other sizes in one line
    from bsrn.checkpoint import load_model

    runner = load_model(path)
    assert runner.scale == 3 and runner.runtime == "litert"
    x2 = torch.cat([x, x.flip(-1)])
    assert np.abs(runner(x2).numpy() - _torch(model, x2)).max() < 1e-3
    with pytest.raises(CheckpointError, match=r"takes 24x32 inputs only \(got 24x31\)"):
        runner(x[..., :31])


def test_cli_export_tflite(tiny_x2_weights, tmp_path, capsys):
    _need_without_import("litert_torch", "ai_edge_litert")
    out = tmp_path / "x2.tflite"
    assert main(["export", str(out), "--weights", tiny_x2_weights, "--input-size", "20x26"]) == 0
    text = capsys.readouterr().out
    assert "verified in tflite" in text and "photo 20x26" in text and "1x3x20x26 only" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x2.tflite"]
    # bsrn upscale runs it on an image of its size, and refuses another size in one line
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 26, 3), np.uint8)).save(
        tmp_path / "a.png")
    Image.fromarray(np.zeros((21, 26, 3), np.uint8)).save(tmp_path / "b.png")
    assert main(["upscale", str(tmp_path / "a.png"), "--weights", str(out), "-o",
                 str(tmp_path / "a_x2.png"), "-q"]) == 0
    assert Image.open(tmp_path / "a_x2.png").size == (52, 40)
    assert main(["upscale", str(tmp_path / "b.png"), "--weights", str(out), "-o",
                 str(tmp_path / "b_x2.png"), "-q"]) != 0
    assert "takes 20x26 inputs only" in capsys.readouterr().err
    assert not (tmp_path / "b_x2.png").exists()


def test_cli_input_size_is_for_tflite(tiny_x2_weights, tmp_path, capsys):
    assert main(["export", str(tmp_path / "m.onnx"), "--weights", tiny_x2_weights,
                 "--input-size", "20x26"]) != 0
    assert "--input-size is for --format tflite" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fake,message", [
    ("raise ImportError('blocked')", r'LiteRT export needs litert_torch, .*\[tflite\]"$'),
    ("def convert(*a, **k):\n    raise RuntimeError('Lowering not found: aten.foo\\nmore')",
     r"m.tflite: LiteRT conversion failed: Lowering not found: aten.foo$"),
    ("def convert(*a, **k):\n    import os, signal\n    os.kill(os.getpid(), signal.SIGSEGV)",
     r"m.tflite: export crashed in litert-torch/LiteRT \(signal 11\)$"),
])
def test_tflite_converter_failures_are_one_line(model, tmp_path, monkeypatch, fake, message):
    """A missing, failing or crashing converter (a stand-in package on the child's path) is one
    BsrnError line, and nothing is written."""
    from bsrn.errors import BsrnError
    from bsrn.export import export_tflite

    fake_dir = tmp_path / "fake" / "litert_torch"
    fake_dir.mkdir(parents=True)
    (fake_dir / "__init__.py").write_text(fake + "\n")
    monkeypatch.syspath_prepend(str(fake_dir.parent))  # found here, imported by the child
    monkeypatch.setenv("PYTHONPATH", f"{fake_dir.parent}{os.pathsep}"
                       f"{os.environ.get('PYTHONPATH', '')}")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BsrnError, match=message) as e:
        export_tflite(model, out / "m.tflite", (16, 16))
    assert "\n" not in str(e.value)
    assert list(out.iterdir()) == []
