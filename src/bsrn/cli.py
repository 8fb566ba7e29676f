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
    p = sub.add_parser("make-lr", help="make MATLAB-bicubic LR images from an HR folder")
    p.add_argument("hr_dir")
    p.add_argument("out_dir")
    p.add_argument("--scale", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--variant", choices=["uint8", "double"], default="uint8",
                   help="uint8: two passes each rounded (EDSR pack); double: rounded once")
    p.set_defaults(func=_run_make_lr)


def _run_make_lr(args):
    raise NotImplementedError


def _add_eval(sub):
    p = sub.add_parser("eval", help="PSNR/SSIM (Y channel) on benchmark folders")
    p.set_defaults(func=_run_eval)


def _run_eval(args):
    raise NotImplementedError


# ----------------------------------------------------------------------------- train
def _add_train(sub):
    p = sub.add_parser("train", help="train a model from a YAML config")
    p.set_defaults(func=_run_train)


def _run_train(args):
    raise NotImplementedError


# ----------------------------------------------------------------------------- upscale / export
def _add_upscale(sub):
    p = sub.add_parser("upscale", help="upscale images")
    p.set_defaults(func=_run_upscale)


def _run_upscale(args):
    raise NotImplementedError


# ----------------------------------------------------------------------------- profile / ablate
def _add_profile(sub):
    p = sub.add_parser("profile", help="params, Multi-Adds, FLOPs, memory and runtime")
    p.set_defaults(func=_run_profile)


def _run_profile(args):
    raise NotImplementedError


# ----------------------------------------------------------------------------- main
_ADDERS = [_add_upscale, _add_eval, _add_make_lr, _add_train, _add_profile]


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
