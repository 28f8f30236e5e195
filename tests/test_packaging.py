"""The distribution: three packages, their console scripts, and the import direction psfsim <- recon <- pipelines."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("pkg", ["psfsim", "recon", "pipelines"])
def test_console_scripts_answer_version(pkg):
    out = subprocess.run([sys.executable, "-m", f"{pkg}.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and pkg in out.stdout


@pytest.mark.parametrize("pkg", ["recon", "pipelines"])
def test_env_commands(pkg):
    out = subprocess.run([sys.executable, "-m", f"{pkg}.cli", "env"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert ("torch" if pkg == "recon" else "dask") in out.stdout


def _imports(pkg: str) -> set[str]:
    names = set()
    for f in (ROOT / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_import_direction():
    assert not _imports("psfsim") & {"recon", "pipelines"}
    assert "pipelines" not in _imports("recon")


def _copy_source(dst: Path) -> Path:
    """The source tree without build outputs, environments or caches (building a wheel writes into it)."""
    import shutil

    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    "demo_out", "bench_out", "*.zarr")
    return Path(shutil.copytree(ROOT, dst, symlinks=True, ignore=ignore))


@pytest.mark.slow
def test_wheel_ships_the_lens_presets(tmp_path):
    """A wheel built offline, installed alone in a fresh venv, loads a preset from outside the repository.

    The fresh venv sees the running interpreter's site-packages (numpy, scipy, ...) through a .pth file,
    never the source tree, and the answer must come from the installed wheel.
    """
    import os
    import sysconfig

    src = _copy_source(tmp_path / "src")
    wheels = tmp_path / "wheels"
    # No PYTHONPATH for any step: a source checkout on it (with its egg-info) makes pip see svblur as installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PSFSIM_PRESETS", "PYTHONHOME")}
    run = dict(capture_output=True, text=True, timeout=300, env=env)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-q", "-w", str(wheels), str(src)], **run)
    assert out.returncode == 0, out.stderr
    (whl,) = wheels.glob("svblur-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, **run)
    py = venv / "bin" / "python"
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                          "-q", str(whl)], **run)
    assert out.returncode == 0, out.stderr
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, **run).stdout.strip())
    (site / "_host_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = "import psfsim; print(psfsim.__file__); print(psfsim.load_lens('microscope').name)"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    out = subprocess.run([str(py), "-c", code], cwd=cwd, **run)
    assert out.returncode == 0, out.stderr
    file, name = out.stdout.split()
    assert Path(file).resolve().is_relative_to(venv.resolve()), file
    assert name == "microscope-20x-fieldcurv"
