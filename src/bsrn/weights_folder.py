"""The weights folder: weights known by name, bundled with the package or added by the user.

``bsrn weights add FILE`` checks a downloaded checkpoint (official or ours), converts it to
bsrn's safetensors (architecture and config in the metadata) and stores it under the user data
folder, ``$BSRN_HOME/weights`` when ``BSRN_HOME`` is set, else the platform's user data folder
(Linux: ``~/.local/share/bsrn/weights``; macOS: ``~/Library/Application Support/bsrn/weights``;
Windows: ``%LOCALAPPDATA%\\bsrn\\weights``). Every ``--weights NAME`` then finds it from any folder.
Bundled names take precedence and cannot be shadowed.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError, ConfigError

HOME_ENV = "BSRN_HOME"
#: Set5 scores of the bundled weights (model card: docs/models.md).
BUNDLED_SCORES = Path(__file__).parent / "weights" / "scores.json"
#: What a checkpoint's file name may end with; ``--weights net_g_BSRN_x4.pth`` finds the name
#: ``net_g_BSRN_x4``.
SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")

#: Official checkpoints recognised by SHA-256: (description, Set5 Y-PSNR at their scale as
#: published, which the official code reproduces with these files).
OFFICIAL = {
    "09bd1f85e017c7902e65a9c9770ee592efe3d013f6b5cf1fe7de8cabac4ba37d":
        ("official BSRN x2 (xiaom233/BSRN)", 38.10),
    "6eb73a300aaec5029bc0de7f5ae85c02b8dcd8fdaf438c77f90272939fecca7e":
        ("official BSRN x3 (xiaom233/BSRN)", 34.46),
    "47518e0f549f5696da0c84ca2d65bf50d789c7ac20e621909f5fd6c8c8d70bcb":
        ("official BSRN x4 (xiaom233/BSRN)", 32.35),
    "f035e512bcecd2999af21999fdaeb6ed39a4492ac11d214b8164d27e6e958fec":
        ("official BSRN-S x4 (xiaom233/BSRN)", 32.16),
    "29ac393975ec709912282da97765daf722d9efd40589f4abcb95b3a407f62e40":
        ("BSRN-S x4, NTIRE 2022 team 18 (ofsoundof/NTIRE2022_ESR)", 32.00),
    "11af8ec8ebd68689e90ef1e29044f9804c72d3bd9f7573820b7b26035782760c":
        ("RFDN x4, NTIRE 2022 baseline (ofsoundof/NTIRE2022_ESR)", None),
    "115b4cc557eba9daaf1a6543c4858014c7e2a410655aafef7c8348ae54acc203":
        ("IMDN x4, NTIRE 2022 baseline (ofsoundof/NTIRE2022_ESR)", None),
}


def data_dir() -> Path:
    """bsrn's user data folder: ``$BSRN_HOME``, else the platform's user data folder."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("bsrn", appauthor=False))


def user_dir() -> Path:
    """Where ``bsrn weights add`` stores weights."""
    return data_dir() / "weights"


def user_weights() -> dict[str, Path]:
    d = user_dir()
    return {p.stem: p for p in sorted(d.glob("*.safetensors"))} if d.is_dir() else {}


def known_weights() -> dict[str, Path]:
    """Every weights name -> file: the bundled ones, then the user's."""
    from .checkpoint import bundled_weights

    bundled = bundled_weights()
    return {**bundled, **{k: v for k, v in user_weights().items() if k not in bundled}}


def find_weights(name: str) -> Path | None:
    """The file of a known name (a checkpoint file name such as ``net_g_BSRN_x4.pth`` also
    finds the name it was added under by default), else None."""
    known = known_weights()
    if name in known:
        return known[name]
    stem, ext = os.path.splitext(name)
    return known.get(stem) if ext in SUFFIXES and os.sep not in name else None


@dataclass
class WeightsEntry:
    """One known name and what its file records."""

    name: str
    origin: str  # "bundled" or "user"
    path: Path
    arch: str
    scale: int
    params: int
    set5_psnr: float | None
    description: str

    def row(self) -> str:
        set5 = f"{self.set5_psnr:.2f}" if self.set5_psnr is not None else "-"
        return (f"| {self.name} | {self.origin} | {self.arch} | x{self.scale} | {self.params:,} "
                f"| {set5} | {self.description} |")


def _bundled_scores() -> dict:
    return json.loads(BUNDLED_SCORES.read_text()) if BUNDLED_SCORES.is_file() else {}


def describe(name: str, path: Path, origin: str) -> WeightsEntry:
    """Read a stored file's header (no tensors are loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    except Exception as e:  # noqa: BLE001 - an unreadable file is one line in the listing
        raise CheckpointError(f"{path}: cannot read weights ({str(e).splitlines()[0][:200]})") \
            from None
    set5 = meta.get("set5_psnr")
    if set5 is None and origin == "bundled":
        set5 = _bundled_scores().get(name, {}).get("set5_psnr")
    description = meta.get("description") or (
        f"trained with {meta['trainer']}, {meta.get('iterations', '?')} iterations"
        if "trainer" in meta else "")
    return WeightsEntry(name, origin, path, meta.get("arch", "?"), int(meta.get("scale", 0)),
                        params, float(set5) if set5 not in (None, "") else None, description)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def list_weights() -> list[WeightsEntry]:
    """Every known name, bundled first."""
    from .checkpoint import bundled_weights

    bundled = bundled_weights()
    named = [(n, p, "bundled") for n, p in bundled.items()]
    named += [(n, p, "user") for n, p in user_weights().items() if n not in bundled]
    out = []
    for name, path, origin in named:
        try:
            out.append(describe(name, path, origin))
        except CheckpointError as e:  # one unreadable file does not hide the others
            out.append(WeightsEntry(name, origin, path, "?", 0, 0, None, str(e)))
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_runs(model, path: Path) -> None:
    """The network runs on a smooth test image and returns finite values of the right size."""
    n = model.cfg.num_in_ch
    x = torch.linspace(0.2, 0.8, 24 * 24).reshape(1, 1, 24, 24).expand(1, n, 24, 24)
    with torch.no_grad():
        y = model(x.contiguous())
    if y.shape[-2:] != (24 * model.scale, 24 * model.scale) or not torch.isfinite(y).all():
        raise CheckpointError(f"{path}: the network gives no usable output on a test image "
                              f"(shape {tuple(y.shape)}, finite {bool(torch.isfinite(y).all())})")


def add_weights(file: str | os.PathLike, name: str | None = None, force: bool = False,
                scale: int | None = None, set5: float | str | os.PathLike | None = None,
                progress: bool = True) -> WeightsEntry:
    """Check ``file``, convert it to bsrn's safetensors and store it as ``name`` (default: the
    file's stem) in :func:`user_dir`. ``scale`` settles what some heads' tensors cannot tell.
    ``set5``: the Set5 Y-PSNR to record, or a Set5 folder to measure it on (the paper's
    protocol); official files are recognised and get their published score. An existing name is
    refused unless ``force``."""
    from .checkpoint import bundled_weights, load_model, read_checkpoint, save_model

    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"{file}: no such file")
    name = name or file.stem
    if not _NAME.match(name) or name.endswith(SUFFIXES):
        raise ConfigError(f"{name!r}: a weights name is letters, digits and . _ + - (no path "
                          "and no file extension); choose one with --name")
    if name in bundled_weights():
        raise ConfigError(f"{name}: a bundled weights name; choose another with --name")
    dest = user_dir() / f"{name}.safetensors"
    if dest.exists() and not force:
        raise ConfigError(f"{name}: already in {user_dir()} ({dest.name}); pass --force to "
                          "replace it, or choose another --name")
    model = load_model(file, scale=scale)
    _check_runs(model, file)
    sha = _sha256(file)
    description, published = OFFICIAL.get(sha, (f"added from {file.name}", None))
    kept = {k: v for k, v in read_checkpoint(file)[1].items()  # e.g. a training run's notes
            if k not in ("format", "arch", "config", "scale")}
    meta = {**kept, "name": name, "description": description, "source": file.name,
            "source_sha256": sha, "added": datetime.date.today().isoformat()}
    if set5 is not None and not _is_number(set5):
        from .evaluate import evaluate

        result = evaluate(model, set5, progress=progress)
        meta.update(set5_psnr=f"{result.psnr:.2f}",
                    set5_protocol=f"bsrn eval: Y-PSNR, crop {model.scale}, LR {result.lr_source}")
    elif set5 is not None:
        meta.update(set5_psnr=f"{float(set5):.2f}", set5_protocol="given when added")
    elif published is not None:
        meta.update(set5_psnr=f"{published:.2f}", set5_protocol="published (paper / NTIRE)")
    save_model(model, dest, metadata=meta)
    return describe(name, dest, "user")


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def remove_weights(name: str) -> Path:
    """Delete a user-added name (bundled weights cannot be removed)."""
    path = user_weights().get(name)
    if path is None:
        from .checkpoint import bundled_weights

        why = "is bundled" if name in bundled_weights() else f"is not in {user_dir()}"
        raise ConfigError(f"{name}: {why}; nothing removed")
    path.unlink()
    return path
