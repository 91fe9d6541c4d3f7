#!/usr/bin/env bash
# Pause the background joint run; time two interleaved heuristic pairs (this trainer, then the original); resume.
set -u
PID=$(pgrep -f "compare_methods.py --algs alma" | head -1)
trap 'kill -CONT $PID' EXIT
kill -STOP $PID
sleep 2
cd /work/main
OUT=benchmarks/results/training_cost/2026-12-05b
. venv/bin/activate
for i in 2 3; do
  date -u
  python benchmarks/train_throughput.py --alg heuristic --num-envs 8 --precision fp32 bf16 --rollouts 4 \
      > $OUT/train_throughput_heuristic_$i.json 2> /tmp/tt$i.err
  date -u
  /tmp/orig_venv/bin/python benchmarks/train_vs_original.py --orig-src /tmp/alma_orig \
      --alg heuristic --window-s 60 --out $OUT/train_vs_original_heuristic_$i.json > /tmp/tvo$i.out 2> /tmp/tvo$i.err
done
date -u
