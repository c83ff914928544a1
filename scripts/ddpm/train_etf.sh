#!/usr/bin/env bash
# Usage: bash scripts/ddpm/train_etf.sh <dataset> <result dir> <GPU num> [extra train_interpreter.py options]
# The ETF-regularized, soft-voted method (experiments/<dataset>/etf.json) on GPU <GPU num>
# (on a machine without CUDA it runs on the CPU); outputs in <result dir>/<steps>_<blocks>/.
set -euo pipefail
source "$(dirname "$0")/model_flags.sh"
USAGE="$0 <dataset> <result dir> <GPU num> [options]"
check_dataset "${1:-}" "$USAGE"
if [ $# -lt 3 ] || ! [[ $3 =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  echo "usage: $USAGE   (<GPU num> is a CUDA device index such as 0)" >&2
  exit 2
fi
DATASET=$1; RESULT_DIR=$(realpath -m "$2"); export CUDA_VISIBLE_DEVICES=$3; shift 3
cd "$(dirname "$0")/../.."
# shellcheck disable=SC2046
exec python train_interpreter.py --exp "experiments/$DATASET/etf.json" --exp_dir "$RESULT_DIR" \
  $(model_flags "$DATASET") "$@"
