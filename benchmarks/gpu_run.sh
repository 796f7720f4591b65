#!/usr/bin/env bash
# Build, test and benchmark syncfree on a GPU machine, from the repo root:
#   OUT=/some/dir bash benchmarks/gpu_run.sh build test        # first call (a device call has 600 s)
#   OUT=/some/dir bash benchmarks/gpu_run.sh bench demo dist   # then, on the same warm machine
# Steps: build (pip install with the ptxas report), test (the whole suite, CUDA tests included),
# bench (bench_sample + bench_warpers), demo (examples/generate.py, issue 4's end-to-end figures),
# dist (bench_distributed.py --device cuda: NCCL, one rank per GPU).
# Files written to $OUT (at most 8 come back from one device call): build.log pytest.log | table_cuda.txt
#   results_cuda.json bench_cuda.png table_warpers_cuda.txt results_warpers_cuda.json demo.txt
#   table_distributed_cuda.txt results_distributed_cuda.json
# (the plots: bench_warpers.py --replot results_warpers_cuda.json and bench_distributed.py --replot
#  results_distributed_cuda.json, on any machine).
# Optional: PYTHON (default python3), BENCH_ARGS (e.g. --quick).
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-benchmarks/out}"
PYTHON="${PYTHON:-python3}"
BENCH_ARGS="${BENCH_ARGS:-}"
STEPS="${*:-build test bench demo dist}"
mkdir -p "$OUT"
export PATH="/usr/local/cuda/bin:$PATH"
wants() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

echo "== $(date -u +%FT%TZ)  $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' || true

build_rc=skipped pytest_rc=skipped bench_rc=skipped demo_rc=skipped dist_rc=skipped
if wants build; then
    # --no-deps: the machine is offline, and torch is already there.
    build_rc=0
    SYNCFREE_PTXAS_VERBOSE=1 "$PYTHON" -m pip install --no-build-isolation --no-deps -v . 2>&1 \
        | tee "$OUT/build.log" || build_rc=$?
fi
if [ "$build_rc" = skipped ] || [ "$build_rc" = 0 ]; then
    if wants test; then
        # -P: don't put the repo root on sys.path, so the installed build (not the source
        # tree without its compiled extension) is what `import syncfree` finds.
        pytest_rc=0
        "$PYTHON" -P -m pytest -q tests 2>&1 | tee "$OUT/pytest.log" || pytest_rc=$?
    fi
    if wants bench; then
        bench_rc=0
        # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
        "$PYTHON" benchmarks/bench_sample.py --device cuda --out "$OUT" $BENCH_ARGS || bench_rc=$?
        # BENCH_ARGS's --quick applies here too (its other flags are bench_sample's).
        warpers_args=""
        case " $BENCH_ARGS " in *" --quick "*) warpers_args="--quick" ;; esac
        # shellcheck disable=SC2086
        "$PYTHON" benchmarks/bench_warpers.py --device cuda --out "$OUT" --no-plot $warpers_args \
            || bench_rc=$?
    fi
    if wants demo; then
        demo_rc=0
        "$PYTHON" -P examples/generate.py --device cuda 2>&1 | tee "$OUT/demo.txt" || demo_rc=$?
    fi
    if wants dist; then
        dist_rc=0
        "$PYTHON" -P benchmarks/bench_distributed.py --device cuda --out "$OUT" --no-plot || dist_rc=$?
    fi
fi

echo
echo "== summary (steps: $STEPS)"
echo "build:     rc=$build_rc"
if [ -f "$OUT/build.log" ]; then
    echo "ptxas:     $(grep -c 'Used [0-9]* registers' "$OUT/build.log" || true) register reports;" \
         "non-zero spills: $(grep -cE '[1-9][0-9]* bytes spill (stores|loads)' "$OUT/build.log" || true)"
    grep -E "Compiling entry|registers|spill" "$OUT/build.log" | sed 's/ptxas info *: //' | tail -n 60 || true
fi
echo "pytest:    rc=$pytest_rc  $( [ -f "$OUT/pytest.log" ] && tail -n 1 "$OUT/pytest.log" || true)"
echo "benchmark: rc=$bench_rc"
echo "demo:      rc=$demo_rc"
echo "dist:      rc=$dist_rc"
echo "files:     $(ls "$OUT" | tr '\n' ' ')"
for rc in "$build_rc" "$pytest_rc" "$bench_rc" "$demo_rc" "$dist_rc"; do
    [ "$rc" = skipped ] || [ "$rc" = 0 ] || exit 1
done
