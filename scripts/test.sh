#!/usr/bin/env bash
# Set up (into the active virtual environment, or ./.venv) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  [[ -d .venv ]] || python3 -m venv .venv
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[export,explain,codecs,calibration,serve,ui,dev]"
# Debian packages the tests need. The edge service's tests talk to real DICOM peers: dcmtk
# (storescu, echoscu, storescp) and Orthanc; the tests start their own Orthanc, the Debian
# service is kept from starting. (dcmdump, not storescu: pynetdicom puts Python scripts named
# storescu/echoscu in the venv.) The worklist page's tests drive a real headless browser:
# chromium and chromium-driver (Selenium uses /usr/bin/chromedriver).
need=()
command -v dcmdump >/dev/null || need+=(dcmtk)
command -v Orthanc >/dev/null || need+=(orthanc)
command -v chromedriver >/dev/null || need+=(chromium chromium-driver)
if (( ${#need[@]} )); then
  if [[ "$(id -u)" == 0 ]]; then
    policy=""  # policy-rc.d exit 101: no service started by the install
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      policy=/usr/sbin/policy-rc.d && printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    [[ -z "$policy" ]] || rm -f "$policy"
  else
    echo "missing Debian packages (apt-get install ${need[*]}); their tests will fail" >&2
  fi
fi
python -m pytest -q "$@"
