"""One writer at a time: lock files that name their holder, and temporary names that name their writer.

A :class:`FileLock` is a POSIX record lock on a small file that holds the holder's pid, start time, host
and command. The kernel drops the lock when the holder dies (also on kill -9), and forked children (data
loader workers) do not inherit it, so a lock is never stale: the file a dead run leaves behind is taken
over, with a warning naming that run. ``hooks.OneRunPerOutputRoot`` holds one for the output root of every
``kedro run``.

Temporary files carry ``<pid>.<random>`` in their names (:func:`unique_suffix`); a sweep removes only those
whose writer is gone (:func:`sweep_partials`), never another live process's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

RUN_LOCK = ".run.lock"


class LockError(RuntimeError):
    """Another live process holds the lock; the message names it (pid, start time, host, command)."""


def unique_suffix() -> str:
    """``<pid>.<random hex>``: unique per call; the pid says whether the writer still runs."""
    return f"{os.getpid()}.{uuid.uuid4().hex[:8]}"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_partials(folder: Path, prefix: str, suffix: str) -> None:
    """Remove ``<prefix><pid>.<token><suffix>`` entries of ``folder`` whose writer ``pid`` is no longer running
    (left by a killed run); those of live processes, this one's included, are left alone."""
    if not Path(folder).is_dir():
        return
    for entry in Path(folder).iterdir():
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        pid = name[len(prefix):len(name) - len(suffix)].split(".", 1)[0]
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def write_atomically(path: Path, write) -> None:
    """``write(tmp)`` to a temporary sibling of ``path`` named by this writer, then rename it over ``path``: a
    kill at any moment leaves the old file or the new one. Partial files of writers that are gone are swept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_partials(path.parent, f".{path.name}.", ".tmp")
    tmp = path.with_name(f".{path.name}.{unique_suffix()}.tmp")  # never shared by two writers
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def describe_holder(holder: dict) -> str:
    """``pid 123 on host, started 2026-12-01 15:40:02, command `kedro run --pipelines=full```."""
    if not holder:
        return "a process that left no details"
    host = f" on {holder['host']}" if holder.get("host") and holder["host"] != socket.gethostname() else ""
    return f"pid {holder.get('pid')}{host}, started {holder.get('started')}, command `{holder.get('command')}`"


_HELD: dict[Path, FileLock] = {}  # POSIX locks belong to the process: a second acquire here must be refused by hand


class FileLock:
    """An exclusive lock on file ``path`` for ``what`` (words for messages, e.g. "output root data").

    ``acquire`` fails at once, with :class:`LockError` naming the holder, when another live process holds it;
    ``release`` removes the file. Use as a context manager or call both.
    """

    def __init__(self, path: Path, what: str):
        self.path = Path(path).absolute()
        self.what = what
        self.previous: dict = {}  # what the file said of a dead holder whose lock this one took over
        self._fd: int | None = None

    def acquire(self) -> FileLock:
        import fcntl

        if self.path in _HELD:
            raise LockError(f"{self.what} is already in use by this process ({describe_holder(_holder_info())}); "
                            f"lock file {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read(fd)
                os.close(fd)
                raise LockError(f"{self.what} is in use by another run: {describe_holder(holder)}. Wait for it to "
                                f"finish or stop it: two runs writing the same files would mix their outputs "
                                f"(lock file {self.path})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder released (and removed) the file between our open and lock: again
        self.previous = _read(fd)
        if self.previous:
            log.warning("Taking over the lock of %s from a run that is no longer running: %s", self.what,
                        describe_holder(self.previous))
        self._fd = fd
        self.note()
        _HELD[self.path] = self
        return self

    def note(self, **details: str) -> None:
        """Rewrite the lock file: the holder's pid, start, host and command, and ``details`` (e.g. the MLflow run
        it writes, so whoever takes the lock over after a kill -9 can close that run)."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps({**_holder_info(), **details}).encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before the lock goes, so a waiting opener sees another inode
        finally:
            os.close(self._fd)  # drops the lock
            self._fd = None
            _HELD.pop(self.path, None)

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder_info() -> dict:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else sys.executable
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(_process_start()))}


def _process_start() -> float:
    """When this process started (Linux /proc; otherwise: now)."""
    try:
        ticks = int(Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def _read(fd: int) -> dict:
    try:
        text = os.pread(fd, 65536, 0).decode()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {"pid": "?", "started": "?", "command": "? (unreadable lock file)"}
