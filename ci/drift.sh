#!/usr/bin/env bash
# Drift check (CI step): the generated API vs the freshly built libllama (exports and ABI stamp), the
# project's own code vs the pinned API, and the generated files (with the guard's list of used functions)
# vs a fresh generation. Every step runs; the script exits 1 if any failed, naming them.
#
# Overrides (tests use them): DRIFT_LIB=libllama file or dir (skips `python build_lib.py`),
# DRIFT_API=API spec: pinned (default), api.json, header, tree or carrier:V, DRIFT_STEPS="symbols scan generated",
# PYTHON=interpreter (default: .venv/bin/python if present, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
api="${DRIFT_API:-pinned}"
steps="${DRIFT_STEPS:-symbols scan generated}"
failed=()

run_step() {
    local name="$1"
    shift
    echo "== drift: $name: $*"
    if "$@"; then
        echo "== drift: $name: ok"
    else
        echo "== drift: $name: FAILED (exit $?)"
        failed+=("$name")
    fi
}

for step in $steps; do
    case "$step" in
    symbols)
        lib="${DRIFT_LIB:-}"
        if [ -z "$lib" ]; then
            # Last stdout line of build_lib.py is the lib dir (cached: < 2 s when already built).
            lib="$("$PYTHON" build_lib.py | tail -n 1)" || { echo "== drift: symbols: build_lib.py failed"; failed+=(build); continue; }
        fi
        run_step symbols "$PYTHON" -m codegen.drift symbols "$lib" --api "$api"
        ;;
    scan)
        run_step scan "$PYTHON" -m codegen.drift scan llamarcp codegen benchmarks build_lib.py --api "$api"
        # llamarcp's own code against the oldest and middle releases of the window (arity, fields, constants)
        for release in $("$PYTHON" -c 'from llamarcp import _release as r; n = r.release_names(); print(n[0], n[len(n) // 2])'); do
            run_step "scan-$release" "$PYTHON" -m llamarcp.drift scan llamarcp --api "release:$release"
        done
        ;;
    generated)
        run_step generated "$PYTHON" codegen/generate.py --check
        ;;
    *)
        echo "== drift: unknown step '$step' (known: symbols scan generated; the used-function list is part of generated)"
        failed+=("$step")
        ;;
    esac
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "drift check FAILED: ${failed[*]}"
    exit 1
fi
echo "drift check passed: $steps"
