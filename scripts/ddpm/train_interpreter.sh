#!/usr/bin/env bash
# Usage: bash scripts/ddpm/train_interpreter.sh <dataset> [extra train_interpreter.py options]
# The MODEL_FLAGS of the released 256 px LSUN/FFHQ checkpoints (ddpm-segmentation's script).
set -euo pipefail
DATASETS="bedroom_28 ffhq_34 cat_15 horse_21 celeba_19 ade_bedroom_30 celebamask64"
if [ $# -lt 1 ] || [[ " $DATASETS " != *" $1 "* ]]; then
  echo "usage: $0 <dataset> [options]   (dataset: ${DATASETS// /, })" >&2
  exit 2
fi
DATASET=$1; shift
cd "$(dirname "$0")/../.."
if [ "$DATASET" = celebamask64 ]; then
  MODEL_FLAGS=""  # its config carries the flags of the 64 px faces checkpoint
else
  MODEL_FLAGS="--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1
    --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64
    --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"
fi
# shellcheck disable=SC2086
exec python train_interpreter.py --exp "experiments/$DATASET/ddpm.json" $MODEL_FLAGS "$@"
