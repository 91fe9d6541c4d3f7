#!/usr/bin/env bash
# This trainer and the original PyTorch trainer timed back to back on one machine (an AMD EPYC
# with AVX2 and FMA only: no AVX-512, no bf16 instructions), nothing else running.
#   side_by_side.sh TAG   heuristic (fp32, 4 timed rollouts; then the original, 60 s window)
#                         and alma (fp32, 2 timed rollouts; then the original, 90 s window)
set -eu
TAG=${1:-1}
cd "$(dirname "$0")/../../../.."
OUT=benchmarks/results/training_cost/2026-12-05c
. venv/bin/activate
ORIG="/tmp/orig_venv/bin/python benchmarks/train_vs_original.py --orig-src /tmp/alma_orig"
python benchmarks/train_throughput.py --alg heuristic --num-envs 8 --precision fp32 \
    --rollouts 4 > $OUT/ours_heuristic_$TAG.json
$ORIG --alg heuristic --window-s 60 --out $OUT/original_heuristic_$TAG.json > /dev/null
python benchmarks/train_throughput.py --alg alma --num-envs 8 --precision fp32 \
    > $OUT/ours_alma_$TAG.json
$ORIG --alg alma --window-s 90 --out $OUT/original_alma_$TAG.json > /dev/null
