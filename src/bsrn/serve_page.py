"""The page of ``bsrn serve`` (Gradio): drop, paste or pick images, choose the scale and the
weights, watch the progress, compare before and after with ``gr.ImageSlider`` and download each
result (what ``bsrn upscale`` writes) or all of them as a zip.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from .errors import BsrnError
from .image_io import read_image
from .serve import FORMATS, UpscaleService
from .upscale import _for_display

AUTO = "auto"
PAGE_FILES_MAX_AGE = 3600  # s: result folders of the page older than this are removed


def _display_pair(src: Path, dst: Path, folder: Path) -> tuple[str, str]:
    """8-bit PNGs for the slider: the input enlarged by bicubic to the output's size, and the
    output (16 bits rounded, alpha over white)."""
    after = _for_display(read_image(dst, max_pixels=None).pixels)
    before = _for_display(read_image(src, max_pixels=None).pixels)
    h, w = after.shape[:2]
    before = np.asarray(Image.fromarray(before).resize((w, h), Image.BICUBIC))
    paths = folder / f"{dst.stem}.before.png", folder / f"{dst.stem}.after.png"
    for path, pixels in zip(paths, (before, after)):
        Image.fromarray(pixels).save(path, compress_level=1)
    return str(paths[0]), str(paths[1])


def _zip(paths: list[Path], dst: Path) -> Path:
    """All results in one zip (stored: the images are compressed already)."""
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for p in paths:
            z.write(p, p.name)
    return dst


def _forget_old(service: UpscaleService) -> None:
    now = time.time()
    for folder in service.folder.glob("page-*"):
        if now - folder.stat().st_mtime > PAGE_FILES_MAX_AGE:
            shutil.rmtree(folder, ignore_errors=True)


def build_page(service: UpscaleService) -> gr.Blocks:
    """The Gradio Blocks of the page, upscaling through ``service``."""
    names = [AUTO] + list(service.weights())

    def upscale(files, pasted, scale, weights, fmt, progress=gr.Progress()):
        inputs = [Path(f) for f in files or []] + ([Path(pasted)] if pasted else [])
        if not inputs:
            raise gr.Error("Add an image first (drop, paste or pick one).")
        _forget_old(service)
        folder = Path(tempfile.mkdtemp(prefix="page-", dir=service.folder))
        written, pairs = [], []
        for i, src in enumerate(inputs):
            progress((i, len(inputs)), desc=f"upscaling {src.name}", unit="images")
            try:
                job = service.admit()
                future = service.submit(job, src, src.name, scale,
                                        None if weights == AUTO else weights, fmt)
                result = future.result(timeout=service.limits.timeout)
            except BsrnError as e:
                raise gr.Error(str(e)) from None
            except TimeoutError:
                raise gr.Error(f"{src.name}: timed out after {service.limits.timeout:g} s") \
                    from None
            sub = folder / str(i)
            sub.mkdir()
            dst = sub / result.filename
            dst.write_bytes(result.data)
            written.append(dst)
            pairs.append(_display_pair(src, dst, sub))
        progress((len(inputs), len(inputs)), desc="done")
        files_out = [str(p) for p in written]
        if len(written) > 1:
            files_out.append(str(_zip(written, folder / "bsrn_results.zip")))
        labels = [p.name for p in written]
        return (pairs[0], gr.update(choices=labels, value=labels[0], visible=len(labels) > 1),
                files_out, pairs)

    def show(label, pairs):
        for pair in pairs or []:
            if Path(pair[1]).name.removesuffix(".after.png") == Path(label or "").stem:
                return pair
        return gr.update()

    with gr.Blocks(title="bsrn", delete_cache=(600, PAGE_FILES_MAX_AGE),
                   analytics_enabled=False) as page:
        gr.Markdown("## bsrn: super-resolution with BSRN\nDrop, paste or pick images, choose "
                    "the scale, then compare the result with the input enlarged by bicubic.")
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Images", file_count="multiple", file_types=["image"],
                                elem_id="bsrn-inputs")
                pasted = gr.Image(label="…or paste one", sources=["clipboard"],
                                  type="filepath", height=160, elem_id="bsrn-paste")
                with gr.Row():
                    scale = gr.Dropdown([2, 3, 4], value=4, label="Scale", elem_id="bsrn-scale")
                    weights = gr.Dropdown(names, value=AUTO, label="Weights",
                                          elem_id="bsrn-weights")
                    fmt = gr.Dropdown(list(FORMATS), value="auto", label="Format",
                                      elem_id="bsrn-format")
                run = gr.Button("Upscale", variant="primary", elem_id="bsrn-run")
            with gr.Column(scale=2):
                slider = gr.ImageSlider(label="bicubic | BSRN", type="filepath", format="png",
                                        buttons=["fullscreen"], max_height=720,
                                        interactive=False, elem_id="bsrn-slider")
                pick = gr.Dropdown(label="Show", choices=[], visible=False,
                                   elem_id="bsrn-pick")
                results = gr.File(label="Download", file_count="multiple",
                                  interactive=False, elem_id="bsrn-results")
        pairs = gr.State([])
        run.click(upscale, [files, pasted, scale, weights, fmt], [slider, pick, results, pairs],
                  concurrency_limit=service.workers)
        pick.change(show, [pick, pairs], slider)
    page.queue(max_size=max(1, service.limits.queue))
    return page
