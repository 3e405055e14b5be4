#!/usr/bin/env bash
# Set up (into the active virtual environment, or ./.venv) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  [[ -d .venv ]] || python3 -m venv .venv
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[export,explain,codecs,calibration,dev]"
python -m pytest -q "$@"
