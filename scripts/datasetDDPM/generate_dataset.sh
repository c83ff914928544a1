#!/usr/bin/env bash
# Usage: bash scripts/datasetDDPM/generate_dataset.sh <dataset> [GPU num] [generate_dataset.py options]
# DatasetDDPM with the published sampling values (10000 samples, 1000 ancestral steps, batches
# of 100) from the finished interpreter run of experiments/<dataset>/ddpm.json, into
# synthetic_datasets/ddpm/<dataset>/ where train_deeplab.sh reads it. GPU num > 1 spreads the
# batches over that many torchrun processes; rerunning resumes. Options after these override them.
set -euo pipefail
source "$(dirname "$0")/../ddpm/model_flags.sh"
check_dataset "${1:-}" "$0 <dataset> [GPU num] [options]"
DATASET=$1; shift
GPUS=1
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then GPUS=$1; shift; fi
cd "$(dirname "$0")/../.."
if [ "$GPUS" -gt 1 ]; then
  LAUNCH=(torchrun --standalone "--nproc_per_node=$GPUS")
else
  LAUNCH=(python)
fi
exec "${LAUNCH[@]}" generate_dataset.py --exp "experiments/$DATASET/ddpm.json" --out "synthetic_datasets/ddpm/$DATASET" \
  --num_samples 10000 --batch_size 100 --timestep_respacing "" --use_ddim False "$@"
