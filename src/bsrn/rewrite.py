"""Fast inference: exact rewrites applied in place to a copy of a network.

In the style of timm's ``reparameterize_model``, :func:`optimize` deep-copies the network and
swaps modules; the copy keeps its class, its forward and its stages, so the exact tiler and the
exporters run the rewritten network through the same code as the original. Each rewrite is exact
up to float summation order:

- ``fold``: the input replication (``cat([x] * 4)``) is folded into ``fea_conv``'s first pointwise
  weights, W' = W[:, 0:3] + W[:, 3:6] + W[:, 6:9] + W[:, 9:12] (a pointwise bias is kept).
- ``matmul``: every 1x1 conv becomes :class:`Pointwise`, a matmul over the channel dim of a
  channels_last tensor, and the network is switched to channels_last. At batch 1 ATen's 1x1 conv
  takes a slow non-oneDNN path on CPU; channels_last also puts the depthwise 3x3 on oneDNN.
- ``act``: on the CPU, a conv whose output goes straight into the activation (the distilled
  1x1s ``c{i}_d``, ``c4``, ESA's ``conv_max`` and ``conv3``) runs as one oneDNN primitive with
  the activation as a post-op, and a 1x1 conv with a bias gets its bias inside the matmul
  (``torch.ops.mkldnn`` pointwise kernels); each fused kind is checked against PyTorch when the
  rewrite is applied, and kept only where it is exact.
- ``dense``: a BSConvU (bias-free pointwise, then depthwise) becomes one dense kxk conv,
  W[o, i] = pw[o, i] * dw[o] (exact at any stride and padding). Per layer, by a policy measured
  per device (``fuse="policy"``), a micro-benchmark (``fuse="measure"``), or by name. Never
  applied to a pointwise with a bias (BSRN-S): the zero padding would then come after the bias.

The block-by-block fusion ``acc += W_k B_k`` and the in-place activations are part of the
network's own forward, so no rewrite needs a second forward. Precision is not a rewrite: it is
applied by :func:`bsrn.precision.run` around any forward.
"""
from __future__ import annotations

import copy
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .models.blocks import BSConvS, BSConvU, DSConv, pointwise
from .precision import resolve_device

REWRITES = ("fold", "dense", "act", "matmul")

# (device type, dtype, threads, cin, cout, k, stride, h, w) -> True when the dense conv is faster
_FUSE_CACHE: dict[tuple, bool] = {}


def _mkldnn_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not torch.is_grad_enabled())


#: (activation type) -> its oneDNN post-op (attr, scalars, algorithm), per module instance.
def _post_op(act: nn.Module):
    if type(act) is nn.GELU:
        return "gelu", [], act.approximate
    if type(act) is nn.ReLU:
        return "relu", [], ""
    if type(act) is nn.LeakyReLU:
        return "leaky_relu", [act.negative_slope], ""
    if type(act) is nn.Hardswish:
        return "hardswish", [], ""
    if type(act) is nn.SiLU:
        return "swish", [], ""
    if type(act) is nn.Sigmoid:
        return "sigmoid", [], ""
    return None


class Pointwise(nn.Module):
    """A 1x1 conv as a matmul over the channels of a channels_last tensor; with ``act``, the
    activation runs as a post-op of the same oneDNN matmul (``applies_act``)."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module | None = None):
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.weight = nn.Parameter(conv.weight.detach().reshape(conv.out_channels, -1).clone(),
                                   requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(),
                                                                requires_grad=False)
        self.act = act
        self.applies_act = act is not None
        self.post_op = _post_op(act) if act is not None else None

    def forward(self, x):
        nhwc = x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1
        if nhwc and (self.post_op or self.bias is not None) and _mkldnn_ok(x, self.weight):
            attr, scalars, algo = self.post_op or ("none", [], "")
            y = torch.ops.mkldnn._linear_pointwise(x.permute(0, 2, 3, 1), self.weight,
                                                   self.bias, attr, scalars, algo)
            return y.permute(0, 3, 1, 2)
        y = pointwise(x, self.weight, self.bias)
        return self.act(y) if self.act is not None else y


class ConvAct(nn.Module):
    """A kxk conv with its activation as a oneDNN post-op (``applies_act``)."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.conv, self.act = conv, act
        self.applies_act = True
        self.post_op = _post_op(act)

    def forward(self, x):
        c = self.conv
        if _mkldnn_ok(x, c.weight):
            attr, scalars, algo = self.post_op
            return torch.ops.mkldnn._convolution_pointwise(
                x, c.weight, c.bias, list(c.padding), list(c.stride), list(c.dilation),
                c.groups, attr, scalars, algo)
        return self.act(c(x))


def _is_pointwise(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.groups == 1
            and m.stride == (1, 1) and m.padding == (0, 0) and m.dilation == (1, 1))


def dense_from_bsconvu(mod: BSConvU) -> nn.Conv2d:
    """BSConvU -> dense conv: W[o, i, u, v] = dw[o, 0, u, v] * pw[o, i]; bias = dw.bias."""
    pw, dw = mod.pw, mod.dw
    cout, cin = pw.out_channels, pw.in_channels
    conv = nn.Conv2d(cin, cout, dw.kernel_size, dw.stride, dw.padding, dw.dilation,
                     bias=dw.bias is not None).to(dw.weight.device, dw.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(dw.weight * pw.weight.reshape(cout, cin)[:, :, None, None])
        if dw.bias is not None:
            conv.bias.copy_(dw.bias)
    return conv


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def dense_is_faster(cin: int, cout: int, k: int, stride: int, size: tuple[int, int],
                    device: torch.device, dtype: torch.dtype = torch.float32, reps: int = 5) -> bool:
    """Micro-benchmark one BSConvU shape on channels_last input: does the dense conv beat
    pointwise + depthwise by 10 % (medians of ``reps`` interleaved runs)? Cached per device,
    dtype, thread count and shape."""
    key = (device.type, str(dtype), torch.get_num_threads(), cin, cout, k, stride, *size)
    if key in _FUSE_CACHE:
        return _FUSE_CACHE[key]
    x = torch.randn(1, cin, *size, device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    pw = torch.randn(cout, cin, device=device, dtype=dtype)
    dw = torch.randn(cout, 1, k, k, device=device, dtype=dtype)
    dense = torch.randn(cout, cin, k, k, device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    pad = k // 2 if stride == 1 else 0
    fns = (lambda: F.conv2d(pointwise(x, pw), dw, None, stride, pad, 1, cout),
           lambda: F.conv2d(x, dense, None, stride, pad))
    times = ([], [])
    for f in fns:
        f()
    for _ in range(reps):
        for f, t in zip(fns, times):
            _sync(device)
            t0 = time.perf_counter()
            f()
            _sync(device)
            t.append(time.perf_counter() - t0)
    t_sep, t_dense = (sorted(t)[len(t) // 2] for t in times)
    _FUSE_CACHE[key] = t_dense < 0.9 * t_sep
    return _FUSE_CACHE[key]


def policy_dense(cin: int, cout: int, device: torch.device) -> bool:
    """Per-device policy for the BSConvU -> dense rewrite.

    CPU (oneDNN, fp32, channels_last): a dense 64->64 3x3 costs 7.9x the MACs of pw + dw and
    loses (34 vs 54 ms at 320x180, 1 thread); the folded fea_conv (3 -> 64) wins 6x, because a
    K=3 matmul is inefficient. So on CPU only layers with <= 8 input channels are fused. CUDA:
    all (dense convs use tensor cores, depthwise cannot).
    """
    if device.type == "cuda":
        return True
    return cin <= 8


def default_rewrites(device: torch.device) -> tuple[str, ...]:
    """The rewrites used by default: all of them, on every device."""
    return REWRITES


def _fold_replication(model: nn.Module) -> None:
    """``fold``: sum the replicated input's weight slices into fea_conv's first conv."""
    reps, cin = model.input_replicate, model.cfg.num_in_ch
    if reps <= 1:
        return
    mod = model.fea_conv
    attr = {BSConvU: "pw", BSConvS: "pw1"}.get(type(mod))
    first = getattr(mod, attr) if attr else mod
    if type(first) is not nn.Conv2d or first.groups != 1:
        return
    new = nn.Conv2d(cin, first.out_channels, first.kernel_size, first.stride, first.padding,
                    first.dilation, bias=first.bias is not None).to(first.weight.device)
    with torch.no_grad():
        new.weight.copy_(sum(first.weight[:, i * cin:(i + 1) * cin] for i in range(reps)))
        if first.bias is not None:
            new.bias.copy_(first.bias)
    if attr:
        setattr(mod, attr, new)
    else:
        model.fea_conv = new
    model.input_replicate = 1


def _fuse_dense(model: nn.Module, fuse, device: torch.device, size) -> dict[str, str]:
    """``dense``: swap BSConvU modules for dense convs where ``fuse`` says so."""
    decisions = {}
    lowest = (max(1, size[0] // 6), max(1, size[1] // 6))
    for name, mod in list(model.named_modules()):
        if type(mod) is not BSConvU:
            continue
        if mod.pw.bias is not None:  # fusing would move the bias inside the zero padding
            decisions[name] = "separate"
            continue
        cin, cout = mod.pw.in_channels, mod.dw.out_channels
        if isinstance(fuse, (set, frozenset, list, tuple)):
            ok = name in fuse
        elif fuse == "all":
            ok = True
        elif fuse == "none":
            ok = False
        elif fuse == "measure":
            at = lowest if ".esa.conv" in name and "conv2" not in name else size
            ok = dense_is_faster(cin, cout, mod.dw.kernel_size[0], mod.dw.stride[0], at, device)
        elif fuse == "policy":
            ok = policy_dense(cin, cout, device)
        else:
            raise ConfigError(f"fuse must be policy, measure, all, none or a set of layer names, "
                              f"got {fuse!r}")
        decisions[name] = "dense" if ok else "separate"
        if ok:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf,
                    dense_from_bsconvu(mod))
    return decisions


def _with_act(mod: nn.Module, act: nn.Module) -> nn.Module | None:
    """``mod`` with ``act`` fused into its last op, or None where that is not possible."""
    if _post_op(act) is None or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return None
    if _is_pointwise(mod):
        return Pointwise(mod, act)
    if type(mod) is nn.Conv2d:
        return ConvAct(mod, act)
    last = {BSConvU: "dw", BSConvS: "dw", DSConv: "pw"}.get(type(mod))
    if last is None:
        return None
    fused = _with_act(getattr(mod, last), act)
    if fused is None:
        return None
    mod = copy.copy(mod)  # a shallow copy: the other layers are shared, then re-registered
    mod._modules = dict(mod._modules)
    setattr(mod, last, fused)
    mod.applies_act = True
    return mod


@torch.no_grad()
def _fuse_acts(model: nn.Module) -> list[str]:
    """``act``: fuse each module's ``act_convs`` with their activation (``act``, or the one
    named beside the conv), where the fused kernel is exact here (checked once per kind on a
    small input)."""
    fused = []
    for name, owner in list(model.named_modules()):
        for entry in getattr(owner, "act_convs", ()):
            attr, act_attr = (entry, "act") if isinstance(entry, str) else entry
            mod, act = getattr(owner, attr), getattr(owner, act_attr)
            new = _with_act(mod, act)
            if new is None or not _fused_is_exact(mod, new, act):
                continue
            setattr(owner, attr, new)
            fused.append(f"{name}.{attr}" if name else attr)
    return fused


_EXACT_CACHE: dict[tuple, bool] = {}


def _fused_is_exact(mod: nn.Module, new: nn.Module, act: nn.Module) -> bool:
    key = (type(new).__name__, type(getattr(new, "dw", getattr(new, "pw", new))).__name__,
           repr(act))
    if key not in _EXACT_CACHE:
        cin = next(p for p in mod.parameters()).shape[1] if _is_pointwise(mod) else None
        cin = cin or _in_channels(mod)
        x = torch.randn(1, cin, 9, 11, generator=torch.Generator().manual_seed(0)).to(
            next(mod.parameters()).device).contiguous(memory_format=torch.channels_last)
        try:
            ok = bool((new(x) - act(mod(x))).abs().max() <= 1e-5)
        except RuntimeError:  # the kernel or post-op is missing in this build
            ok = False
        _EXACT_CACHE[key] = ok
    return _EXACT_CACHE[key]


def _in_channels(mod: nn.Module) -> int:
    first = mod if isinstance(mod, nn.Conv2d) else next(
        m for m in mod.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels


def _to_matmul(model: nn.Module) -> None:
    """``matmul``: every plain 1x1 conv becomes a :class:`Pointwise`; channels_last."""
    for name, mod in list(model.named_modules()):
        if _is_pointwise(mod):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, Pointwise(mod))
    model.to(memory_format=torch.channels_last)
    model.memory_format = torch.channels_last


class CUDAGraphs(nn.Module):
    """Replays one captured CUDA graph per input shape (LRU of 8); stages pass through."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._graphs: OrderedDict = OrderedDict()

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def forward(self, x):
        if not x.is_cuda or torch.is_grad_enabled():
            return self.model(x)
        half = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda") if half else None
        key = (tuple(x.shape), x.dtype, x.device, dtype)
        entry = self._graphs.get(key)
        if entry is None:
            # autocast's weight-cast cache must be off while capturing
            ctx = lambda: torch.autocast("cuda", dtype=dtype, enabled=half,  # noqa: E731
                                         cache_enabled=False)
            static_in = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), ctx():
                for _ in range(2):  # warm-up outside the capture
                    self.model(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), ctx():
                static_out = self.model(static_in)
            entry = self._graphs[key] = (graph, static_in, static_out)
            while len(self._graphs) > 8:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()


def optimize(model: nn.Module, device: str | torch.device = "cpu", rewrites=None,
             fuse: str | set = "policy", sample_size: tuple[int, int] = (180, 320),
             compile: bool = False, cuda_graphs: bool = False) -> nn.Module:
    """An inference copy of ``model`` on ``device`` with exact rewrites (the source is unchanged).

    ``rewrites``: a subset of :data:`REWRITES` (default: all). ``fuse``: which BSConvU layers
    become dense convs: "policy" (:func:`policy_dense`), "measure" (micro-benchmark at
    ``sample_size``, the LR (h, w) you will run), "all", "none", or a set of layer names such as
    {"B1.c1_r"}. ``compile``: ``torch.compile`` the copy. ``cuda_graphs``: replay a captured
    graph per input shape (CUDA only, ignored elsewhere). The copy's ``rewrites``,
    ``decisions`` (dense or separate, per BSConvU) and ``fused_acts`` attributes say what was
    applied.
    """
    device = resolve_device(device)
    rewrites = default_rewrites(device) if rewrites is None else tuple(rewrites)
    unknown = set(rewrites) - set(REWRITES)
    if unknown:
        raise ConfigError(f"unknown rewrites {sorted(unknown)}; choose from {', '.join(REWRITES)}")
    fast = copy.deepcopy(model).eval().requires_grad_(False).to(device)
    decisions = {}
    with torch.no_grad():
        if "fold" in rewrites and hasattr(fast, "input_replicate"):
            _fold_replication(fast)
        if "dense" in rewrites:
            decisions = _fuse_dense(fast, fuse, device, tuple(sample_size))
        # (under torch.compile Inductor fuses activations itself and cannot trace these kernels)
        acts = _fuse_acts(fast) if "act" in rewrites and device.type == "cpu" and not compile \
            else []
        if "matmul" in rewrites:
            _to_matmul(fast)
    fast.requires_grad_(False)
    fast.rewrites = tuple(r for r in REWRITES if r in rewrites)
    fast.decisions = decisions
    fast.fused_acts = acts
    if cuda_graphs and device.type == "cuda":
        fast = CUDAGraphs(fast)
    if compile:
        fast = torch.compile(fast, dynamic=True)
    return fast
