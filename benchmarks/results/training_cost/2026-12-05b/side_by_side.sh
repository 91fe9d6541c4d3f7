#!/usr/bin/env bash
# Pause the background joint run, time this trainer and the original back to back, resume.
set -u
PID=$(pgrep -f "compare_methods.py --algs alma" | head -1)
trap 'kill -CONT $PID' EXIT
kill -STOP $PID
sleep 2
cd /work/main
OUT=benchmarks/results/training_cost/2026-12-05b
date -u
. venv/bin/activate
python benchmarks/train_throughput.py --alg heuristic alma --num-envs 8 --precision fp32 bf16 \
    > $OUT/train_throughput.json 2> /tmp/tt.err
date -u
/tmp/orig_venv/bin/python benchmarks/train_vs_original.py --orig-src /tmp/alma_orig \
    --alg heuristic alma --window-s 90 --out $OUT/train_vs_original.json > /tmp/tvo.out 2> /tmp/tvo.err
date -u
