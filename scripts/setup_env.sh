#!/usr/bin/env bash
# Create (or reuse) the bundle's virtual environment in .venv with the exact pins of requirements.txt.
#   bash scripts/setup_env.sh        runtime packages
#   bash scripts/setup_env.sh dev    runtime + test packages (requirements-dev.txt)
# torch is installed first and alone, with its exact pin, so that pip never resolves another (CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin=${PYTHON:-python3}
"$python_bin" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || { echo "setup_env.sh: Python 3.11 is required ($python_bin is $("$python_bin" --version 2>&1))" >&2; exit 2; }
requirements=requirements.txt
[ "${1:-}" = "dev" ] && requirements=requirements-dev.txt
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "$(grep -E '^torch==' requirements.txt)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
