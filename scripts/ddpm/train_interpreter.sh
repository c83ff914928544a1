#!/usr/bin/env bash
# Usage: bash scripts/ddpm/train_interpreter.sh <dataset> [extra train_interpreter.py options]
# The original method (experiments/<dataset>/ddpm.json) with the dataset's checkpoint flags.
set -euo pipefail
source "$(dirname "$0")/model_flags.sh"
check_dataset "${1:-}" "$0 <dataset> [options]"
DATASET=$1; shift
cd "$(dirname "$0")/../.."
# shellcheck disable=SC2046
exec python train_interpreter.py --exp "experiments/$DATASET/ddpm.json" $(model_flags "$DATASET") "$@"
