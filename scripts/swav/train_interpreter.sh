#!/usr/bin/env bash
# Usage: bash scripts/swav/train_interpreter.sh <dataset> [extra train_interpreter.py options]
# Pixel classifiers on swav features (experiments/<dataset>/swav.json; checkpoint from checkpoints/swav/).
exec bash "$(dirname "$0")/../train_baseline.sh" swav "$@"
