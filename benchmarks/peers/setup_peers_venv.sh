#!/usr/bin/env bash
# Creates (or completes) the peer virtual environment of benchmarks/bench_peers.py: CPU torch 2.13.0, deepinv 0.5.0
# and its non-torch dependencies, and this project's runtime dependencies, so that ONE process times our operator
# and deepinv's SpaceVaryingBlur interleaved. Run by hand (`make peers-venv`), never by CI or the tests.
# Idempotent: an existing venv is reused and pip skips what is installed.
#
#   PEERS_VENV   where the venv goes (default /work/peers-venv; keep it outside the repository)
#   PYTHON       interpreter that creates it (default python3.11)
#
# Why --no-deps for deepinv: its metadata requires torchvision, and no torchvision wheel that pip can reach imports
# beside the CPU torch 2.13.0 here (PyPI's 0.28.0 and 0.29.x are CUDA builds: "operator torchvision::nms does not
# exist"). bench_peers.py puts benchmarks/peers/shim (a stand-in torchvision, see README.md) on sys.path instead.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${PEERS_VENV:-/work/peers-venv}"
python="${PYTHON:-python3.11}"

case "$venv/" in "$repo"/*) echo "PEERS_VENV=$venv is inside the repository $repo: put it outside" >&2; exit 2;; esac
test -x "$venv/bin/python" || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" > "$constraints"

# 1. torch FIRST and exactly (a looser spec would pull a multi-GB CUDA build)
"${pip[@]}" install --quiet torch==2.13.0
# 2. deepinv's own dependencies (Requires-Dist of deepinv 0.5.0 less torch and torchvision), torch held by the constraint
"${pip[@]}" install --quiet -c "$constraints" numpy matplotlib tqdm torchmetrics einops requests h5py natsort
# 3. deepinv itself, without torchvision
"${pip[@]}" install --quiet --no-deps deepinv==0.5.0
# 4. this project's runtime dependencies, read from pyproject.toml (the project itself comes from PYTHONPATH=.)
mapfile -t deps < <("$venv/bin/python" - "$repo/pyproject.toml" <<'PY'
import sys, tomllib
for d in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]:
    print(d)
PY
)
"${pip[@]}" install --quiet -c "$constraints" "${deps[@]}"

# 5. check: deepinv's SpaceVaryingBlur imports through the shim, and the wrong torchvision is absent
PYTHONPATH="$here/shim:$repo" "$venv/bin/python" - <<'PY'
import torch, deepinv, torchvision
from deepinv.physics import SpaceVaryingBlur
import psfsim
assert getattr(torchvision, "IS_BENCHMARK_SHIM", False), torchvision.__file__
print(f"peer venv ready: torch {torch.__version__}, deepinv {deepinv.__version__} (torchvision: benchmark shim), "
      f"psfsim from {psfsim.__file__}")
PY
echo "run: PYTHONPATH=. $venv/bin/python benchmarks/bench_peers.py --help"
