#!/usr/bin/env bash
# Build, test and benchmark syncfree on a GPU machine in one call, from the repo root:
#   OUT=/some/dir bash benchmarks/gpu_run.sh
# Files written to $OUT (kept few, since only a handful come back from the device):
#   build.log ptxas.txt pytest.log table_cuda.txt results_cuda.json bench_cuda.png
#   table_warpers_cuda.txt results_warpers_cuda.json
# Optional: PYTHON (default python3), BENCH_ARGS (e.g. --quick).
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-benchmarks/out}"
PYTHON="${PYTHON:-python3}"
BENCH_ARGS="${BENCH_ARGS:-}"
mkdir -p "$OUT"
export PATH="/usr/local/cuda/bin:$PATH"

echo "== $(date -u +%FT%TZ)  $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' || true

# --no-deps: the machine is offline, and torch is already there.
build_rc=0
SYNCFREE_PTXAS_VERBOSE=1 "$PYTHON" -m pip install --no-build-isolation --no-deps -v . 2>&1 \
    | tee "$OUT/build.log" || build_rc=$?
grep -E "ptxas|registers|spill" "$OUT/build.log" > "$OUT/ptxas.txt" || true

pytest_rc=skipped
bench_rc=skipped
if [ "$build_rc" -eq 0 ]; then
    # -P: don't put the repo root on sys.path, so the installed build (not the source
    # tree without its compiled extension) is what `import syncfree` finds.
    pytest_rc=0
    "$PYTHON" -P -m pytest -q tests 2>&1 | tee "$OUT/pytest.log" || pytest_rc=$?
    bench_rc=0
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
    "$PYTHON" benchmarks/bench_sample.py --device cuda --out "$OUT" $BENCH_ARGS || bench_rc=$?
    # Warpers: BENCH_ARGS's --quick applies here too (its other flags are bench_sample's).
    # --no-plot keeps $OUT at 8 files; redraw with bench_warpers.py --replot <results json>.
    warpers_args=""
    case " $BENCH_ARGS " in *" --quick "*) warpers_args="--quick" ;; esac
    # shellcheck disable=SC2086
    "$PYTHON" benchmarks/bench_warpers.py --device cuda --out "$OUT" --no-plot $warpers_args \
        || bench_rc=$?
fi

echo
echo "== summary"
echo "build:     rc=$build_rc"
echo "ptxas:     $(grep -c 'Used [0-9]* registers' "$OUT/ptxas.txt" || true) register reports;" \
     "non-zero spills: $(grep -E '[1-9][0-9]* bytes spill (stores|loads)' "$OUT/ptxas.txt" | wc -l)"
echo "pytest:    rc=$pytest_rc  $( [ -f "$OUT/pytest.log" ] && tail -n 1 "$OUT/pytest.log" || true)"
echo "benchmark: rc=$bench_rc"
echo "files:     $(ls "$OUT" | tr '\n' ' ')"
[ "$build_rc" = 0 ] && [ "$pytest_rc" = 0 ] && [ "$bench_rc" = 0 ]
