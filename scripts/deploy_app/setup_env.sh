#!/usr/bin/env bash
# Create .venv-deploy (bundle root) for the MONAI Deploy App SDK example app, torch first with its exact pin.
set -euo pipefail
cd "$(dirname "$0")/../.."
python_bin=${PYTHON:-python3}
[ -x .venv-deploy/bin/python ] || "$python_bin" -m venv .venv-deploy
.venv-deploy/bin/python -m pip install --quiet --disable-pip-version-check "$(grep -E '^torch==' requirements.txt)"
.venv-deploy/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/deploy_app/requirements.txt
