"""Atomic file writes: readers see the old file or the new one, never a partial one.

``atomic_write(path, write)`` lets ``write`` fill a temporary file in the destination folder and
renames it onto ``path``. Temporary names are short and fixed in length
(``.bsrn-<host>-<pid>-<random>.tmp``), so any legal destination name works, and they name their
writer: the first write of a process into a folder removes temporary files left there by writers
on this machine that are no longer running (a run killed mid-write), and those of other machines
once they are a day old.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path

TEMP_PREFIX = ".bsrn-"
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"\.bsrn-([0-9a-f]{6})-(\d+)-[0-9a-f]{8}\.tmp\Z")
FOREIGN_TEMP_AGE_S = 86400
"""Temporary files of writers on other machines (a shared folder) are removed at this age."""
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_swept: set[str] = set()
_swept_lock = threading.Lock()


def temp_name() -> str:
    """A temporary file name of ours: ``.bsrn-<host hash>-<pid>-<8 hex>.tmp`` (at most 37
    characters, whatever the destination's name)."""
    return f"{TEMP_PREFIX}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or cannot tell: keep its files
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete our temporary files in ``folder`` whose writer is gone (a process of this machine
    that no longer runs; another machine's after ``FOREIGN_TEMP_AGE_S``); returns them."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m is None:
            continue
        try:
            if m.group(1) == _HOST:
                if _running(int(m.group(2))):
                    continue
            elif time.time() - entry.stat(follow_symlinks=False).st_mtime < FOREIGN_TEMP_AGE_S:
                continue
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def _sweep_once(folder: Path) -> None:
    key = os.path.normcase(os.path.abspath(folder))
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    remove_stale_temps(folder)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so readers never see a partial file.

    The temporary file lives beside ``path``; it is removed if ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    while True:
        tmp = path.parent / temp_name()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        except FileExistsError:
            continue
        os.close(fd)
        break
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON (with a final newline) to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")
