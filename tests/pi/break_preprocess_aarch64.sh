#!/bin/sh
# Break preprocessing on aarch64 only, in the installed agent: the check that `make test-pi`
# catches an arm64-only bug (docs/testing.md). Run: sudo .venv/bin/python tests/pi/pi_check.py
#   --after-install tests/pi/break_preprocess_aarch64.sh   (it must fail: exit 1)
set -e
f=$(ls /opt/edgefleet/venv/lib/python3*/site-packages/edgefleet/shared/preprocess.py)
cat >> "$f" <<'PY'

import platform as _platform

if _platform.machine() == "aarch64":  # deliberate arm64-only bug
    _unbroken = preprocess

    def preprocess(array, spec):
        return _unbroken(array, spec) * 0.9
PY
echo "patched $f"
