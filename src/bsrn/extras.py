"""Optional dependencies: which extra of the distribution provides a module, and one-line
errors that say what to install (``pip install "bsrn[plot]"``) instead of a traceback."""
from __future__ import annotations

import importlib
import re

from .errors import MissingDependencyError

#: Used when the installed metadata cannot say (running from a source tree).
FALLBACK_EXTRAS = {"matplotlib": "plot", "onnx": "onnx", "onnxruntime": "onnx",
                   "tensorboard": "tensorboard", "litert_torch": "tflite",
                   "ai_edge_litert": "tflite"}
_DIST_OF_MODULE = {"cv2": "opencv-python", "sklearn": "scikit-learn", "PIL": "pillow",
                   "yaml": "pyyaml"}
_BROAD_EXTRAS = ("dev", "all", "test", "tests", "docs")
_EXTRA_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)[^;]*;.*extra\s*==\s*['\"]([^'\"]+)['\"]")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution_name() -> str:
    """The name this package is installed under (``pip install NAME``)."""
    from importlib import metadata

    try:
        names = metadata.packages_distributions().get(__package__.split(".")[0], [])
    except Exception:  # noqa: BLE001 - metadata is a courtesy here
        names = []
    return names[0] if names else __package__.split(".")[0]


def extra_for(module: str) -> str | None:
    """The optional extra that installs ``module`` (top-level name), or None."""
    from importlib import metadata

    top = module.split(".")[0]
    want = _canon(_DIST_OF_MODULE.get(top, top))
    try:
        reqs = metadata.requires(distribution_name()) or []
    except Exception:  # noqa: BLE001
        reqs = []
    extras = [m.group(2) for r in reqs for m in [_EXTRA_REQ.match(r)]
              if m and _canon(m.group(1)) == want]
    narrow = [e for e in extras if e not in _BROAD_EXTRAS]
    if narrow or extras:
        return (narrow or extras)[0]
    return FALLBACK_EXTRAS.get(top)


def install_hint(module: str) -> str:
    """``pip install "bsrn[plot]"`` for an optional module, ``pip install module`` otherwise."""
    extra = extra_for(module)
    top = module.split(".")[0]
    if extra:
        return f'pip install "{distribution_name()}[{extra}]"'
    return f"pip install {_DIST_OF_MODULE.get(top, top)}"


def missing_message(module: str, what: str | None = None) -> str:
    """One line: what needs ``module`` and how to install it."""
    top = module.split(".")[0]
    if what:
        return f"{what} needs {top}, which is not installed: {install_hint(top)}"
    return f"the Python package {top} is not installed: {install_hint(top)}"


def require(module: str, what: str):
    """Import ``module`` or raise ``MissingDependencyError`` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        name = getattr(e, "name", None) or module
        raise MissingDependencyError(missing_message(name, what)) from None
