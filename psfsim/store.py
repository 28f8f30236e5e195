"""Safe outputs: the one place where psfsim (and recon, pipelines) create files and folders.

Every output is written under a temporary name created *exclusively* in the destination folder (so a link
planted there is never followed and two writers never share a temporary), then renamed into place: a reader
sees the old file or the complete new one, never a half-written file that looks complete. Several outputs
that belong together (an image and its JSON record) land together or not at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import PsfsimError

__all__ = ["atomic_outputs", "atomic_file", "atomic_dir", "check_output", "check_not_input", "user_os_error"]


def check_output(path: str | os.PathLike, *, overwrite: bool = True, what: str = "--out") -> Path:
    """Check that ``path`` can be written: its folder exists, it is not a folder, and (without ``overwrite``)
    it does not exist yet."""
    p = Path(path)
    if p.is_dir():
        raise PsfsimError(f"{what} {p}: is a folder")
    if not p.parent.is_dir():
        raise PsfsimError(f"{what} {p}: folder {p.parent} does not exist")
    if not overwrite and (p.exists() or p.is_symlink()):
        raise PsfsimError(f"{what} {p}: exists (use --overwrite to replace it)")
    return p


def check_not_input(out: str | os.PathLike, *inputs: str | os.PathLike, what: str = "--out") -> None:
    """Refuse an output that is one of the ``inputs`` (the same file by device and inode, so also through a
    link, a hard link or another spelling of the path): writing it would destroy the input."""
    o = Path(out)
    for i in inputs:
        try:
            same = o.exists() and Path(i).exists() and os.path.samefile(o, i)
        except OSError:
            same = False
        if same:
            raise PsfsimError(f"{what} {o}: is the input {i}; choose another output path")


def user_os_error(e: OSError, path: str | os.PathLike, action: str = "cannot write") -> PsfsimError:
    """An ``OSError`` (full disk, permissions, ...) as a one-line error naming the user's ``path`` (never a
    temporary name, never an empty name)."""
    reason = e.strerror or str(e) or type(e).__name__
    return PsfsimError(f"{path}: {action} ({reason})")


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` would, racing other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _temp_sibling(path: Path) -> Path:
    # mkstemp: O_CREAT | O_EXCL, a fresh random name, never follows a planted link; 0600 -> the usual mode
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_outputs(*paths: str | os.PathLike):
    """Yield temporary paths for ``paths`` (same folders, same suffixes); rename them all into place when the
    block succeeds, in the order given, and remove them when it fails.

    >>> with atomic_outputs("out.npy", "out.npy.json") as (img, side):
    ...     np.save(img, a); side.write_text("{}")
    """
    finals = [Path(p) for p in paths]
    tmps: list[Path] = []
    try:
        for p in finals:
            try:
                tmps.append(_temp_sibling(p))
            except OSError as e:
                raise user_os_error(e, p) from None
        try:
            yield tuple(tmps)
        except OSError as e:  # a write into a temporary failed: name the output it stood for
            raise user_os_error(e, _final_of(e, tmps, finals)) from None
        for t, p in zip(tmps, finals):
            try:
                os.replace(t, p)
            except OSError as e:
                raise user_os_error(e, p) from None
    finally:
        for t in tmps:
            with contextlib.suppress(FileNotFoundError):
                t.unlink()


def _final_of(e: OSError, tmps: list[Path], finals: list[Path]) -> Path:
    """The user's path behind the temporary an ``OSError`` names (the first output when it names none)."""
    for t, p in zip(tmps, finals):
        if e.filename is not None and os.fspath(e.filename) == os.fspath(t):
            return p
    return finals[0]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """One output written atomically; see :func:`atomic_outputs`."""
    with atomic_outputs(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = False):
    """Yield an exclusively created temporary folder beside ``path``; on success it becomes ``path`` (an
    existing ``path`` is removed only then, and only with ``replace``); on failure it is removed."""
    final = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".creating", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if final.exists():
            if not replace:
                raise PsfsimError(f"{final}: exists (use --overwrite to replace it)")
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
