"""Write a directory atomically: fill a hidden sibling, then swap it in with renames. A crash at any point leaves
the previous directory whole (or nothing, on a first write) and no temporary folder behind.

    with atomic_directory(Path("indexes/sst2-train")) as tmp:
        (tmp / "index.faiss").write_bytes(...)          # every file goes into tmp; swapped in on a clean exit
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import RiclError


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """A fresh temporary directory beside `target`, moved into its place when the block exits without error."""
    if target.exists() and not target.is_dir():
        raise RiclError(f"{target} exists and is not a directory; expected a directory path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
        yield tmp
        for path in tmp.rglob("*"):
            fsync(path)
        fsync(tmp)
        swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text and flush it to disk."""
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def fsync(path: Path) -> None:
    """Flush a file or directory entry to disk so a power cut after the rename cannot expose a half-written file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(tmp: Path, target: Path) -> None:
    """Replace `target` by `tmp` with renames; the previous directory is restored if the second rename fails."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    fsync(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
