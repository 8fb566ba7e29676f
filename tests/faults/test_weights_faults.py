"""Weights are validated before any allocation, and a broken model never yields an image that
is reported as a success. Every failure is one line through each command that loads weights."""
from __future__ import annotations

import json

import pytest
import torch
from fault_files import error_lines, save
from safetensors.torch import save_file

import bsrn
from bsrn.checkpoint import load_model
from bsrn.cli import main
from bsrn.errors import BsrnError, CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(state dict, metadata) of a tiny x2 BSRN saved the way bsrn saves weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    bsrn.save_model(bsrn.create_model("bsrn", scale=2, num_feat=16, num_block=1), path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def write(path, sd, meta=None, **config):
    meta = dict(meta or {})
    if config:
        cfg = json.loads(meta["config"])
        cfg.update(config)
        meta["config"] = json.dumps(cfg)
    save_file(sd, str(path), metadata=meta)
    return path


def bad_metadata(tiny, tmp_path):
    sd, meta = tiny
    cases = {
        "invalid JSON": dict(meta, config="{num_feat: 16,"),
        "unknown arch": dict(meta, arch="swinir"),
        "missing arch": {k: v for k, v in meta.items() if k != "arch"},
        "list config": dict(meta, config="[16, 1]"),
        "string config": dict(meta, config='"bsrn"'),
        "missing config": {k: v for k, v in meta.items() if k != "config"},
        "nested config": dict(meta, config='{"num_feat": {"x": 1}}'),
        "unknown key": dict(meta, config=json.dumps({**json.loads(meta["config"]), "x": 1})),
        "wrong type": dict(meta, config=json.dumps({**json.loads(meta["config"]),
                                                     "num_feat": "16"})),
        "NaN hyperparameter": dict(meta, config=json.dumps({**json.loads(meta["config"]),
                                                             "p": float("nan")})),
        "future format": dict(meta, format="bsrn/9"),
    }
    return {k: write(tmp_path / f"{k.replace(' ', '_')}.safetensors", sd, m)
            for k, m in cases.items()}


def test_malformed_metadata_is_one_checkpoint_error(tiny, tmp_path):
    for what, path in bad_metadata(tiny, tmp_path).items():
        with pytest.raises(CheckpointError) as e:
            load_model(path)
        msg = str(e.value)
        assert msg.startswith(str(path)) and "\n" not in msg, (what, msg)


@pytest.mark.parametrize("command", ["upscale", "eval", "profile", "export"])
def test_malformed_metadata_through_every_command(tiny, tmp_path, capsys, command):
    img = save(tmp_path / "HR" / "a.png")
    for what, path in bad_metadata(tiny, tmp_path).items():
        args = {"upscale": ["upscale", "--weights", path, "--device", "cpu", "-q", img, "-o",
                            tmp_path / "o"],
                "eval": ["eval", "--weights", path, "--dataset", tmp_path, "--quiet",
                         "--device", "cpu"],
                "profile": ["profile", "--weights", path, "--no-runtime", "--device", "cpu"],
                "export": ["export", tmp_path / "m.pt", "--weights", path]}[command]
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        lines = error_lines(err, command)
        assert rc == 1 and len(lines) == 1 and str(path) in lines[0], (what, err)
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("key, value", [("num_feat", 20000), ("num_block", 100000),
                                        ("num_feat", 10 ** 12), ("replicate", 50000),
                                        ("num_feat", -4)])
def test_metadata_asking_for_a_huge_network_fails_before_building(tiny, tmp_path, monkeypatch,
                                                                  key, value):
    built = []
    real = bsrn.checkpoint.build_model
    monkeypatch.setattr(bsrn.checkpoint, "build_model",
                        lambda *a, **k: built.append(a) or real(*a, **k))
    path = write(tmp_path / "bomb.safetensors", *tiny, **{key: value})
    with pytest.raises(CheckpointError, match=f"{key}={value}"):
        load_model(path)
    assert built == []  # not even the shape-only layout was built


def test_shape_check_happens_on_the_meta_device(tiny, tmp_path, monkeypatch):
    devices = []
    real = bsrn.checkpoint.build_model

    def spy(*a, **k):
        devices.append(torch.empty(0).device.type)
        return real(*a, **k)

    monkeypatch.setattr(bsrn.checkpoint, "build_model", spy)
    path = write(tmp_path / "wide.safetensors", *tiny, num_feat=32)  # plausible but wrong
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(path)
    assert devices == ["meta"]
    devices.clear()
    load_model(write(tmp_path / "ok.safetensors", *tiny))
    assert devices == ["meta", "cpu"]


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int32, torch.int64,
                                   torch.bool, torch.complex64])
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_non_floating_weights_are_refused(tiny, tmp_path, dtype, fmt):
    sd, meta = tiny
    cast = {k: (v * 40).to(dtype) for k, v in sd.items()}
    path = tmp_path / f"cast.{fmt}"
    if fmt == "pth":
        torch.save({"params": cast}, path)
    else:
        write(path, cast, meta)
    with pytest.raises(CheckpointError, match=f"has dtype {str(dtype)[6:]}") as e:
        load_model(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tiny, tmp_path, capsys, bad):
    sd, meta = tiny
    sd = {k: v.clone() for k, v in sd.items()}
    name = sorted(sd)[3]
    sd[name].view(-1)[0] = bad
    path = write(tmp_path / "nan.safetensors", sd, meta)
    with pytest.raises(CheckpointError, match=f"tensor {name} has"):
        load_model(path)
    torch.save({"params": sd}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=f"tensor {name} has"):
        load_model(tmp_path / "nan.pth")
    img = save(tmp_path / "a.png")
    rc = main(["upscale", "--weights", str(path), "--device", "cpu", "-q", str(img), "-o",
               str(tmp_path / "o")])
    _, err = capsys.readouterr()
    assert rc == 1 and len(error_lines(err)) == 1 and name in err
    assert not (tmp_path / "o").exists()


def test_non_finite_output_is_never_written(tiny, tmp_path, capsys):
    """Finite weights that overflow: the output is NaN/inf; no image, exit 1, no success."""
    sd, meta = tiny
    sd = {k: v * 1e30 if v.dim() > 1 else v for k, v in sd.items()}
    path = write(tmp_path / "huge.safetensors", sd, meta)
    a, b = save(tmp_path / "in" / "a.png"), save(tmp_path / "in" / "b.png")
    rc = main(["upscale", "--weights", str(path), "--device", "cpu", "-q", str(a), str(b), "-o",
               str(tmp_path / "o"), "--compare"])
    out, err = capsys.readouterr()
    lines = error_lines(err)
    assert rc == 1 and len(lines) == 2 and all("NaN or infinite" in ln for ln in lines), err
    assert out.strip().splitlines()[-1].startswith("0 images upscaled")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    up = bsrn.Upscaler(str(path), device="cpu", plain=True)
    with pytest.raises(BsrnError, match="NaN or infinite"):
        up.upscale(torch.rand(3, 8, 8))
    save(tmp_path / "set" / "HR" / "hr.png")  # no score is reported either
    rc = main(["eval", "--weights", str(path), "--dataset", str(tmp_path / "set"), "--quiet",
               "--device", "cpu"])
    out, err = capsys.readouterr()
    (line,) = error_lines(err, "eval")
    assert rc == 1 and "NaN or infinite" in line and "dB" not in out


def test_truncated_and_garbage_weights_are_one_line(tiny, tmp_path):
    good = write(tmp_path / "good.safetensors", *tiny)
    data = good.read_bytes()
    for name, blob in {"cut.safetensors": data[: len(data) // 2], "empty.safetensors": b"",
                       "junk.pth": b"\x80\x04junk" * 10,
                       "header.safetensors": (10 ** 12).to_bytes(8, "little") + b"{}"}.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError) as e:
            load_model(tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64,
                                   torch.float8_e4m3fn])
def test_every_floating_dtype_loads(tiny, tmp_path, dtype):
    sd, meta = tiny
    path = write(tmp_path / "w.safetensors", {k: v.to(dtype) for k, v in sd.items()}, meta)
    model = load_model(path)
    ref = {k: v.to(dtype).float() for k, v in sd.items()}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref[k].reshape(v.shape), rtol=0, atol=0)
