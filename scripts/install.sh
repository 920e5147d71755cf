#!/usr/bin/env bash
# Create .venv (when missing) and install anomalib-destseg with its dev extra, torch pinned by constraints.txt.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
echo "installing anomalib-destseg[dev] into .venv (torch pinned by constraints.txt; the first run takes minutes)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
.venv/bin/python -c "import anomalib, torch, torchvision, anomalib_destseg; print('ok: torch', torch.__version__, \
'torchvision', torchvision.__version__, 'anomalib', anomalib.__version__, 'anomalib_destseg', anomalib_destseg.__version__)"
