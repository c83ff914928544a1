#!/usr/bin/env bash
# Usage: bash scripts/ddpm/train_ddpm.sh <image folder> <log dir> [GPU num] [ddpmseg train-ddpm options]
# Trains a guided-diffusion DDPM from scratch on every image under <image folder>. The U-Net is
# the 256 px architecture of the released checkpoints unless MODEL_FLAGS (env) or options say
# otherwise, e.g. --model_flags ../shared/checkpoints/faces64_ema.json for the 64 px faces one.
# GPU num > 1 runs that many processes under torchrun (--batch_size is the global batch).
# Rerunning the same command resumes from the latest checkpoint in <log dir>.
set -euo pipefail
source "$(dirname "$0")/model_flags.sh"
if [ $# -lt 2 ]; then
  echo "usage: $0 <image folder> <log dir> [GPU num] [ddpmseg train-ddpm options]" >&2
  exit 2
fi
DATA=$1; LOG_DIR=$2; shift 2
GPUS=1
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then GPUS=$1; shift; fi
FLAGS=${MODEL_FLAGS-$(model_flags bedroom_28)}
# Flags on the command line beat --model_flags FILE, so a FILE replaces the default flags.
if [[ " $* " == *" --model_flags "* ]]; then FLAGS=""; fi
# guided-diffusion's image_train.py values for the released models' recipe.
TRAIN_FLAGS="--lr 1e-4 --batch_size 16 --ema_rate 0.9999 --save_interval 10000 --sample_interval 10000"
if [ "$GPUS" -gt 1 ]; then
  LAUNCH=(torchrun --standalone "--nproc_per_node=$GPUS")
else
  LAUNCH=(python)
fi
# shellcheck disable=SC2086
exec "${LAUNCH[@]}" -m ddpmseg train-ddpm --data_dir "$DATA" --log_dir "$LOG_DIR" $FLAGS $TRAIN_FLAGS "$@"
