"""Property of the output planner: whatever the input names, extensions, modes, suffix, --ext
and flags, no two inputs map to one output and no output lands on an input; every input is
either planned or refused with a line naming it. Real (tiny) files are made for each example."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bsrn.batch import collect_inputs, plan_outputs  # noqa: E402
from bsrn.image_io import probe_image, stores_alpha  # noqa: E402

EXTS = [".png", ".PNG", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".tga",
        ".apng"]
FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF",
          ".tiff": "TIFF", ".webp": "WEBP", ".gif": "GIF", ".tga": "TGA", ".apng": "PNG"}

stems = st.one_of(  # a few shared names make collisions likely; free text finds the odd ones
    st.sampled_from(["a", "a_x4", "a_x4_side_by_side", "a.b", "写真"]),
    st.text(alphabet="aAb_-. x4é写", min_size=1, max_size=6).filter(
        lambda s: not s.startswith(".")))
files = st.lists(st.tuples(st.sampled_from(["", "sub", "sub/deeper"]), stems,
                           st.sampled_from(EXTS), st.booleans(), st.booleans()),
                 min_size=1, max_size=7)
suffixes = st.sampled_from(["", "_x4", "_x2", "_side_by_side", ".x", "a", "_x4_side_by_side"])
exts = st.sampled_from(["auto", "png", "jpg", "bmp", "webp", "tif", "jpeg"])
outputs = st.sampled_from(["same", "other", "inside", "file", "link"])


def make(root: Path, folder: str, stem: str, ext: str, alpha: bool, animated: bool) -> Path:
    path = root / folder / f"{stem}{ext}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = FORMAT[ext.lower()]
    alpha = alpha and fmt not in ("JPEG",)
    a = np.full((2, 3, 4 if alpha else 3), 90, np.uint8)
    if alpha:
        a[0, 0, 3] = 0
    im = Image.fromarray(a)
    if animated and fmt in ("PNG", "GIF", "WEBP"):
        im.save(path, format=fmt, save_all=True, append_images=[Image.fromarray(255 - a)],
                duration=30)
    else:
        im.save(path, format=fmt)
    return path


def key(p: Path) -> str:
    p = Path(os.path.abspath(p))
    return os.path.join(os.path.realpath(p.parent), p.name)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(files=files, suffix=suffixes, ext=exts, where=outputs, compare=st.booleans(),
       recursive=st.booleans(), overwrite=st.booleans())
def test_no_two_inputs_share_an_output_and_no_output_is_an_input(files, suffix, ext, where,
                                                                  compare, recursive, overwrite):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "in"
        for folder, stem, e, alpha, animated in files:
            make(root, folder, stem, e, alpha, animated)
        out = {"same": root, "other": Path(d) / "out", "inside": root / "sub",
               "file": Path(d) / "one.jpg", "link": Path(d) / "alias"}[where]
        if where == "link":
            os.symlink(root, out)
        found, problems = collect_inputs([root], recursive=recursive,
                                         output=None if where == "file" else out,
                                         suffix=suffix)
        if where == "file" and len(found) > 1:
            found = found[:1]
        plan = plan_outputs(found, out, suffix, ext, compare=compare, overwrite=overwrite)

        planned = [(job.src, p) for job in plan.jobs for p in job.outputs]
        keys = [key(p) for _, p in planned]
        assert len(keys) == len(set(keys)), "two outputs share a path"
        inputs = {key(f) for f, _ in found}  # (files not taken, e.g. without -r, are not)
        for job in plan.jobs:
            for p in job.outputs:  # --overwrite: an input's own result only, never another's
                if key(p) in inputs:
                    assert overwrite and p == job.dst and key(p) == key(job.src), (job, p)
        # Every input found is planned or refused, in one line naming it.
        refused = {item for item, _ in plan.failed}
        assert {str(f) for f, _ in found} == {str(j.src) for j in plan.jobs} | refused
        for item, line in plan.failed:
            assert line.startswith(item) and "\n" not in line
        for job in plan.jobs:
            info = probe_image(job.src)
            if info.animated:
                assert job.dst.suffix in (".gif", ".png", ".webp")
            elif info.has_alpha:
                assert stores_alpha(job.dst), (job.src, job.dst)
            asked = out.suffix if where == "file" else "." + ext if ext != "auto" else None
            if asked and not info.animated and not info.has_alpha:
                assert job.dst.suffix == asked
            if job.side_by_side is not None:
                assert job.side_by_side.name.endswith("_side_by_side.png")
