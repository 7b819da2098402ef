#!/usr/bin/env bash
# Issue 24's GPU checks, prepared on a CPU machine and run in one go where a GPU is lent for a few
# minutes (a machine with CUDA, PyTorch and python3 3.12, nothing fetched from outside).
#
#   make gpu-pack                      # here: .gpu/ = the wheels the GPU image lacks + MNIST, gzipped
#   bash benchmarks/gpu_check.sh stack # there: bench-stack, then make reproduce-all's 3 seeds and the
#                                      # lr sweep, stacked against one at a time, timed, verdicts compared
#   bash benchmarks/gpu_check.sh suite # there: the whole test suite on the GPU machine
#
# Results go to $OUT (default /tmp/gpu-check): one .txt per step. SWEEP_SEEDS (default 1) sets the lr
# sweep's seeds for the one-at-a-time run, which is the long one; the stacked run uses 3.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
PY=${PY:-python3}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

if [ -d .gpu ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  mkdir -p /tmp/mnist/MNIST/raw
  for f in .gpu/*-ubyte.gz; do gunzip -c "$f" > "/tmp/mnist/MNIST/raw/$(basename "$f" .gz)"; done
  export LAMBEXP_DATA=/tmp/mnist
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L 2>&1 | tee "$OUT/gpu.txt"
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"

timed() {  # timed NAME COMMAND...: run it, its output and wall seconds to $OUT/NAME.txt
  local name=$1; shift
  local t0; t0=$(date +%s%N)
  "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "$name: exit $rc, $((ms / 1000)).$(printf %03d $((ms % 1000))) s" | tee -a "$OUT/times.txt"
}

case "${1:-stack}" in
  stack)
    timed bench_stack timeout 150 $PY benchmarks/bench_stack.py --members 1 4 8 16 --steps 20 --rounds 3
    timed reproduce_all_off timeout 240 $PY -m lambexp reproduce --seeds 3 --out /tmp/r-off -q
    timed reproduce_all_stacked timeout 240 $PY -m lambexp reproduce --seeds 3 --out /tmp/r-on -q --stack 64
    timed lr_sweep_stacked timeout 300 $PY -m lambexp reproduce lr_sweep --seeds 3 --out /tmp/s-on -q \
      --stack 64
    timed lr_sweep_off timeout 300 $PY -m lambexp reproduce lr_sweep --seeds "${SWEEP_SEEDS:-1}" \
      --out /tmp/s-off -q
    for d in r-off r-on s-on s-off; do  # each claim's verdict (the claims table's last column)
      awk -F'|' '/^\| / && NF > 8 {print $3 " => " $(NF-1)}' "/tmp/$d/REPORT.md" > "$OUT/verdicts_$d.txt"
      cp "/tmp/$d/REPORT.md" "$OUT/REPORT_$d.md" 2>/dev/null
    done
    if diff "$OUT/verdicts_r-off.txt" "$OUT/verdicts_r-on.txt" > "$OUT/verdicts_diff.txt"; then
      echo "reproduce-all: every verdict the same stacked and one at a time" | tee -a "$OUT/times.txt"
    else
      echo "reproduce-all: verdicts differ stacked and one at a time (verdicts_diff.txt)" | tee -a "$OUT/times.txt"
    fi
    ;;
  suite)
    timed suite timeout 560 $PY -m pytest -q -x -p no:cacheprovider tests
    tail -15 "$OUT/suite.txt"
    ;;
  *) echo "usage: $0 stack|suite" >&2; exit 2 ;;
esac
cat "$OUT/times.txt"
