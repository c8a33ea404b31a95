"""One writer per output folder: a lock file made with O_CREAT | O_EXCL, holding who owns it.

    with folder_lock(run_dir, "train"):        # FolderBusy if a live process holds it
        ...                                    # the lock file is removed on the way out

The lock is `FOLDER/.vision-opd.lock` (or a path given, e.g. beside an export folder that is replaced whole): JSON
with the owner's pid, host, start time, the process's kernel start time (Linux /proc) and command.
- Creating a file with O_EXCL is atomic on local file systems and on NFS v3 and later, so two processes never both
  get it; flock() is not used (not honoured by every network file system).
- A lock of this host whose process is gone (os.kill(pid, 0) fails, or the pid now belongs to a process started at
  another time) is stale: it is taken over, and `acquire` says so.
- A lock of another host cannot be checked from here. Its owner refreshes the file's mtime every HEARTBEAT_S
  seconds; after REMOTE_STALE_S seconds without a refresh (the clocks of the hosts assumed to agree within minutes)
  it is taken over, or at once with break_lock=True (--break-lock), for an owner known to be gone.
- Several ranks of one launch: only the launch's owner (rank 0) takes the lock; the other ranks pass enabled=False.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

LOCK = ".vision-opd.lock"
HEARTBEAT_S = 60.0
REMOTE_STALE_S = 600.0


class FolderBusy(Exception):
    """The folder is being written by another live process (the message names it)."""


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), to tell a reused pid; None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(owner: dict) -> bool:
    """Whether the owner (a process of this host) still runs."""
    try:
        pid = int(owner["pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except (KeyError, TypeError, ValueError):
        return False
    started = owner.get("proc_start")
    now = _proc_start(pid)
    return started is None or now is None or started == now


class FolderLock:
    def __init__(self, folder: str | Path, command: str, *, path: str | Path | None = None, break_lock: bool = False):
        self.folder = Path(folder)
        self.path = Path(path) if path is not None else self.folder / LOCK
        self.command, self.break_lock = command, break_lock
        self.me = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now().isoformat(timespec="seconds"),
                   "proc_start": _proc_start(os.getpid()), "command": command}
        self._stop = threading.Event()
        self._created_folder = False

    def _describe(self, owner: dict) -> str:
        return (f"pid {owner.get('pid')} on {owner.get('host')} (`vision-opd {owner.get('command')}`, since "
                f"{owner.get('since')})")

    def _read(self) -> tuple[dict | None, float]:
        """(the owner, or None while it is unreadable; seconds since the lock file was last refreshed)."""
        age = 0.0
        try:
            age = time.time() - self.path.stat().st_mtime
            return json.loads(self.path.read_text(encoding="utf-8")), age
        except FileNotFoundError:
            return {}, 0.0
        except (OSError, ValueError):
            return None, age

    def _why_stale(self, owner: dict | None, age: float) -> str | None:
        """Why the lock may be taken over, or None if its owner may still be running (FolderBusy)."""
        where = f"{self.folder} is being written by another vision-opd process"
        if owner is None:  # created but not yet written (or cut short): give its writer a minute
            if age > 60:
                return "an unreadable lock file over a minute old"
            raise FolderBusy(f"{where} (its lock {self.path} is being written); try again in a minute")
        if owner.get("host") == self.me["host"]:
            if _alive(owner):
                raise FolderBusy(f"{where}: {self._describe(owner)}; wait for it to end or stop it (--overwrite does "
                                 "not apply to a folder in use)")
            return f"{self._describe(owner)} is no longer running"
        if self.break_lock:
            return f"{self._describe(owner)} (--break-lock)"
        if age > REMOTE_STALE_S:
            return f"{self._describe(owner)} has not refreshed it for {age / 60:.0f} minutes"
        raise FolderBusy(f"{where} on another host: {self._describe(owner)}, alive {age:.0f} s ago (it cannot be "
                         f"checked from here; its lock is taken over after {REMOTE_STALE_S / 60:.0f} minutes without a "
                         "refresh, or now with --break-lock if that process is gone)")

    def acquire(self) -> str | None:
        """Take the lock; returns a line saying whose stale lock was taken over (None: the folder was free)."""
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            self._created_folder = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._acquire()
        except BaseException:
            self._remove_created_folder()
            raise

    def _acquire(self) -> str | None:
        note = None
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner, age = self._read()
                if owner == {}:
                    continue  # removed in between: try again
                why = self._why_stale(owner, age)
                if self._take_over(owner):
                    note = f"took over the lock of {self.folder}: {why}"
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(self.me))
                f.flush()
                os.fsync(f.fileno())
            threading.Thread(target=self._heartbeat, daemon=True).start()
            return note
        raise FolderBusy(f"{self.folder}: could not take its lock {self.path} (other processes keep taking it)")

    def _take_over(self, owner: dict | None) -> bool:
        """Move the stale lock aside (atomic); if what was moved is not the lock judged stale (another process took it
        over in between), put it back."""
        aside = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            moved = json.loads(aside.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            moved = None
        if moved != owner:
            try:
                os.link(aside, self.path)  # fails if someone created a new lock meanwhile: theirs stands
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Remove the lock if it is still this process's; the folder too if this lock made it and it stayed empty."""
        self._stop.set()
        owner, _ = self._read()
        if owner and owner.get("pid") == self.me["pid"] and owner.get("host") == self.me["host"]:
            self.path.unlink(missing_ok=True)
        self._remove_created_folder()

    def _remove_created_folder(self) -> None:
        if self._created_folder:
            try:
                self.folder.rmdir()  # only if empty
            except OSError:
                pass


@contextmanager
def folder_lock(folder: str | Path, command: str, *, enabled: bool = True, path: str | Path | None = None,
                break_lock: bool = False) -> Iterator[None]:
    """Hold the lock of `folder` for the block (enabled=False: nothing, for the ranks that do not own the launch)."""
    if not enabled:
        yield
        return
    lock = FolderLock(folder, command, path=path, break_lock=break_lock)
    note = lock.acquire()
    if note:
        print(f"[vision-opd] {note}")
    try:
        yield
    finally:
        lock.release()
