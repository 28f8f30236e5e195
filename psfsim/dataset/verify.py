"""What a dataset store must prove before it is trusted or resumed: block digests, pinned inputs, environment.

* :func:`verify_dataset` — every block marked written is read back and its digest compared with the one in the
  completion record (the ``digest`` array); chunk checksums (``crc32c``) fail loudly on the way. Used by
  ``psfsim verify``, ``psfsim info --verify`` and a resumed :func:`~psfsim.dataset.simulate`
  (which recomputes the blocks that fail); :func:`~psfsim.dataset.export_hdf5` checks the same digests as it copies.
* :func:`source_files` — name, size and SHA-256 of every file a ``--source`` reads (``sources`` attribute).
* :func:`environment` — what changes results besides the arguments: psfsim, NumPy and SciPy versions, the FFT
  backend (and pyFFTW's version and threads when it is used) (``environment`` attribute).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PsfsimError
from ..integrity import digest_arrays, verify_blocks
from ..report import safe_text
from .spec import ARRAYS, SimulationSpec

__all__ = ["DIGEST_BYTES", "VerifyResult", "verify_dataset", "block_digest", "source_files", "absolute_source",
           "environment", "environment_difference", "source_difference", "describe_spec_difference"]

#: Bytes of one block digest (SHA-256) in the ``digest`` array.
DIGEST_BYTES = 32


def _source_parts(source: str) -> list[str]:
    return [p.strip() for p in source.split(",")] if "," in source else [source.strip()]


def _is_path_part(part: str) -> bool:
    from ..sources import PROCEDURAL

    return part not in PROCEDURAL and not part.startswith("skimage:")


def absolute_source(source: str) -> str:
    """``source`` with every file or folder part made absolute (so the stored spec, and the command rebuilt
    from it, work from any folder); other parts unchanged."""
    parts = _source_parts(source)
    out = [os.path.abspath(p) if _is_path_part(p) and Path(p).exists() else p for p in parts]
    return ",".join(out) if len(parts) > 1 else out[0]


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_files(source: str) -> list[dict]:
    """``[{"name", "size", "sha256"}]`` of every image file the source reads (a folder: its image files, as
    :func:`psfsim.sources.parse_source` lists them), sorted by name; empty for procedural / bundled sources."""
    from ..io import IMAGE_SUFFIXES

    rows = []
    for part in _source_parts(source):
        if not _is_path_part(part):
            continue
        p = Path(part)
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()) if p.is_dir() else [p]
        for f in files:
            rows.append({"name": str(f), "size": f.stat().st_size, "sha256": _sha256_file(f)})
    return sorted(rows, key=lambda r: r["name"])


def source_difference(old, new: list[dict]) -> str | None:
    """How the recorded source files ``old`` differ from ``new`` (first difference), or ``None``."""
    if not isinstance(old, list):
        return "the store records no source files"
    o = {r.get("name"): r for r in old if isinstance(r, dict)}
    n = {r["name"]: r for r in new}
    for name in sorted(set(o) | set(n)):
        if name not in n:
            return f"source file {safe_text(name, 300)} was removed since"
        if name not in o:
            return f"source file {safe_text(name, 300)} was added since"
        if (o[name].get("size"), o[name].get("sha256")) != (n[name]["size"], n[name]["sha256"]):
            return f"source file {safe_text(name, 300)} changed since (size or content)"
    return None


def environment(workers: int = 1) -> dict:
    """What changes results besides the arguments. ``scipy`` FFTs give the same bits with any number of threads
    (pocketfft splits independent transforms; measured: a store written with 1 worker of 2 FFT threads equals
    one written with 2 single-threaded workers), so threads are recorded only for ``pyfftw``."""
    import scipy

    from .._version import __version__
    from ..fft import DEFAULT_BACKEND, default_workers

    backend = os.environ.get("PSFSIM_FFT") or DEFAULT_BACKEND
    env = {"psfsim": __version__, "numpy": np.__version__, "scipy": scipy.__version__, "fft_backend": backend}
    if backend == "pyfftw":
        import pyfftw

        env["pyfftw"] = pyfftw.__version__
        env["fft_threads"] = 1 if workers > 1 else default_workers()
    return env


def environment_difference(old, new: dict) -> str | None:
    if not isinstance(old, dict):
        return "the store records no environment"
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            return (f"{k}: the store was written with {safe_text(repr(old.get(k)), 60)}, this run has "
                    f"{safe_text(repr(new.get(k)), 60)}, which changes results")
    return None


_OPTION = {"lens": "--lens", "source": "--source", "n": "--n", "size": "--size", "seed": "--seed",
           "photons": "--photons", "read_noise": "--read-noise", "split": "--split", "origins": "--origins",
           "tol": "tol"}


def describe_spec_difference(old: SimulationSpec, new: SimulationSpec) -> str | None:
    """The first argument that differs, with both values (for the lens: the first key of its description)."""
    a, b = old.to_json(), new.to_json()
    for k in a:
        if a[k] == b.get(k):
            continue
        if k == "lens":
            keys = [x for x in sorted(set(a[k]) | set(b[k])) if a[k].get(x) != b[k].get(x)]
            return f"--lens: the lens description differs in {safe_text(', '.join(keys[:4]), 200)}"
        return f"{_OPTION.get(k, k)}: stored {safe_text(repr(a[k]), 120)}, now {safe_text(repr(b.get(k)), 120)}"
    return None


# -- verification --------------------------------------------------------------------------------------------
@dataclass
class VerifyResult:
    """Outcome of :func:`verify_dataset`: ``bad`` maps each failing block to why."""

    n_blocks: int
    written: int
    bad: dict = field(default_factory=dict)
    block: int = 1
    n: int = 0
    #: ``{array: why}`` for the arrays written at creation (origin, split, PSF grid) that fail their digest
    static: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.bad and not self.static

    def samples(self, b: int) -> tuple[int, int]:
        from .schema import block_range

        i0, i1 = block_range(b, self.block, self.n)
        return i0, i1 - 1


#: Arrays written once when the store is created: one digest each, in the ``static_digests`` attribute.
STATIC_ARRAYS = ("origin", "split", "psf_grid", "psf_grid_x", "psf_grid_y")


def static_digest(group, name: str) -> str:
    """SHA-256 of a whole array as stored (``origin``, ``split``, the PSF grid and its coordinates)."""
    return digest_arrays([np.asarray(group[name][...])])


def static_bad(group) -> dict:
    """``{array: why}`` for the arrays written at creation whose content differs from their recorded digest (or is
    unreadable); empty when they all match. A store without the record (made before it existed) reports it."""
    rec = group.attrs.get("static_digests")
    if not isinstance(rec, dict):
        return {"static arrays": "no digest recorded (a store made before psfsim recorded them: regenerate it)"}
    bad = {}
    for k in STATIC_ARRAYS:
        try:
            if static_digest(group, k) != rec.get(k):
                bad[k] = "content differs from its recorded digest"
        except Exception as e:  # noqa: BLE001 - a damaged or missing chunk
            bad[k] = f"unreadable ({type(e).__name__})"
    return bad


def read_block(group, b: int, block: int, n: int) -> list[np.ndarray]:
    """Block ``b`` of the image arrays as stored, in :data:`ARRAYS` order (what its digest covers)."""
    from .schema import block_range

    i0, i1 = block_range(b, block, n)
    return [np.asarray(group[k][i0:i1]) for k in ARRAYS]


def block_digest(group, b: int, block: int, n: int) -> str:
    """Digest of block ``b`` as stored (:func:`read_block`)."""
    return digest_arrays(read_block(group, b, block, n))


def recorded_digests(group, n_blocks: int) -> list[str | None]:
    """Each block's recorded digest (hex), ``None`` where none is recorded or its record is unreadable."""
    try:
        d = np.asarray(group["digest"][:])
        rows = list(d)
    except Exception:  # noqa: BLE001 - a damaged record chunk: read them one by one
        rows = []
        for b in range(n_blocks):
            try:
                rows.append(np.asarray(group["digest"][b]))
            except Exception:  # noqa: BLE001
                rows.append(None)
    return [None if r is None or not np.any(r) else bytes(np.asarray(r, np.uint8)).hex() for r in rows]


def verify_dataset(store, *, threads: int = 4) -> VerifyResult:
    """Read every block marked written and compare its digest with the record.

    Parameters
    ----------
    store : path or ValidatedStore
        Checked against the schema first when a path.
    threads : int
        Blocks read at once.
    """
    from .schema import ValidatedStore, validate_store

    v = store if isinstance(store, ValidatedStore) else validate_store(store)
    done = v.blocks_done()
    written = [int(b) for b in np.flatnonzero(done == 1)]
    digests = recorded_digests(v.group, v.n_blocks)
    n = v.spec.n
    bad = verify_blocks(written, lambda b: digests[b], lambda b: block_digest(v.group, b, v.block, n), threads=threads)
    return VerifyResult(n_blocks=v.n_blocks, written=len(written), bad=bad, block=v.block, n=n,
                        static=static_bad(v.group))


def verify_report(path) -> tuple[bool, str]:
    """``(ok, text)`` for ``psfsim verify``: one line per bad block, then a summary line."""
    from .schema import validate_store

    v = validate_store(path)
    r = verify_dataset(v)
    lines = []
    for b in sorted(r.bad):
        i0, i1 = r.samples(b)
        lines.append(f"block {b} (samples {i0}-{i1}): {r.bad[b]}")
    for k, why in sorted(r.static.items()):
        lines.append(f"array {k}: {why} (the store must be regenerated: psfsim simulate ... --overwrite)")
    state = "complete" if v.complete else f"incomplete: {r.n_blocks - r.written} block(s) not written yet"
    lines.append(f"{safe_text(v.path, 1000)}: {r.written - len(r.bad)} of {r.written} written blocks verified"
                 f"{f', {len(r.bad)} BAD (a resume with the same command recomputes them)' if r.bad else ''}; {state}")
    if v.inconsistent:
        lines.append(f"bookkeeping: {v.inconsistent}")
    return r.ok and not v.inconsistent, "\n".join(lines)


def check_no_fill(values: np.ndarray, what: str) -> None:
    """Refuse NaN (the fill value of never-written chunks) in data about to be copied."""
    if np.isnan(values).any():
        raise PsfsimError(f"{what} holds NaN (the fill value of data never written); nothing was exported")
