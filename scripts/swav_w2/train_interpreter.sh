#!/usr/bin/env bash
# Usage: bash scripts/swav_w2/train_interpreter.sh <dataset> [extra train_interpreter.py options]
# Pixel classifiers on swav_w2 features (experiments/<dataset>/swav_w2.json; checkpoint from checkpoints/swav_w2/).
exec bash "$(dirname "$0")/../train_baseline.sh" swav_w2 "$@"
