#!/usr/bin/env bash
# Usage: bash scripts/train_baseline.sh {mae|swav|swav_w2} <dataset> [extra train_interpreter.py options]
# The paper's comparison backbones under the same pixel classifier (experiments/<dataset>/<kind>.json).
# They take no guided-diffusion flags; scripts/<kind>/train_interpreter.sh call this.
set -euo pipefail
source "$(dirname "$0")/ddpm/model_flags.sh"
KIND=${1:-}
case "$KIND" in
  mae | swav | swav_w2) ;;
  *) echo "usage: $0 {mae|swav|swav_w2} <dataset> [options]" >&2; exit 2 ;;
esac
shift
check_dataset "${1:-}" "scripts/$KIND/train_interpreter.sh <dataset> [options]"
DATASET=$1; shift
cd "$(dirname "$0")/.."
exec python train_interpreter.py --exp "experiments/$DATASET/$KIND.json" "$@"
