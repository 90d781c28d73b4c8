"""Write a directory atomically: fill a hidden sibling, then swap it in with renames. A crash at any point leaves
the previous directory whole (or nothing, on a first write) and no temporary folder behind.

Two guards keep a writer from destroying what it does not own: an existing directory is replaced only when it holds
the project's marker file (an index's manifest.json, a results directory's run_info.json) or nothing at all, checked
before the work and again at the swap; and a writer claims the directory (an flock on `.NAME.lock` beside it) for
as long as it works, so a second writer to the same directory is refused rather than silently replacing the first.

    with atomic_directory(Path("indexes/sst2-train"), marker="manifest.json") as tmp:
        (tmp / "index.faiss").write_bytes(...)          # every file goes into tmp; swapped in on a clean exit
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import RiclError

log = logging.getLogger(__name__)
_CLAIMED: set[tuple[Path, int]] = set()  # (directory, thread id) claims this process holds


@contextmanager
def claimed(target: Path, wait: bool = False) -> Iterator[None]:
    """Hold the lock `.NAME.lock` beside target for the block; another writer (process or thread) is refused, or
    with wait=True waited for. Reentrant within one thread (a run claims its output, then writes it). The lock file
    is removed on release."""
    key = (target.absolute(), threading.get_ident())
    if key in _CLAIMED:
        yield
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    fd = _lock(lock, wait, target)
    _CLAIMED.add(key)
    try:
        yield
    finally:
        _CLAIMED.discard(key)
        lock.unlink(missing_ok=True)  # before the close: a waiter then sees a stale file and opens a fresh one
        os.close(fd)


def _lock(lock: Path, wait: bool, target: Path) -> int:
    """An open descriptor of `lock` holding its flock, the file still in place (not unlinked by its last holder)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RiclError(f"{target} is being written by another run (it holds {lock}); wait for it to finish or "
                            "choose another directory") from None
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder released and removed it while we waited: take the new file


def check_replaceable(target: Path, marker: str) -> None:
    """Refuse a target that is not a directory, or a non-empty one without `marker` (not written by this project)."""
    if target.exists() and not target.is_dir():
        raise RiclError(f"{target} exists and is not a directory; expected a directory path")
    if target.is_dir() and not (target / marker).is_file() and any(target.iterdir()):
        raise RiclError(f"{target} holds files retrieval-icl did not write (no {marker}); refusing to replace it: "
                        "choose another directory, or move its files away yourself")


@contextmanager
def atomic_directory(target: Path, marker: str, wait: bool = False) -> Iterator[Path]:
    """A fresh temporary directory beside `target`, moved into its place when the block exits without error. An
    existing target is replaced only if it holds `marker` (or nothing); the target is claimed meanwhile."""
    check_replaceable(target, marker)
    with claimed(target, wait):
        recover(target)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            yield tmp
            for path in tmp.rglob("*"):
                fsync(path)
            fsync(tmp)
            check_replaceable(target, marker)  # again: the directory may have changed while the block ran
            swap_in(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def leftovers(target: Path) -> list[Path]:
    """The hidden siblings a writer of target leaves when it dies: `.NAME.tmp-PID-HEX` and `.NAME.old-PID-HEX`."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-\d+-[0-9a-f]{{8}}")
    parent = target.parent
    return sorted(p for p in parent.iterdir() if pattern.fullmatch(p.name)) if parent.is_dir() else []


def recover(target: Path) -> None:
    """Undo what a writer that died left behind: a target lost between the swap's two renames is restored from its
    newest `.old` copy; the other leftovers are removed. Skipped while another writer holds the target (its
    leftovers are live) or where the folder is read-only."""
    if not leftovers(target):
        return
    try:
        with claimed(target):  # no live writer of target from here on: every leftover is a dead one's
            olds = sorted((p for p in leftovers(target) if ".old-" in p.name), key=lambda p: p.stat().st_mtime)
            if not target.exists() and olds:
                os.rename(olds[-1], target)
                log.warning("restored %s from %s, left by a write interrupted between its two renames", target,
                            olds[-1].name)
            for path in leftovers(target):
                shutil.rmtree(path, ignore_errors=True)
    except (RiclError, OSError) as e:
        log.info("left %s's leftovers as they are: %s", target, e)


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
