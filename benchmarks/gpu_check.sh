#!/usr/bin/env bash
# Issue 12's GPU measurements in one call, for a session that is lent a GPU machine:
#
#   here:   bash benchmarks/gpu_wheels.sh          # tuner's missing dependencies, into .whl/
#   there:  run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# About 6 to 8 minutes on an H100 or H200. It prints, and copies to $OUT:
#   1. the GPU and software versions;
#   2. the CUDA tests of Yogi(fused=True) (compiled kernel, CUDA graph capture, half precision)
#      and of the catalog building fused optimizers;
#   3. benchmarks/optim_step.py: Yogi fused vs Adam fused at 10M and 100M values with TB/s
#      (target: at most 1.1x), and the kernel's block-size sweep;
#   4. benchmarks/gpu_study.py: the GPU example study with workers.per_device 1, 2 and 4:
#      trials per minute, nvidia-smi utilization, launch to first trial, gaps between trials.
# Record the figures in benchmarks/RESULTS.md (section "Fused Yogi and the GPU example").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
status=0
step() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }

step "1. versions"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import sys, torch, triton, optuna; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'optuna', optuna.__version__, 'cuda', torch.cuda.is_available())"

step "2. CUDA tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/test_yogi_fused.py tests/test_yogi.py 2>&1 | tee "$OUT/tests.txt" || status=1

step "3. fused step: Yogi vs Adam"
timeout 150 python3 benchmarks/optim_step.py --fused-only --sweep 2>&1 | tee "$OUT/optim_step.txt" \
  || status=1

step "4. GPU example study, per_device 1 2 4"
timeout 300 python3 benchmarks/gpu_study.py --per-device 1 2 4 --trials 8 2>&1 \
  | tee "$OUT/gpu_study.txt" || status=1

step "done, status $status"
exit $status
