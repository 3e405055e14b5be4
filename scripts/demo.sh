#!/usr/bin/env bash
# Set up the lean runtime (into the active virtual environment, or ./.venv) and run the main job:
# the shipped default model scores freshly generated phantom studies.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  [[ -d .venv ]] || python3 -m venv .venv
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
python -m pip install -q -e .
ichrt score --demo --out "${1:-out/demo}"
