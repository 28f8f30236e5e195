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
