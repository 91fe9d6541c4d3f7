#!/usr/bin/env bash
# What produced this folder's JSON: a background training run is stopped (SIGSTOP) while this
# trainer and the original are timed back to back, and continued on exit.
#   side_by_side.sh 1   run 1: heuristic and alma, fp32 and bf16 (2 timed rollouts), then the
#                       original's heuristic and ALMA (90 s windows)
#   side_by_side.sh 2   runs 2 and 3: heuristic only, interleaved, 4 timed rollouts on our side,
#                       60 s windows on the original's
set -u
PID=$(pgrep -f "compare_methods.py --algs alma" | head -1)
trap 'kill -CONT $PID' EXIT
kill -STOP $PID
sleep 2
cd /work/main
OUT=benchmarks/results/training_cost/2026-12-05b
. venv/bin/activate
ORIG="/tmp/orig_venv/bin/python benchmarks/train_vs_original.py --orig-src /tmp/alma_orig"
if [ "${1:-1}" = 1 ]; then
  python benchmarks/train_throughput.py --alg heuristic alma --num-envs 8 --precision fp32 bf16 \
      > $OUT/train_throughput.json
  $ORIG --alg heuristic alma --window-s 90 --out $OUT/train_vs_original.json > /dev/null
else
  for i in 2 3; do
    python benchmarks/train_throughput.py --alg heuristic --num-envs 8 --precision fp32 bf16 \
        --rollouts 4 > $OUT/train_throughput_heuristic_$i.json
    $ORIG --alg heuristic --window-s 60 --out $OUT/train_vs_original_heuristic_$i.json > /dev/null
  done
fi
