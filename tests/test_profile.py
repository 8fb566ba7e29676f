"""Counters of ``bsrn.profile`` on hand-computable networks, and the published efficiency figures.

Expected MACs are derived by hand in each test from the layer shapes (MACs of a conv = output
positions x output channels x Cin/groups x k^2), never copied from the tool's output. The published
figures need no weights: counts depend only on the architecture.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bsrn.cli import main
from bsrn.models import BSConvU, create_model
from bsrn.profile import (count_ops, count_params, estimate_peak_memory, flop_counter_macs,
                          paper_input_hw, parse_hw, profile_model)


class Wrap(nn.Module):
    """Any module with a ``cfg``-less interface, scale 1, 3 input channels by default."""

    scale = 1

    def __init__(self, *layers):
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


def test_single_conv():
    net = Wrap(nn.Conv2d(3, 8, 3, padding=1))
    c = count_ops(net, (10, 12))
    positions = 10 * 12
    assert c.macs == positions * 8 * (3 * 3 * 3)           # 25,920
    assert c.bias_adds == positions * 8                     # one add per output element
    assert c.activations == positions * 8
    assert c.convs == 1
    assert c.ntire_flops == c.macs                          # NTIRE leaves the bias out
    assert count_params(net) == 8 * 3 * 9 + 8
    assert flop_counter_macs(net, (10, 12)) == positions * 8 * 27


def test_strided_conv_counts_output_positions():
    net = Wrap(nn.Conv2d(3, 4, 3, stride=2, padding=0, bias=False))
    c = count_ops(net, (11, 9))
    out_h, out_w = (11 - 3) // 2 + 1, (9 - 3) // 2 + 1      # 5 x 4
    assert c.macs == out_h * out_w * 4 * 3 * 9
    assert c.bias_adds == 0
    assert c.activations == out_h * out_w * 4


def test_depthwise_conv():
    net = Wrap(nn.Conv2d(3, 3, 3, padding=1, groups=3))
    c = count_ops(net, (10, 12))
    assert c.macs == 10 * 12 * 3 * 9                        # one 3x3 per channel: Cin/groups = 1
    assert c.by_kind == {"dwconv": 10 * 12 * 3 * 9}
    assert flop_counter_macs(net, (10, 12)) == c.macs


class NHWCLinear(nn.Module):
    """A 1x1 layer written as nn.Linear on NHWC tensors, like BSRN-S."""

    scale = 1

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 6)

    def forward(self, x):
        return self.lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_linear_on_nhwc_counts_every_position():
    net = NHWCLinear()
    c = count_ops(net, (5, 7))
    assert c.macs == 5 * 7 * 3 * 6                          # 630: in x out per pixel
    assert c.ntire_flops == 5 * 7 * 3 * 6                   # counted right
    assert c.activations == 0 and c.convs == 0              # NTIRE: Linear is not a conv
    # The shipped NTIRE counter: batch * input.shape[1] * output.shape[1] = 1 * H * H.
    assert c.ntire_flops_linear_bug == 1 * 5 * 5
    assert flop_counter_macs(net, (5, 7)) == 630


def test_bsconv_u_block():
    net = Wrap(BSConvU(3, 8))
    c = count_ops(net, (6, 6))
    pw = 36 * 8 * 3                                         # 1x1, 3 -> 8, no bias
    dw = 36 * 8 * 9                                         # depthwise 3x3 on 8 channels
    assert c.macs == pw + dw == 3456
    assert c.bias_adds == 36 * 8                            # only dw has a bias
    assert c.convs == 2 and c.activations == 2 * 36 * 8
    assert count_params(net) == 8 * 3 + 8 * 9 + 8


class PoolInterp(nn.Module):
    """1x1 conv -> max-pool -> bilinear back -> GELU -> ReLU -> sigmoid gate."""

    scale = 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.gelu = nn.GELU()
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.pool(self.conv(x))
        y = F.interpolate(y, x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.relu(self.gelu(y)))


def test_pooling_interpolation_and_elementwise_do_not_count():
    net = PoolInterp()
    c = count_ops(net, (8, 8), in_ch=2)
    conv = 8 * 8 * 2 * 2                                    # 256
    assert c.macs == conv                                   # nothing else is a MAC
    assert c.ntire_flops == conv + 2 * 8 * 8                # + ReLU: one per output element
    assert c.uncounted["pool"] == 2 * 4 * 4
    assert c.uncounted["act"] == 2 * 8 * 8                  # GELU: listed, not counted
    assert flop_counter_macs(net, (8, 8), in_ch=2) == conv


def test_batchnorm_counts_in_ntire_only():
    net = Wrap(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
    c = count_ops(net, (5, 5))
    assert c.macs == 25 * 4 * 3
    assert c.ntire_flops == 25 * 4 * 3 + 2 * (4 * 25)       # affine BN: 2 per input element


def test_shared_activation_counts_every_call():
    class Twice(nn.Module):
        scale = 1

        def __init__(self):
            super().__init__()
            self.act = nn.LeakyReLU(0.05)

        def forward(self, x):
            return self.act(self.act(x) + 1)

    assert count_ops(Twice(), (4, 5)).ntire_flops == 2 * 3 * 4 * 5


def test_peak_memory_of_a_chain():
    net = Wrap(nn.Conv2d(3, 8, 1, bias=False), nn.Conv2d(8, 4, 1, bias=False))
    weights = (8 * 3 + 4 * 8) * 4
    x, a, b = 3 * 100 * 4, 8 * 100 * 4, 4 * 100 * 4         # fp32 bytes at 10x10
    # While the second conv writes b, its input a and the caller's x are still alive.
    assert estimate_peak_memory(net, (10, 10)) == weights + x + a + b


def test_paper_input_sizes():
    # 1280x720 HR output: LR 640x360, 427x240, 320x180.
    assert paper_input_hw(2) == (360, 640)
    assert paper_input_hw(3) == (240, 427)
    assert paper_input_hw(4) == (180, 320)
    assert parse_hw("180x320") == (180, 320)


# ----------------------------------------------------------------------------- published figures
def within(value, published, rel=0.01):
    return abs(value / published - 1) <= rel


@pytest.mark.parametrize("scale, params, multi_adds", [
    (2, 332e3, 73.0e9), (3, 340e3, 33.3e9), (4, 352e3, 19.4e9)])
def test_bsrn_paper_table(scale, params, multi_adds):
    net = create_model("bsrn", scale=scale)
    assert within(count_params(net), params, 0.005)
    c = count_ops(net, paper_input_hw(scale))
    assert within(c.macs + c.bias_adds, multi_adds)        # the paper's Multi-Adds
    # Hand check of the trunk's dominant term at x4: per ESDB and LR pixel, the 1x1 layers do
    # c{1,2,3}_d 3*64*32 + c{1,2,3}_r.pw 3*64*64 + c4.pw 64*32 + c5 128*64 + esa conv1 64*16
    # + conv_f 16*16 + conv4 16*64 = 30,976 MACs.
    if scale == 4:
        per_block_1x1 = 3 * 64 * 32 + 3 * 64 * 64 + 64 * 32 + 128 * 64 + 64 * 16 + 16 * 16 + 16 * 64
        trunk_1x1 = 180 * 320 * (8 * per_block_1x1 + 12 * 64 + 512 * 64 + 64 * 64)
        # remaining 1x1 MACs: ESA's pw layers at reduced resolution and CCA's two 1x1s.
        assert 0 < c.by_kind["conv1x1"] - trunk_1x1 < 0.01 * trunk_1x1


NTIRE_2022 = [  # name, params (M), FLOPs (G), #Acts (M), #Conv
    ("bsrn_s", 0.156, 9.50, 65.76, 43),
    ("rfdn", 0.433, 27.10, 112.03, 64),
    ("imdn", 0.894, 58.53, 154.14, 43),
]


@pytest.mark.parametrize("name, params, flops, acts, convs", NTIRE_2022)
def test_ntire_2022_table(name, params, flops, acts, convs):
    net = create_model(name)
    c = count_ops(net, (256, 256))
    assert round(count_params(net) / 1e6, 3) == params
    assert within(c.ntire_flops, flops * 1e9)
    assert within(c.activations, acts * 1e6, 0.0005)
    assert c.convs == convs


def test_ntire_linear_bug_explains_bsrn_s():
    # The shipped counter undercounts BSRN-S's Linear layers: what remains is dense + depthwise.
    c = count_ops(create_model("bsrn_s"), (256, 256))
    assert c.ntire_flops_linear_bug < 0.25 * c.ntire_flops
    assert abs(c.ntire_flops_linear_bug - c.by_kind["conv3x3"] - c.by_kind["dwconv"]) < 0.01e9


def test_profile_cli_json(tmp_path):
    out = tmp_path / "p.json"
    threads = torch.get_num_threads()
    try:  # one thread: tiny ops on a busy machine are slowed by thread hand-offs
        rc = main(["profile", "--model", "bsrn", "--arg", "num_feat=8", "--arg", "num_block=1",
                   "--input", "16x16", "--repeat", "2", "--warmup", "0", "--ntire-runtime",
                   "--threads", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    d = json.loads(out.read_text())
    for key in ("params", "multi_adds", "flops", "activations", "convs", "memory_mb",
                "runtime_ms"):
        assert key in d
    assert d["params"] == count_params(create_model("bsrn", num_feat=8, num_block=1))
    # Conv2d calls, BSConvU = 2: fea_conv 2; one ESDB = c{1,2,3}_d 3 + c{1,2,3}_r 6 + c4 2 + c5 1
    # + ESA (conv1, conv_f, conv4 3 + four BSConvU 8) + CCA 2 = 25; c1 1, c2 2, upsampler 1.
    # (8 ESDBs give 2 + 8 * 25 + 4 = 206, the reference's count for BSRN.)
    assert d["convs"] == 2 + 25 + 1 + 2 + 1
    assert d["at_input"]["input_hw"] == "16x16" and d["paper"]["input_hw"] == "180x320"
    assert d["runtime_ms"]["repeat"] == 2 and d["runtime_ms"]["first"] > 0


def test_profile_cli_errors(capsys):
    assert main(["profile", "--model", "no_such_model", "--no-runtime"]) == 1
    assert "no_such_model" in capsys.readouterr().err
    assert main(["profile", "--model", "bsrn", "--input", "big", "--no-runtime"]) == 1
    assert "HxW" in capsys.readouterr().err


def test_profile_model_without_runtime():
    p = profile_model(create_model("bsrn", num_block=2, num_feat=16), runtime=False)
    assert p.runtime_ms is None and p.memory_mb > 0
    assert p.multi_adds > p.macs > 0
