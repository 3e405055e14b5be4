#!/usr/bin/env bash
# Set up (into the active virtual environment, or ./.venv) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  [[ -d .venv ]] || python3 -m venv .venv
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[export,explain,codecs,calibration,serve,dev]"
# The edge service's tests talk to real DICOM peers: dcmtk (storescu, echoscu, storescp) and
# Orthanc. The tests start their own Orthanc; the Debian service is kept from starting.
# (dcmdump, not storescu: pynetdicom puts Python scripts named storescu/echoscu in the venv.)
if ! command -v dcmdump >/dev/null || ! command -v Orthanc >/dev/null; then
  if [[ "$(id -u)" == 0 ]]; then
    policy=""  # policy-rc.d exit 101: no service started by the install
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      policy=/usr/sbin/policy-rc.d && printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk orthanc
    [[ -z "$policy" ]] || rm -f "$policy"
  else
    echo "dcmtk and orthanc are missing (apt-get install dcmtk orthanc); their tests will fail" >&2
  fi
fi
python -m pytest -q "$@"
