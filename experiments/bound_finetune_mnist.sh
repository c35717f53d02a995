#!/bin/sh
# Fine-tune the shipped MNIST model on the lower bound (docs/algorithms.md §5), or on the mixed
# loss (1 - W)·denoising + W·bound, validated and selected on the population-statistics bound
# (§6), then score it with the paper's protocol and read its samples.
#   sh experiments/bound_finetune_mnist.sh RUN_DIR [K] [LOSS] [W] [EPOCHS]
#   sh experiments/bound_finetune_mnist.sh RUNS/mnist-bound 100             # 5 epochs, bound
#   sh experiments/bound_finetune_mnist.sh RUNS/mnist-mixed05 100 mixed 0.05 30
# Extra settings for a new run go in SET, e.g. SET="--set train.max_minutes=90".
# Resumable: run it again (or `infusion train --resume --run-dir RUN_DIR`) after a stop.
# On a CPU shared with other work, one thread (OMP_NUM_THREADS=1) is far faster than two.
set -e
RUN=${1:?usage: bound_finetune_mnist.sh RUN_DIR [K] [LOSS] [W] [EPOCHS]}
K=${2:-100}
LOSS=${3:-bound}
W=${4:-0.5}
EPOCHS=${5:-5}
if [ -e "$RUN/checkpoints/latest" ]; then
  infusion train --resume --run-dir "$RUN" $SET
else
  infusion train --preset mnist --run-dir "$RUN" \
    --set train.init_from=models/mnist --set method.infusion.loss="$LOSS" \
    --set method.infusion.bound_weight="$W" \
    --set train.lr=1e-4 --set train.lr_schedule=constant --set train.epochs="$EPOCHS" \
    --set train.patience=0 --set train.ema=0.999 --set train.valid_examples=5000 \
    --set train.train_bound_examples=2000 --set train.checkpoint_minutes=10 $SET
fi
infusion evaluate --checkpoint "$RUN" --protocol paper --k "$K" --repeats 1 \
  --metrics lb,is,parzen --stats-spread 1 --overwrite
infusion evaluate --checkpoint "$RUN" --protocol paper --k "$K" --repeats 1 \
  --metrics lb-train,is-train,lb-train-batch,is-train-batch --out "$RUN/eval/train.json" --overwrite
infusion evaluate --checkpoint "$RUN" --metrics fid,score,coverage,precision --n-samples 5000 \
  --out "$RUN/eval/samples.json" --overwrite
