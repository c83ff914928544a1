#!/usr/bin/env bash
# Usage: bash scripts/datasetDDPM/train_deeplab.sh <dataset> [extra train_deeplab.py options]
# DatasetDDPM's DeepLabV3 stage with the published values: the first 50000 synthetic samples,
# 10% dropped by the uncertainty filter, the dataset's ddpm.json (DatasetDDPM used the same values).
# The synthetic dataset is synthetic_datasets/ddpm/<dataset>/samples_<S>x<S>x3.npz (S = 256, or 64
# for celebamask64) unless the environment sets SYNTHETIC_NPZ. Relative paths are from the
# repository root; options after <dataset> override these (argparse keeps the last).
set -euo pipefail
source "$(dirname "$0")/../ddpm/model_flags.sh"
check_dataset "${1:-}" "$0 <dataset> [options]"
DATASET=$1; shift
SIZE=256
if [ "$DATASET" = celebamask64 ]; then SIZE=64; fi  # the only dataset at its own 64 px resolution
cd "$(dirname "$0")/../.."
exec python train_deeplab.py --exp "experiments/$DATASET/ddpm.json" \
  --data_path "${SYNTHETIC_NPZ:-synthetic_datasets/ddpm/$DATASET/samples_${SIZE}x${SIZE}x3.npz}" \
  --max_data 50000 --uncertainty_portion 0.1 "$@"
