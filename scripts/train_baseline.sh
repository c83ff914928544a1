#!/usr/bin/env bash
# Usage: bash scripts/train_baseline.sh <kind> <dataset> [extra train_interpreter.py options]
# A backbone other than the guided-diffusion U-Net (mae, swav, swav_w2, ...) under the same pixel classifier:
# runs experiments/<dataset>/<kind>.json, whose model_type train_interpreter.py checks against the backbone
# registry. They take no guided-diffusion flags; scripts/<kind>/train_interpreter.sh call this.
set -euo pipefail
source "$(dirname "$0")/ddpm/model_flags.sh"
KIND=${1:-}
if [[ -z "$KIND" || "$KIND" == -* ]]; then
  echo "usage: $0 <kind> <dataset> [options]   (kind: the name of an experiments/<dataset>/<kind>.json, e.g. mae)" >&2
  exit 2
fi
shift
check_dataset "${1:-}" "scripts/$KIND/train_interpreter.sh <dataset> [options]"
DATASET=$1; shift
cd "$(dirname "$0")/.."
CONFIG="experiments/$DATASET/$KIND.json"
if [[ ! -f "$CONFIG" ]]; then
  echo "error: $CONFIG does not exist; configs for $DATASET: $(cd "experiments/$DATASET" && ls -- *.json | tr '\n' ' ')" >&2
  exit 2
fi
exec python train_interpreter.py --exp "$CONFIG" "$@"
