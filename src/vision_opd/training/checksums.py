"""Checkpoint integrity: the COMPLETE marker lists every file of its checkpoint with its size and sha256.

    COMPLETE                          20                                  the step, then one line per file:
                                      <sha256> <size> model.safetensors   relative path, any depth
                                      <sha256> <size> teacher/model.safetensors ...

`damage(ckpt)` re-reads every listed file (sizes first, then the hashes, several files at once) and names the first
problem (a missing file, a wrong size, a wrong checksum); `newest_intact` walks the complete checkpoints from the
newest down and returns the first intact one with the damaged ones it passed. A hashed checkpoint is remembered for
the life of the process (keyed by its files' mtimes), so the command line and the run loop hash it once.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DONE_FILE = "COMPLETE"
_verified: dict[tuple, str | None] = {}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)  # releases the GIL: the files of a checkpoint hash in parallel threads
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != DONE_FILE)


def _hash_all(paths: list[Path]) -> list[str]:
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(paths)))) as pool:
        return list(pool.map(sha256_file, paths))


def marker_text(folder: Path, step: int) -> str:
    """The COMPLETE marker of the checkpoint written in `folder`: its step, then every file's sha256, size, path."""
    files = _files(folder)
    lines = [f"{h} {p.stat().st_size} {p.relative_to(folder).as_posix()}" for p, h in zip(files, _hash_all(files))]
    return "\n".join([str(step), *lines]) + "\n"


def read_marker(ckpt: Path) -> tuple[int, dict[str, tuple[int, str]]]:
    """(step, {relative path: (size, sha256)}) of a checkpoint's COMPLETE marker."""
    first, *rest = (Path(ckpt) / DONE_FILE).read_text(encoding="utf-8").splitlines()
    listed = {}
    for line in rest:
        digest, size, rel = line.split(" ", 2)
        listed[rel] = (int(size), digest)
    return int(first.strip()), listed


def damage(ckpt: Path) -> str | None:
    """None if every file COMPLETE lists is there with its size and checksum; else the first problem, naming the file."""
    ckpt = Path(ckpt)
    try:
        _, listed = read_marker(ckpt)
    except (OSError, ValueError) as e:
        return f"{ckpt / DONE_FILE} is unreadable: {e}"
    for rel, (size, _) in listed.items():
        p = ckpt / rel
        if not p.is_file():
            return f"{p} is missing"
        if p.stat().st_size != size:
            return f"{p} has {p.stat().st_size} bytes where {DONE_FILE} says {size}: truncated or overwritten"
    key = (str(ckpt.resolve()), tuple((rel, (ckpt / rel).stat().st_mtime_ns) for rel in listed))
    if key not in _verified:  # the hashes, once per process for files unchanged since
        rels = list(listed)
        bad = [r for r, got in zip(rels, _hash_all([ckpt / r for r in rels])) if got != listed[r][1]]
        _verified[key] = f"{ckpt / bad[0]} does not match the sha256 in {DONE_FILE}: the file is damaged" if bad else None
    return _verified[key]


def newest_intact(complete: list[Path]) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest intact checkpoint of `complete` (oldest first), or None; [(damaged checkpoint, problem)] newer than
    it, newest first)."""
    damaged = []
    for ckpt in reversed(complete):
        problem = damage(ckpt)
        if problem is None:
            return ckpt, damaged
        damaged.append((ckpt, problem))
    return None, damaged
