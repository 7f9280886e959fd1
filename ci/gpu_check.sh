#!/usr/bin/env bash
# The GPU check (benchmarks/gpu.py; README "GPU check"). On the lent device machine, in one call:
#   bash ci/gpu_check.sh              build libllama with CUDA, run `pytest -m gpu` and the benchmarks; report in $OUT
#   bash ci/gpu_check.sh --stash      keep the model pieces this call carried for the run of a later call
# Here (no GPU):
#   bash ci/gpu_check.sh --prepare    stage .gpu-carry/ (wheels, llama.cpp tree, model pieces); prints the calls
#   bash ci/gpu_check.sh --dry-run    rehearse every step but the CUDA ones on the CPU build
# Other options go to benchmarks/gpu.py (--budget S, --carry DIR, --work DIR, --out DIR, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=run
args=()
for arg in "$@"; do
    case "$arg" in
        --prepare) mode=prepare ;;
        --stash) mode=stash ;;
        *) args+=("$arg") ;;
    esac
done
# Here the project's venv; there the image's python3 (3.12 with numpy), which makes the run's own venv.
python="python3"
if [ -x .venv/bin/python ] && [ -z "${LLAMARCP_GPU_PYTHON:-}" ]; then python=.venv/bin/python; fi
python="${LLAMARCP_GPU_PYTHON:-$python}"
export PYTHONUNBUFFERED=1
exec "$python" benchmarks/gpu.py "$mode" ${args[@]+"${args[@]}"}
