"""One training run per --out: an exclusive OS lock (flock) on a file in the folder.

The kernel drops the lock when its process dies, however it dies (kill -9 included), so a killed
run never leaves a stale lock: a lock that is held belongs to a live process.
"""
import fcntl
import os
import time
from pathlib import Path

from .errors import UserError


class RunLock:
    """`with RunLock(out):` holds the lock for the body, or raises UserError at once.

    `suffix` ('-worker-1', ...) gives each non-chief worker of a multi-worker run, which shares
    --out with the chief, a lock of its own."""

    def __init__(self, folder, suffix=""):
        self.folder = Path(folder)
        self.path = self.folder / f".train{suffix}.lock"
        self.fd = None

    def __enter__(self):
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _holder(fd)
                os.close(fd)
                raise UserError(f"{self.folder} is in use by another training run"
                                f"{f' (pid {pid})' if pid else ''}; wait for it or pass another --out") from None
            except OSError as e:   # e.g. a network file system without locks
                os.close(fd)
                raise UserError(f"cannot lock {self.path} ({e.strerror}); pass an --out on a local disk") from None
            # The run before us deletes the file on release: if it did so after we opened it,
            # we hold a lock on a deleted file, and a third run could lock the new one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass   # the pid is for the message of a second run only; a full disk is caught later
        return self

    def _open(self):
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise UserError(f"cannot create {self.path} ({e.strerror}); pass a writable --out") from None

    def __exit__(self, *exc):
        try:
            os.unlink(self.path)   # before unlocking: see the check in __enter__
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _holder(fd, tries=20):
    """The pid the holder wrote, waiting briefly for a run that has just taken the lock."""
    for _ in range(tries):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    return None
