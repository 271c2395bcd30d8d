#!/usr/bin/env bash
# Make a throw-away virtual environment for the peer SNN frameworks (snnTorch, Norse,
# SpikingJelly), never touching the project's own environment.
#
#   bash benchmarks/peers/setup.sh            # -> benchmarks/peers/.venv (git-ignored)
#
# torch is pinned to the project's version (2.13.0, CPU wheel: a local wheel in /opt/wheels
# is used when present, else plain `torch==2.13.0` from the configured index).
# The frameworks are installed with --no-deps, so none of them can pull torchvision/torchaudio
# or another torch; only the small pure-Python packages they import are added by hand.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${PEERS_VENV:-$HERE/.venv}"
PY="${PYTHON:-python3}"

SNNTORCH_VERSION="${SNNTORCH_VERSION:-1.0.0}"
NORSE_VERSION="${NORSE_VERSION:-1.1.0}"
SPIKINGJELLY_VERSION="${SPIKINGJELLY_VERSION:-2.0.0}"
TORCH_VERSION="2.13.0"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    WHEEL="$(ls /opt/wheels/torch-"$TORCH_VERSION"*cp"$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"*.whl 2>/dev/null | head -1 || true)"
    if [ -n "$WHEEL" ]; then
        "${PIP[@]}" "$WHEEL"
    else
        "${PIP[@]}" "torch==$TORCH_VERSION"
    fi
fi

# Small deps the three frameworks import at top level (normal installs: none of these pulls
# torch): numpy/scipy/matplotlib/tqdm/packaging for all, loguru for SpikingJelly, h5py for
# nir, which Norse imports; nir/nirtorch themselves with --no-deps (nirtorch wants torch).
"${PIP[@]}" numpy tqdm matplotlib scipy packaging loguru h5py
"${PIP[@]}" --no-deps nir nirtorch

"${PIP[@]}" --no-deps \
    "snntorch==$SNNTORCH_VERSION" "norse==$NORSE_VERSION" "spikingjelly==$SPIKINGJELLY_VERSION"

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("torch", "snntorch", "norse", "spikingjelly"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} missing")
PY
echo "peers venv ready: $VENV"
