#!/usr/bin/env bash
# The GPU check of syncfree: one command, on a machine with an NVIDIA GPU, from the repo root:
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#
# Steps, in order, each under `timeout` (caps below), all output also appended to files in $OUT:
#   build          pip install --no-build-isolation --no-deps for TORCH_CUDA_ARCH_LIST (9.0),
#                  all cores, with the ptxas register/spill report            -> build.log
#   pytest-cuda    the CUDA tests (pytest -m cuda), -x, a per-test deadline   -> pytest.log
#   memcheck, racecheck, synccheck
#                  compute-sanitizer over benchmarks/sanitizer_driver.py (every kernel once,
#                  small shapes; memcheck with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that every
#                  allocation is bounded exactly)                           -> sanitizer.log
#   bench, bench-warpers
#                  bench_sample.py (temperature only) and bench_warpers.py (top-k + top-p +
#                  min-p) at B 1 and 64, V 128256, float32 and bfloat16, against torch.multinomial,
#                  the exponential trick and the sort-based chain; copy bandwidth; then
#                  bench_verify.py's and bench_tree.py's quick grids (speculative decoding)
#                                                                         -> bench.log, bench.json
#   demo           examples/generate.py --device cuda                        -> demo.log
#   pytest-rest    the rest of the suite (pytest -m "not cuda and not emulated"), in the time left
#   summary        each step's rc and seconds, ptxas registers/spills per kernel, pytest's last
#                  lines, sanitizer error counts, the benchmark tables    -> stdout, summary.txt
# So at most 7 files in $OUT. Made for one device call of 600 s: a step's cap shrinks so that
# the steps after it keep their minimum and the script ends within GPU_CHECK_BUDGET_S (525 s).
# Python runs with -P, so `import syncfree` finds the installed build, not the source tree.
# Exit status: 0 when every step passed; 1 otherwise. pytest-rest counts only when a test fails
# (not when it is cut short or skipped for lack of time). A failed build skips everything else.
#
# Knobs: PYTHON (python3), TORCH_CUDA_ARCH_LIST (9.0), MAX_JOBS (all cores), GPU_CHECK_BUDGET_S
# (525), TEST_DEADLINE_S (90 s a test), GPU_CHECK_REUSE_BUILD=1 (keep build/'s objects from an
# earlier run on the same machine: faster, but no ptxas report), GPU_CHECK_DEVICE=cpu (a dry run
# of the flow without a GPU: the driver, benchmarks and demo on the CPU; with SYNCFREE_FORCE_CPU=1
# the build skips nvcc).
set -uo pipefail
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
T0=$SECONDS
BUDGET_S=${GPU_CHECK_BUDGET_S:-525}
KILL_GRACE=5  # seconds between timeout's TERM and its KILL
PYTHON=${PYTHON:-python3}
DEV=${GPU_CHECK_DEVICE:-cuda}
ARCH=${TORCH_CUDA_ARCH_LIST:-9.0}
JOBS=${MAX_JOBS:-$(nproc)}
TEST_DEADLINE_S=${TEST_DEADLINE_S:-90}
OUT=${OUT:-benchmarks/out/gpu_check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
WORK=$(mktemp -d) || exit 1
trap 'rm -rf "$WORK"' EXIT
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/compute-sanitizer/compute-sanitizer)
for f in build.log pytest.log sanitizer.log bench.log bench.json demo.log summary.txt; do
    rm -f "$OUT/$f"
done

# --- bookkeeping ----------------------------------------------------------------------------
declare -A RC DUR CAP
ORDER=()
record() {  # record NAME RC SECONDS CAP
    ORDER+=("$1")
    RC[$1]=$2 DUR[$1]=$3 CAP[$1]=$4
}

# run_step NAME CAP FLOOR RESERVE LOG CMD...: CMD under `timeout`, its output on stdout and
# appended to LOG. The cap shrinks so that RESERVE seconds (the later steps' floors) stay in
# the budget; below FLOOR seconds the step is skipped.
run_step() {
    local name=$1 cap=$2 floor=$3 reserve=$4 log=$5
    shift 5
    local left=$((BUDGET_S - (SECONDS - T0) - reserve - KILL_GRACE))
    ((left < cap)) && cap=$left
    if ((cap < floor)); then
        echo "== $name: skipped, ${cap}s left for it, needs ${floor}s" | tee -a "$log"
        record "$name" notime 0 "$cap"
        return
    fi
    echo "== $name (cap ${cap}s, at $((SECONDS - T0))s): $(printf '%q ' "$@")" | tee -a "$log"
    local start=$SECONDS rc
    timeout -k "$KILL_GRACE" "$cap" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    record "$name" "$rc" $((SECONDS - start)) "$cap"
    local note=""
    ((rc == 124 || rc == 137)) && note=" (TIMEOUT: cut at ${cap}s)"
    echo "== $name: rc=$rc in $((SECONDS - start))s$note" | tee -a "$log"
}

skip_step() {  # skip_step NAME WHY
    echo "== $1: skipped ($2)"
    record "$1" "skipped" 0 0
}

# --- the machine ----------------------------------------------------------------------------
TORCH_INFO='import sys, torch
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "device",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")'
{
    echo "gpu_check.sh at $(date -u +%FT%TZ): budget ${BUDGET_S}s, $(nproc) cores, TORCH_CUDA_ARCH_LIST=$ARCH"
    gpu=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)
    echo "gpu:       ${gpu//$'\n'/; }"
    echo "python:    $(command -v "$PYTHON") $(timeout 60 "$PYTHON" -c "$TORCH_INFO" 2>&1 | tail -n 1)"
    echo "nvcc:      $(nvcc --version 2>&1 | grep -o 'release [0-9.]*' || echo missing)"
    echo "sanitizer: $("$SANITIZER" --version 2>&1 | grep -i version | head -n 1 || echo missing)"
    changes=$(git status --porcelain 2>/dev/null | grep -q . && echo ' (with local changes)')
    echo "source:    $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')$changes"
} | tee "$WORK/env.txt"

# Floors: the least time worth giving each step; a step's reserve is the sum of the later ones'.
F_PYTEST=45 F_SAN=30 F_BENCH=30 F_WARPERS=20 F_DEMO=20
reserve_after_build=$((F_PYTEST + 3 * F_SAN + F_BENCH + F_WARPERS + F_DEMO))
# Whatever the budget, the build gets two minutes at least: without it nothing else runs.
((reserve_after_build > BUDGET_S - 120)) && reserve_after_build=$((BUDGET_S - 120))

# --- 1. build -------------------------------------------------------------------------------
if [ "${GPU_CHECK_REUSE_BUILD:-0}" != 1 ]; then
    rm -rf build/temp.* build/lib.* build/bdist.*  # stale objects would hide the ptxas report
fi
run_step build 300 60 "$reserve_after_build" "$OUT/build.log" \
    env TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$JOBS" SYNCFREE_PTXAS_VERBOSE=1 \
    "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -v .
if [ "${RC[build]}" = 0 ]; then
    # From outside the source tree (-P): the installed build must import and see the GPU.
    if ! timeout 120 "$PYTHON" -P -c 'import sys, torch, syncfree
print("import check: syncfree", syncfree.__file__, "torch", torch.__version__, "cuda", torch.cuda.is_available())
device = sys.argv[1]
assert device == "cpu" or torch.cuda.is_available(), "no CUDA device visible"
assert syncfree.sample(torch.randn(2, 100, device=device), seed=1).device.type == device' "$DEV" 2>&1 |
        tee -a "$OUT/build.log"; then
        RC[build]=import-failed
        echo "== build: the installed syncfree does not import or run on $DEV" | tee -a "$OUT/build.log"
    fi
fi

# -x: stop at the first failure; a module that fails to import is reported, not fatal to the rest.
PYTEST=("$PYTHON" -P -m pytest -x -v -rfE --continue-on-collection-errors
        -p _pytest_deadline -p no:cacheprovider)
PYTEST_ENV=(env "PYTHONPATH=$REPO/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
            "SYNCFREE_TEST_DEADLINE_S=$TEST_DEADLINE_S")
DRIVER=("$PYTHON" -P benchmarks/sanitizer_driver.py --device "$DEV")
DEMO_ARGS=(--device "$DEV")
[ "$DEV" = cpu ] && DEMO_ARGS+=(--steps 8 --batch 2)  # a dry run: the flow, not the figures
BENCH_GRID=(--device "$DEV" --quick --batches "1,64" --vocabs 128256 --dtypes "float32,bfloat16"
            --no-plot --out "$WORK/bench")

if [ "${RC[build]}" = 0 ]; then
    # --- 2. the CUDA tests ------------------------------------------------------------------
    run_step pytest-cuda 150 "$F_PYTEST" $((3 * F_SAN + F_BENCH + F_WARPERS + F_DEMO)) "$OUT/pytest.log" \
        "${PYTEST_ENV[@]}" "${PYTEST[@]}" -m cuda tests
    # --- 3. compute-sanitizer ---------------------------------------------------------------
    # memcheck checks every kernel, torch's included; racecheck and synccheck only syncfree's
    # (the slow instrumentation is spent on the kernels under test).
    run_step memcheck 75 "$F_SAN" $((2 * F_SAN + F_BENCH + F_WARPERS + F_DEMO)) "$OUT/sanitizer.log" \
        env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck --error-exitcode 1 "${DRIVER[@]}"
    run_step racecheck 90 "$F_SAN" $((F_SAN + F_BENCH + F_WARPERS + F_DEMO)) "$OUT/sanitizer.log" \
        "$SANITIZER" --tool racecheck --error-exitcode 1 --kernel-name kns=syncfree "${DRIVER[@]}"
    run_step synccheck 75 "$F_SAN" $((F_BENCH + F_WARPERS + F_DEMO)) "$OUT/sanitizer.log" \
        "$SANITIZER" --tool synccheck --error-exitcode 1 --kernel-name kns=syncfree "${DRIVER[@]}"
    # --- 4. benchmarks ----------------------------------------------------------------------
    run_step bench 75 "$F_BENCH" $((F_WARPERS + F_DEMO)) "$OUT/bench.log" \
        "$PYTHON" -P benchmarks/bench_sample.py "${BENCH_GRID[@]}" --methods "syncfree,sf.seed,multinomial,exp.eager"
    # bench_warpers' 'all' configuration, then bench_verify's quick grid (B 1 and 8, n 1 and 5) and
    # bench_tree's (B 1 and 8, N 8 and 64).
    run_step bench-warpers 60 "$F_WARPERS" "$F_DEMO" "$OUT/bench.log" \
        bash -c '"$0" -P benchmarks/bench_warpers.py "${@:2}" --configs all &&
                 "$0" -P benchmarks/bench_verify.py --device "$1" --quick --batches 1,8 --out "${@: -1}" &&
                 "$0" -P benchmarks/bench_tree.py --device "$1" --quick --out "${@: -1}"' \
        "$PYTHON" "$DEV" "${BENCH_GRID[@]}"
    # --- 5. the decode demo -----------------------------------------------------------------
    run_step demo 45 "$F_DEMO" 0 "$OUT/demo.log" "$PYTHON" -P examples/generate.py "${DEMO_ARGS[@]}"
    # --- the rest of the suite, with what is left -------------------------------------------
    # (not the emulated kernels of tests/cuda_on_cpu: the real ones ran above)
    run_step pytest-rest 150 30 0 "$OUT/pytest.log" "${PYTEST_ENV[@]}" "${PYTEST[@]}" -m "not cuda and not emulated" tests
else
    for name in pytest-cuda memcheck racecheck synccheck bench bench-warpers demo pytest-rest; do
        skip_step "$name" "build rc=${RC[build]}"
    done
fi

# --- 6. summary -----------------------------------------------------------------------------
status=0
{
    echo
    echo "==================== gpu_check summary ===================="
    cat "$WORK/env.txt"
    echo
    printf '%-14s %-14s %8s %6s\n' step rc seconds cap
    for name in "${ORDER[@]}"; do
        rc=${RC[$name]} verdict=ok
        case "$name:$rc" in
            *:0) ;;
            pytest-rest:notime | pytest-rest:124 | pytest-rest:137) verdict="cut (time)" ;;
            *:124 | *:137) verdict=TIMEOUT ;;
            *:skipped) verdict="not run" ;;
            *:notime) verdict="no time left" ;;
            *) verdict=FAILED ;;
        esac
        printf '%-14s %-14s %8s %6s  %s\n' "$name" "$rc" "${DUR[$name]}" "${CAP[$name]}" "$verdict"
    done
    echo "total: $((SECONDS - T0))s of the ${BUDGET_S}s budget"
    if [ "${RC[build]}" != 0 ]; then
        echo
        echo "-- the end of build.log"
        tail -n 25 "$OUT/build.log" | cut -c 1-200
    fi
    timeout 60 "$PYTHON" benchmarks/_gpu_check_summary.py "$OUT" "$WORK/bench" ||
        echo "(benchmarks/_gpu_check_summary.py failed; the logs are in $OUT)"
    echo
    files=("$OUT"/*)
    echo "files in $OUT: ${files[*]##*/}"
} 2>&1 | tee "$OUT/summary.txt"
for name in "${ORDER[@]}"; do
    case "$name:${RC[$name]}" in
        *:0 | pytest-rest:notime | pytest-rest:124 | pytest-rest:137) ;;
        *) status=1 ;;
    esac
done
echo "gpu_check: exit $status" | tee -a "$OUT/summary.txt"
exit "$status"
