#!/usr/bin/env bash
# Every row of issue 20's throughput table in one sitting: this trainer (fp32 and bf16, the low
# level in 1 or 4 batch pieces) and the original PyTorch trainer, back to back on one machine
# (a 2-core AMD EPYC with AVX2 and FMA only), nothing else running.
#   side_by_side.sh TAG [PRECISIONS]   (PRECISIONS: "fp32 bf16" unless given)
set -eu
TAG=${1:-1}
PREC=${2:-fp32 bf16}
cd "$(dirname "$0")/../../../.."
OUT=benchmarks/results/training_cost/2026-12-06
. venv/bin/activate
ORIG="/tmp/orig_venv/bin/python benchmarks/train_vs_original.py --orig-src /tmp/alma_orig"
python benchmarks/train_throughput.py --alg heuristic --num-envs 8 --precision $PREC \
    --update-splits 1 4 --rollouts 4 > $OUT/ours_heuristic_$TAG.json
$ORIG --alg heuristic --window-s 90 --out $OUT/original_heuristic_$TAG.json > /dev/null
python benchmarks/train_throughput.py --alg alma --num-envs 8 --precision $PREC \
    --update-splits 1 4 --rollouts 2 > $OUT/ours_alma_$TAG.json
$ORIG --alg alma --window-s 120 --out $OUT/original_alma_$TAG.json > /dev/null
