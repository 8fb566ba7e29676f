"""The batch behind ``bsrn upscale``: files, folders and globs in, one output plan, then the work.

1. ``collect_inputs`` expands the inputs. Folder scans take every extension Pillow can decode
   here (``image_io.read_exts``); entries that cannot be read (dangling links, symbolic link
   loops, folders without permission) are failures, named, never skipped in silence.
2. ``plan_outputs`` decides every output path of the whole batch before anything is written,
   from each input's header (``probe_image``): the image, its ``_side_by_side.png`` and the
   format switches below. It refuses, per input and naming both sides:

   - two inputs whose outputs would be one path (``pic.bmp`` and ``pic.png`` -> ``pic_x4.png``);
   - an output that is an input (its own only with ``overwrite``; another input's never).

   Videos (``bsrn.video.VIDEO_EXTS``) are planned by name: an output video keeps its input's
   extension (``--ext`` is for images), and a single-file ``-o`` for a video must be a video name.

3. ``upscale_files`` runs the plan: ``skip_existing`` checks the exact planned paths, each file
   is written atomically to exactly its planned path, and one file's failure is one line while
   the batch goes on. Videos go to ``bsrn.video.upscale_video``, which writes a hidden
   ``.<name>.partial<ext>`` and renames it: the plan claims that path too (never an input, never
   another job's output), folder scans and globs leave hidden files out, and ``skip_existing``
   looks at the finished name only, so a killed run's partial file is redone.

Output names: ``<output>/<relative folder>/<stem><suffix><ext>``. With ``ext="auto"`` the input's
extension is kept when bsrn can write it, else that of its format (``.jfif`` -> ``.jpg``), else
``.png``. An image with alpha bound for JPEG or
BMP becomes ``.png``; an animation (GIF, APNG, WebP) keeps ``.gif``/``.png``/``.webp`` and
becomes ``.png`` (APNG) for any other extension.
"""
from __future__ import annotations

import errno
import glob
import os
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BsrnError, ConfigError, ImageError
from .image_io import (ANIMATED_EXTS, DEFAULT_MAX_PIXELS, IMAGE_EXTS, Animation, ImageInfo,
                       Picture, ext_of_format, probe_image, read_animation, read_exts,
                       read_image, stores_alpha, write_animation, write_image)
from .upscale import DEFAULT_SCALE, Upscaler, side_by_side_path, write_side_by_side
from .video import VIDEO_EXTS, is_video, partial_path, upscale_video

_GLOB_CHARS = set("*?[")


# ----------------------------------------------------------------------------- results
@dataclass
class Job:
    """One input and every path it will write."""

    src: Path
    dst: Path
    side_by_side: Path | None = None
    animated: bool = False

    @property
    def outputs(self) -> list[Path]:
        return [self.dst] + ([self.side_by_side] if self.side_by_side else [])

    @property
    def writes(self) -> list[Path]:
        """Every path the job creates: its outputs and, for a video, its partial file."""
        return self.outputs + ([partial_path(self.dst)] if is_video(self.src) else [])


@dataclass
class Plan:
    """The jobs to run and the inputs refused before any write: [(input, one-line problem)]."""

    jobs: list[Job] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class BatchResult:
    """What ``upscale_files`` did: written outputs, skipped ones, failures with messages."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    in_pixels: int = 0
    out_pixels: int = 0
    seconds: float = 0.0
    scale: float = DEFAULT_SCALE
    extra: list[Path] = field(default_factory=list)
    videos: int = 0
    frames: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        n = len(self.written) - self.videos
        v = self.videos
        s = ((f"{v} video{'s' if v != 1 else ''} ({self.frames} frames)" if v else "")
             + (" and " if v and n else "") + (f"{n} image{'s' if n != 1 else ''}" if n or not v
                                               else "")
             + f" upscaled x{self.scale:g} "
             f"({self.in_pixels / 1e6:.2f} MP -> {self.out_pixels / 1e6:.2f} MP) "
             f"in {self.seconds:.1f} s")
        if self.skipped:
            s += f", {len(self.skipped)} skipped (output exists)"
        if self.failed:
            s += f", {len(self.failed)} failed"
        return s


def _line(item, problem: str) -> str:
    """``item: problem``, unless the problem already starts with the item."""
    return problem if problem.startswith(str(item)) else f"{item}: {problem}"


# ----------------------------------------------------------------------------- inputs
def _norm(p) -> str:
    return os.path.normcase(os.path.abspath(p))


def _inside(f: Path, folder: Path) -> bool:
    try:
        Path(os.path.abspath(f)).relative_to(os.path.abspath(folder))
        return True
    except ValueError:
        return False


def _looks_like_output(f: Path, root: Path, output: Path | None, suffix: str) -> bool:
    """Whether ``f``, found by scanning ``root``, is an earlier output of this same command:
    inside an output folder nested in ``root``, or named ``*<suffix>`` when writing next to
    the inputs (so a second run does not upscale the first run's results)."""
    if output is None:
        return False
    if _norm(output) == _norm(root):
        return bool(suffix) and f.stem.endswith(suffix)
    return _inside(output, root) and _inside(f, output)


def entry_problem(path: Path, err: OSError) -> str:
    """Why a folder entry cannot be read, in words (dangling link, link loop, permission)."""
    if err.errno == errno.ELOOP:
        return "symbolic link loop; cannot be read"
    if os.path.islink(path) and err.errno in (errno.ENOENT, errno.ENOTDIR):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"broken symbolic link (its target {target} does not exist)"
    return f"cannot be read ({err.strerror or type(err).__name__})"


def _check_entry(f: Path, exts, problems) -> bool:
    """Whether ``f`` is a regular file with an image extension; unreadable entries of any name
    are added to ``problems``."""
    try:
        st = os.stat(f)
    except OSError as e:
        problems.append((str(f), entry_problem(f, e)))
        return False
    if f.suffix.lower() not in exts:
        return False
    if not stat.S_ISREG(st.st_mode):
        if not stat.S_ISDIR(st.st_mode):
            problems.append((str(f), "not a regular file (a device, pipe or socket)"))
        return False
    return True


def scan_folder(folder: Path, recursive: bool = False, output: Path | None = None,
                suffix: str = "") -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files in ``folder`` (sub-folders too when ``recursive``, following links to
    folders once) and [(entry, problem)] for every entry that cannot be read."""
    exts = set(read_exts()) | set(VIDEO_EXTS)
    files, problems = [], []
    seen_dirs: set[str] = set()

    def onerror(e: OSError):
        problems.append((str(e.filename), f"folder cannot be read ({e.strerror})"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=onerror, followlinks=True):
        here = Path(dirpath)
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            ancestors = {os.path.realpath(a) for a in here.parents if _inside(a, folder)}
            if real in ancestors:
                problems.append((dirpath, "symbolic link loop (links to a folder above it)"))
            continue
        seen_dirs.add(real)
        if recursive:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and not (output is not None and _norm(here / d) == _norm(output)
                                          and _norm(output) != _norm(folder)))
        else:
            dirnames[:] = []
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            f = here / name
            if _check_entry(f, exts, problems) and not _looks_like_output(f, folder, output,
                                                                          suffix):
                files.append(f)
    return files, problems


def collect_inputs(inputs, recursive: bool = False, output: str | os.PathLike | None = None,
                   suffix: str = "") -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """Expand files, folders and globs -> ([(file, path relative to its output folder)],
    [(input, problem)]). Folders and globs keep image files (every readable format) and videos
    and report unreadable entries; ``recursive`` descends into sub-folders (and lets ``**`` in
    globs match them), mirrored in the output folder. Earlier outputs of the same command (see
    ``_looks_like_output``) are left out of folders and globs; files named explicitly are
    always taken."""
    found, problems, seen = [], [], set()
    output = Path(output) if output is not None else None
    exts = set(read_exts()) | set(VIDEO_EXTS)

    def add(f: Path, rel: Path):  # one file reached twice (named, scanned, a linked folder)
        key = (os.path.normcase(os.path.realpath(f)), rel)
        if key not in seen:
            seen.add(key)
            found.append((f, rel))

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files, bad = scan_folder(p, recursive, output, suffix)
            problems.extend(bad)
            if not files and not bad:
                problems.append((str(item), f"no images ({', '.join(IMAGE_EXTS)}, ...) in this "
                                 "folder" + ("" if recursive else
                                             " (use --recursive for sub-folders)")))
            for f in files:
                add(f, f.relative_to(p))
        elif p.is_file():
            add(p, Path(p.name))
        elif os.path.islink(p):
            try:
                os.stat(p)
                problems.append((str(item), "not a regular file"))
            except OSError as e:
                problems.append((str(item), entry_problem(p, e)))
        elif _GLOB_CHARS & set(str(item)):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=recursive))
            bad = []
            files = [m for m in matches if _check_entry(m, exts, bad)
                     and not _looks_like_output(m, m.parent, output, suffix)]
            problems.extend(bad)
            if not files and not bad:
                problems.append((str(item), "no image files match this pattern"))
            for f in files:
                add(f, Path(f.name))
        else:
            problems.append((str(item), "no such file or folder"))
    return found, problems


# ----------------------------------------------------------------------------- the plan
def check_ext(ext: str) -> str:
    """``auto`` or a writable extension with its dot (``jpg`` -> ``.jpg``)."""
    if ext == "auto":
        return ext
    e = "." + str(ext).lower().lstrip(".")
    if e not in IMAGE_EXTS:
        raise ConfigError(f"--ext must be auto or one of "
                          f"{', '.join(x[1:] for x in IMAGE_EXTS)}, got {e[1:]!r}")
    return e


def _names_file(output: Path) -> bool:
    return (output.suffix.lower() in IMAGE_EXTS or is_video(output)) and not output.is_dir()


def output_ext(src: Path, info: ImageInfo, ext: str) -> str:
    """The extension actually written for ``src`` when ``ext`` (``auto`` or ``.xyz``) is asked:
    under ``auto`` the input's when writable, else its format's, else ``.png``; ``.png`` when
    alpha or animation needs it."""
    if ext == "auto":
        e = src.suffix.lower()
        if info.animated and e == ".apng":
            e = ".png"
        if e not in IMAGE_EXTS + ANIMATED_EXTS or e == ".gif" and not info.animated:
            e = ext_of_format(info.format) or ".png"  # e.g. photo.jfif -> .jpg
    else:
        e = ext
    if info.animated:
        return e if e in ANIMATED_EXTS else ".png"
    if info.has_alpha and not stores_alpha(Path("x" + e)):
        return ".png"
    return e


def _key(p: Path) -> str:
    """Identity of a path that may not exist yet: its folder resolved, its name as given."""
    p = Path(os.path.abspath(p))
    return os.path.normcase(os.path.join(os.path.realpath(p.parent), p.name))


def plan_outputs(found: list[tuple[Path, Path]], output="results", suffix: str = "_x4",
                 ext: str = "auto", *, compare: bool = False, overwrite: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, probe=probe_image) -> Plan:
    """Decide every output path of the batch (see the module docstring) before any write.

    ``output`` with an image or video extension names the file itself (one input only, of the
    same kind). Inputs whose header cannot be read, and inputs in a conflict, go to
    ``Plan.failed`` with one line each; no two jobs share an output path (a video's partial
    file included) and no output path is an input (its own input only when ``overwrite``)."""
    out = Path(output)
    ext = check_ext(ext)
    if any(s in suffix for s in (os.sep, os.altsep or os.sep, "\0")):
        raise ConfigError(f"--suffix {suffix!r} must be part of a file name (no path separator)")
    single = _names_file(out)
    if single and len(found) > 1:
        raise ConfigError(f"-o {output} names one file, but there are {len(found)} inputs; "
                          "give a folder")
    plan = Plan()
    inputs: dict[str, Path] = {}
    inodes: dict[tuple[int, int], Path] = {}
    for f, _ in found:
        inputs.setdefault(_key(f), f)
        inputs.setdefault(os.path.normcase(os.path.realpath(f)), f)
        if _inode(f) is not None:
            inodes.setdefault(_inode(f), f)
    jobs = []
    for f, rel in found:
        if is_video(f):  # read by upscale_video; keeps its own container
            if single and not is_video(out):
                plan.failed.append((str(f), _line(f, f"a video needs a video output name "
                                                     f"({', '.join(VIDEO_EXTS)}) or a folder, "
                                                     f"not -o {output}")))
                continue
            dst = out if single else out / rel.parent / f"{f.stem}{suffix}{f.suffix.lower()}"
            jobs.append(Job(f, dst))
            continue
        if single and is_video(out):
            plan.failed.append((str(f), _line(f, f"-o {output} names a video; an image needs "
                                                 "an image name or a folder")))
            continue
        try:
            info = probe(f, max_pixels)
        except BsrnError as e:
            plan.failed.append((str(f), _line(f, str(e))))
            continue
        if single:
            dst = out.with_suffix(output_ext(f, info, out.suffix.lower()))
        else:
            dst = out / rel.parent / f"{f.stem}{suffix}{output_ext(f, info, ext)}"
        jobs.append(Job(f, dst, side_by_side_path(dst) if compare else None, info.animated))

    claims: dict[str, list[tuple[Job, Path]]] = {}
    for job in jobs:
        for path in job.writes:
            claims.setdefault(_key(path), []).append((job, path))
    problems: dict[int, str] = {}
    for key, owners in claims.items():
        path = owners[0][1]
        srcs = list(dict.fromkeys(str(j.src) for j, _ in owners))
        if len(srcs) > 1:
            for job, _ in owners:
                others = ", ".join(s for s in srcs if s != str(job.src))
                problems.setdefault(id(job), f"output {path} would also be written for {others}; "
                                             "nothing is written for either (use --suffix, "
                                             "--ext or separate folders)")
        ino = _inode(path)
        victim = inputs.get(key) or (inodes.get(ino) if ino is not None else None)
        if victim is not None:
            for job, p in owners:
                own = _same_file(victim, job.src) or _norm(victim) == _norm(job.src)
                if own and overwrite and p == job.dst:
                    continue
                if own:
                    why = ("would overwrite an input; pass --overwrite to replace it, or "
                           "choose another -o/--suffix") if p == job.dst else \
                        "would overwrite an input"
                else:
                    why = f"would overwrite the input {victim}"
                problems.setdefault(id(job), f"output {p} {why}")
        if os.path.isdir(path):
            for job, _ in owners:
                problems.setdefault(id(job), f"output {path} is a folder")
        if len(os.fsencode(path.name)) > _name_max(path.parent):
            for job, _ in owners:
                problems.setdefault(id(job), f"output name {path.name[:40]}... is longer than "
                                             f"{_name_max(path.parent)} bytes, the file "
                                             "system's limit; use a shorter --suffix")
    for job in jobs:
        if id(job) in problems:
            plan.failed.append((str(job.src), _line(job.src, problems[id(job)])))
        else:
            plan.jobs.append(job)
    return plan


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder`` (or its nearest existing
    parent) takes."""
    for f in [folder, *folder.parents]:
        try:
            return os.pathconf(f, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):
            continue
    return 255


def _inode(p: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(p)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# ----------------------------------------------------------------------------- the work
def _run_job(upscaler: Upscaler, job: Job, max_pixels) -> tuple[Picture, Picture]:
    """Upscale one planned job, writing exactly its planned paths; returns the (first) input
    and output pictures."""
    if job.animated:
        anim = read_animation(job.src, max_pixels)
        outs = [upscaler.upscale_picture(Picture(a)) for a in anim.frames]
        write_animation(job.dst, Animation([o.pixels for o in outs], anim.durations, anim.loop,
                                           anim.format))
        pic, out = Picture(anim.frames[0]), outs[0]
    else:
        pic = read_image(job.src, max_pixels=max_pixels)
        out = upscaler.upscale_picture(pic)
        if out.has_alpha and not stores_alpha(job.dst):
            raise ImageError(f"{job.src}: has transparency, which {job.dst.suffix} cannot "
                             "store; choose --ext png")
        write_image(job.dst, out.pixels, icc_profile=out.icc_profile, exif=out.exif)
    if job.side_by_side:
        write_side_by_side(job.side_by_side, pic, out,
                           f"{upscaler.arch.upper().replace('_', '-')} x{upscaler.scale:g}")
    return pic, out


def upscale_files(inputs, output="results", upscaler: Upscaler | None = None, *,
                  suffix: str | None = None, ext: str = "auto", overwrite: bool = False,
                  skip_existing: bool = False, recursive: bool = False,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS, compare: bool = False,
                  progress: bool = True, log=None, codec: str = "h264", crf: int | None = None,
                  **upscaler_kwargs) -> BatchResult:
    """Upscale files, folders and globs into ``output`` (see ``bsrn upscale --help``).

    Inputs are never overwritten unless ``overwrite``; existing outputs are replaced unless
    ``skip_existing``. A file that cannot be read or written is reported (one line through
    ``log``) and the batch goes on; the result lists it under ``failed``. Videos are
    upscaled by ``bsrn.video.upscale_video`` with ``codec`` and ``crf``.
    """
    if overwrite and skip_existing:
        raise ConfigError("choose either --overwrite or --skip-existing, not both")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if log is None:
        def log(msg):
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
    t0 = time.perf_counter()
    check_ext(ext)
    if upscaler is None:
        upscaler = Upscaler(**upscaler_kwargs)
    if suffix is None:
        suffix = f"_x{upscaler.scale:g}"
    out_dir = None if _names_file(Path(output)) else Path(output)
    found, missing = collect_inputs(inputs, recursive=recursive, output=out_dir, suffix=suffix)
    if not found and len(missing) == 1:
        raise ImageError(_line(*missing[0]))
    if not found and missing and all(m[0] in map(str, inputs) for m in missing):
        raise ImageError(f"no images found in {len(missing)} inputs "
                         f"({', '.join(m for m, _ in missing[:4])}...)")
    plan = plan_outputs(found, output, suffix, ext, compare=compare, overwrite=overwrite,
                        max_pixels=max_pixels)
    result = BatchResult(scale=upscaler.scale)
    for item, problem in missing + plan.failed:
        result.failed.append((item, _line(item, problem)))
        log(f"bsrn upscale: error: {_line(item, problem)}")

    from tqdm import tqdm

    for job in tqdm(plan.jobs, desc="upscale", unit="img", disable=not progress,
                    file=sys.stderr, dynamic_ncols=True):
        if skip_existing and all(p.exists() for p in job.outputs):
            result.skipped.append(job.dst)
            continue
        try:
            if is_video(job.src):
                v = upscale_video(job.src, job.dst, upscaler, codec=codec, crf=crf,
                                  progress=progress)
                result.written.append(job.dst)
                result.videos += 1
                result.frames += v.frames
                result.in_pixels += v.frames * v.in_size[0] * v.in_size[1]
                result.out_pixels += v.frames * v.out_size[0] * v.out_size[1]
                continue
            pic, out = _run_job(upscaler, job, max_pixels)
        except (BsrnError, OSError, MemoryError, RuntimeError, ValueError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if not isinstance(e, BsrnError):
                msg = f"{type(e).__name__}: {msg}"
            msg = _line(job.src, msg)
            result.failed.append((str(job.src), msg))
            log(f"bsrn upscale: error: {msg}")
            continue
        result.written.append(job.dst)
        if job.side_by_side:
            result.extra.append(job.side_by_side)
        result.in_pixels += pic.pixels.shape[0] * pic.pixels.shape[1]
        result.out_pixels += out.pixels.shape[0] * out.pixels.shape[1]
    result.seconds = time.perf_counter() - t0
    return result
