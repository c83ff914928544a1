"""One run per folder: a lock file that a second concurrent run finds, and that a killed run
leaves behind for the next run to take over.

The lock is an ``flock`` on ``<folder>/.run.lock``. The kernel drops it when its process ends,
however it ends (``kill -9`` included), so a lock file whose lock nobody holds is stale by
construction; no pid guessing is involved. The file records the holder (pid, host, command) so
that a refused run can say who holds the folder, and so that a run taking over a dead run's
folder can clear the temp files that run's interrupted atomic writes left behind.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from .atomic import remove_stale_temps
from .distributed import broadcast_object

LOCK_NAME = ".run.lock"


class RunLockError(RuntimeError):
    """Another live process holds the run folder."""


class _Lock:
    def __init__(self, fd: int, path: str):
        self.fd, self.path = fd, path

    def release(self) -> None:
        # Unlink while still holding the lock: a waiting run then finds no file or a new one,
        # never this inode unlocked (acquire checks that the inode it locked is the one at path).
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)


def _read_holder(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):  # gone, or written by a run killed before it finished the line
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "a process that has not yet written its pid"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('command')}, started {started})"


def acquire(folder: str, log: Callable[[str], None] = print) -> _Lock:
    """Lock ``folder`` (created if needed) for this process; RunLockError if a live run holds it."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockError(f"{folder} is in use by another run: {_describe(_read_holder(path))}. Wait for it "
                               f"to finish, or give this run another folder") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder released (and unlinked) the file between our open and flock: retry
    previous = _read_holder(path)
    if previous:  # a lock file nobody held: its run was killed
        removed = remove_stale_temps(folder, skip_dirs_with=LOCK_NAME)
        log(f"took over {folder} from a run that ended without releasing it ({_describe(previous)})" +
            (f"; removed {len(removed)} temp file(s) of its unfinished writes" if removed else ""))
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
          "started": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    return _Lock(fd, path)


@contextmanager
def run_lock(folder: str, log: Callable[[str], None] = print, main: bool = True) -> Iterator[None]:
    """Hold ``folder``'s lock for the ``with`` block. In a ``torchrun`` job only rank 0
    (``main``) takes it, and every rank raises RunLockError when it could not."""
    lock, error = None, None
    if main:
        try:
            lock = acquire(folder, log)
        except RunLockError as e:
            error = str(e)
    error = broadcast_object(error)
    if error:
        raise RunLockError(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
