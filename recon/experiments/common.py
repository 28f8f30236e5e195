"""What every paper experiment shares: an output folder that resumes, one record per finished unit of work
(a model and seed), the results table (markdown + CSV), and the verdict of each claim.

An experiment is a list of **units** (``"cnn_1_7_1/seed0"``, ``"cgunet3"``...). Each finished unit is a JSON
record in ``OUT/units/`` written atomically after the unit's work; a killed experiment re-run with the same
arguments skips the units whose record exists and computes the rest. ``OUT/experiment.json`` holds the
arguments the folder was started with (name, scale, seeds, package version); a re-run with other arguments is
refused unless ``--overwrite`` is given, because mixing records of two settings in one table would be wrong.

Claims are checked, never asserted: :class:`Claim` holds the paper's statement, whether it held in this run
and the numbers that decided it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from psfsim.store import atomic_file

from ..errors import ReconError

__all__ = ["ExperimentDir", "ExperimentResult", "Claim", "write_table", "mean_spread", "claims_markdown"]


def _json_default(v):
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON-serialisable: {type(v).__name__}")


def _write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        Path(tmp).write_text(text)


class ExperimentDir:
    """The output folder of one experiment run, resumable unit by unit.

    Parameters
    ----------
    out : path
        The folder (created if missing).
    name : str
        The experiment (``"conv1d"``, ``"sad"``, ``"deblur2d"``).
    settings : dict
        JSON-serialisable arguments that decide the results (scale, seeds, sizes, epochs...). A folder started
        with other settings is refused unless ``overwrite`` (which empties it first).
    """

    def __init__(self, out, name: str, settings: dict, *, overwrite: bool = False):
        from psfsim._version import __version__

        self.path = Path(out)
        self.name = name
        self.settings = json.loads(json.dumps(settings, default=_json_default))
        record = {"experiment": name, "settings": self.settings, "version": __version__}
        meta = self.path / "experiment.json"
        if self.path.exists() and not self.path.is_dir():
            raise ReconError(f"--out {self.path}: exists and is not a folder")
        if meta.exists():
            old = json.loads(meta.read_text())
            same = old.get("experiment") == name and old.get("settings") == self.settings
            if not same and not overwrite:
                raise ReconError(
                    f"--out {self.path}: holds experiment {old.get('experiment')!r} with settings "
                    f"{old.get('settings')}, not {name!r} with {self.settings}; pass --overwrite to start again")
            if not same:
                shutil.rmtree(self.path)
        elif self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                raise ReconError(f"--out {self.path}: not empty and not an experiment folder; "
                                 "pass --overwrite or choose another folder")
            shutil.rmtree(self.path)
        (self.path / "units").mkdir(parents=True, exist_ok=True)
        if not meta.exists():
            _write_text(meta, json.dumps(record, indent=2, default=_json_default) + "\n")

    def _unit_path(self, unit: str) -> Path:
        safe = unit.replace("/", "__")
        if not safe or any(c in safe for c in "\\:\0") or safe.startswith("."):
            raise ValueError(f"unit name {unit!r}: expected letters, digits, '_', '-', '.' and '/'")
        return self.path / "units" / f"{safe}.json"

    def done(self, unit: str) -> bool:
        """Whether ``unit`` finished in an earlier (or this) run."""
        return self._unit_path(unit).exists()

    def load(self, unit: str) -> dict:
        return json.loads(self._unit_path(unit).read_text())

    def save(self, unit: str, record: dict) -> dict:
        """Record ``unit`` as finished (atomically: a killed write leaves no record, so the unit re-runs)."""
        _write_text(self._unit_path(unit), json.dumps(record, indent=2, default=_json_default) + "\n")
        return record

    def records(self) -> dict[str, dict]:
        """Every finished unit, by name."""
        out = {}
        for p in sorted((self.path / "units").glob("*.json")):
            out[p.stem.replace("__", "/")] = json.loads(p.read_text())
        return out

    def file(self, name: str) -> Path:
        """A path inside the folder (for figures and tables)."""
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        p = self.path / name
        _write_text(p, text)
        return p


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims as measured here: ``held`` is True, False, or None (not decidable)."""

    claim: str
    held: bool | None
    evidence: str

    @property
    def verdict(self) -> str:
        return {True: "held", False: "did not hold", None: "not decided"}[self.held]


@dataclass
class ExperimentResult:
    """What an experiment's ``run`` did (every experiment returns one; ``recon experiment`` prints its summary).

    Attributes
    ----------
    name : str
    out : Path
        The experiment folder.
    rows : list
        The main table's rows.
    claims : list of Claim
    files : dict
        Label -> path of what was written (tables, verdicts, figures).
    computed, reused : list
        Units computed by this call, and units whose records were already there.
    seconds : float
    """

    name: str
    out: Path
    rows: list
    claims: list
    files: dict = field(default_factory=dict)
    computed: list = field(default_factory=list)
    reused: list = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"{self.name}: {self.out}: {len(self.computed)} unit(s) computed, {len(self.reused)} already done, "
                 f"{self.seconds:.0f} s"]
        lines += [f"  {label:<8s}{path}" for label, path in self.files.items() if path is not None]
        lines += [f"  [{c.verdict}] {c.claim}: {c.evidence}" for c in self.claims]
        return "\n".join(lines)


def claims_markdown(claims: Iterable[Claim]) -> str:
    lines = ["| claim (paper) | verdict | evidence (this run) |", "|---|---|---|"]
    for c in claims:
        lines.append(f"| {_cell(c.claim)} | **{c.verdict}** | {_cell(c.evidence)} |")
    return "\n".join(lines) + "\n"


def _cell(text) -> str:
    """Text for a markdown table cell: ``|`` escaped and line breaks folded (either would break the row)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,d}"
    return str(v)


def write_table(exp: ExperimentDir, stem: str, rows: list[dict], columns: list[str], *, title: str = "",
                notes: str = "") -> tuple[Path, Path]:
    """Write ``rows`` as ``STEM.csv`` (full precision) and ``STEM.md`` (a markdown table, 4 significant digits).

    Returns the two paths.
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in columns})
    csv_path = exp.write_text(f"{stem}.csv", buf.getvalue())
    md = []
    if title:
        md += [f"# {title}", ""]
    md.append("| " + " | ".join(columns) + " |")
    md.append("|" + "---|" * len(columns))
    for r in rows:
        md.append("| " + " | ".join(_cell(_fmt(r.get(c, ""))) for c in columns) + " |")
    if notes:
        md += ["", notes.rstrip()]
    md_path = exp.write_text(f"{stem}.md", "\n".join(md) + "\n")
    return md_path, csv_path


def mean_spread(values: Iterable[float]) -> tuple[float, float]:
    """Mean and spread (half the max - min range; 0 for one value) of ``values``; NaN for none."""
    v = [float(x) for x in values]
    if not v:
        return float("nan"), float("nan")
    return sum(v) / len(v), (max(v) - min(v)) / 2
