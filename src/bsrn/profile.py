"""Efficiency measurement: parameters, Multi-Adds, NTIRE FLOPs / activations / convs, peak memory
and runtime (timed by :mod:`bsrn.timing`), with every convention stated.

Counting is done by forward hooks that we write (one record per layer call), on a copy of the
model on the ``meta`` device, so no arithmetic is performed and counts do not depend on the
weights. ``torch.utils.flop_counter.FlopCounterMode`` serves as an independent check of the
conv/linear MACs.

Conventions (see docs/efficiency.md):

* **MACs**: multiply-accumulates of every ``nn.Conv2d`` / ``nn.ConvTranspose2d`` / ``nn.Linear``
  call, bias excluded (what ``torch.utils.flop_counter`` and thop 0.1 count for convs).
* **Multi-Adds (paper)**: the MACs plus one add per output element of a biased layer, at a
  1280x720 HR output (LR 640x360 x2, 427x240 x3, 320x180 x4). This reproduces the published
  73.0 / 33.3 / 19.4 G; the bias-free MACs (19.18 G at x4) are reported as ``macs``.
  Elementwise ops, activations, attention products, pooling and interpolation are not counted.
* **FLOPs (NTIRE 2022, really MACs)**: at a 256x256 LR input, the conv MACs as above plus one per
  output element of ReLU-family layers (ReLU, LeakyReLU, PReLU, ELU, ReLU6), the BatchNorm ops and
  the Linear MACs counted correctly. GELU, sigmoid, pooling and interpolation are not counted.
  **#Acts** is the number of elements of every Conv2d output, **#Conv** the number of Conv2d calls.
  Layers that the official implementation writes as ``nn.Linear`` (all 1x1 layers of BSRN-S) are
  counted as Linear there, so they add MACs but no activations and no convs.
"""
from __future__ import annotations

import copy
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .errors import BsrnError
from .timing import Runtime, time_forward  # noqa: F401 (re-exported)

#: HR output of the paper's Multi-Adds convention (W, H).
PAPER_HR = (1280, 720)
#: LR input side of the NTIRE 2022 counter (``utils/model_summary.py``).
NTIRE_LR = 256

_RELU_FAMILY = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.ReLU6)
_OTHER_ACTS = (nn.GELU, nn.Sigmoid, nn.SiLU, nn.Hardswish, nn.Tanh, nn.Hardsigmoid, nn.Mish)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# ----------------------------------------------------------------------------- layer records
@dataclass
class LayerCall:
    """One call of one leaf layer: its kind, MACs (bias excluded), bias adds, output size."""

    name: str
    kind: str  # conv3x3 dwconv conv1x1 linear convT relu act bn pool gpool upsample
    macs: int = 0
    bias_adds: int = 0
    out_numel: int = 0
    in_numel: int = 0
    ntire_linear_bug: int = 0   # what the shipped NTIRE counter would give as a Linear


def _conv_kind(m: nn.Conv2d) -> str:
    if m.groups > 1:
        return "dwconv" if m.groups == m.in_channels else "gconv"
    return "conv1x1" if tuple(m.kernel_size) == (1, 1) else "conv3x3" \
        if tuple(m.kernel_size) == (3, 3) else "convkxk"


def _record(name: str, m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> LayerCall | None:
    """The record for one call, or None for layers that are not counted at all."""
    on, inn = out.numel(), inp.numel()
    if isinstance(m, nn.Conv2d):
        k = math.prod(m.kernel_size)
        macs = on * (m.in_channels // m.groups) * k
        # As an NHWC Linear (BSRN-S), the shipped counter would see batch * H * H.
        bug = out.shape[0] * out.shape[2] * out.shape[2]
        return LayerCall(name, _conv_kind(m), macs, on if m.bias is not None else 0, on, inn, bug)
    if isinstance(m, nn.ConvTranspose2d):
        k = math.prod(m.kernel_size)
        macs = inn * (m.out_channels // m.groups) * k
        return LayerCall(name, "convT", macs, on if m.bias is not None else 0, on, inn)
    if isinstance(m, nn.Linear):
        # Linear acts on the last dimension; every other dimension is a batch of positions.
        bug = inp.shape[0] * (inp.shape[1] if inp.ndim > 1 else 1) * (
            out.shape[1] if out.ndim > 1 else out.shape[0])
        return LayerCall(name, "linear", on * m.in_features,
                         on if m.bias is not None else 0, on, inn, bug)
    if type(m).__name__ == "CCA":
        # CCA's global statistics: thop counts its AdaptiveAvgPool2d as (H*W + 1) per output.
        return LayerCall(name, "gpool", 0, 0, out.shape[0] * out.shape[1], inn)
    if isinstance(m, _RELU_FAMILY):
        return LayerCall(name, "relu", 0, 0, on, inn)
    if isinstance(m, _OTHER_ACTS):
        return LayerCall(name, "act", 0, 0, on, inn)
    if isinstance(m, _BNS):
        # ptflops / NTIRE: one op per input element, two when affine.
        return LayerCall(name, "bn", 0, 0, on, inn * (2 if m.affine else 1))
    if isinstance(m, _POOLS):
        return LayerCall(name, "pool", 0, 0, on, inn)
    if isinstance(m, nn.Upsample):
        return LayerCall(name, "upsample", 0, 0, on, inn)
    return None


def trace_layers(model: nn.Module, x: torch.Tensor) -> list[LayerCall]:
    """Run ``model(x)`` once with forward hooks on every leaf layer; return one record per call.

    A layer called twice (e.g. a shared activation module) gives two records.
    """
    calls: list[LayerCall] = []
    handles = []
    for name, m in model.named_modules():
        if next(m.children(), None) is not None and type(m).__name__ != "CCA":
            continue

        def hook(mod, args, out, _name=name):
            if not (args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor)):
                return
            rec = _record(_name, mod, args[0], out)
            if rec is not None:
                calls.append(rec)

        handles.append(m.register_forward_hook(hook))
    patched = _record_stages(model, calls)
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, attr in patched:
            del m.__dict__[attr]
    return calls


def _record_stages(model: nn.Module, calls: list) -> list[tuple[nn.Module, str]]:
    """Record the layers that the staged forward computes functionally: CCA's statistics and
    the multi-level fusion conv (accumulated block by block, so it is never called whole).
    Wraps those stages on the instances; returns (instance, attribute) pairs to undo."""
    names = {m: n for n, m in model.named_modules()}
    patched = []
    for m in model.modules():
        if type(m).__name__ == "CCA":
            def stats(x, _m=m, _f=m.stats):
                out = _f(x)
                calls.append(_record(names[_m], _m, x, out))
                return out
            m.stats = stats
            patched.append((m, "stats"))
    fusion = getattr(model, "fusion", None)
    if fusion is not None and hasattr(model, "fuse"):
        n = len(model.blocks())

        def fuse(acc, k, out, _f=model.fuse):
            acc = _f(acc, k, out)
            if k == n - 1:
                inp = out.new_empty((out.shape[0], out.shape[1] * n, *out.shape[2:]))
                calls.append(_record(names[fusion], fusion, inp, acc))
            return acc
        model.fuse = fuse
        patched.append((model, "fuse"))
    return patched


def _on_meta(model: nn.Module) -> nn.Module:
    """A weight-free copy of ``model`` on the meta device (shapes only, nothing computed)."""
    m = copy.deepcopy(model)
    return m.to("meta").eval()


def official_linear_layers(model: nn.Module) -> set[str]:
    """Names of our 1x1 convs that the official implementation writes as ``nn.Linear``.

    BSRN-S (``pw_bias=True``) implements every 1x1 layer as a Linear on NHWC tensors; the NTIRE
    counter therefore sees them as Linear, not Conv2d.
    """
    cfg = getattr(model, "cfg", None)
    if cfg is None or not getattr(cfg, "pw_bias", False):
        return set()
    return {n for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and m.groups == 1}


# ----------------------------------------------------------------------------- counts
@dataclass
class OpCounts:
    """Totals of one traced forward at one input size."""

    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    macs: int                 # conv + convT + linear MACs, bias excluded
    bias_adds: int            # one add per biased conv/linear output element
    ntire_flops: int          # NTIRE counter (MACs + ReLU family + BN, Linear counted right)
    ntire_flops_linear_bug: int  # the same with the shipped counter's Linear formula
    activations: int          # numel of Conv2d outputs (NTIRE #Acts)
    convs: int                # Conv2d calls (NTIRE #Conv)
    by_kind: dict = field(default_factory=dict)   # layer kind -> MACs
    uncounted: dict = field(default_factory=dict)  # kind -> elements of layers outside `macs`

    def to_dict(self) -> dict:
        return asdict(self)


def count_ops(model: nn.Module, input_hw: tuple[int, int], linear_layers: set[str] | None = None,
              in_ch: int | None = None) -> OpCounts:
    """Count MACs, NTIRE FLOPs, activations and convs for one (1, C, H, W) input.

    ``linear_layers``: names of 1x1 convs to count as ``nn.Linear`` (the NTIRE counter's view of
    BSRN-S); defaults to :func:`official_linear_layers`.
    """
    if linear_layers is None:
        linear_layers = official_linear_layers(model)
    in_ch = in_ch or _in_channels(model)
    h, w = input_hw
    meta = _on_meta(model)
    calls = trace_layers(meta, torch.empty(1, in_ch, h, w, device="meta"))
    out = _output_hw(model, input_hw)
    macs = bias = flops = bug = acts = convs = 0
    by_kind: dict[str, int] = defaultdict(int)
    uncounted: dict[str, int] = defaultdict(int)
    for c in calls:
        as_linear = c.kind == "linear" or c.name in linear_layers
        macs += c.macs
        bias += c.bias_adds
        if c.macs:
            by_kind["linear" if as_linear else c.kind] += c.macs
        if c.kind in ("relu", "bn"):
            # ptflops-style hooks: ReLU family = output numel; BN = input numel (x2 if affine).
            n = c.out_numel if c.kind == "relu" else c.in_numel
            flops += n
            bug += n
            uncounted[f"{c.kind} (NTIRE counts)"] += n
        elif c.kind in ("act", "pool", "upsample"):
            uncounted[c.kind] += c.out_numel
        elif c.kind == "gpool":
            uncounted[c.kind] += c.in_numel + c.out_numel
        elif as_linear:
            flops += c.macs
            # The shipped NTIRE counter: batch * input.shape[1] * output.shape[1]; on an NHWC
            # tensor (1, H, W, C) that is H * H.
            bug += c.ntire_linear_bug
        else:
            flops += c.macs
            bug += c.macs
            if c.kind != "convT":
                acts += c.out_numel
                convs += 1
    return OpCounts((h, w), out, macs, bias, flops, bug, acts, convs, dict(by_kind),
                    dict(uncounted))


def aten_op_counts(model: nn.Module, input_hw: tuple[int, int], in_ch: int | None = None) -> dict:
    """Output elements per ATen op of one forward (meta device): what an "every elementwise op
    counts" convention would add. Views, concatenations and copies are listed too."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts: dict[str, int] = defaultdict(int)

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            name = func.overloadpacket.__name__
            counts[name] += sum(t.numel() for t in outs if isinstance(t, torch.Tensor))
            return out

    meta = _on_meta(model)
    x = torch.empty(1, in_ch or _in_channels(model), *input_hw, device="meta")
    with torch.no_grad(), Counter():
        meta(x)
    return dict(counts)


def flop_counter_macs(model: nn.Module, input_hw: tuple[int, int], in_ch: int | None = None) -> int:
    """Conv + linear MACs from PyTorch's own ``FlopCounterMode`` (FLOPs / 2), on meta tensors."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = _on_meta(model)
    x = torch.empty(1, in_ch or _in_channels(model), *input_hw, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        meta(x)
    return fc.get_total_flops() // 2


def _in_channels(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    return int(getattr(cfg, "num_in_ch", 3))


def _output_hw(model: nn.Module, input_hw) -> tuple[int, int]:
    s = int(getattr(model, "scale", 1))
    return input_hw[0] * s, input_hw[1] * s


def count_params(model: nn.Module) -> int:
    """Sum of numel over all parameters (the paper's and NTIRE's #Params)."""
    return sum(p.numel() for p in model.parameters())


def paper_input_hw(scale: int) -> tuple[int, int]:
    """LR (H, W) whose output is 1280x720: 360x640 (x2), 240x427 (x3), 180x320 (x4)."""
    w, h = PAPER_HR
    return round(h / scale), round(w / scale)


# ----------------------------------------------------------------------------- memory
def estimate_peak_memory(model: nn.Module, input_hw: tuple[int, int],
                         in_ch: int | None = None) -> int:
    """Peak bytes of live tensors (weights, input, activations) during one no-grad forward.

    Runs on the meta device under a dispatch mode that tracks every tensor storage an op creates
    and when it is released, which is what ``torch.cuda.max_memory_allocated`` measures minus
    allocator rounding and cuDNN workspaces.
    """
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode

    meta = _on_meta(model)
    x = torch.empty(1, in_ch or _in_channels(model), *input_hw, device="meta")
    live: dict[int, tuple[StorageWeakRef, int]] = {}
    state = {"cur": 0, "peak": 0}

    def add(t):
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            ref = StorageWeakRef(st)
            if ref.cdata not in live:
                live[ref.cdata] = (ref, st.nbytes())
                state["cur"] += st.nbytes()

    def sweep():
        for key in [k for k, (r, _) in live.items() if r.expired()]:
            state["cur"] -= live.pop(key)[1]

    class Tracker(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            sweep()
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                add(t)
            state["peak"] = max(state["peak"], state["cur"])
            return out

    for t in list(meta.parameters()) + list(meta.buffers()) + [x]:
        add(t)
    state["peak"] = state["cur"]
    with torch.no_grad(), Tracker():
        y = meta(x)
    del y
    return state["peak"]


# ----------------------------------------------------------------------------- runtime
# Timing lives in bsrn.timing (shared with the NTIRE protocol and the benchmarks).


# ----------------------------------------------------------------------------- full profile
@dataclass
class Profile:
    """Everything ``bsrn profile`` reports for one model."""

    model: str
    scale: int
    params: int
    multi_adds: int           # paper convention (1280x720 HR output): MACs + bias adds
    macs: int                 # the same, bias excluded
    flops: int                # NTIRE convention (256x256 LR), MACs
    activations: int          # NTIRE #Acts
    convs: int                # NTIRE #Conv
    memory_mb: float | None
    runtime_ms: dict | None
    paper: dict = field(default_factory=dict)
    ntire: dict = field(default_factory=dict)
    at_input: dict = field(default_factory=dict)
    device: str = "cpu"
    memory_source: str = ""
    conventions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


CONVENTIONS = {
    "multi_adds": "multiply-accumulates of every Conv2d/ConvTranspose2d/Linear call plus one "
                  "add per biased output element, at a 1280x720 HR output; activations, "
                  "elementwise products/sums, attention statistics, pooling and interpolation "
                  "are not counted",
    "macs": "multi_adds without the bias adds (torch.utils.flop_counter / thop 0.1 convention)",
    "flops": "NTIRE 2022 model_summary at a 3x256x256 LR input: conv MACs (no bias) + Linear "
             "MACs (counted per position) + 1 per ReLU-family output element + BatchNorm; GELU, "
             "sigmoid, pooling, interpolation not counted. FLOPs here are MACs, as in NTIRE",
    "activations": "number of elements of all Conv2d outputs at 3x256x256 (NTIRE #Acts)",
    "convs": "number of Conv2d calls (NTIRE #Conv); layers the official code writes as "
             "nn.Linear (BSRN-S 1x1s) count in neither activations nor convs",
    "memory_mb": "peak of live tensor memory during one forward (weights + input + "
                 "activations), MiB; CUDA: torch.cuda.max_memory_allocated",
    "runtime_ms": "forward only, batch 1, after warm-up; mean/median/p90 over repeats; "
                  "'first' is the cold first call (NTIRE: no warm-up)",
}


def _fmt_hw(hw) -> str:
    return f"{hw[0]}x{hw[1]}"


def profile_model(model: nn.Module, name: str = "", input_hw: tuple[int, int] | None = None,
                  device: str = "cpu", repeat: int = 10, warmup: int = 3, runtime: bool = True,
                  memory: bool = True, progress: bool = False) -> Profile:
    """Profile ``model``: counts at the paper and NTIRE conventions, and at ``input_hw`` (default:
    the paper's LR size) the peak memory and runtime on ``device``."""
    scale = int(getattr(model, "scale", 1))
    paper_hw = paper_input_hw(scale)
    paper = count_ops(model, paper_hw)
    ntire = count_ops(model, (NTIRE_LR, NTIRE_LR))
    input_hw = tuple(input_hw or paper_hw)
    at = paper if input_hw == paper_hw else count_ops(model, input_hw)
    dev = torch.device(device)
    mem = None
    mem_src = ""
    rt = None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BsrnError(f"device {device!r} requested but CUDA is not available")
    if memory or runtime:
        m = model.eval().to(dev)
        for p in m.parameters():
            p.requires_grad_(False)
        x = torch.rand(1, _in_channels(model), *input_hw, device=dev)
        if memory and dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            with torch.no_grad():
                m(x)
            torch.cuda.synchronize(dev)
            mem = torch.cuda.max_memory_allocated(dev) / 2 ** 20
            mem_src = "torch.cuda.max_memory_allocated"
        if runtime:
            rt = time_forward(m, x, repeat, warmup, progress).to_dict()
    if memory and mem is None:
        mem = estimate_peak_memory(model, input_hw) / 2 ** 20
        mem_src = "live-tensor tracker on the meta device (estimate, fp32)"

    def block(c: OpCounts) -> dict:
        d = c.to_dict()
        d["input_hw"], d["output_hw"] = _fmt_hw(c.input_hw), _fmt_hw(c.output_hw)
        return d

    return Profile(name or type(model).__name__, scale, count_params(model),
                   paper.macs + paper.bias_adds, paper.macs, ntire.ntire_flops,
                   ntire.activations, ntire.convs, mem, rt,
                   paper=block(paper), ntire=block(ntire), at_input=block(at), device=str(dev),
                   memory_source=mem_src, conventions=dict(CONVENTIONS))


def format_profile(p: Profile) -> str:
    """A human-readable report of a Profile."""
    lines = [f"{p.model} x{p.scale}",
             f"  params            {p.params:,} ({p.params / 1e3:.1f} K)",
             f"  Multi-Adds        {p.multi_adds / 1e9:.2f} G  (paper: MACs + bias adds, "
             f"LR {p.paper['input_hw']} -> HR {p.paper['output_hw']})",
             f"  MACs (no bias)    {p.macs / 1e9:.2f} G",
             f"  FLOPs (NTIRE)     {p.flops / 1e9:.2f} G  (MACs + ReLU family, LR 256x256)",
             f"  #Acts (NTIRE)     {p.activations / 1e6:.2f} M",
             f"  #Conv (NTIRE)     {p.convs}"]
    kinds = ", ".join(f"{k} {v / 1e9:.2f}G" for k, v in sorted(p.paper["by_kind"].items(),
                                                               key=lambda kv: -kv[1]))
    lines.append(f"  MACs by layer     {kinds}")
    if p.memory_mb is not None:
        lines.append(f"  peak memory       {p.memory_mb:.1f} MiB at LR {p.at_input['input_hw']} "
                     f"({p.memory_source})")
    if p.runtime_ms:
        r = p.runtime_ms
        lines.append(f"  runtime           mean {r['mean']:.2f} ms, median {r['median']:.2f}, "
                     f"p90 {r['p90']:.2f} ({r['repeat']} runs after {r['warmup']} warm-up, "
                     f"{r['timer']}, {p.device}, LR {p.at_input['input_hw']})")
        if r.get("first") is not None:
            lines.append(f"  first call        {r['first']:.2f} ms (NTIRE: no warm-up)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- entry points
def parse_hw(text: str) -> tuple[int, int]:
    """'HxW' (e.g. '180x320') -> (H, W)."""
    try:
        h, w = (int(v) for v in str(text).lower().replace("*", "x").split("x"))
    except ValueError:
        raise BsrnError(f"size {text!r} is not HxW (e.g. 180x320)") from None
    if h < 1 or w < 1:
        raise BsrnError(f"size {text!r} must be positive")
    return h, w


def resolve_model(model: str | None = None, weights: str | None = None, scale: int | None = None,
                  args: dict | None = None) -> tuple[nn.Module, str]:
    """A registry preset (random weights: counts do not depend on them) or a weights file /
    bundled name -> (model, label)."""
    if (model is None) == (weights is None):
        raise BsrnError("give exactly one of a model name (--model) or weights (--weights)")
    if weights is not None:
        from .checkpoint import load_model

        from pathlib import Path

        return load_model(weights, scale=scale), Path(str(weights)).stem
    from .models import create_model

    try:
        net = create_model(model, scale=scale or 4, **(args or {}))
    except KeyError as e:
        raise BsrnError(str(e).strip("\"'")) from None
    except (TypeError, ValueError) as e:
        raise BsrnError(f"model {model}: {e}") from None
    return net, model


def output_to_input(output_hw: tuple[int, int], scale: int) -> tuple[int, int]:
    """LR (H, W) for an HR output size, rounded to the nearest pixel as for the paper's
    1280x720 at x3 (LR 427x240)."""
    return round(output_hw[0] / scale), round(output_hw[1] / scale)


def write_profile_json(p: Profile, path) -> None:
    """Write one profile as a JSON object, atomically."""
    from .atomic import write_json

    write_json(path, p.to_dict())
