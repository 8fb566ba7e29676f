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
    p.add_argument("--config", help="YAML recipe, e.g. configs/bsrn_x4.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=2e-4 (repeatable)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue from the newest intact checkpoint of RUN_DIR (default: "
                        "run.dir of --config) with the config kept there")
    p.set_defaults(func=_run_train)


def _run_train(args):
    from .config import load_run_config
    from .train import train

    res = train(load_run_config(args.config, args.overrides, args.resume))
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
        "upscale", help="upscale images and videos (files, folders, globs)",
        description="Super-resolve images and videos with BSRN. Writes OUT/<name>_x<S>.<ext>; "
                    "inputs are never overwritten unless --overwrite. Real-ESRGAN's "
                    "inference_realesrgan.py options are accepted too (see below).")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image or video files, folders or globs")
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
    p.add_argument("--backend", default=None,
                   choices=["auto", "torch", "onnxruntime", "openvino"],
                   help="inference runtime: auto (default, or BSRN_BACKEND: the fastest "
                        "installed one for this device and thread count, measured once and "
                        "cached), torch, onnxruntime or openvino (CPU, fp32; bsrn[onnx] / "
                        "bsrn[openvino])")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads (default: all physical cores)")
    p.add_argument("--memory-budget", default=None, metavar="BYTES",
                   help="memory for one image's activations on the CPU, e.g. 6G (default: "
                        "half the available memory, or BSRN_MEMORY_BUDGET); larger images are "
                        "tiled exactly")
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
    v = p.add_argument_group("videos (.mp4, .mkv, .mov, .webm, .avi; needs the video extra)")
    v.add_argument("--codec", default="h264", choices=["h264", "hevc", "av1", "ffv1"],
                   help="video encoder (default h264; ffv1 is lossless)")
    v.add_argument("--crf", type=int, default=None,
                   help="constant rate factor, lower is better (default: h264 18, hevc 20, "
                        "av1 28)")
    _add_realesrgan_aliases(p)
    p.set_defaults(func=_run_upscale)


REALESRGAN_MODELS = ("RealESRGAN_x4plus", "RealESRNet_x4plus", "RealESRGAN_x4plus_anime_6B",
                     "RealESRGAN_x2plus", "realesr-animevideov3", "realesr-general-x4v3")


def _add_realesrgan_aliases(p):
    """Real-ESRGAN's inference_realesrgan.py options, mapped onto ours by
    ``_apply_realesrgan_aliases`` (-o, -s, -t, --suffix and --ext are shared)."""
    g = p.add_argument_group(
        "Real-ESRGAN options (inference_realesrgan.py command lines run unchanged)",
        "Using any of these names outputs as Real-ESRGAN does: <name>_<suffix>.<ext>, "
        "--suffix defaulting to 'out'. -o, -s/--outscale, -t/--tile (0 = whole image), "
        "--suffix and --ext are shared with the options above.")
    g.add_argument("-i", "--input", dest="re_input", action="append", metavar="PATH",
                   help="input file or folder (same as INPUT; default: inputs, as in "
                        "Real-ESRGAN)")
    g.add_argument("-n", "--model_name", dest="re_model_name", metavar="NAME",
                   help="a bsrn model name (bsrn-x2, bsrn-x3, bsrn-x4, or one added by "
                        "bsrn weights add); Real-ESRGAN's own models are not BSRN and are "
                        "refused")
    g.add_argument("--model_path", dest="re_model_path", metavar="PATH",
                   help="weights file (same as --weights)")
    g.add_argument("--outscale", dest="re_outscale", type=float, metavar="S",
                   help="output scale (same as -s/--scale)")
    g.add_argument("--tile_pad", dest="re_tile_pad", type=int, metavar="P",
                   help="same as --tile-pad")
    g.add_argument("--pre_pad", dest="re_pre_pad", type=int, metavar="P",
                   help="accepted; BSRN needs no pre-padding at the borders")
    g.add_argument("--fp32", dest="re_fp32", action="store_true",
                   help="full precision (bsrn's default already)")
    g.add_argument("--half", dest="re_half", action="store_true",
                   help="half precision on CUDA, fp32 elsewhere (--precision auto)")
    g.add_argument("--alpha_upsampler", dest="re_alpha_upsampler",
                   choices=["realesrgan", "bicubic"],
                   help="realesrgan: through the network (--alpha-upsampler network); bicubic")
    g.add_argument("-g", "--gpu-id", "--gpu_id", dest="re_gpu_id", type=int, metavar="N",
                   help="GPU index (--device cuda:N)")


def _apply_realesrgan_aliases(args):
    """Map Real-ESRGAN's option names onto ours; with any of them, outputs are named
    <stem>_<suffix>.<ext> (suffix default 'out'), as Real-ESRGAN names them."""
    from .errors import CheckpointError, ConfigError

    names = [k for k, v in vars(args).items() if k.startswith("re_") and v not in (None, False)]
    if not names:
        return
    args.inputs = list(args.inputs) + list(args.re_input or [])
    if not args.inputs and not args.sample:
        args.inputs = ["inputs"]  # Real-ESRGAN's default input folder
    if args.re_model_name is not None:
        from .weights_folder import known_weights

        known = ", ".join(known_weights()) or "none in this install"
        if args.re_model_name not in known_weights():
            what = ("a Real-ESRGAN model, not BSRN" if args.re_model_name in REALESRGAN_MODELS
                    else "not a bsrn model name")
            raise CheckpointError(f"-n {args.re_model_name}: {what}; bsrn's models: {known} "
                                  "(or --model_path FILE)")
    chosen = [w for w in (args.weights, args.re_model_path, args.re_model_name) if w]
    if len(chosen) > 1:
        raise ConfigError("give one of --weights, --model_path and -n/--model_name")
    args.weights = chosen[0] if chosen else None
    if args.re_outscale is not None:
        args.scale = args.re_outscale
    if args.re_tile_pad is not None:
        args.tile_pad = args.re_tile_pad
    if args.re_fp32 and args.re_half:
        raise ConfigError("choose either --fp32 or --half")
    if args.re_half:
        args.precision = "auto"
    if args.re_alpha_upsampler:
        args.alpha_upsampler = {"realesrgan": "network"}.get(args.re_alpha_upsampler,
                                                             args.re_alpha_upsampler)
    if args.re_gpu_id is not None:
        args.device = f"cuda:{args.re_gpu_id}"
    suffix = "out" if args.suffix is None else args.suffix
    args.suffix = f"_{suffix}" if suffix else ""


def _run_upscale(args):
    import warnings

    from .errors import ConfigError
    from .batch import upscale_files
    from .upscale import SAMPLE, Upscaler

    _apply_realesrgan_aliases(args)
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
                            compile=args.compile, progress=not args.quiet,
                            backend=args.backend, threads=args.threads,
                            memory_budget=args.memory_budget,
                            log=None if args.quiet else
                            (lambda m: print(f"bsrn upscale: {m}", file=sys.stderr)))
        if not args.quiet:
            print(f"bsrn upscale: {upscaler.describe()}", file=sys.stderr)
        result = upscale_files(inputs, args.output, upscaler, suffix=args.suffix,
                               ext=args.ext, overwrite=args.overwrite,
                               skip_existing=args.skip_existing, recursive=args.recursive,
                               max_pixels=args.max_pixels, compare=args.compare or args.sample,
                               progress=not args.quiet, codec=args.codec, crf=args.crf)
    if len(result.written) <= 3:
        for path in result.written + result.extra:
            print(f"wrote {path}")
    elif result.written:
        print(f"wrote {len(result.written)} files under {args.output}")
    print(result.summary())
    return 0 if result.ok else 1


def _add_export(sub):
    p = sub.add_parser(
        "export", help="export weights to ONNX, TorchScript, OpenVINO, ncnn or LiteRT (verified "
                       "after writing)",
        description="Export a model to ONNX (input 'input', output 'output', NCHW float32 RGB "
                    "in [0, 1], dynamic batch/height/width) or TorchScript, then check the file "
                    "against PyTorch at several sizes (odd ones and batch 2 included). "
                    "OpenVINO IR (.xml + .bin), ncnn (.param + .bin, through pnnx) and LiteRT "
                    "(.tflite, through litert-torch; one static input size) are also run in "
                    "their own runtimes on a crop of a real photo.")
    p.add_argument("out", metavar="OUT", help="output file (.onnx, .pt, .xml, .param or .tflite)")
    p.add_argument("--weights", required=True, metavar="NAME|PATH",
                   help="bundled name (bsrn-x2/3/4) or any weights file")
    p.add_argument("--format", choices=["onnx", "torchscript", "openvino", "ncnn", "tflite"],
                   default=None,
                   help="default: from OUT's extension (.onnx -> onnx, .xml -> openvino, "
                        ".param -> ncnn, .tflite -> tflite, otherwise torchscript)")
    p.add_argument("--input-size", default=None, metavar="HxW",
                   help="tflite: the one LR input size the file takes (default 128x128)")
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
    from .errors import ConfigError
    from .export import export_onnx, export_torchscript

    suffix = Path(args.out).suffix.lower()
    fmt = args.format or {".onnx": "onnx", ".xml": "openvino", ".param": "ncnn",
                          ".tflite": "tflite"}.get(suffix, "torchscript")
    if args.input_size is not None and fmt != "tflite":
        raise ConfigError("--input-size is for --format tflite (the other formats take any size)")
    model = load_model(resolve_weights(args.weights))
    if fmt in ("openvino", "ncnn", "tflite"):
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
    p.add_argument("--float-precision", choices=("bf16", "fp32"), default=None,
                   help="openvino: precision of the kept groups and element-wise ops (default "
                        "bf16, used where the CPU has bf16 units, else fp32); onnxruntime: fp32")
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
                   max_group_cost=args.max_group_cost, progress=not args.quiet,
                   float_precision=args.float_precision)
    if res.sweep:
        print(format_sweep(res.sweep))
    print(res.summary())
    return 0


def _run_export_edge(args, fmt, model):
    from .export import TFLITE_SIZE, export_ncnn, export_openvino, export_tflite
    from .profile import parse_hw

    if fmt == "tflite":
        size = parse_hw(args.input_size) if args.input_size else TFLITE_SIZE
        res = export_tflite(model, args.out, size, verify=args.verify)
        inputs = "input " + "x".join(map(str, res["input_shape"])) + " only"
    else:
        export = export_openvino if fmt == "openvino" else export_ncnn
        res = export(model, args.out, verify=args.verify)
        inputs = f"inputs >= {getattr(model, 'min_size', 1)} px"
    what = {"openvino": "OpenVINO IR", "ncnn": "ncnn (pnnx)",
            "tflite": "LiteRT via litert-torch"}[fmt]
    print(f"wrote {' + '.join(res['files'])} ({what}, x{model.scale}, {inputs})")
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
    import torch

    from .atomic import write_json
    from .errors import BsrnError
    from .ntire import format_ntire, ntire_report
    from .precision import resolve_device
    from .profile import resolve_model

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
        write_json(args.json, row)


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


# ----------------------------------------------------------------------------- weights
def _add_weights(sub):
    p = sub.add_parser("weights", help="the weights folder: add checkpoints by name, list them",
                       description="Weights known by name: bundled, or added to the user data "
                                   "folder ($BSRN_HOME/weights when set). Any --weights NAME "
                                   "finds them from any folder.")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    a = verbs.add_parser("add", help="check a checkpoint, convert it to safetensors, store it")
    a.add_argument("file", metavar="FILE", help="a .pth or .safetensors checkpoint (official or "
                                                "bsrn's)")
    a.add_argument("--name", default=None, help="name to store it under (default: FILE's stem)")
    a.add_argument("--force", action="store_true", help="replace an existing name")
    a.add_argument("--scale", type=int, default=None,
                   help="the weights' scale, for heads whose tensors cannot tell x2 from x3")
    a.add_argument("--set5", default=None, metavar="PSNR|FOLDER",
                   help="Set5 Y-PSNR to record, or a Set5 folder to measure it on (official "
                        "files get their published score)")
    a.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    verbs.add_parser("list", help="every known name: architecture, scale, params, Set5")
    r = verbs.add_parser("remove", help="delete a name added with `bsrn weights add`")
    r.add_argument("name", metavar="NAME")
    p.set_defaults(func=_run_weights)


def _run_weights(args):
    from . import weights_folder as wf

    if args.verb == "add":
        e = wf.add_weights(args.file, args.name, args.force, args.scale, args.set5,
                           progress=not args.quiet)
        print(f"added {e.name}: {e.arch} x{e.scale}, {e.params:,} params"
              + (f", Set5 {e.set5_psnr:.2f} dB" if e.set5_psnr is not None else "")
              + f" -> {e.path}\nuse it with --weights {e.name}")
    elif args.verb == "remove":
        print(f"removed {wf.remove_weights(args.name)}")
    else:
        print(f"weights folder: {wf.user_dir()}\n")
        print("| name | origin | arch | scale | params | Set5 Y-PSNR (dB) | description |\n"
              "|---|---|---|---|---|---|---|")
        for e in wf.list_weights():
            print(e.row())
    return 0


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


# ----------------------------------------------------------------------------- serve
def _add_serve(sub):
    from .serve import DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENV, Limits

    d = Limits()
    p = sub.add_parser(
        "serve", help="a local web page and HTTP API for upscaling (needs bsrn[serve])",
        description="Serve a page (drop images, compare before/after, download) and an HTTP "
                    "API (POST /v1/upscale, GET /v1/models, GET /healthz, /docs). Listens on "
                    "loopback unless --host says otherwise; then every request needs the token.")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument("--weights", default=None, metavar="NAME|FILE",
                   help="default weights (default: the bundled bsrn-x<scale> of each request)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "auto"])
    p.add_argument("--backend", default=None, help="inference backend (default: the engine's)")
    p.add_argument("--token", default=None,
                   help=f"token every request must carry (default ${TOKEN_ENV}; required, and "
                        "generated when absent, off loopback)")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20,
                   help=f"largest upload in MiB (default {d.max_upload_bytes / 2**20:g})")
    p.add_argument("--max-pixels", type=_pixel_count, default=d.max_pixels,
                   help=f"largest input, width x height (default {d.max_pixels:,})")
    p.add_argument("--workers", type=int, default=d.workers,
                   help=f"jobs run at once (default {d.workers}; always 1 on a GPU)")
    p.add_argument("--queue", type=int, default=d.queue,
                   help=f"jobs that may wait; more get 503 (default {d.queue})")
    p.add_argument("--timeout", type=float, default=d.timeout,
                   help=f"seconds per request, waiting included (default {d.timeout:g})")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per worker (default: the cores shared among the workers)")
    p.set_defaults(func=_run_serve)


def _run_serve(args):
    from importlib.util import find_spec

    from .errors import ConfigError
    from .serve import Limits, serve

    missing = [m for m in ("fastapi", "gradio", "uvicorn", "python_multipart") if not find_spec(m)]
    if missing:
        raise ConfigError(f"bsrn serve needs the serve extra: pip install 'bsrn[serve]' "
                          f"({', '.join(missing)} missing)")
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                    workers=args.workers, queue=args.queue, timeout=args.timeout,
                    threads=args.threads)
    serve(args.host, args.port, weights=args.weights, device=args.device,
          precision=args.precision, backend=args.backend, limits=limits, token=args.token,
          log=lambda msg: print(msg, file=sys.stderr, flush=True))
    return 0


_ADDERS = [_add_upscale, _add_eval, _add_make_lr, _add_train, _add_plot_log, _add_profile, _add_bench_ntire,
           _add_plot, _add_ablate, _add_export, _add_models, _add_weights, _add_serve,
           _add_quantize]


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
    except ModuleNotFoundError as e:  # an optional dependency: say which extra installs it
        if args.debug or not e.name:
            raise
        from .extras import missing_message

        print(f"bsrn {args.command}: error: {missing_message(e.name, f'bsrn {args.command}')}",
              file=sys.stderr)
        return 1
    return int(rc or 0)
