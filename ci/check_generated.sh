#!/usr/bin/env bash
# Staleness check (CI step): regenerate llamarcp/_generated/ and the golden outputs in memory and fail,
# listing the files, if anything checked in differs. Fix with: python codegen/generate.py
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" codegen/generate.py --check
