"""Image files the tests make (importable from every test folder: tests/ holds conftest.py)."""
from __future__ import annotations

from PIL import Image


def save_image(path, a, **kw):
    """Write the pixel array ``a`` with Pillow at ``path`` (parent folders made); the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, **kw)
    return path
