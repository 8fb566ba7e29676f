"""Commands whose optional dependency is missing say in one line which extra to install.

The packages are hidden from the import system here (a real plain install is smoke-tested by
``.ci/smoke_core.sh`` in a fresh virtual environment)."""
from __future__ import annotations

import json
import sys

import pytest
from fault_files import error_lines, save

from bsrn.cli import main
from bsrn.errors import MissingDependencyError
from bsrn.extras import extra_for, require

OPTIONAL = ("matplotlib", "onnx", "onnxruntime", "tensorboard")


class _Hide:
    """A meta-path finder that makes the optional packages unimportable."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in OPTIONAL:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@pytest.fixture
def core_install(monkeypatch):
    for mod in list(sys.modules):
        if mod.split(".")[0] in OPTIONAL:
            monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(sys, "meta_path", [_Hide()] + sys.meta_path)


def test_extras_of_the_optional_packages():
    assert extra_for("matplotlib.pyplot") == "plot"
    assert extra_for("onnxruntime") == "onnx"
    assert extra_for("tensorboard") == "tensorboard"
    assert extra_for("numpy") is None


def test_require_names_the_extra(core_install):
    with pytest.raises(MissingDependencyError, match=r'pip install "[\w.-]+\[plot\]"'):
        require("matplotlib", "drawing")


def _check(capsys, command, extra, *args):
    rc = main([command, *map(str, args)])
    _, err = capsys.readouterr()
    lines = error_lines(err, command)
    assert rc == 1 and len(lines) == 1, err
    assert f'[{extra}]"' in lines[0] and "pip install" in lines[0]


def test_plot_commands_name_the_plot_extra(core_install, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    _check(capsys, "plot-log", "plot", run)
    ev, pr = tmp_path / "eval.json", tmp_path / "profile.json"
    ev.write_text(json.dumps([{"dataset": "Set5", "scale": 4, "psnr": 30.0, "ssim": 0.9}]))
    pr.write_text(json.dumps({"params": 1000, "macs": 2e9, "scale": 4}))
    _check(capsys, "plot", "plot", "tradeoff", "--entry", "m", ev, pr, "--out", tmp_path / "f")


def test_onnx_export_names_the_onnx_extra(core_install, tmp_path, capsys):
    _check(capsys, "export", "onnx", tmp_path / "m.onnx", "--weights", "bsrn-x2")
    assert not (tmp_path / "m.onnx").exists()
    rc = main(["export", str(tmp_path / "m.pt"), "--weights", "bsrn-x2", "--no-verify"])
    assert rc == 0 and (tmp_path / "m.pt").is_file()  # TorchScript needs no extra


def test_upscale_needs_no_extra(core_install, tmp_path, capsys, tiny_x2_weights):
    rc = main(["upscale", "--weights", tiny_x2_weights, "--device", "cpu", "-q",
               str(save(tmp_path / "a.png")), "-o", str(tmp_path / "o")])
    assert rc == 0 and (tmp_path / "o" / "a_x2.png").is_file()


def test_any_missing_module_is_one_line(monkeypatch, capsys):
    import bsrn.cli

    def needs_missing(args):
        import bsrn_no_such_module  # noqa: F401

    parser_default = bsrn.cli.build_parser
    monkeypatch.setattr(bsrn.cli, "build_parser", lambda: _with_func(parser_default(),
                                                                     needs_missing))
    rc = main(["models"])
    _, err = capsys.readouterr()
    (line,) = error_lines(err, "models")
    assert rc == 1 and "bsrn_no_such_module" in line and "pip install" in line


def _with_func(parser, func):
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["models"].set_defaults(func=func)
    return parser
