"""A write that fails for lack of space or permission, as one line; text files replaced whole or not at all.

    with writing("checkpoint step_000020", run_dir / "checkpoints"):
        model.save_pretrained(...)
    # OSError ENOSPC / EDQUOT / EFBIG / EACCES / EPERM / EROFS, safetensors' "No space left on device (os error 28)",
    # torch's "file write failed" / "unexpected pos" RuntimeError -> WriteFailed: "cannot write checkpoint
    # step_000020 to runs/x/checkpoints/step_000020.tmp: No space left on device; 12.0 MB free of 2.0 GB on that file
    # system"

    write_text_atomic(out / "results.json", text)   # a temporary file, then a rename: never half a file

`WriteFailed.note` is filled in by whoever knows what survived (the trainer names its last complete checkpoint);
the command line prints the exception as one line, without a traceback. Any other error passes through unchanged.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
# what torch.save raises when the file system refuses the bytes (its C++ writer hides the errno)
TORCH_WRITE_FAILURES = ("file write failed", "unexpected pos")


class WriteFailed(Exception):
    """A write refused by the file system: what, where, why, the space left there, and what is still intact."""

    def __init__(self, what: str, path: str | Path, reason: str, note: str = ""):
        super().__init__(what, str(path), reason)
        self.what, self.path, self.reason, self.note = what, Path(path), reason, note

    def __str__(self) -> str:
        text = f"cannot write {self.what} to {self.path}: {self.reason}; {free_space(self.path)}"
        return text + (f"; {self.note}" if self.note else "")


def free_space(path: str | Path) -> str:
    """'12.0 MB free of 2.0 GB on that file system' for the nearest existing folder at or above `path`."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        u = shutil.disk_usage(p)
    except OSError:
        return "free space unknown"
    return f"{_size(u.free)} free of {_size(u.total)} on that file system"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def refused_write(e: BaseException, where: str | Path | None = None) -> str | None:
    """The reason, if `e` is the file system refusing a write: no space, or (for a file under `where`, the folder being
    written; a permission error elsewhere may be a read) no permission. Else None."""
    if isinstance(e, OSError) and e.errno in SPACE:
        return os.strerror(e.errno)
    if isinstance(e, OSError) and e.errno in PERMISSION and where is not None:
        inside = e.filename is None or Path(os.path.abspath(e.filename)).is_relative_to(Path(where).absolute())
        return os.strerror(e.errno) if inside else None
    if isinstance(e, OSError) and e.errno is not None:
        return None
    text = str(e)  # writers that hide the errno in their message: safetensors (Rust), torch.save (C++)
    for said in (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT)):
        if said in text:
            return said
    if isinstance(e, RuntimeError) and (said := next((s for s in TORCH_WRITE_FAILURES if s in text), None)):
        return f"the writer stopped part-way (torch: {said}), as on a full disk"
    return None


@contextmanager
def writing(what: str, path: str | Path) -> Iterator[None]:
    """Turn a refused write inside the block into `WriteFailed(what, path, ...)`; anything else passes through."""
    try:
        yield
    except WriteFailed:
        raise
    except Exception as e:  # noqa: BLE001 - only a refused write is turned into WriteFailed; the rest is re-raised
        reason = refused_write(e, path)
        if reason is None:
            raise
        raise WriteFailed(what, getattr(e, "filename", None) or path, reason) from e


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` whole (a temporary file beside it, then a rename); a failed write leaves the old
    file as it was and removes the temporary one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path.name, path):
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
