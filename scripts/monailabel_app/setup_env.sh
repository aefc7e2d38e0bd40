#!/usr/bin/env bash
# Create .venv-monailabel (bundle root) for MONAI Label 0.8.5 with this bundle's torch, monai and runtime pins.
# torch is pinned in the same pip command as monailabel, or pip would replace it with a CUDA build (monai[torchvision]);
# sam2 (source only) is built against that torch without CUDA.
set -euo pipefail
cd "$(dirname "$0")/../.."
python_bin=${PYTHON:-python3}
[ -x .venv-monailabel/bin/python ] || "$python_bin" -m venv .venv-monailabel
pip=(.venv-monailabel/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "$(grep -E '^torch==' requirements.txt)"
SAM2_BUILD_CUDA=0 "${pip[@]}" --no-build-isolation -r scripts/monailabel_app/requirements.txt
