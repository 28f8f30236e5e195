"""Outputs that cannot lie: one writer at a time, per-block digests, verification, clean stops.

Nothing here knows about datasets: :mod:`psfsim.dataset` and ``pipelines`` build their completion records on it.

* :class:`WriterLock` — an exclusive lock file beside an output (``.NAME.lock``, created with ``O_EXCL``) holding
  host, PID, start time and a run id. A lock left by a dead process on the same host is taken over (with a
  message on stderr); any other held lock refuses the second writer with a :class:`~psfsim.PsfsimError` naming
  the holder. :func:`lock_holder` tells a reader whether a writer is at work.
* :func:`digest_arrays` — the digest of a block (its arrays' dtype, shape and bytes: SHA-256, hex).
* :func:`verify_blocks` — recompute every block's digest (in threads) and name the blocks that differ from the
  record or cannot be read.
* :func:`clean_stale_temporaries` — remove the temporaries (``.NAME.*.creating``, ``.NAME.*.tmp*``) that a killed
  writer left beside an output; called while holding the output's lock, so none of them can be in use.
* :func:`terminate_as_exception` — SIGTERM raises :class:`Terminated` (a clean stop, like Ctrl-C) while active,
  at once or at the caller's next ``check()`` between units of work.
* :func:`die_with_parent` — a child process is killed when its parent dies (Linux ``PR_SET_PDEATHSIG``), and
  :func:`parent_alive` for a check between units of work elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import PsfsimError

__all__ = ["WriterLock", "lock_path", "lock_holder", "describe_holder", "pid_alive", "digest_arrays", "read_flags",
           "verify_blocks", "clean_stale_temporaries", "Terminated", "StopRequest", "terminate_as_exception", "die_with_parent",
           "parent_alive", "new_run_id"]

_HOST = socket.gethostname()


def new_run_id() -> str:
    """A fresh run id (random, 32 hex digits)."""
    return uuid.uuid4().hex


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _pid_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot, ``/proc/PID/stat``), to tell a reused PID."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of output ``path``: ``.NAME.lock`` beside it (outside it, so it survives its replacement)."""
    p = Path(os.path.realpath(path))  # one lock per store, however it is reached (a symlink, a relative path)
    return p.parent / f".{p.name}.lock"


def _read_lock(lp: Path) -> dict | None:
    """The holder recorded in lock file ``lp``; ``None`` if there is none; ``{}`` if it is unreadable."""
    try:
        with open(lp, "rb") as f:
            data = f.read(4096)
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        d = json.loads(data.decode())
        return d if isinstance(d, dict) else {}
    except (UnicodeDecodeError, ValueError):
        return {}


def describe_holder(h: dict) -> str:
    """``PID 123 on host since 2026-...`` (every field escaped, bounded)."""
    from .report import safe_text

    return (f"PID {safe_text(h.get('pid'), 20)} on {safe_text(h.get('host'), 80)} since "
            f"{safe_text(h.get('started'), 40)} (run {safe_text(h.get('run_id'), 40)})")


def _stale(h: dict) -> bool:
    """Left by a process of this host that is gone (dead, or its PID now belongs to a process started later)."""
    pid = h.get("pid")
    if h.get("host") != _HOST or not isinstance(pid, int) or isinstance(pid, bool):
        return False
    if not pid_alive(pid):
        return True
    start = h.get("pid_start")
    return isinstance(start, int) and _pid_start(pid) not in (None, start)


def lock_holder(path: str | os.PathLike) -> dict | None:
    """The live holder of ``path``'s lock (``host``, ``pid``, ``started``, ``run_id``), or ``None`` when no writer
    holds it (no lock file, or one left by a dead process on this host). An unreadable lock file counts as held."""
    h = _read_lock(lock_path(path))
    if h is None or (h and _stale(h)):
        return None
    return h


class WriterLock:
    """Exclusive lock on output ``path`` for one run (a context manager).

    Parameters
    ----------
    path : path
        The output (file or folder); the lock is ``.NAME.lock`` beside it.
    run_id : str, optional
        Recorded in the lock (default: a fresh :func:`new_run_id`); ``self.run_id``.
    what : str
        How messages name the writer (``"simulate"``, ``"export"``, ...).

    Raises
    ------
    PsfsimError
        On entry, when another live process holds the lock (naming it), or the lock file is unreadable.
    """

    def __init__(self, path: str | os.PathLike, *, run_id: str | None = None, what: str = "writer"):
        self.path = Path(path)
        self.lock = lock_path(path)
        self.run_id = run_id or new_run_id()
        self.what = what
        self.holder = {"host": _HOST, "pid": os.getpid(), "pid_start": _pid_start(os.getpid()), "run_id": self.run_id,
                       "what": what,
                       "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self._held = False

    def acquire(self) -> "WriterLock":
        """Take the lock. The whole check-and-take (including a stale lock's takeover) runs under an ``flock`` on the
        lock's folder (no extra file), so two processes racing for a dead writer's lock cannot both win."""
        import fcntl

        guard = os.open(self.lock.parent, os.O_RDONLY)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            return self._acquire()
        finally:
            os.close(guard)  # closing releases the flock

    def _acquire(self) -> "WriterLock":
        data = json.dumps(self.holder).encode()
        for _ in range(3):
            try:
                fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except FileExistsError:
                h = _read_lock(self.lock)
                if h is None:
                    continue  # released meanwhile: try again
                if not h:
                    # being written right now (created, not yet filled) or damaged: look again shortly
                    time.sleep(0.2)
                    h = _read_lock(self.lock)
                    if h is None:
                        continue
                    if not h:
                        raise PsfsimError(f"{self.path}: lock file {self.lock} is unreadable; if no psfsim process "
                                          "is writing there, remove it and run again")
                if _stale(h):
                    print(f"psfsim: taking over the lock of {self.path} left by {describe_holder(h)}, which is no "
                          "longer running", file=sys.stderr)
                    with contextlib.suppress(FileNotFoundError):
                        self.lock.unlink()
                    continue
                raise PsfsimError(f"{self.path}: another writer holds it: {describe_holder(h)}; nothing was changed "
                                  f"(wait for it to finish, or stop it; its lock is {self.lock})")
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            self._held = True
            return self
        raise PsfsimError(f"{self.path}: could not take the lock {self.lock} (it keeps changing hands)")

    def release(self) -> None:
        if self._held:
            self._held = False
            h = _read_lock(self.lock)
            if h and h.get("run_id") == self.run_id and h.get("pid") == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    self.lock.unlink()

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# -- temporaries ---------------------------------------------------------------------------------------------
def clean_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of output ``path`` left by killed writers: entries ``.NAME.*`` beside it ending
    with a part ``creating`` or ``tmp...`` (``.NAME.XXXX.creating``, ``.NAME.XXXX.tmp.h5``,
    ``.NAME.creating-PID``: the names :mod:`psfsim.store` uses). Call it only while holding
    ``path``'s :class:`WriterLock`: then no live writer of ``path`` can own them. Returns what was removed."""
    p = Path(os.path.abspath(path))
    removed = []
    prefix = f".{p.name}."
    try:
        entries = list(p.parent.iterdir())
    except OSError:
        return removed
    for e in entries:
        n = e.name
        if not n.startswith(prefix) or n == f".{p.name}.lock":
            continue
        rest = n[len(prefix):]
        tokens = rest.replace("-", ".").split(".")
        if not any(t == "creating" or t.startswith("tmp") for t in tokens):
            continue
        try:
            if e.is_dir() and not e.is_symlink():
                shutil.rmtree(e)
            else:
                e.unlink()
            removed.append(e)
        except OSError:
            continue
    if removed:
        print(f"psfsim: removed {len(removed)} temporar{'y' if len(removed) == 1 else 'ies'} of {p} left by an "
              "interrupted run", file=sys.stderr)
    return removed


# -- digests and verification ------------------------------------------------------------------------------------
def read_flags(arr, shape) -> tuple[np.ndarray, np.ndarray]:
    """``(flags, damaged)`` of a completion-flag array (a zarr array or anything indexable) of ``shape``: the 0 / 1
    flags as uint8, an unreadable flag or one that is neither 0 nor 1 read as 0, and the bool mask of those.

    The whole array is read at once; when that fails (a damaged chunk: a zstd error, a truncated file) the flags
    are read one by one, so one damaged flag costs only itself. Shared by psfsim's dataset stores (one flag per
    block) and pipelines' outputs (one flag per output chunk).
    """
    shape = tuple(int(n) for n in shape)
    ok = np.ones(shape, bool)
    try:
        raw = np.asarray(arr[...]).astype(np.int64).reshape(shape)
    except Exception:  # noqa: BLE001 - a damaged flag: read them one by one
        raw = np.zeros(shape, np.int64)
        for idx in np.ndindex(*shape):
            try:
                raw[idx] = int(np.asarray(arr[idx]))
            except Exception:  # noqa: BLE001
                ok[idx] = False
    ok &= (raw == 0) | (raw == 1)
    return np.where(ok, raw, 0).astype(np.uint8), ~ok


def digest_arrays(arrays: Iterable[np.ndarray]) -> str:
    """SHA-256 (hex) of a block: each array's dtype, shape and C-order bytes, in order. Measured: ~1 GB/s."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def verify_blocks(blocks: Iterable[int], expected: Callable[[int], str | None], compute: Callable[[int], str], *,
                  threads: int = 4) -> dict[int, str]:
    """Check blocks against their recorded digests; return ``{block: reason}`` for each one that fails.

    Parameters
    ----------
    blocks : iterable of int
        The blocks recorded as written.
    expected : callable
        ``block -> recorded digest`` (``None``: none recorded).
    compute : callable
        ``block -> digest of what is stored`` (it may raise: an unreadable or checksum-failing block).
    threads : int
        Blocks checked at once (reading and hashing release the GIL).
    """
    def one(b: int) -> tuple[int, str | None]:
        from .report import safe_text

        want = expected(b)
        if not want:
            return b, "no digest recorded"
        try:
            got = compute(b)
        except Exception as e:  # noqa: BLE001 - a damaged block: a checksum error, a decode error, ...
            return b, f"unreadable ({type(e).__name__}: {safe_text(e, 160)})"
        return b, None if got == want else "content differs from its recorded digest (missing, truncated or altered data)"

    blocks = list(blocks)
    with ThreadPoolExecutor(max(1, min(threads, len(blocks) or 1))) as ex:
        return {b: why for b, why in ex.map(one, blocks) if why}


# -- stopping cleanly ---------------------------------------------------------------------------------------------
class Terminated(BaseException):
    """SIGTERM arrived (raised by :func:`terminate_as_exception`): stop cleanly, exit 143."""


class StopRequest:
    """What :func:`terminate_as_exception` yields: ``requested`` once SIGTERM arrived (deferred mode)."""

    def __init__(self):
        self.requested = False

    def check(self) -> None:
        """Raise :class:`Terminated` if SIGTERM arrived: call it between units of work."""
        if self.requested:
            raise Terminated()


@contextlib.contextmanager
def terminate_as_exception(*, deferred: bool = False):
    """While active (main thread only), SIGTERM raises :class:`Terminated` in the main thread, or, ``deferred``,
    only marks the yielded :class:`StopRequest` (the caller calls ``check()`` between units of work, so a unit
    that is writing is never interrupted half-way)."""
    import threading

    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        stop.requested = True
        if not deferred:
            raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, old)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have this (child) process receive ``sig`` when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``; a no-op
    elsewhere, where :func:`parent_alive` between units of work is the fallback). Also exits at once if the
    parent already died before the call."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if parent == 1 or os.getppid() != parent:
        os._exit(1)


def parent_alive(parent_pid: int) -> bool:
    """Whether this process's parent is still ``parent_pid`` (a child re-parented to init has lost it)."""
    return os.getppid() == parent_pid

