"""Fast inference path: an inference-only BSRN built from the trained one by exact rewrites.

Rewrites (each exact up to float summation order; ``optimize(..., rewrites=...)`` selects them):

- ``fold``: the 4x input replication is folded into ``fea_conv``'s first pointwise weights
  (W' = sum of the four 3-channel slices; a pointwise bias, as in BSRN-S, is kept), so the
  12-channel concat disappears.
- ``matmul``: every 1x1 conv runs as a matmul over the channel dim of a channels_last tensor
  (``F.linear`` on the NHWC view, zero-copy). At batch 1 ATen's 1x1 conv takes a slow
  non-oneDNN path; on a channels_last tensor the depthwise 3x3 also reaches oneDNN (NCHW
  depthwise on CPU is ~8x slower). This is the main CPU win.
- ``hmerge``: ``c{i}_d`` and ``c{i}_r.pw`` read the same tensor, so they become one matmul with
  dc + C outputs. ``esa_merge``: ESA's ``conv1`` and ``conv_f`` are composed into ``c5`` (c5 gets
  C + 2f outputs). Both are off by default on CPU (see :func:`default_rewrites`).
- ``accumulate``: the multi-level fusion ``c1`` over cat[B1..Bn] is accumulated block by block
  (acc += W_k B_k), so the n block outputs are never stored together.
- ``dense``: a BSConvU (bias-free pointwise, then depthwise) becomes one dense kxk conv,
  W[o, i] = pw[o, i] * dw[o] (exact at any stride, incl. padding). Decided per layer by a
  measured per-device policy (``fuse="policy"``: on CPU only fea_conv, whose folded pointwise has
  3 inputs) or by a per-layer-shape micro-benchmark on the device at hand (``fuse="measure"``,
  cached per device/dtype/shape/threads); on tensor-core GPUs the dense conv is expected to
  win. Never applied to a pointwise with a bias (BSRN-S): the zero padding would then come
  after the bias and the border would change.

Switches: ``precision`` (the forward runs under fp16/bf16 autocast; weights stay fp32, CCA
statistics are computed in fp32; ``bsrn.precision.run`` can force an fp32 retry),
``compile=True`` (``torch.compile`` of the forward), ``cuda_graphs=True`` (CUDA only: one
captured graph per input shape, replayed; shapes must repeat to pay off).
"""
from __future__ import annotations

import copy
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .models.attention import channel_stats
from .models.blocks import BSConvS, BSConvU, DSConv, pad_to_min
from .tiling import _ESDBStages
from .precision import DTYPES, autocast, fp32_forced, resolve_device, resolve_precision

REWRITES = ("fold", "matmul", "hmerge", "esa_merge", "accumulate", "dense")

# (device type, dtype, threads, cin, cout, k, stride, h, w) -> True when the dense conv is faster
_FUSE_CACHE: dict[tuple, bool] = {}


# ----------------------------------------------------------------------------- primitives
def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """1x1 conv as ``F.linear`` over the channel dim (weight (Cout, Cin)); channels_last out."""
    return F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)


def act_(act: nn.Module, x: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``act(x)``, in place on a fresh intermediate when ``inplace`` (saves an allocation and its
    page faults per call; large CPU tensors are not cached by the allocator)."""
    if inplace:
        if isinstance(act, nn.GELU):
            return torch.ops.aten.gelu_(x, approximate=act.approximate)
        if isinstance(act, nn.ReLU):
            return x.relu_()
    return act(x)


class PW(nn.Module):
    """A pointwise (1x1) conv computed as a matmul (``matmul`` rewrite) or as a 1x1 conv."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, matmul: bool = True):
        super().__init__()
        self.weight = nn.Parameter(weight.reshape(weight.shape[0], -1).detach().clone(),
                                   requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)
        self.matmul = matmul

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def forward(self, x):
        if self.matmul:
            return pointwise(x, self.weight, self.bias)
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


def _frozen_conv(conv: nn.Conv2d) -> nn.Conv2d:
    c = copy.deepcopy(conv)
    for p in c.parameters():
        p.requires_grad_(False)
    return c


def _dense_from_bsconvu(pw_w: torch.Tensor, dw: nn.Conv2d) -> nn.Conv2d:
    """BSConvU -> dense conv: W[o, i, u, v] = dw[o, 0, u, v] * pw[o, i]; bias = dw.bias."""
    cout, cin = pw_w.shape[0], pw_w.reshape(pw_w.shape[0], -1).shape[1]
    conv = nn.Conv2d(cin, cout, dw.kernel_size, dw.stride, dw.padding, dw.dilation,
                     bias=dw.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(dw.weight * pw_w.reshape(cout, cin)[:, :, None, None])
        if dw.bias is not None:
            conv.bias.copy_(dw.bias)
    return _frozen_conv(conv)


class SepConv(nn.Module):
    """Pointwise then depthwise (BSConvU kept separate); ``pw`` may produce extra leading
    channels (horizontal merge), which are returned as ``extra``."""

    def __init__(self, pw: PW, dw: nn.Conv2d, split: int = 0):
        super().__init__()
        self.pw, self.dw, self.split = pw, _frozen_conv(dw), split

    def forward(self, x):
        t = self.pw(x)
        if self.split:
            return t[:, :self.split], self.dw(t[:, self.split:])
        return self.dw(t)


class DenseConv(nn.Module):
    """A BSConvU fused into one dense conv; with a horizontally merged sibling pointwise."""

    def __init__(self, conv: nn.Conv2d, sibling: PW | None = None):
        super().__init__()
        self.conv, self.sibling = conv, sibling

    def forward(self, x):
        if self.sibling is not None:
            return self.sibling(x), self.conv(x)
        return self.conv(x)


class Seq(nn.Sequential):
    """Sequential of converted layers (BSConvS, DSConv)."""


# ----------------------------------------------------------------------------- micro-benchmark
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def dense_is_faster(cin: int, cout: int, k: int, stride: int, size: tuple[int, int],
                    device: torch.device, dtype: torch.dtype, reps: int = 5) -> bool:
    """Micro-benchmark one BSConvU shape: is the fused dense conv faster than pw + dw here?

    Both variants run on channels_last input, interleaved ``reps`` times; medians compared, the
    dense conv must win by 10 %. Cached per (device, dtype, threads, shape).
    """
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
    """Per-device policy for the BSConvU -> dense rewrite, from measurements on CPU.

    CPU (oneDNN, fp32, channels_last, 1 thread, 320x180): 64->64 separate 34 ms vs dense 54 ms;
    64->32 8 vs 24 ms; 16->16 stride 2 and the 1/6-resolution ESA layers tie; fea_conv after
    folding (3->64) separate 22 ms vs dense 3.6 ms (a K=3 matmul is inefficient). So on CPU only
    layers with <= 8 input channels are fused. CUDA: all fused (dense convs use tensor cores,
    depthwise does not; expected, not measured this session).
    """
    if device.type == "cuda":
        return True
    return cin <= 8


# ----------------------------------------------------------------------------- layer conversion
class _Converter:
    def __init__(self, rewrites: set[str], fuse, device, dtype, size):
        self.rw, self.fuse, self.device, self.dtype, self.size = rewrites, fuse, device, dtype, size
        self.decisions: dict[str, str] = {}

    def pw(self, conv_or_w, bias=None) -> PW:
        if isinstance(conv_or_w, nn.Conv2d):
            return PW(conv_or_w.weight, conv_or_w.bias, "matmul" in self.rw)
        return PW(conv_or_w, bias, "matmul" in self.rw)

    def want_dense(self, name: str, mod: BSConvU, size: tuple[int, int]) -> bool:
        if "dense" not in self.rw:
            return False
        if mod.pw.bias is not None:  # fusing would move the bias inside the zero padding
            self.decisions[name] = "separate"
            return False
        dw = mod.dw
        if isinstance(self.fuse, (set, frozenset, list, tuple)):
            ok = name in self.fuse
        elif self.fuse == "all":
            ok = True
        elif self.fuse == "none":
            ok = False
        elif self.fuse == "measure":
            ok = dense_is_faster(mod.pw.in_channels, dw.out_channels, dw.kernel_size[0],
                                 dw.stride[0], size, self.device, self.dtype)
        elif self.fuse == "policy":
            ok = policy_dense(mod.pw.in_channels, dw.out_channels, self.device)
        else:
            raise ConfigError(f"fuse must be policy, measure, all, none or a set of layer names, "
                              f"got {self.fuse!r}")
        self.decisions[name] = "dense" if ok else "separate"
        return ok

    def conv(self, name: str, mod: nn.Module, size: tuple[int, int], sibling: nn.Conv2d | None
             = None):
        """Convert one 3x3 conv block; ``sibling`` is a 1x1 sharing its input (hmerge)."""
        merge = sibling is not None and "hmerge" in self.rw
        if isinstance(mod, BSConvU):
            if self.want_dense(name, mod, size):
                dense = _dense_from_bsconvu(mod.pw.weight, mod.dw)
                return DenseConv(dense, self.pw(sibling) if merge else None), merge
            if merge:
                w = torch.cat([sibling.weight.reshape(sibling.out_channels, -1),
                               mod.pw.weight.reshape(mod.pw.out_channels, -1)])
                pb = mod.pw.bias if mod.pw.bias is not None else \
                    torch.zeros(mod.pw.out_channels, dtype=w.dtype)
                b = torch.cat([sibling.bias, pb]) if sibling.bias is not None else None
                return SepConv(self.pw(w, b), mod.dw, split=sibling.out_channels), True
            return SepConv(self.pw(mod.pw), mod.dw), False
        if isinstance(mod, BSConvS):
            return Seq(self.pw(mod.pw1), self.pw(mod.pw2), _frozen_conv(mod.dw)), False
        if isinstance(mod, DSConv):
            return Seq(_frozen_conv(mod.dw), self.pw(mod.pw)), False
        if isinstance(mod, nn.Conv2d):
            return _frozen_conv(mod), False
        raise ConfigError(f"optimize: unsupported conv layer {type(mod).__name__} at {name}")


def _fold_replication(mod: nn.Module, reps: int, cin: int) -> tuple[nn.Module, bool]:
    """fea_conv with the replicated input folded into its first weights (exact)."""
    mod = copy.deepcopy(mod)

    def fold(w):
        return sum(w[:, i * cin:(i + 1) * cin] for i in range(reps))

    with torch.no_grad():
        if isinstance(mod, BSConvU):
            first = mod.pw
        elif isinstance(mod, BSConvS):
            first = mod.pw1
        elif isinstance(mod, nn.Conv2d) and mod.groups == 1:
            first = mod
        else:
            return mod, False
        new = nn.Conv2d(cin, first.out_channels, first.kernel_size, first.stride, first.padding,
                        bias=first.bias is not None)
        new.weight.copy_(fold(first.weight))
        if first.bias is not None:
            new.bias.copy_(first.bias)
        if isinstance(mod, BSConvU):
            mod.pw = new
        elif isinstance(mod, BSConvS):
            mod.pw1 = new
        else:
            mod = new
    return mod, True


# ----------------------------------------------------------------------------- fast modules
class FastESA(nn.Module):
    """ESA with its 1x1s as matmuls; conv1/conv_f may be composed into the block's c5."""

    def __init__(self, esa, cv: _Converter, name: str, size):
        super().__init__()
        lowest = (max(1, size[0] // 6), max(1, size[1] // 6))
        self.conv1 = cv.pw(esa.conv1)
        self.conv_f = cv.pw(esa.conv_f)
        self.conv2 = cv.conv(f"{name}.conv2", esa.conv2, size)[0]
        self.conv_max = cv.conv(f"{name}.conv_max", esa.conv_max, lowest)[0]
        self.conv3 = cv.conv(f"{name}.conv3", esa.conv3, lowest)[0]
        self.conv3_ = cv.conv(f"{name}.conv3_", esa.conv3_, lowest)[0]
        self.conv4 = cv.pw(esa.conv4)
        self.act = copy.deepcopy(esa.act)
        self.maxPooling = copy.deepcopy(esa.maxPooling)

    def context(self, c1_, size):
        v = self.maxPooling(self.conv2(c1_))
        v = self.act(self.conv_max(v))
        c3 = self.conv3_(self.act(self.conv3(v)))
        return F.interpolate(c3, size, mode="bilinear", align_corners=False)

    def mask(self, x, c1_, cf, inplace=False):
        up = self.context(c1_, (x.shape[2], x.shape[3]))
        if inplace:
            return self.conv4(up.add_(cf)).sigmoid_()
        return torch.sigmoid(self.conv4(up + cf))


class FastESDB(nn.Module):
    """ESDB rebuilt from converted layers; same maths as ``bsrn.models.bsrn.ESDB``."""

    def __init__(self, blk, cv: _Converter, name: str, size):
        super().__init__()
        c = blk.c5.out_channels
        self.c = c
        self.steps = nn.ModuleList()
        self.merged = []
        self.sep_d = nn.ModuleList()
        for i in (1, 2, 3):
            d, r = getattr(blk, f"c{i}_d"), getattr(blk, f"c{i}_r")
            mod, merged = cv.conv(f"{name}.c{i}_r", r, size, sibling=d)
            self.steps.append(mod)
            self.merged.append(merged)
            self.sep_d.append(nn.Identity() if merged else cv.pw(d))
        self.c4 = cv.conv(f"{name}.c4", blk.c4, size)[0]
        self.act = copy.deepcopy(blk.act)
        self.inplace = True
        self.attention = blk.attention
        self.has_esa = not isinstance(blk.esa, nn.Identity)
        self.c5 = cv.pw(blk.c5)
        self.c5x = None
        if self.has_esa:
            self.esa = FastESA(blk.esa, cv, f"{name}.esa", size)
            if "esa_merge" in cv.rw:  # c5 -> [c5, conv1(c5), conv_f(conv1(c5))]
                w5, b5 = blk.c5.weight.reshape(c, -1), blk.c5.bias
                w1, b1 = blk.esa.conv1.weight.reshape(-1, c), blk.esa.conv1.bias
                f = w1.shape[0]
                wf, bf = blk.esa.conv_f.weight.reshape(f, f), blk.esa.conv_f.bias
                w1c, b1c = w1 @ w5, w1 @ b5 + b1
                wfc, bfc = wf @ w1c, wf @ b1c + bf
                self.c5x = cv.pw(torch.cat([w5, w1c, wfc]), torch.cat([b5, b1c, bfc]))
        if self.attention == "cca":
            self.cca = copy.deepcopy(blk.cca).requires_grad_(False)
        elif self.attention == "cw":
            self.cw = nn.Parameter(blk.cw.detach().clone(), requires_grad=False)
            self.conv_out = cv.pw(blk.conv_out)

    def _step(self, i, x):
        if self.merged[i]:
            d, r = self.steps[i](x)
        else:
            d, r = self.sep_d[i](x), self.steps[i](x)
        if self.inplace:
            return act_(self.act, d, True), act_(self.act, r.add_(x), True)
        return self.act(d), self.act(r + x)

    def _cat(self, x):
        d1, r1 = self._step(0, x)
        d2, r2 = self._step(1, r1)
        d3, r3 = self._step(2, r2)
        r4 = act_(self.act, self.c4(r3), self.inplace)
        return torch.cat([d1, d2, d3, r4], dim=1)

    def fused(self, x):
        """c5's output (the ESA input)."""
        return self.c5(self._cat(x))

    def attend(self, out, x):
        if self.attention == "cca":
            gate = self.cca.gate(channel_stats(out)).to(out.dtype)
            out = out.mul_(gate) if self.inplace else out * gate
        elif self.attention == "cw":
            out = self.conv_out(out * self.cw)
        return out.add_(x) if self.inplace else out + x

    def forward(self, x):
        cat = self._cat(x)
        ip = self.inplace
        if not self.has_esa:
            out = self.c5(cat)
        elif self.c5x is not None:
            t = self.c5x(cat)
            c, f = self.c, self.esa.conv1.out_channels
            out, c1_, cf = t[:, :c], t[:, c:c + f], t[:, c + f:]
            out = out * self.esa.mask(out, c1_, cf, ip)
        else:
            out = self.c5(cat)
            c1_ = self.esa.conv1(out)
            m = self.esa.mask(out, c1_, self.esa.conv_f(c1_), ip)
            out = out.mul_(m) if ip else out * m
        return self.attend(out, x)


class _FastESDBStages(_ESDBStages):
    """Exact-tiling stages of a FastESDB (see ``bsrn.tiling``): the plain ESDB's stages, with
    the fused part run on channels_last tensors."""

    def __init__(self, blk: FastESDB):
        self.blk, self.attention, self.has_esa = blk, blk.attention, blk.has_esa

    def fused(self, x):
        return self.blk.fused(x.contiguous(memory_format=torch.channels_last))


class _FastStages:
    def __init__(self, m: "FastBSRN"):
        self.m = m
        self.blocks = [_FastESDBStages(b) for b in m.blocks]
        self.c1_weight = m.c1.weight
        self.c1_bias = m.c1.bias
        self.num_feat = m.cfg.num_feat
        self.channels_last = True

    def head(self, x):
        return self.m.head(x.contiguous(memory_format=torch.channels_last))

    def tail(self, acc, fea):
        return self.m.tail(acc.contiguous(memory_format=torch.channels_last), fea)


class FastBSRN(nn.Module):
    """Inference-only BSRN from :func:`optimize`: same call signature and outputs as the source
    model (NCHW float32 in, NCHW float32 out), ``.scale``, ``.min_size``, ``.cfg``."""

    def __init__(self, model, device, precision, rewrites, fuse, size):
        super().__init__()
        self.cfg = copy.deepcopy(model.cfg)
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.rewrites = tuple(sorted(rewrites))
        cv = _Converter(set(rewrites), fuse, device, self.dtype, size)
        cfg = model.cfg
        self.replicate = cfg.replicate
        fea, folded = (_fold_replication(model.fea_conv, cfg.replicate, cfg.num_in_ch)
                       if "fold" in rewrites and cfg.replicate > 1 else (model.fea_conv, False))
        self.folded = folded
        self.fea_conv = cv.conv("fea_conv", fea, size)[0]
        self.blocks = nn.ModuleList(FastESDB(b, cv, f"B{i + 1}", size)
                                    for i, b in enumerate(model.blocks()))
        self.c1 = cv.pw(model.c1)
        self.accumulate = "accumulate" in rewrites
        self.act = copy.deepcopy(model.act)
        self.c2 = cv.conv("c2", model.c2, size)[0]
        self.upsampler = copy.deepcopy(model.upsampler).requires_grad_(False)
        self.decisions = dict(cv.decisions)
        self._compiled = None
        self._graphs: OrderedDict = OrderedDict()
        self.cuda_graphs = False
        self.inplace = True

    @property
    def scale(self) -> int:
        return self.cfg.scale

    @property
    def min_size(self) -> int:
        return 15 if self.cfg.esa else 1

    def tiling_stages(self):
        return _FastStages(self)

    def head(self, x):
        if self.replicate > 1 and not self.folded:
            x = torch.cat([x] * self.replicate, dim=1)
        return self.fea_conv(x)

    def tail(self, acc, fea, inplace=False):
        if inplace:  # acc is a fresh accumulator here
            return self.upsampler(self.c2(act_(self.act, acc, True)).add_(fea))
        return self.upsampler(self.c2(self.act(acc)) + fea)

    def set_inplace(self, flag: bool) -> "FastBSRN":
        """In-place activations/adds on fresh intermediates (default on; off for tracing)."""
        self.inplace = flag
        for b in self.blocks:
            b.inplace = flag
        return self

    def core(self, x):
        """The network on a channels_last tensor of the working dtype (no padding)."""
        fea = self.head(x)
        out = fea
        c = self.cfg.num_feat
        if self.accumulate:
            acc = None
            w = self.c1.weight
            for k, blk in enumerate(self.blocks):
                out = blk(out)
                wk = w[:, k * c:(k + 1) * c]
                if acc is None:
                    acc = pointwise(out, wk, self.c1.bias)
                elif acc.dtype == out.dtype == wk.dtype:  # acc += W_k B_k, in place (NHWC)
                    acc.permute(0, 2, 3, 1).reshape(-1, c).addmm_(
                        out.permute(0, 2, 3, 1).reshape(-1, c), wk.t())
                else:  # under autocast: out-of-place, so the matmul is autocast too
                    acc = acc + pointwise(out, wk)
        else:
            feats = []
            for blk in self.blocks:
                out = blk(out)
                feats.append(out)
            acc = self.c1(torch.cat(feats, dim=1))
        return self.tail(acc, fea, self.inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x, ph, pw = pad_to_min(x, self.min_size)
        x = x.float().contiguous(memory_format=torch.channels_last)
        half = self.precision != "fp32" and not fp32_forced()
        graphs = self.cuda_graphs and x.is_cuda and not torch.is_grad_enabled()
        with autocast(self.precision if half else "fp32", x.device, cache_enabled=not graphs):
            if graphs:
                out = self._graph_forward(x, half)
            elif self._compiled is not None:
                out = self._compiled(x)
            else:
                out = self.core(x)
        if ph or pw:
            out = out[..., : h * self.scale, : w * self.scale]
        return out.float().contiguous()

    # CUDA graphs: one capture per input shape (LRU of 8), replayed with a static input buffer.
    def _graph_forward(self, x, half):
        key = (tuple(x.shape), x.dtype, x.device, half)
        entry = self._graphs.get(key)
        if entry is None:
            static_in = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the capture
                    self.core(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.core(static_in)
            entry = (graph, static_in, static_out)
            self._graphs[key] = entry
            while len(self._graphs) > 8:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()


class FastGeneric(nn.Module):
    """Fallback for non-BSRN models (RFDN, IMDN): 1x1 convs as matmuls on channels_last."""

    def __init__(self, model, matmul: bool):
        super().__init__()
        self.model = copy.deepcopy(model).requires_grad_(False)
        if matmul:
            _swap_pointwise(self.model)

    @property
    def scale(self) -> int:
        return self.model.scale

    @property
    def min_size(self) -> int:
        return getattr(self.model, "min_size", 1)

    @property
    def cfg(self):
        return self.model.cfg

    def set_inplace(self, flag: bool) -> "FastGeneric":
        return self

    def forward(self, x):
        return self.model(x.contiguous(memory_format=torch.channels_last)).float().contiguous()


def _swap_pointwise(module: nn.Module) -> None:
    for name, child in module.named_children():
        if (isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1) and child.groups == 1
                and child.stride == (1, 1) and child.padding == (0, 0)):
            setattr(module, name, PW(child.weight, child.bias))
        else:
            _swap_pointwise(child)


def default_rewrites(device: torch.device) -> tuple[str, ...]:
    """The rewrites used by default on ``device``.

    CPU: everything but the horizontal merges: their outputs are channel slices of an NHWC
    tensor, which the following depthwise conv / matmul must copy, and that costs more than the
    saved reads (measured: 341 vs 418 ms thread time at 160x90, 1 thread). CUDA: all of them
    (fewer kernel launches; not measured this session).
    """
    if device.type == "cuda":
        return REWRITES
    return tuple(r for r in REWRITES if r not in ("hmerge", "esa_merge"))


def optimize(model: nn.Module, device: str | torch.device = "cpu", precision: str = "fp32",
             compile: bool = False, rewrites=None, fuse: str | set = "policy",
             sample_size: tuple[int, int] = (180, 320), cuda_graphs: bool = False) -> nn.Module:
    """Build the fast inference module for ``model`` on ``device`` (the source is not changed).

    ``rewrites``: subset of :data:`REWRITES` (default: :func:`default_rewrites`). ``fuse``:
    "policy" (:func:`policy_dense`, per device), "measure" (per-layer-shape micro-benchmark at
    ``sample_size`` = the LR (h, w) you will run, cached), "all", "none", or a set of layer
    names (e.g. {"B1.c1_r"}) for the BSConvU -> dense conv rewrite. ``precision``: fp32 / fp16 (CUDA) /
    bf16. ``compile``: wrap the forward in ``torch.compile``. ``cuda_graphs``: CUDA only (ignored
    elsewhere); replays a captured graph per input shape.
    """
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    rewrites = default_rewrites(device) if rewrites is None else tuple(rewrites)
    unknown = set(rewrites) - set(REWRITES)
    if unknown:
        raise ConfigError(f"unknown rewrites {sorted(unknown)}; choose from {', '.join(REWRITES)}")
    from .models.bsrn import BSRN

    model = model.eval()
    src_device = next(model.parameters()).device
    with torch.no_grad():
        if isinstance(model, BSRN):
            fast = FastBSRN(model.to(device), device, precision, set(rewrites), fuse,
                            tuple(sample_size))
        else:
            fast = FastGeneric(model.to(device), "matmul" in rewrites)
    model.to(src_device)
    fast = fast.to(device=device).eval()
    if hasattr(fast, "cfg") and isinstance(fast, FastBSRN):
        fast = fast.to(memory_format=torch.channels_last)
        fast.cuda_graphs = bool(cuda_graphs) and device.type == "cuda"
        if compile:
            fast._compiled = torch.compile(fast.core, dynamic=True)
    elif compile:
        fast.model.forward = torch.compile(fast.model.forward, dynamic=True)
    return fast
