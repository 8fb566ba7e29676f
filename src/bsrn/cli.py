"""The ``bsrn`` command line: argparse subcommands, each a thin layer over one library call.

Library errors (``BsrnError``) print as one line and set the exit code; ``--debug`` shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import sys

from .errors import BsrnError


# ----------------------------------------------------------------------------- eval / make-lr
def _add_make_lr(sub):
    p = sub.add_parser(
        "make-lr", help="make MATLAB-bicubic LR images from an HR folder",
        description="Write OUT_DIR/LR_bicubic/X{s}/<name>x{s}.png = MATLAB bicubic of "
                    "modcrop(HR, s) by 1/s. Existing identical files are kept (resumable).")
    p.add_argument("hr_dir", help="folder of HR images (or a benchmark folder with HR/)")
    p.add_argument("out_dir", help="where LR_bicubic/ is written")
    p.add_argument("--scale", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--variant", choices=["uint8", "double"], default="uint8",
                   help="uint8: two passes each rounded (EDSR pack, default); "
                        "double: rounded once (BasicSR/BSRN test sets)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_make_lr)


def _run_make_lr(args):
    from .imresize import make_lr_folder

    print(make_lr_folder(args.hr_dir, args.out_dir, args.scale, args.variant,
                         progress=not args.quiet, limit=args.limit))


def _add_eval(sub):
    p = sub.add_parser(
        "eval", help="PSNR/SSIM (Y channel) on benchmark folders",
        description="Score a model with the paper's protocol: Y channel (BT.601), crop = scale, "
                    "SR rounded to uint8. A dataset folder holds HR/ and optionally "
                    "LR_bicubic/X{s}/ (EDSR pack layout).")
    p.add_argument("--weights", required=True,
                   help="weights file (.pth/.safetensors) or bundled name, e.g. bsrn-x4")
    p.add_argument("--dataset", action="append", required=True, metavar="DIR",
                   help="benchmark folder; repeat for several")
    p.add_argument("--scale", type=int, default=None,
                   help="scale (default: the model's; must match the weights)")
    p.add_argument("--lr-source", choices=["files", "matlab"], default=None,
                   help="files: LR_bicubic images (default when present); matlab: MATLAB "
                        "double bicubic of HR rounded once (the paper's numbers; default "
                        "for HR-only folders)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--save-images", default=None, metavar="DIR",
                   help="write SR images to DIR/<dataset>/X{s}/")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--limit", type=int, default=None, help="only the first N images per dataset")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_eval)


def _run_eval(args):
    from .evaluate import evaluate_many, format_table, write_json

    results = evaluate_many(args.weights, args.dataset, args.scale, args.lr_source,
                            args.device, args.save_images, not args.quiet, args.limit)
    print(format_table(results, title=f"{args.weights}"))
    if args.json:
        write_json(results, args.json)


# ----------------------------------------------------------------------------- train
def _add_train(sub):
    p = sub.add_parser("train", help="train a model from a YAML config (torchrun for DDP)")
    p.add_argument("--config", required=True, help="YAML recipe, e.g. configs/bsrn_x4.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=2e-4 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in run.dir")
    p.set_defaults(func=_run_train)


def _run_train(args):
    from .config import load_config
    from .train import train

    overrides = list(args.overrides) + (["run.resume=true"] if args.resume else [])
    res = train(load_config(args.config, overrides))
    if "weights" in res:
        best = f"{res['best_psnr']:.3f} dB" if res["best_psnr"] > -1e9 else "n/a"
        print(f"{res['iterations']} iterations; weights {res['weights']}; best val Y-PSNR {best}"
              f" ({res['best_weights']})" + ("; stopped early, continue with --resume"
                                            if res["stopped_early"] else ""))
    return 0


def _add_plot_log(sub):
    p = sub.add_parser("plot-log", help="draw a run's loss and validation PSNR curves to PNG")
    p.add_argument("run_dir", nargs="+", help="run folder(s) holding log.jsonl")
    p.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    p.add_argument("--title")
    p.add_argument("--baseline", action="append", default=[], metavar="LABEL=DB",
                   help="dashed reference PSNR line, e.g. --baseline bicubic=28.42 (repeatable)")
    p.add_argument("--chain", action="store_true",
                   help="draw the runs one after another (training stages of one model)")
    p.set_defaults(func=_run_plot_log)


def _run_plot_log(args):
    from .plots import plot_training_log

    baselines = {}
    for item in args.baseline:
        label, _, value = item.rpartition("=")
        try:
            baselines[label] = float(value)
        except ValueError:
            raise BsrnError(f"--baseline {item!r}: expected LABEL=DB, e.g. bicubic=28.42") \
                from None
    print(plot_training_log(args.run_dir, args.out, title=args.title, baselines=baselines,
                            chain=args.chain))
    return 0


# ----------------------------------------------------------------------------- upscale / export
def _pixel_count(text):
    try:
        return int(float(str(text).replace("_", "")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of pixels: {text!r}") from None


def _add_upscale(sub):
    from .image_io import DEFAULT_MAX_PIXELS

    p = sub.add_parser(
        "upscale", help="upscale images (files, folders, globs)",
        description="Super-resolve images with BSRN. Writes OUT/<name>_x<S>.<ext>; inputs are "
                    "never overwritten unless --overwrite.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders or globs")
    p.add_argument("-o", "--output", default="results",
                   help="output folder (default: results), or a file name for one input")
    p.add_argument("--weights", default=None, metavar="NAME|PATH",
                   help="bundled name (bsrn-x2/3/4) or any weights file, official .pth included "
                        "(default: the bundled bsrn-x<scale>)")
    p.add_argument("-s", "--scale", type=float, default=None,
                   help="output scale (default: 4, or the scale of --weights); scales the "
                        "weights lack are reached by MATLAB bicubic after the network")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "auto"],
                   help="fp32 (default); fp16 needs CUDA and falls back to fp32 on overflow; "
                        "auto: fp16 on CUDA, fp32 elsewhere")
    p.add_argument("-t", "--tile", type=int, default=None, metavar="N",
                   help="LR tile side in px (default: automatic, whole image when it fits)")
    p.add_argument("--tile-pad", type=int, default=None, metavar="P",
                   help="tile halo in px for models without exact tiling (default 16)")
    p.add_argument("--suffix", default=None,
                   help="appended to output names (default: _x<scale>; '' keeps the name)")
    p.add_argument("--ext", default="auto",
                   help="output format: auto (keep the input's; PNG when alpha needs it), png, "
                        "jpg, tif, webp, bmp")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true",
                   help="allow replacing input files (outputs that exist are always replaced)")
    g.add_argument("--skip-existing", action="store_true", help="skip outputs that exist")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="descend into sub-folders (mirrored in the output folder)")
    p.add_argument("--plain", action="store_true",
                   help="run the model as loaded, without the fast inference rewrites")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (slow start; pays off on large batches)")
    p.add_argument("--alpha-upsampler", choices=["network", "bicubic"], default="network",
                   help="how transparency is upscaled: network (default) or MATLAB bicubic")
    p.add_argument("--max-pixels", type=_pixel_count, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse inputs larger than this many pixels (decompression-bomb guard; "
                        f"default {DEFAULT_MAX_PIXELS:,}; 0 = no limit)")
    p.add_argument("--compare", action="store_true",
                   help="also write <name>_side_by_side.png: bicubic | BSRN, labelled")
    p.add_argument("--sample", action="store_true",
                   help="upscale the bundled sample photo (with --compare): writes "
                        "results/sample_x4.png and results/sample_x4_side_by_side.png")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_upscale)


def _run_upscale(args):
    import warnings

    from .errors import ConfigError
    from .upscale import SAMPLE, Upscaler, upscale_files

    inputs = list(args.inputs)
    if args.sample:
        inputs.append(str(SAMPLE))
    if not inputs:
        raise ConfigError("give INPUT files, folders or globs (or --sample for the bundled photo)")
    with warnings.catch_warnings():  # library warnings as one plain line each
        warnings.showwarning = lambda msg, *a, **k: print(f"bsrn upscale: warning: {msg}",
                                                          file=sys.stderr)
        upscaler = Upscaler(args.weights, scale=args.scale, device=args.device,
                            precision=args.precision, tile=args.tile, tile_pad=args.tile_pad,
                            alpha_upsampler=args.alpha_upsampler, plain=args.plain,
                            compile=args.compile, progress=not args.quiet)
        if not args.quiet:
            print(f"bsrn upscale: {upscaler.describe()}", file=sys.stderr)
        result = upscale_files(inputs, args.output, upscaler, suffix=args.suffix,
                               ext=args.ext, overwrite=args.overwrite,
                               skip_existing=args.skip_existing, recursive=args.recursive,
                               max_pixels=args.max_pixels, compare=args.compare or args.sample,
                               progress=not args.quiet)
    if len(result.written) <= 3:
        for path in result.written + result.extra:
            print(f"wrote {path}")
    elif result.written:
        print(f"wrote {len(result.written)} images under {args.output}")
    print(result.summary())
    return 0 if result.ok else 1


def _add_export(sub):
    p = sub.add_parser(
        "export", help="export weights to ONNX, TorchScript, OpenVINO or ncnn (verified after "
                       "writing)",
        description="Export a model to ONNX (input 'input', output 'output', NCHW float32 RGB "
                    "in [0, 1], dynamic batch/height/width) or TorchScript, then check the file "
                    "against PyTorch at several sizes (odd ones and batch 2 included). "
                    "OpenVINO IR (.xml + .bin) and ncnn (.param + .bin, through pnnx) are also "
                    "run in their own runtimes on a crop of a real photo.")
    p.add_argument("out", metavar="OUT", help="output file (.onnx, .pt, .xml or .param)")
    p.add_argument("--weights", required=True, metavar="NAME|PATH",
                   help="bundled name (bsrn-x2/3/4) or any weights file")
    p.add_argument("--format", choices=["onnx", "torchscript", "openvino", "ncnn"], default=None,
                   help="default: from OUT's extension (.onnx -> onnx, .xml -> openvino, "
                        ".param -> ncnn, otherwise torchscript)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--dynamo", action="store_true",
                   help="use the torch.export-based ONNX exporter (needs --opset >= 18)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--optimize", dest="optimize", action="store_true", default=None,
                   help="export the exact inference rewrites (ONNX default)")
    g.add_argument("--plain", dest="optimize", action="store_false",
                   help="export the network as defined (TorchScript default)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the check against PyTorch")
    p.set_defaults(func=_run_export)


def _run_export(args):
    from pathlib import Path

    from .checkpoint import load_model, resolve_weights
    from .export import export_onnx, export_torchscript

    suffix = Path(args.out).suffix.lower()
    fmt = args.format or {".onnx": "onnx", ".xml": "openvino", ".param": "ncnn"}.get(
        suffix, "torchscript")
    model = load_model(resolve_weights(args.weights))
    if fmt in ("openvino", "ncnn"):
        return _run_export_edge(args, fmt, model)
    if fmt == "onnx":
        opt = True if args.optimize is None else args.optimize
        res = export_onnx(model, args.out, opset=args.opset, optimize=opt, dynamo=args.dynamo,
                          verify=args.verify)
        what = f"ONNX opset {args.opset}{' (dynamo)' if args.dynamo else ''}"
    else:
        res = export_torchscript(model, args.out, optimize=bool(args.optimize),
                                 verify=args.verify)
        what = "TorchScript"
    kind = "optimized" if res.get("optimized") else "plain"
    print(f"wrote {res['path']} ({what}, {kind}, x{model.scale}, inputs >= "
          f"{getattr(model, 'min_size', 1)} px)")
    if "max_abs_diff" in res:
        checks = ", ".join(f"{k} {v:.1e}" for k, v in res["max_abs_diff"].items())
        runtime = "onnxruntime CPU" if fmt == "onnx" else "torch.jit.load"
        print(f"verified in {runtime} against PyTorch, max |diff| (NxHxW): {checks}")
    return 0


def _add_quantize(sub):
    from .quantize import DEFAULT_KEEP, DEFAULT_MAX_GROUP_COST, RUNTIMES

    p = sub.add_parser(
        "quantize", help="INT8 post-training quantisation for ONNX Runtime or OpenVINO",
        description="Static INT8 quantisation (per-channel weights) calibrated on LR patches of "
                    "a folder of HR images (MATLAB bicubic). Convolutions become INT8; the layer "
                    "groups in --keep stay fp32. --sweep measures each group's PSNR cost alone "
                    "in INT8 on held-out images of --calib and keeps the costly ones.")
    p.add_argument("--weights", required=True, metavar="NAME|PATH",
                   help="bundled name (bsrn-x2/3/4) or any BSRN weights file")
    p.add_argument("--calib", required=True, metavar="DIR",
                   help="folder of HR images for calibration (not your test images)")
    p.add_argument("--images", type=int, default=32,
                   help="calibration images, the first N of DIR (default 32; 2 patches each)")
    p.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                   help="onnxruntime: QDQ .onnx (default); openvino: NNCF IR .xml")
    p.add_argument("-o", "--out", required=True, metavar="OUT",
                   help="output .onnx (onnxruntime) or .xml (openvino; .bin beside it)")
    p.add_argument("--keep", default=None, metavar="GROUP,...",
                   help=f"layer groups left fp32 (default {','.join(DEFAULT_KEEP)}, or the "
                        "sweep's choice with --sweep; 'none' quantises every conv)")
    p.add_argument("--sweep", action="store_true",
                   help="run and print the per-group sensitivity sweep first")
    p.add_argument("--sweep-images", type=int, default=4,
                   help="held-out images of DIR for the sweep (default 4)")
    p.add_argument("--max-group-cost", type=float, default=DEFAULT_MAX_GROUP_COST,
                   metavar="DB", help="with --sweep and no --keep: keep groups costing more "
                                      f"than this alone (default {DEFAULT_MAX_GROUP_COST} dB)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_quantize)


def _run_quantize(args):
    from pathlib import Path

    from .errors import ConfigError
    from .quantize import format_sweep, quantize

    if Path(args.out).exists() and not args.overwrite:
        raise ConfigError(f"{args.out}: exists (pass --overwrite to replace it)")
    keep = None
    if args.keep is not None:
        keep = () if args.keep.strip().lower() == "none" else \
            tuple(g.strip() for g in args.keep.split(",") if g.strip())
    res = quantize(args.weights, args.calib, args.out, runtime=args.runtime, images=args.images,
                   keep=keep, sweep=args.sweep, sweep_images=args.sweep_images,
                   max_group_cost=args.max_group_cost, progress=not args.quiet)
    if res.sweep:
        print(format_sweep(res.sweep))
    print(res.summary())
    return 0


def _run_export_edge(args, fmt, model):
    from .export import export_ncnn, export_openvino

    export = export_openvino if fmt == "openvino" else export_ncnn
    res = export(model, args.out, verify=args.verify)
    what = {"openvino": "OpenVINO IR", "ncnn": "ncnn (pnnx)"}[fmt]
    print(f"wrote {' + '.join(res['files'])} ({what}, x{model.scale}, inputs >= "
          f"{getattr(model, 'min_size', 1)} px)")
    if "max_abs_diff" in res:
        checks = ", ".join(f"{k} {v:.1e}" for k, v in res["max_abs_diff"].items())
        print(f"verified in {fmt} (CPU, fp32) against PyTorch, max |diff|: {checks}")
    return 0


# ----------------------------------------------------------------------------- profile / ablate
def _kv(text):
    """KEY=VALUE with a YAML-typed value (num_feat=72, esa=false)."""
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    k, v = text.split("=", 1)
    return k.strip(), yaml.safe_load(v)


def _add_model_args(p, scale_default=None):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="registry preset (bsrn.list_models()), e.g. bsrn, bsrn_s, rfdn")
    g.add_argument("--weights", help="weights file (.pth/.safetensors) or bundled name")
    p.add_argument("--scale", type=int, default=scale_default,
                   help="scale of a --model preset (default 4); checked against --weights")
    p.add_argument("--arg", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset hyperparameter, e.g. --arg num_feat=72 (repeatable)")


def _add_profile(sub):
    p = sub.add_parser(
        "profile", help="params, Multi-Adds, FLOPs, memory and runtime",
        description="Count parameters, Multi-Adds (paper: MACs at a 1280x720 HR output), "
                    "FLOPs/#Acts/#Conv (NTIRE 2022: 256x256 LR), peak memory and runtime. "
                    "Conventions: docs/efficiency.md.")
    _add_model_args(p)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--input", default=None, metavar="HxW",
                      help="LR input size for memory and runtime (default: the paper's LR, "
                           "e.g. 180x320 at x4)")
    size.add_argument("--output", default=None, metavar="HxW",
                      help="HR output size instead (e.g. 720x1280)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--repeat", type=int, default=10, help="timed runs (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up runs (default 3)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--no-runtime", action="store_true", help="skip timing (counts and memory only)")
    p.add_argument("--ntire-runtime", action="store_true",
                   help="also report the NTIRE figure: the first forward, no warm-up, "
                        "cudnn.benchmark off")
    p.add_argument("--json", default=None, metavar="FILE", help="write the profile as JSON")
    p.set_defaults(func=_run_profile)


def _run_profile(args):
    import torch

    from .precision import resolve_device
    from .profile import (format_profile, output_to_input, parse_hw, profile_model,
                          resolve_model, write_profile_json)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ntire_runtime:
        torch.backends.cudnn.benchmark = False
    model, label = resolve_model(args.model, args.weights, args.scale, dict(args.arg))
    hw = parse_hw(args.input) if args.input else None
    if args.output:
        hw = output_to_input(parse_hw(args.output), model.scale)
    prof = profile_model(model, label, hw, resolve_device(args.device), args.repeat, args.warmup,
                         runtime=not args.no_runtime, progress=True)
    if prof.runtime_ms and not args.ntire_runtime:
        prof.runtime_ms.pop("first", None)
    print(format_profile(prof))
    if args.json:
        write_profile_json(prof, args.json)


def _add_bench_ntire(sub):
    p = sub.add_parser(
        "bench-ntire", help="NTIRE 2022 efficient-SR protocol: RGB PSNR, runtime, efficiency",
        description="Run the NTIRE 2022 ESR protocol: x4, whole-image forwards at batch 1, "
                    "RGB PSNR with border 4, runtime averaged over each folder (no warm-up), "
                    "and the challenge's Params/FLOPs/#Acts/Mem/#Conv columns. Point --data at "
                    "the DIV2K valid and test folders to compare with the challenge table.")
    _add_model_args(p)
    p.add_argument("--data", action="append", default=[], metavar="DIR",
                   help="validation folder (HR/ + LR_bicubic/X4/, or DIV2K_valid_HR/ + "
                        "DIV2K_valid_LR_bicubic/X4/); repeat for valid and test")
    p.add_argument("--hr-lr", nargs=2, action="append", default=[], metavar=("HR_DIR", "LR_DIR"),
                   help="an explicit HR/LR folder pair instead of --data (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--warmup", type=int, default=0,
                   help="warm-up forwards on the first image of each folder (NTIRE 2022: 0)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images per folder")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_bench_ntire)


def _run_bench_ntire(args):
    import json

    import torch

    from .checkpoint import atomic_write
    from .errors import BsrnError
    from .precision import resolve_device
    from .profile import format_ntire, ntire_report, resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    folders = list(args.data) + [tuple(p) for p in args.hr_lr]
    if not folders:
        raise BsrnError("give at least one --data DIR or --hr-lr HR_DIR LR_DIR")
    model, label = resolve_model(args.model, args.weights, args.scale, dict(args.arg))
    row = ntire_report(model, label, folders, resolve_device(args.device), args.warmup,
                       args.limit, not args.quiet)
    print(format_ntire([row]))
    if args.json:
        text = json.dumps(row, indent=2) + "\n"
        atomic_write(args.json, lambda tmp: open(tmp, "w", encoding="utf-8").write(text))


def _add_plot(sub):
    p = sub.add_parser(
        "plot", help="figures: PSNR vs params / Multi-Adds, visual comparison grid",
        description="`bsrn plot tradeoff` draws PSNR against parameters and against Multi-Adds "
                    "from eval/profile/ablation JSONs; `bsrn plot grid` draws crops of HR, "
                    "bicubic and models with PSNR captions.")
    kinds = p.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    t = kinds.add_parser("tradeoff", help="psnr_vs_params and psnr_vs_multiadds")
    t.add_argument("--entry", nargs="+", action="append", default=[],
                   metavar=("LABEL", "JSON"),
                   help="a model: its label, then its `bsrn eval --json` and `bsrn profile "
                        "--json` files (repeatable)")
    t.add_argument("--study", action="append", default=[], metavar="JSON",
                   help="an ablation results.json: one point per finished variant")
    t.add_argument("--dataset", default="Set5", help="eval row to plot (default Set5)")
    t.add_argument("--scale", type=int, default=4)
    t.add_argument("--highlight", action="append", default=[], metavar="LABEL",
                   help="draw this entry as a red star (repeatable)")
    t.add_argument("--format", nargs="+", default=["png"], choices=["png", "svg", "pdf"])
    t.add_argument("--out", default="figures", metavar="DIR", help="output folder")
    t.add_argument("--title", default=None)
    g = kinds.add_parser("grid", help="crops of HR, bicubic and models with PSNR captions")
    g.add_argument("--hr", required=True, metavar="IMAGE", help="HR image")
    g.add_argument("--lr", default=None, metavar="IMAGE",
                   help="LR image (default: MATLAB bicubic of the HR)")
    g.add_argument("--weights", nargs=2, action="append", required=True,
                   metavar=("LABEL", "WEIGHTS"), help="a model to show (repeatable)")
    g.add_argument("--scale", type=int, default=4)
    g.add_argument("--crop", default=None, metavar="Y,X,H,W",
                   help="HR crop (default: where the first model gains most over bicubic)")
    g.add_argument("--crop-size", type=int, default=96)
    g.add_argument("--device", default="auto")
    g.add_argument("--out", required=True, metavar="FILE", help="output .png/.svg")
    p.set_defaults(func=_run_plot)


def _run_plot(args):
    from .errors import BsrnError

    if args.figure == "grid":
        from .precision import resolve_device
        from .figures import comparison_grid

        crop = None
        if args.crop:
            try:
                crop = tuple(int(v) for v in args.crop.split(","))
                assert len(crop) == 4
            except (ValueError, AssertionError):
                raise BsrnError(f"--crop {args.crop!r} is not Y,X,H,W") from None
        info = comparison_grid(args.hr, [tuple(w) for w in args.weights], args.out, args.lr,
                               args.scale, crop, args.crop_size, resolve_device(args.device))
        for panel in info["panels"]:
            print(f"{panel['label']:>24s}  {panel['psnr']:.2f} dB (crop {panel['psnr_crop']:.2f})")
        print(f"wrote {args.out} (crop y,x,h,w = {','.join(map(str, info['crop']))})")
        return 0
    from .figures import entry_point, plot_tradeoff, study_points, study_reference

    points, reference = [], []
    for e in args.entry:
        if len(e) < 2:
            raise BsrnError(f"--entry {' '.join(e)}: give a label then at least one JSON file")
        points.append(entry_point(e[0], e[1:], args.dataset, args.scale))
    for s in args.study:
        points.extend(study_points(s))
        reference.extend(r for r in study_reference(s) if r not in reference)
    for path in plot_tradeoff(points, args.out, args.dataset, args.scale, tuple(args.format),
                              tuple(args.highlight), args.title, reference):
        print(f"wrote {path}")
    return 0


def _add_ablate(sub):
    p = sub.add_parser(
        "ablate", help="run the paper's ablation studies (train, eval, profile each variant)",
        description="Train every variant of a study from the registry with the same recipe and "
                    "budget, score it with the `bsrn eval` protocol, count it with `bsrn "
                    "profile`, and write results.json + table.md. Finished variants are cached: "
                    "rerun the same command to resume.")
    p.add_argument("--study", required=True, choices=["conv", "attention", "activation",
                                                      "capacity"])
    p.add_argument("--budget", default="cpu-tiny",
                   help="budget name in configs/ablation/ (cpu-tiny, gpu-short) or a training "
                        "YAML (default cpu-tiny)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a budget key, e.g. --set train.iterations=600 (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    p.add_argument("--variants", nargs="+", default=None, help="a subset of the study's variants")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default runs/ablate/<study>/<budget>)")
    p.add_argument("--eval-limit", type=int, default=None, help="score only the first N images")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_ablate)


def _run_ablate(args):
    from .ablation import run_study

    res = run_study(args.study, args.budget, args.out, tuple(args.seeds), args.variants,
                    args.set, args.eval_limit, not args.quiet)
    print(res["table"])


# ----------------------------------------------------------------------------- main
# ----------------------------------------------------------------------------- models
def _add_models(sub):
    p = sub.add_parser("models", help="list the registered presets and the bundled weights")
    p.add_argument("pattern", nargs="?", default=None, help="filter, e.g. 'rfdn*' or 'bsrn_no'")
    p.add_argument("--scale", type=int, default=4, help="scale for the parameter count")
    p.set_defaults(func=_run_models)


def _run_models(args):
    from .checkpoint import bundled_weights
    from .models import create_model, get_preset, list_models

    rows = [(n, get_preset(n).arch,
             sum(p.numel() for p in create_model(n, scale=args.scale).parameters()),
             get_preset(n).description) for n in list_models(args.pattern)]
    print(f"| preset | arch | params (x{args.scale}) | description |\n|---|---|---|---|")
    for name, arch, n, desc in rows:
        print(f"| {name} | {arch} | {n:,} | {desc} |")
    bundled = bundled_weights()
    print("\nbundled weights: " + (", ".join(bundled) if bundled else "none in this install"))


_ADDERS = [_add_upscale, _add_eval, _add_make_lr, _add_train, _add_plot_log, _add_profile, _add_bench_ntire,
           _add_plot, _add_ablate, _add_export, _add_models, _add_quantize]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="bsrn", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bsrn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _ADDERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except BsrnError as e:
        if args.debug:
            raise
        print(f"bsrn {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"bsrn {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)
